"""DDPM-family diffusion behind the model interface (gen_jax.models): DiffusionModel and the
config builders that make it, for gen_jax's own U-Net/MLP or a diffusers UNet2DModel folder.

Longer than the house's ~400 lines: the model, its check_config and its builders; the sampler
dispatch (discrete samplers and the process view) is the next piece to move out.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gen_jax import checks, configs, diffusion, nets
from gen_jax.configs import ConfigError
from gen_jax.diffusion import solvers
from gen_jax.models import _common, process_model
from gen_jax.models._common import _mean
from gen_jax.pretrained import diffusers_unet

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DiffusionModel:
  """A DDPM: a network predicting eps, x0 or v, trained with the matching
  denoising loss (`diffusion.simple_loss`).

  Attributes:
    net: Flax module called as net.apply(params, x_t, t, train=..., rngs=...).
    schedule: the noise schedule (gen_jax.diffusion.Schedule).
    example_shape: shape of one data example, e.g. (32, 32, 3) or (2,).
    variance: the reverse process' variance for sampling and the bound.
    clip: clip predicted x_0 to [-1, 1] while sampling (images).
    prediction: what the network predicts, "eps" | "x0" | "v"; samplers and
      the bound see it as an eps-predictor through `diffusion.as_eps_fn`.
    num_classes: K > 0 makes the model class-conditional (classifier-free
      guidance, Ho & Salimans 2022): the network takes a label in
      {0, ..., K-1}, or K for "no class"; batches then hold 'label'.
    cond_drop_prob: in training, each label is replaced by the null label K
      with this probability, so one network learns p(x|c) and p(x).
  """

  net: nn.Module
  schedule: diffusion.Schedule
  example_shape: tuple[int, ...]
  variance: str = "small"
  clip: bool = True
  prediction: str = "eps"
  num_classes: int = 0
  cond_drop_prob: float = 0.0

  def __hash__(self):  # The schedule holds arrays: hash by identity.
    return id(self)

  def __eq__(self, other):
    return self is other

  @functools.cached_property
  def process_view(self) -> "diffusion.GaussianProcess":
    """The schedule as a process in continuous time (`diffusion.discrete_process`): t in
    [0, T - 1], the schedule's own tables at the levels, log-SNR linear in t between them. The
    process samplers call the network at these real t (gen_jax's U-Net and MLP and the diffusers
    mirror embed any real t, as diffusers' UNet2DModel does). Built eagerly, also when first
    asked for inside jit: its tables are constants, and a traced copy cached here would leak."""
    with jax.ensure_compile_time_eval():
      return diffusion.discrete_process(self.schedule)

  def init(self, key) -> Any:
    x = jnp.zeros((1,) + tuple(self.example_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    if self.num_classes:
      return self.net.init(key, x, t, jnp.zeros((1,), jnp.int32), train=False)
    return self.net.init(key, x, t, train=False)

  def model_fn(self, params, train: bool = False, dropout_key=None, labels=None):
    """The network as a plain (x_t, t) -> prediction of `self.prediction`.

    labels: (B,) int class labels (K = the null label) for a conditional
    model; None means the null label (the unconditional model).
    """
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    if not self.num_classes:
      if labels is not None:
        raise ValueError(
          "class labels given to an unconditional model; train with config.model.num_classes=K"
        )
      return lambda x_t, t: self.net.apply(params, x_t, t, train=train, rngs=rngs)
    return lambda x_t, t: self.net.apply(params, x_t, t, labels, train=train, rngs=rngs)

  def guided_model_fn(self, params, labels=None, guidance_scale: float = 0.0):
    """The network as the samplers' model_fn(x_t, t), predicting `self.prediction`.

    With labels and guidance_scale w != 0: classifier-free guidance of the
    network's own output, (1 + w) out(x_t, t, c) - w out(x_t, t, null)
    (`diffusion.guided_eps_fn`: for fixed x_t and t, eps and x0 are affine in
    the output, so this guides them alike whatever the network predicts).
    """
    cond = self.model_fn(params, labels=labels)
    if labels is None or (isinstance(guidance_scale, (int, float)) and guidance_scale == 0):
      return cond
    return diffusion.guided_eps_fn(
      cond_fn=cond, uncond_fn=self.model_fn(params), guidance_scale=guidance_scale
    )

  def eps_fn(
    self, params, train: bool = False, dropout_key=None, labels=None, guidance_scale: float = 0.0
  ):
    """The network as an eps_fn(x_t, t) for the bound and the ODE likelihood,
    whatever it predicts (`diffusion.as_eps_fn`; undefined at a
    zero-terminal-SNR level for x0 and v, where the samplers use
    `guided_model_fn` and `diffusion.eps_and_x0` instead).

    With labels and guidance_scale w != 0: the classifier-free guided
    (1 + w) eps(x_t, t, c) - w eps(x_t, t, null) (`diffusion.guided_eps_fn`).
    """
    as_eps = lambda fn: diffusion.as_eps_fn(fn, self.schedule, self.prediction)
    cond = as_eps(self.model_fn(params, train, dropout_key, labels))
    if labels is None or (isinstance(guidance_scale, (int, float)) and guidance_scale == 0):
      return cond
    uncond = as_eps(self.model_fn(params, train, dropout_key, None))
    return diffusion.guided_eps_fn(cond_fn=cond, uncond_fn=uncond, guidance_scale=guidance_scale)

  def loss(self, params, batch, key, train: bool = True):
    loss_key, dropout_key, drop_label_key = jax.random.split(key, 3)
    labels = None
    if self.num_classes:
      if "label" not in batch:
        raise ValueError("a class-conditional model needs labelled data (batches without 'label')")
      drop = jax.random.bernoulli(drop_label_key, self.cond_drop_prob, batch["label"].shape)
      labels = jnp.where(drop, self.num_classes, batch["label"])
    model_fn = self.model_fn(params, train, dropout_key if train else None, labels)
    losses = diffusion.simple_loss(loss_key, model_fn, self.schedule, batch["x"], self.prediction)
    loss = _mean(losses, batch.get("mask"))
    return loss, {"loss": loss}

  def sample(
    self,
    params,
    key,
    num_samples: int,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    labels=None,
    guidance_scale: float = 0.0,
    **options,
  ) -> Array:
    """Draws num_samples examples with the sampler registered as `sampler`
    in `diffusion.SAMPLERS` (which holds each one's default step count), or with a process
    sampler on the schedule's process view.

    ddpm: ancestral, all T steps (num_steps is ignored); ddim: num_steps
    (default T) DDIM steps with `eta`; respaced: ancestral on num_steps
    (default T) respaced timesteps; dpm++2m: DPM-Solver++(2M), num_steps
    (default 20) network calls; heun: EDM's Heun sampler, num_steps
    (default 18) sigmas snapped to the T levels, 2 num_steps - 1 calls, stochastic with
    s_churn > 0.
    The process samplers (`diffusion.solvers.PROCESS_SAMPLERS`) run on `process_view` at real
    t, nothing snapped: euler, euler_maruyama by name, and every one as "process_<name>"
    (process_heun: EDM's Heun at real t; process_ddim, process_dpm++2m on real grids), num_steps
    (default the registry's) steps from t = T - 1 to the data on EDM's grid in sigma / alpha
    ("karras"; uniform in t where alphas_cumprod[T-1] = 0), num_steps free of T.
    options: the samplers' own (config.sample.options: eta, variance, s_churn,
    ...); None, or one another sampler takes, leaves the sampler's default.
    variance defaults to the model's (config.diffusion.variance).

    labels: (num_samples,) int classes for a conditional model (None: the
    null class); guidance_scale: w of classifier-free guidance (every
    sampler; w != 0 doubles the network calls). The samplers read the
    network's output as `self.prediction` (`diffusion.eps_and_x0`), so a
    v-predictor samples a zero-terminal-SNR schedule exactly.
    """
    shape = (num_samples,) + tuple(self.example_shape)
    model_fn = self.guided_model_fn(params, labels, guidance_scale)
    name = solvers.process_sampler_name(sampler, own=diffusion.SAMPLERS)
    if name is not None:
      return process_model.sample_on_process(
        name,
        model_fn=model_fn,
        process=self.process_view,
        key=key,
        shape=shape,
        num_steps=num_steps,
        prediction=self.prediction,
        clip=self.clip,
        spacing=process_model.default_spacing(self.process_view),
        options=options,
      )
    return diffusion.run_sampler(
      sampler,
      key,
      model_fn,
      self.schedule,
      shape,
      num_steps=num_steps,
      clip=self.clip,
      prediction=self.prediction,
      **self._sampler_options(options),
    )

  def _sampler_options(self, options) -> dict:
    """options with variance, where not given, the model's."""
    if options.get("variance") is None:
      options = {**options, "variance": self.variance}
    return options

  def evaluate(self, params, batch, key, ode_steps: int = 0) -> dict[str, Array]:
    """Per-example denoising loss and, for 8-bit images, the bound in bits/dim
    and (ode_steps > 0) the probability-flow ODE's bits/dim beside it."""
    x = batch["x"]
    simple_key, vlb_key, ode_key = jax.random.split(key, 3)
    out = {
      "loss": diffusion.simple_loss(
        simple_key, self.model_fn(params), self.schedule, x, self.prediction
      )
    }
    if len(self.example_shape) == 3:
      out["bits_per_dim"] = diffusion.vlb_bits_per_dim(
        vlb_key,
        self.model_fn(params),
        self.schedule,
        x,
        self.variance,
        clip=False,
        prediction=self.prediction,
      )
      if ode_steps:
        # The raw output with its prediction type: the ODE takes x0 from it
        # without dividing by sqrt(ac_t) (zero terminal SNR, v-prediction).
        out["ode_bits_per_dim"] = diffusion.ode_bits_per_dim(
          ode_key,
          self.model_fn(params),
          self.schedule,
          x,
          self._ode_steps(ode_steps),
          prediction=self.prediction,
        )
    return out

  def describe_sample(
    self,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    guidance_scale: float = 0.0,
    **options,
  ) -> dict:
    """What `sample` runs with these arguments (`diffusion.describe_sampler`):
    the sampler, the steps and network calls per sample that actually run,
    and only the options that apply to it, given or default (variance: ddpm and
    respaced; eta: ddim; s_churn, s_tmin, s_tmax, s_noise, rho: heun). guidance_scale w != 0 (sampling with labels) is
    recorded and doubles the calls. A process sampler: `process_model.describe_on_process`
    (the process, its grid's spacing)."""
    name = solvers.process_sampler_name(sampler, own=diffusion.SAMPLERS)
    if name is not None:
      return process_model.describe_on_process(
        name,
        process=self.process_view,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        prediction=self.prediction,
        spacing=process_model.default_spacing(self.process_view),
        options=options,
        requested=sampler,
      )
    return diffusion.describe_sampler(
      sampler,
      num_steps,
      self.schedule.num_timesteps,
      guidance_scale,
      **self._sampler_options(options),
    )

  def _ode_steps(self, ode_steps: int) -> int:
    """The ODE's grid has at most T levels, so at most T - 1 steps."""
    return min(ode_steps, self.schedule.num_timesteps - 1)

  def describe_evaluate(self, ode_steps: int = 0) -> dict[str, str]:
    """How each figure of `evaluate` is computed."""
    out = {
      "loss": "L_simple: mean over dimensions of (eps - eps_model(x_t, t))^2, one t ~ U{0..T-1} "
      "and one eps per example"
    }
    if len(self.example_shape) == 3:
      out["bits_per_dim"] = (
        f"the full variational bound (Ho et al. 2020, Table 2): KL of the prior plus all "
        f"T={self.schedule.num_timesteps} terms, each at one x_t ~ q(x_t | x_0), the t=0 term a "
        f"discretized Gaussian on the 8-bit grid, reverse variance '{self.variance}'; "
        f"divided by D ln 2"
      )
      if ode_steps:
        out["ode_bits_per_dim"] = (
          f"the exact likelihood of the probability-flow ODE (diffusion.ode_bits_per_dim): data "
          f"dequantized uniformly within each 8-bit bin (one draw), "
          f"{self._ode_steps(ode_steps)} second-order steps uniform in log-SNR (Heun in "
          f"x_t / sqrt(1 - ac) against sqrt(SNR) where SNR < 1, in x_t / sqrt(ac) against "
          f"sigma where SNR >= 1), Hutchinson's trace with one Rademacher probe; "
          f"-(log p - D log 127.5) / (D ln 2)"
        )
    return out


def diffusion_config(
  num_timesteps: int = 1000,
  beta_schedule: str = "linear",
  beta_start: float | None = None,
  beta_end: float | None = None,
  variance: str = "small",
  clip: bool = True,
  prediction: str = "eps",
  zero_terminal_snr: bool = False,
):
  """The `config.diffusion` section of a diffusion experiment (DDPM defaults).

  beta_schedule: "linear" (`diffusion.linear_betas`) or "cosine"
  (`diffusion.cosine_betas`, Nichol & Dhariwal 2021). beta_start / beta_end
  apply to "linear" only; None (the default) takes improved-diffusion's
  scaling 1e-4 * 1000 / T and 0.02 * 1000 / T (capped at 0.999), which is
  DDPM's (1e-4, 0.02) at T = 1000 and keeps the last level near pure noise
  at any T.
  zero_terminal_snr: rescale the betas so that alphas_cumprod[T-1] = 0
  (`diffusion.rescale_zero_terminal_snr`, Lin et al. 2024); it needs
  prediction "v" or "x0" (eps-prediction is undefined at SNR 0).
  prediction (eps | x0 | v) is the network's target, trained with its loss
  (`diffusion.simple_loss`) and used by every sampler:
  config.diffusion.prediction = "v" (on the command line: --config.diffusion.prediction=v).
  """
  return ml_collections.ConfigDict(
    dict(
      num_timesteps=num_timesteps,
      beta_schedule=beta_schedule,
      # placeholders: None unless set, still typed for --config overrides.
      beta_start=ml_collections.config_dict.placeholder(float)
      if beta_start is None
      else beta_start,
      beta_end=ml_collections.config_dict.placeholder(float) if beta_end is None else beta_end,
      variance=variance,
      clip=clip,
      prediction=prediction,
      zero_terminal_snr=zero_terminal_snr,
      # config.diffusion.process and the continuous-time fields (models.process_model).
      **process_model.process_fields(),
    )
  )


def check_config(config) -> None:
  """Checks what a diffusion experiment adds to base_config(), raising ConfigError naming the
  field (configs.validate calls it, before anything is written): config.model (gen_jax's U-Net,
  configs.unet_config; or the MLP denoiser's width and num_blocks; num_classes and
  cond_drop_prob), config.diffusion (`check_diffusion_section`), and config.sample against T:
  a registered sampler whose steps, given or its default, are at most T; or a process sampler
  (`solvers.sampler_names(own=SAMPLERS)`: euler, euler_maruyama, process_<name>), whose real-t
  grid takes any number of steps."""
  from gen_jax.diffusion import samplers

  model = config.get("model", {})
  _common.check_unet_section(model)
  _common.check_integers(model, ("width",))
  _common.check_integers(model, ("num_blocks",), low=0)
  _common.check_integers(model, ("num_classes",), low=0, want="an integer >= 0 (0: unconditional)")
  if "cond_drop_prob" in model:
    configs.check_real(model, "cond_drop_prob", 0.0, 1.0, open_high=True, prefix="model.")
  check_diffusion_section(config.diffusion)
  sample, num_timesteps = config.sample, config.diffusion.num_timesteps
  try:
    if solvers.process_sampler_name(sample.sampler, own=samplers.SAMPLERS) is not None:
      return
  except ValueError:
    configs.fail(
      "sample.sampler", f"one of {solvers.sampler_names(own=samplers.SAMPLERS)}", sample.sampler
    )
  spec, steps = samplers.SAMPLERS[sample.sampler], sample.num_steps
  if steps is not None and steps > num_timesteps:
    configs.fail(
      "sample.num_steps",
      f"at most config.diffusion.num_timesteps={num_timesteps} (or None for the sampler's default)",
      steps,
    )
  if steps is None and spec.takes_num_steps and (spec.default_steps or 0) > num_timesteps:
    configs.fail(
      "sample.num_steps",
      f"set to at most config.diffusion.num_timesteps={num_timesteps}: sampler "
      f"{sample.sampler!r} runs {spec.default_steps} steps by default",
      steps,
    )


def check_diffusion_section(section) -> None:
  """Checks a `config.diffusion` section (`diffusion_config`), raising ConfigError naming the
  field: T >= 2 (one level cannot be both the data's, for the decoder, and the prior's
  N(0, I)), a schedule whose betas satisfy 0 < beta_start <= beta_end < 1 (the defaults
  resolved at T), a variance and a prediction the library has, zero terminal SNR only for a
  v- or x0-predictor."""
  num_timesteps = section.num_timesteps
  if not checks.is_integer(num_timesteps) or num_timesteps < 2:
    configs.fail("diffusion.num_timesteps", "an integer >= 2", num_timesteps)
  if section.beta_schedule not in ("linear", "cosine"):
    configs.fail("diffusion.beta_schedule", "'linear' or 'cosine'", section.beta_schedule)
  beta_start, beta_end = section.get("beta_start"), section.get("beta_end")
  if section.beta_schedule == "linear":
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
      if value is not None:
        configs.check_real(section, name, 0.0, 1.0, open_high=True, prefix="diffusion.")
    betas = diffusion.linear_betas(num_timesteps, beta_start, beta_end)
    if beta_start is None and betas[0] > betas[-1]:
      configs.fail(
        "diffusion.beta_end", f">= beta_start's default {betas[0]:g} at this T", beta_end
      )
    if not 0 < betas[0] <= betas[-1]:
      default = " (its default at this T)" if beta_end is None else ""
      configs.fail(
        "diffusion.beta_start",
        f"in (0, config.diffusion.beta_end={betas[-1]:g}{default}]",
        beta_start,
      )
  else:
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
      if value is not None:
        configs.fail(f"diffusion.{name}", "None with beta_schedule 'cosine' (linear only)", value)
  if not isinstance(section.zero_terminal_snr, bool):
    configs.fail("diffusion.zero_terminal_snr", "True or False", section.zero_terminal_snr)
  prediction = section.get("prediction", "eps")
  if section.zero_terminal_snr and prediction == "eps":
    configs.fail(
      "diffusion.prediction",
      "'v' or 'x0' with config.diffusion.zero_terminal_snr=True (an eps-predictor cannot give x0 "
      "where alphas_cumprod is 0)",
      prediction,
    )
  if section.variance not in diffusion.VARIANCES:
    configs.fail("diffusion.variance", f"one of {diffusion.VARIANCES}", section.variance)
  if prediction not in diffusion.PREDICTIONS:
    configs.fail("diffusion.prediction", f"one of {diffusion.PREDICTIONS}", prediction)
  if not isinstance(section.clip, bool):
    configs.fail("diffusion.clip", "True or False", section.clip)


def diffusion_betas(diffusion_cfg):
  """The float64 betas that a `config.diffusion` section describes; ConfigError naming the
  field (`check_diffusion_section`) if it describes none."""
  check_diffusion_section(diffusion_cfg)
  num_timesteps = diffusion_cfg.num_timesteps
  if diffusion_cfg.beta_schedule == "linear":
    betas = diffusion.linear_betas(
      num_timesteps, diffusion_cfg.get("beta_start"), diffusion_cfg.get("beta_end")
    )
  else:
    betas = diffusion.cosine_betas(num_timesteps)
  if diffusion_cfg.get("zero_terminal_snr", False):
    betas = diffusion.rescale_zero_terminal_snr(betas)
  return betas


def make_diffusion_model(
  diffusion_cfg, net: nn.Module, example_shape, num_classes: int = 0, cond_drop_prob: float = 0.0
) -> "DiffusionModel | process_model.ProcessDiffusionModel":
  """A DiffusionModel from a `config.diffusion` section and a network.

  num_classes (config.model.num_classes) > 0 makes it class-conditional, with
  labels dropped to the null class with cond_drop_prob
  (config.model.cond_drop_prob); the network must then take labels. The
  section is checked by `diffusion_betas`, the model section by `check_config`.
  A continuous config.diffusion.process hands over to `process_model.make_process_model`.
  """
  if diffusion_cfg.get("process", "discrete") != "discrete":
    return process_model.make_process_model(
      diffusion_cfg, net, example_shape, num_classes=num_classes, cond_drop_prob=cond_drop_prob
    )
  return DiffusionModel(
    net=net,
    schedule=diffusion.make_schedule(diffusion_betas(diffusion_cfg)),
    example_shape=tuple(example_shape),
    variance=diffusion_cfg.variance,
    clip=diffusion_cfg.clip,
    prediction=diffusion_cfg.get("prediction", "eps"),
    num_classes=num_classes,
    cond_drop_prob=cond_drop_prob,
  )


def make_unet_diffusion(config, example_shape) -> DiffusionModel:
  """The U-Net DDPM of the image experiments (ddpm_digits, ddpm_mnist, ddpm_cifar), from a whole
  config: `config.model` (the U-Net, its compute dtype, remat, num_classes, cond_drop_prob) and
  `config.diffusion` (see `diffusion_config`)."""
  m = config.model
  if config.get("pretrained"):
    return make_pretrained_diffusion(config, example_shape)
  net = nets.unet_from_config(m, m.compute_dtype, m.remat)
  return make_diffusion_model(config.diffusion, net, example_shape, m.num_classes, m.cond_drop_prob)


def make_mlp_diffusion(config, example_shape) -> DiffusionModel:
  """The MLP DDPM of ddpm_toy2d (points, e.g. (2,)), from a whole config: `config.model`
  (width, num_blocks of `nets.MLPDenoiser`) and `config.diffusion` (see `diffusion_config`)."""
  net = nets.MLPDenoiser(width=config.model.width, num_blocks=config.model.num_blocks)
  return make_diffusion_model(config.diffusion, net, example_shape)


def make_pretrained_diffusion(config, example_shape) -> DiffusionModel:
  """The diffusion model around the diffusers UNet2DModel of folder `config.pretrained`
  (gen_jax.pretrained; its weights are read where a run starts, not here) and
  `config.diffusion`. The folder decides the architecture, so config.model's
  network fields are not used; its num_classes must be 0 or the folder's."""
  from gen_jax import pretrained  # only for runs that start from a diffusers folder

  path, m = config.pretrained, config.model
  spec, null_label = pretrained.load_spec(path)
  height, width = spec.sample_size
  if tuple(example_shape) != (height, width, spec.in_channels):
    raise ConfigError(
      f"config.pretrained={path} is a U-Net for {height}x{width}x{spec.in_channels} images, "
      f"but the data's examples have shape {tuple(example_shape)}"
    )
  for field, allowed in (("compute_dtype", "float32"), ("remat", False)):
    if m.get(field, allowed) != allowed:
      raise ConfigError(
        f"config.model.{field}={m[field]!r} is not supported with config.pretrained (only "
        f"{allowed!r})"
      )
  net = diffusers_unet.DiffusersUNet(spec, null_label)
  num_classes = (spec.num_class_embeds or 0) - (null_label is not None)
  if m.get("num_classes", 0) not in (0, num_classes):
    raise ConfigError(
      f"config.model.num_classes={m.num_classes} but config.pretrained={path} has "
      f"{num_classes} classes"
    )
  cond_drop_prob = m.get("cond_drop_prob", 0.0) if num_classes else 0.0
  if num_classes and null_label is None and cond_drop_prob:
    raise ConfigError(
      f"config.model.cond_drop_prob={cond_drop_prob}: config.pretrained={path} has no null "
      "class to drop labels to; set it to 0"
    )
  return make_diffusion_model(config.diffusion, net, example_shape, num_classes, cond_drop_prob)
