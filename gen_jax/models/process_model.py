"""Diffusion in continuous time behind the model interface (gen_jax.models): a network, a Gaussian
process (gen_jax.diffusion.process), a weighted denoising loss and the process samplers.

`config.diffusion.process` chooses the family: "discrete" (the default) is DDPM's
`DiffusionModel`, exactly as before; any other name builds a `ProcessDiffusionModel` here:

  process           vp_linear | vp_cosine | ve | edm (= ve, EDM's name) | rectified_flow, with
                    its parameters (None: the constructor's default; each applies to its
                    process only): t_min, t_max (vp_*, rectified_flow), beta_min, beta_max
                    (vp_linear), log_snr_min, log_snr_max (vp_cosine), sigma_min, sigma_max (ve)
  prediction        the network's target: eps | x0 | v | velocity | score
  weighting         the loss (denoising.WEIGHTINGS); None: the MSE of the prediction itself
  time_distribution how training draws t (denoising.TIME_DISTRIBUTIONS), its parameters in
                    time_params
  preconditioning   "none" | "edm" (Karras et al. 2022: c_skip, c_out, c_in, c_noise around the
                    network at s = sigma / alpha; any process with alpha, sigma > 0 on its range;
                    the model is then an x0-predictor), sigma_data its data std (also EDM's
                    loss weight's)
  eval_time_samples times per example of the continuous ELBO in --mode=eval
The samplers are `solvers.PROCESS_SAMPLERS` (config.sample.sampler: euler, heun, ddim, dpm++2m,
euler_maruyama, each also as "process_<name>"); check_config refuses unknown names and
combinations that cannot run. `sample_on_process` is how every diffusion model samples through its
process view: this family, DDPM's DiffusionModel (discrete_process of its schedule at real t) and
VDMModel (log_snr_process of its gamma).

The network's time input. gen_jax's U-Net and MLP embed t sinusoidally with DDPM's max period
10^4, made for t in 0..999, so a continuous time is mapped to that scale:
  processes on [0, 1] (vp_linear, vp_cosine, rectified_flow): 1000 t;
  ve / edm: 250 c_noise = 62.5 ln(sigma), with EDM's c_noise = ln(sigma) / 4: sigma in
    [0.002, 80] spans [-388, 274], a spread like DDPM's, where sigma itself would crowd the
    low-noise end into less than one unit;
  with preconditioning "edm", on any process: 250 c_noise(s), s = sigma / alpha, exactly the
    c_noise the preconditioning hands the network, times 250.

Likelihoods (--mode=eval, images): the continuous-time ELBO and the probability-flow ODE in
bits/dim on the 8-bit data, from log-SNR LIKELIHOOD_LOG_SNR where t_min has no noise (rectified
flow's t = 0); the ELBO's times are uniform in log-SNR (its noise end moved in likewise where
alpha(t_max) = 0), the ODE runs to t_max itself.

Longer than the house's ~400 lines: the model, its config fields and their one check_config;
the check is the next piece to move to a module of its own.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gen_jax import checks, diffusion
from gen_jax.configs import ConfigError
from gen_jax.diffusion import denoising, preconditioning, process_ode, solvers
from gen_jax.diffusion import process as process_lib
from gen_jax.models._common import _mean

Array = jax.Array

# "discrete" is DDPM's DiffusionModel (gen_jax.models.diffusion_model); the others are built here.
PROCESS_NAMES = ("discrete", "vp_linear", "vp_cosine", "ve", "edm", "rectified_flow")
PRECONDITIONINGS = ("none", "edm")
# Where the likelihoods start on a process whose t_min has no noise: log-SNR 2 ln(10^5), i.e.
# sigma / alpha = 1e-5, far below the 8-bit data's bin width 2/255.
LIKELIHOOD_LOG_SNR = 2.0 * math.log(1e5)
# Each process parameter of config.diffusion, and the processes it applies to.
PROCESS_PARAMETERS = {
  "t_min": ("vp_linear", "vp_cosine", "rectified_flow"),
  "t_max": ("vp_linear", "vp_cosine", "rectified_flow"),
  "beta_min": ("vp_linear",),
  "beta_max": ("vp_linear",),
  "log_snr_min": ("vp_cosine",),
  "log_snr_max": ("vp_cosine",),
  "sigma_min": ("ve", "edm"),
  "sigma_max": ("ve", "edm"),
}
# The continuous-time fields and their defaults, which "discrete" leaves as they are.
_CONTINUOUS_DEFAULTS = {
  "weighting": None,
  "time_distribution": "uniform",
  "preconditioning": "none",
  "sigma_data": 0.5,
  "eval_time_samples": 100,
}


@dataclasses.dataclass(frozen=True)
class ProcessDiffusionModel:
  """A denoising model of a Gaussian process in continuous time.

  Attributes:
    net: Flax module, net.apply(params, x, time, [labels,] train=..., rngs=...) with a float
      time of DDPM's scale (`network_time`).
    process: the noising process x_t = alpha(t) x0 + sigma(t) eps (`diffusion.process`).
    example_shape: one example's shape.
    prediction: the target of `model_fn`'s output (eps | x0 | v | velocity | score); with EDM
      preconditioning "x0" (the preconditioned network is EDM's denoiser D).
    weighting: the loss's weighting (`denoising.WEIGHTINGS`).
    time_distribution, time_params: how training draws t (`denoising.sample_time`);
      time_params a tuple of (name, value) pairs.
    preconditioning: "none" or "edm"; sigma_data: EDM's data std.
    clip: samplers clip the predicted x0 to [-1, 1] (images).
    eval_time_samples: times per example of the continuous ELBO in `evaluate`.
    num_classes, cond_drop_prob: class conditioning with classifier-free guidance, as
      DiffusionModel's.
  """

  net: nn.Module
  process: process_lib.GaussianProcess
  example_shape: tuple[int, ...]
  prediction: str
  weighting: str
  time_distribution: str = "uniform"
  time_params: tuple = ()
  preconditioning: str = "none"
  sigma_data: float = 0.5
  clip: bool = True
  eval_time_samples: int = 100
  num_classes: int = 0
  cond_drop_prob: float = 0.0

  def __hash__(self):  # The process holds arrays: hash by identity.
    return id(self)

  def __eq__(self, other):
    return self is other

  def init(self, key) -> Any:
    x = jnp.zeros((1,) + tuple(self.example_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    if self.num_classes:
      return self.net.init(key, x, t, jnp.zeros((1,), jnp.int32), train=False)
    return self.net.init(key, x, t, train=False)

  def network_time(self, t) -> Array:
    """The network's time input for process time t (module docstring): 62.5 ln(sigma) for VE,
    1000 t for processes on [0, 1]."""
    if self.process.name == "ve":
      return 250.0 * (jnp.log(t) / 4.0)
    return 1000.0 * t

  def model_fn(self, params, train: bool = False, dropout_key=None, labels=None):
    """The network as model_fn(x_t, t) -> output in `self.prediction`, t the process's time (B,).

    labels: (B,) int classes (K = the null label) for a conditional model; None: the null
    label (the unconditional model)."""
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    if labels is not None and not self.num_classes:
      raise ValueError(
        "class labels given to an unconditional model; train with config.model.num_classes=K"
      )
    extra = (labels,) if self.num_classes else ()

    def net_fn(x, time):
      return self.net.apply(params, x, time, *extra, train=train, rngs=rngs)

    if self.preconditioning == "edm":
      # EDM's D(x; s) = c_skip x + c_out F(c_in x, c_noise), s = sigma / alpha (= sigma on VE);
      # the net sees 250 c_noise.
      return preconditioning.edm_preconditioning(
        lambda x_in, c_noise: net_fn(x_in, 250.0 * c_noise),
        sigma_data=self.sigma_data,
        process=None if self.process.name == "ve" else self.process,
      )
    return lambda x_t, t: net_fn(x_t, self.network_time(t))

  def guided_model_fn(self, params, labels=None, guidance_scale: float = 0.0):
    """model_fn with classifier-free guidance (1 + w) out(x_t, t, c) - w out(x_t, t, null):
    for fixed x_t and t every target is affine in (x0, eps), so guiding the output guides them
    alike (`diffusion.guided_eps_fn`)."""
    cond = self.model_fn(params, labels=labels)
    if labels is None or (isinstance(guidance_scale, (int, float)) and guidance_scale == 0):
      return cond
    return diffusion.guided_eps_fn(
      cond_fn=cond, uncond_fn=self.model_fn(params), guidance_scale=guidance_scale
    )

  def _losses(self, model_fn, x, key):
    return denoising.denoising_loss(
      self.process,
      model_fn,
      x0=x,
      key=key,
      prediction=self.prediction,
      weighting=self.weighting,
      time_distribution=self.time_distribution,
      time_params=dict(self.time_params) or None,
      weighting_params={"sigma_data": self.sigma_data} if self.weighting == "edm" else None,
    )

  def loss(self, params, batch, key, train: bool = True):
    loss_key, dropout_key, drop_label_key = jax.random.split(key, 3)
    labels = None
    if self.num_classes:
      if "label" not in batch:
        raise ValueError("a class-conditional model needs labelled data (batches without 'label')")
      drop = jax.random.bernoulli(drop_label_key, self.cond_drop_prob, batch["label"].shape)
      labels = jnp.where(drop, self.num_classes, batch["label"])
    model_fn = self.model_fn(params, train, dropout_key if train else None, labels)
    loss = _mean(self._losses(model_fn, batch["x"], loss_key), batch.get("mask"))
    return loss, {"loss": loss}

  def sample(
    self,
    params,
    key,
    num_samples: int,
    sampler: str = "euler",
    num_steps: int | None = None,
    labels=None,
    guidance_scale: float = 0.0,
    **options,
  ) -> Array:
    """Draws num_samples examples with `solvers.PROCESS_SAMPLERS[sampler]` (or
    "process_<name>", the same) from the process's prior at t_max to t_min, num_steps steps
    (None: the sampler's default). options: the samplers' own (eta: ddim, s_churn: heun, ...);
    those another sampler takes, and those given as None, are ignored, so one call site can pass
    them all (config.sample.options). labels / guidance_scale: classifier-free guidance."""
    return sample_on_process(
      solvers.process_sampler_name(sampler),
      model_fn=self.guided_model_fn(params, labels, guidance_scale),
      process=self.process,
      key=key,
      shape=(num_samples,) + tuple(self.example_shape),
      num_steps=num_steps,
      prediction=self.prediction,
      clip=self.clip,
      spacing=self.grid_spacing(),
      options=options,
    )

  def grid_spacing(self) -> str:
    """The samplers' time grid (`default_spacing`): "uniform" where alpha(t_max) = 0
    (rectified flow), else EDM's "karras"."""
    return default_spacing(self.process)

  def evaluate(self, params, batch, key, ode_steps: int = 0) -> dict[str, Array]:
    """Per-example training loss (denoising_loss) and, for 8-bit images, the continuous-time ELBO in bits/dim
    and (ode_steps > 0) the probability-flow ODE's bits/dim."""
    x = batch["x"]
    loss_key, elbo_key, ode_key = jax.random.split(key, 3)
    model_fn = self.model_fn(params)
    # Not "loss": DDPM's L_simple in eval.json; this one is weighted as it trains.
    out = {"denoising_loss": self._losses(model_fn, x, loss_key)}
    if len(self.example_shape) == 3:
      # Times uniform in log-SNR: the ELBO's integrand in lambda is the same on every process,
      # so its estimate is as good on VE (where uniform t spends 99% of the draws above
      # sigma = 0.8) as on VP.
      out["bits_per_dim"] = denoising.elbo_bits_per_dim(
        self.likelihood_process(finite_noise_end=True),
        model_fn,
        x0=x,
        key=elbo_key,
        prediction=self.prediction,
        data="8bit",
        num_time_samples=self.eval_time_samples,
        time_distribution="log_snr_uniform",
      )
      if ode_steps:
        out["ode_bits_per_dim"] = process_ode.ode_bits_per_dim(
          model_fn,
          self.likelihood_process(),
          x=x,
          key=ode_key,
          prediction=self.prediction,
          trace="hutchinson",
          num_steps=ode_steps,
        )
    return out

  def likelihood_process(self, *, finite_noise_end: bool = False) -> process_lib.GaussianProcess:
    """The process the likelihoods integrate: this one, with its ends moved in to log-SNR
    +-LIKELIHOOD_LOG_SNR where they have none: t_min where sigma = 0 (rectified flow's t = 0,
    where the density is singular: t = 1 / (1 + 10^5)) and, with finite_noise_end (the ELBO's
    time law, uniform in log-SNR, needs it), t_max where alpha = 0 (rectified flow's t = 1)."""
    process = self.process
    with jax.ensure_compile_time_eval():  # concrete under jit: the range is static
      alpha_max = float(process.alpha_sigma(process.t_max)[0])
      sigma_min = float(process.alpha_sigma(process.t_min)[1])
      t_min, t_max = process.t_min, process.t_max
      if not sigma_min > 0:
        t_min = float(process.t_from_log_snr(LIKELIHOOD_LOG_SNR))
      if finite_noise_end and not alpha_max > 0:
        t_max = float(process.t_from_log_snr(-LIKELIHOOD_LOG_SNR))
    if (t_min, t_max) == (process.t_min, process.t_max):
      return process
    return dataclasses.replace(process, t_min=t_min, t_max=t_max)

  def describe_sample(
    self,
    sampler: str = "euler",
    num_steps: int | None = None,
    guidance_scale: float = 0.0,
    **options,
  ) -> dict:
    """What `sample` runs: the sampler, its steps, network calls per sample and the options that
    apply to it (their given value, else the default)."""
    return describe_on_process(
      solvers.process_sampler_name(sampler),
      process=self.process,
      num_steps=num_steps,
      guidance_scale=guidance_scale,
      prediction=self.prediction,
      spacing=self.grid_spacing(),
      options=options,
      requested=sampler,
    )

  def describe_evaluate(self, ode_steps: int = 0) -> dict[str, str]:
    """How each figure of `evaluate` is computed."""
    time = self.time_distribution + (f" {dict(self.time_params)}" if self.time_params else "")
    out = {
      "denoising_loss": f"the training loss: weighting '{self.weighting}' of a {self.prediction}-prediction "
      f"on process {self.process.name}, one t ~ {time} and one eps per example"
    }
    if len(self.example_shape) == 3:
      elbo = self.likelihood_process(finite_noise_end=True)
      start = elbo.t_min
      out["bits_per_dim"] = (
        f"the continuous-time ELBO (denoising.elbo_bits_per_dim, Kingma et al. 2021 on any "
        f"process) on t in [{elbo.t_min:.3g}, {elbo.t_max:.6g}]: prior KL at the noise end, the "
        f"diffusion term at {self.eval_time_samples} times per example uniform in log-SNR "
        f"(stratified, antithetic over the batch), the 8-bit data's discretized reconstruction "
        f"at the data end; divided by D ln 2"
      )
      if ode_steps:
        out["ode_bits_per_dim"] = (
          f"the likelihood of the probability-flow ODE (process_ode.ode_bits_per_dim) from "
          f"t={start:.3g} to {self.process.t_max:g}: {ode_steps} Heun steps uniform in log-SNR, "
          f"Hutchinson's trace with one Rademacher probe, data dequantized uniformly within each "
          f"8-bit bin (one draw); -(log p - D log 127.5) / (D ln 2)"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Sampling on a process: what ProcessDiffusionModel, DDPM's DiffusionModel (its schedule's
# discrete_process at real t) and VDMModel (log_snr_process of its gamma) share.


def default_spacing(process: process_lib.GaussianProcess) -> str:
  """The samplers' time grid, decided on concrete values: "uniform" where alpha(t_max) = 0
  (rectified flow's t = 1, a zero-terminal-SNR DDPM schedule's last level: sigma / alpha is
  infinite there), else EDM's "karras". solvers reads alpha(t_max) itself, but inside jit it
  sees a tracer and takes "karras": every rectified-flow sample NaN. A process whose
  parameters are traced (a learned log-SNR under jit) must be given its spacing."""
  with jax.ensure_compile_time_eval():
    alpha_max = float(process.alpha_sigma(process.t_max)[0])
  return "uniform" if alpha_max == 0.0 else "karras"


def sample_on_process(
  name: str,
  *,
  model_fn,
  process: process_lib.GaussianProcess,
  key,
  shape,
  num_steps: int | None,
  prediction: str,
  clip: bool,
  spacing: str,
  options,
) -> Array:
  """Samples of `shape` from `solvers.PROCESS_SAMPLERS[name]` on `process` with model_fn(x_t, t)
  predicting `prediction` at the process's time t (B,): num_steps steps (None: the sampler's
  default) on `solvers.time_grid(process, num_steps, spacing=spacing)`, t_max to the data.
  options: sampler options by name (`_applying_options`)."""
  spec = _sampler_spec(name)
  return spec.fn(
    model_fn,
    process,
    key,
    spacing=spacing,
    shape=tuple(shape),
    num_steps=num_steps or spec.default_steps,
    prediction=prediction,
    clip=clip,
    **_applying_options(spec, options),
  )


def describe_on_process(
  name: str,
  *,
  process: process_lib.GaussianProcess,
  num_steps: int | None,
  guidance_scale: float,
  prediction: str,
  spacing: str,
  options,
  requested: str | None = None,
) -> dict:
  """What `sample_on_process(name, ...)` runs, for eval.json: the sampler (as `requested`, e.g.
  "process_heun", default name) and process, its steps, network calls per sample (doubled by
  guidance), the grid's spacing, the prediction and the options that apply to it (given and not
  None, else the default)."""
  spec = _sampler_spec(name)
  steps = num_steps or spec.default_steps
  calls = spec.network_calls(steps)
  out = {
    "sampler": f"{requested or name}: {spec.summary} on process {process.name} "
    f"(t from {process.t_max:g} to {process.t_min:g})",
    "num_steps": steps,
    "network_calls": calls,
    "spacing": spacing,
    "prediction": prediction,
  }
  for option, default in spec.options.items():
    value = options.get(option)
    value = default if value is None else value
    # eval.json stays strict JSON: Heun's s_tmax defaults to inf.
    is_inf = isinstance(value, float) and not math.isfinite(value)
    out[option] = str(value) if is_inf else value
  if guidance_scale:
    out["guidance_scale"] = guidance_scale
    out["network_calls"] = 2 * calls
  return out


def _sampler_spec(name: str):
  if name not in solvers.PROCESS_SAMPLERS:
    raise ValueError(
      f"sampler must be one of {tuple(solvers.PROCESS_SAMPLERS)} for a continuous process, "
      f"got {name!r}"
    )
  return solvers.PROCESS_SAMPLERS[name]


def _applying_options(spec, options) -> dict:
  """The options `spec`'s sampler takes, less those given as None (the sampler's default:
  config.sample.options holds every option of both registries, None unless set); ValueError for
  a name no sampler takes."""
  from gen_jax.diffusion import samplers

  registries = (solvers.PROCESS_SAMPLERS, samplers.SAMPLERS)
  known = {option for registry in registries for row in registry.values() for option in row.options}
  unknown = sorted(set(options) - known)
  if unknown:
    raise ValueError(f"unknown sampler options {unknown}; the samplers take {sorted(known)}")
  return {k: v for k, v in options.items() if k in spec.options and v is not None}


# ---------------------------------------------------------------------------------------------
# Config: the fields, the check, the builders.


def process_fields() -> dict:
  """The continuous-time fields of `config.diffusion` (models.diffusion_config adds them; the
  module docstring says what each is). Parameters of processes are None: the default."""
  float_field = lambda: ml_collections.config_dict.placeholder(float)
  return dict(
    process="discrete",
    **{name: float_field() for name in PROCESS_PARAMETERS},
    weighting=ml_collections.config_dict.placeholder(str),
    time_distribution="uniform",
    time_params=ml_collections.ConfigDict(),
    preconditioning="none",
    sigma_data=0.5,
    eval_time_samples=100,
  )


def process_config(process: str, prediction: str, weighting: str, **fields):
  """A whole `config.diffusion` section (models.diffusion_config) for continuous `process`:
  the DDPM fields keep their defaults, which a continuous process does not read."""
  from gen_jax.models.diffusion_model import diffusion_config

  section = diffusion_config(prediction=prediction)
  section.process = process
  section.weighting = weighting
  for name, value in fields.items():
    if name not in section:
      raise KeyError(f"process_config: {name} is no field of config.diffusion")
    section[name] = value
  return section


def check_config(config) -> None:
  """Raises ConfigError, naming `config.diffusion.<field>` and what is allowed, unless
  config.diffusion describes a model this family can build and config.sample a sampler it
  has. With process "discrete" only refuses continuous-time fields that were set (configs.validate
  checks DDPM's own); traces the loss on abstract values to refuse combinations the loss refuses."""
  section = config.diffusion
  name = section.get("process", "discrete")
  if name not in PROCESS_NAMES:
    _fail("process", f"one of {PROCESS_NAMES}", name)
  if name == "discrete":
    for field, default in _CONTINUOUS_DEFAULTS.items():
      if section.get(field, default) != default:
        _fail(
          field,
          f"{default!r} with config.diffusion.process='discrete' (DDPM's L_simple "
          "in config.diffusion.prediction; set config.diffusion.process to a continuous "
          "process to use it)",
          section[field],
        )
    set_fields = [f for f in PROCESS_PARAMETERS if section.get(f) is not None]
    if section.get("time_params"):  # an empty section is unset
      set_fields.insert(0, "time_params")
    if set_fields:
      _fail(
        set_fields[0],
        "unset with config.diffusion.process='discrete' (it applies to continuous processes)",
        section[set_fields[0]],
      )
    return
  if config.get("pretrained"):
    raise ConfigError(
      f"config.pretrained={config.pretrained} is a DDPM network of integer timesteps; "
      f"config.diffusion.process={name!r} needs a network trained on it: use process 'discrete'"
    )
  if section.get("zero_terminal_snr", False):
    _fail(
      "zero_terminal_snr",
      "False with a continuous process (its own range sets the terminal SNR)",
      section.zero_terminal_snr,
    )
  prediction = section.prediction
  if prediction not in process_lib.PREDICTIONS:
    _fail("prediction", f"one of {process_lib.PREDICTIONS}", prediction)
  weighting = _weighting(section)
  if weighting not in denoising.WEIGHTINGS:
    _fail(
      "weighting", f"one of {denoising.WEIGHTINGS} (or None: the prediction's own MSE)", weighting
    )
  if section.time_distribution not in denoising.TIME_DISTRIBUTIONS:
    _fail("time_distribution", f"one of {denoising.TIME_DISTRIBUTIONS}", section.time_distribution)
  if section.preconditioning not in PRECONDITIONINGS:
    _fail("preconditioning", f"one of {PRECONDITIONINGS}", section.preconditioning)
  if section.preconditioning == "edm":
    if prediction != "x0":
      _fail(
        "prediction",
        "'x0' with config.diffusion.preconditioning='edm' (the preconditioned "
        "network is EDM's denoiser D(x; sigma), an x0-predictor)",
        prediction,
      )
  if not checks.is_real(section.sigma_data) or section.sigma_data <= 0:
    _fail("sigma_data", "a number > 0", section.sigma_data)
  if not checks.is_integer(section.eval_time_samples) or section.eval_time_samples <= 0:
    _fail("eval_time_samples", "a positive integer", section.eval_time_samples)
  if not isinstance(section.get("clip", True), bool):
    _fail("clip", "True or False", section.clip)
  process = make_process(section)
  # The network's output at the noise end must give x0 for the samplers' first step.
  alpha_max, _ = process.alpha_sigma(process.t_max)
  if prediction in ("eps", "score") and float(alpha_max) == 0.0:
    _fail(
      "prediction",
      f"'x0', 'v' or 'velocity' with process {name!r} at t_max="
      f"{process.t_max:g} (alpha = 0 there: x0 = (x_t - sigma eps) / alpha is undefined)",
      prediction,
    )
  if section.preconditioning == "edm":
    # D(x; s) at s = sigma / alpha: infinite where alpha = 0, c_noise = ln(0) where sigma = 0.
    _, sigma_min = process.alpha_sigma(process.t_min)
    if float(alpha_max) == 0.0 or float(sigma_min) == 0.0:
      _fail(
        "preconditioning",
        f"'none' with process {name!r} on [{process.t_min:g}, {process.t_max:g}] (EDM's "
        "preconditioning needs alpha > 0 and sigma > 0 on the whole range: set "
        "config.diffusion.t_min > 0 and t_max < 1)",
        "edm",
      )
  _check_sampler(config.sample)
  # What only the loss knows (a weighting or time distribution it refuses for this process or
  # target), on abstract values: no computation.
  model = ProcessDiffusionModel(
    net=None,
    process=process,
    example_shape=(2,),
    prediction=prediction,
    weighting=weighting,
    time_distribution=section.time_distribution,
    time_params=_time_params(section),
  )
  try:
    jax.eval_shape(
      lambda x, key: model._losses(lambda x_t, t: x_t, x, key),
      jax.ShapeDtypeStruct((2, 2), jnp.float32),
      jax.random.key(0),
    )
  except (ValueError, TypeError) as e:
    raise ConfigError(
      f"config.diffusion: process={name!r}, prediction={prediction!r}, weighting={weighting!r}, "
      f"time_distribution={section.time_distribution!r}, time_params="
      f"{dict(_time_params(section))}: {e}"
    ) from None


def _check_sampler(sample) -> None:
  try:
    solvers.process_sampler_name(sample.sampler)
  except ValueError:
    raise ConfigError(
      f"config.sample.sampler must be one of {solvers.sampler_names()} with a "
      f"continuous config.diffusion.process, got {sample.sampler!r}"
    ) from None


def _weighting(section) -> str:
  """config.diffusion.weighting, or None's default: the MSE of the prediction itself."""
  if section.get("weighting") is not None:
    return section.weighting
  own = f"{section.prediction}_mse"
  return own if own in denoising.WEIGHTINGS else "eps_mse"


def _time_params(section) -> tuple:
  params = section.get("time_params") or {}
  if hasattr(params, "to_dict"):
    params = params.to_dict()
  return tuple(sorted(dict(params).items()))


def make_process(section) -> process_lib.GaussianProcess:
  """The continuous process config.diffusion describes (ConfigError naming a bad field)."""
  name = section.process
  kwargs = {}
  for field, processes in PROCESS_PARAMETERS.items():
    value = section.get(field)
    if value is None:
      continue
    if name not in processes:
      _fail(
        field,
        f"unset with config.diffusion.process={name!r} (it applies to {' and '.join(processes)})",
        value,
      )
    if not checks.is_real(value):
      _fail(field, "a finite number", value)
    kwargs[field] = float(value)
  try:
    return process_lib.PROCESSES[name](**kwargs)
  except ValueError as e:
    fields = ", ".join(f"config.diffusion.{k}={v!r}" for k, v in kwargs.items())
    raise ConfigError(
      f"config.diffusion.process={name!r} with {fields or 'its defaults'}: {e}"
    ) from None


def _fail(field, want, value):
  raise ConfigError(f"config.diffusion.{field} must be {want}, got {value!r}")


def make_process_model(
  diffusion_cfg, net: nn.Module, example_shape, *, num_classes: int = 0, cond_drop_prob: float = 0.0
) -> ProcessDiffusionModel:
  """A ProcessDiffusionModel from a continuous `config.diffusion` section and a network
  (models.make_diffusion_model hands over to it; configs.validate has run check_config)."""
  if diffusion_cfg.process not in PROCESS_NAMES[1:]:
    raise ConfigError(
      f"config.diffusion.process must be one of {PROCESS_NAMES[1:]} for a continuous-time model, "
      f"got {diffusion_cfg.process!r}"
    )
  return ProcessDiffusionModel(
    net=net,
    process=make_process(diffusion_cfg),
    example_shape=tuple(example_shape),
    prediction=diffusion_cfg.prediction,
    weighting=_weighting(diffusion_cfg),
    time_distribution=diffusion_cfg.time_distribution,
    time_params=_time_params(diffusion_cfg),
    preconditioning=diffusion_cfg.preconditioning,
    sigma_data=float(diffusion_cfg.sigma_data),
    clip=diffusion_cfg.clip,
    eval_time_samples=int(diffusion_cfg.eval_time_samples),
    num_classes=num_classes,
    cond_drop_prob=cond_drop_prob,
  )
