"""The variational diffusion model (Kingma et al. 2021) behind the model interface
(gen_jax.models): VDMModel and its builders; the mathematics is gen_jax.diffusion.vdm."""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gen_jax import checks, configs, diffusion, nets
from gen_jax.configs import ConfigError
from gen_jax.diffusion import process as process_lib
from gen_jax.diffusion import solvers
from gen_jax.models import _common, process_model
from gen_jax.models._common import _mean

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VDMModel:
  """A variational diffusion model trained on its bound (`diffusion.vdm`), in bits per dimension.

  Attributes:
    net: the eps-network, net.apply(params, z_t, t, train=..., rngs=...), t its noise-level
      input: 1000 (gamma_t - gamma_min) / (gamma_max - gamma_min) (the DDPM U-Net's time scale;
      vdm feeds the same normalised gamma).
    schedule: gamma(t) = -log SNR(t), fixed or learned (`diffusion.vdm.LogSNRSchedule`).
    example_shape: one example's shape.
    num_timesteps: 0 for the continuous-time loss L_inf, T > 0 for the T-step bound L_T.
    antithetic: vdm's low-discrepancy times over the batch.
    interior: a learned schedule's interior is trained on "variance" (the paper's choice: the
      gradient of E[L_diffusion^2], continuous time only) or on the "bound"; its endpoints
      always on the bound.
    decoder: "discretized" (8-bit data, a bound on -log P(x) in bits/dim) or "gaussian"
      (continuous data, a density bound in nats/dim).
    eval_time_samples: K stratified times per example for the diffusion term in `evaluate`.
    sample_steps: the ancestral sampler's default number of steps.
  """

  net: nn.Module
  schedule: Any  # diffusion.vdm.LogSNRSchedule
  example_shape: tuple[int, ...]
  num_timesteps: int = 0
  antithetic: bool = True
  interior: str = "variance"
  decoder: str = "discretized"
  eval_time_samples: int = 100
  sample_steps: int = 1000

  def init(self, key) -> Any:
    net_key, gamma_key = jax.random.split(key)
    x = jnp.zeros((1,) + tuple(self.example_shape), jnp.float32)
    params = {"net": self.net.init(net_key, x, jnp.zeros((1,), jnp.float32), train=False)}
    gamma = self.schedule.init(gamma_key)
    if gamma:  # fixed schedules have no parameters (and no empty entry to checkpoint)
      params["gamma"] = gamma
    return params

  def eps_fn(self, params, train: bool = False, dropout_key=None):
    """The network as eps_fn(z_t, gamma_t) -> eps_hat."""
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    low, high = self.schedule.gamma_min, self.schedule.gamma_max
    return lambda z, gamma: self.net.apply(
      params["net"], z, 1000.0 * (gamma - low) / (high - low), train=train, rngs=rngs
    )

  def _terms(self, params, x, key, train: bool, time_samples: int):
    terms_key, dropout_key = jax.random.split(key)
    return diffusion.vdm.vdm_terms(
      terms_key,
      self.eps_fn(params, train, dropout_key if train else None),
      self.schedule,
      params.get("gamma", {}),
      x,
      num_steps=self.num_timesteps,
      time_samples=time_samples,
      antithetic=self.antithetic,
      decoder=self.decoder,
      variance_tap=train and self.interior == "variance" and self.schedule.kind == "learned",
    )

  def _per_dim(self, nats):
    """nats -> bits/dim (discretized decoder) or nats/dim (gaussian)."""
    num_dims = math.prod(self.example_shape)
    if self.decoder == "discretized":
      return diffusion.vdm.bits_per_dim(nats, num_dims)
    return nats / num_dims

  def loss(self, params, batch, key, train: bool = True):
    """The bound per dimension (vdm's training loss: bits/dim), one time per example."""
    terms = self._terms(params, batch["x"], key, train, time_samples=1)
    mask = batch.get("mask")
    loss = self._per_dim(diffusion.vdm.objective(terms, mask))
    gamma_0, gamma_1 = self.schedule.endpoints(params.get("gamma", {}))
    metrics = {
      "loss": loss,
      "diffusion": self._per_dim(_mean(terms.diffusion, mask)),
      "prior": self._per_dim(_mean(terms.prior, mask)),
      "reconstruction": self._per_dim(_mean(terms.reconstruction, mask)),
      "gamma_0": gamma_0,
      "gamma_1": gamma_1,
    }
    return loss, metrics

  def process_view(self, params) -> process_lib.GaussianProcess:
    """The schedule as a process (`diffusion.log_snr_process`): alpha^2 = sigmoid(-gamma(t)),
    sigma^2 = sigmoid(gamma(t)) on t in [0, 1], vdm's alpha_sigma; a learned schedule's
    parameters are its leaves."""
    return process_lib.log_snr_process(
      _AnyShapeGamma(self.schedule), params.get("gamma", {}), name="vdm"
    )

  def model_fn(self, params):
    """The eps-network at the process's time: model_fn(z_t, t) = eps_hat(z_t, gamma(t))."""
    eps_fn = self.eps_fn(params)
    gamma = params.get("gamma", {})
    return lambda z, t: eps_fn(z, self.schedule(gamma, t))

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
    """Draws num_samples examples.

    sampler "ddpm": ancestral sampling on the learned (or fixed) schedule with num_steps steps
    (default sample_steps), `diffusion.vdm.sample`, then its decoder. Any process sampler
    (`diffusion.solvers.PROCESS_SAMPLERS`: euler, heun, ddim, dpm++2m, euler_maruyama, or
    "process_<name>"): on `process_view` from t = 1 to the data, num_steps steps (default the
    registry's) on EDM's grid in sigma / alpha, options its own (eta, s_churn, ...; others and
    None ignored); the last step returns x0_hat at t = 0, which the "discretized" decoder rounds
    to the nearest of the 256 levels (as vdm.decode's most probable level), "gaussian" keeps.
    With sampler ddim and eta = 1 on the uniform grid it is the ancestral sampler (the same
    step; tests/models/test_vdm_model.py)."""
    if labels is not None or guidance_scale:
      raise ValueError("a VDM is unconditional: no labels or guidance_scale")
    name = solvers.process_sampler_name(sampler, own=("ddpm",))
    shape = (num_samples,) + tuple(self.example_shape)
    if name is None:
      return diffusion.vdm.sample(
        key,
        self.eps_fn(params),
        self.schedule,
        params.get("gamma", {}),
        shape,
        num_steps=num_steps or self.sample_steps,
        decoder=self.decoder,
      )
    x0 = process_model.sample_on_process(
      name,
      model_fn=self.model_fn(params),
      process=self.process_view(params),
      key=key,
      shape=shape,
      num_steps=num_steps,
      prediction="eps",
      clip=False,  # as vdm.sample: the decoder maps to the data
      # sigma / alpha = exp(gamma / 2) is finite on [0, 1]; a learned gamma is traced under jit,
      # where default_spacing could not read it.
      spacing="karras",
      options=options,
    )
    if self.decoder == "gaussian":
      return x0
    levels = diffusion.vdm.NUM_LEVELS - 1
    return jnp.clip(jnp.round((x0 + 1.0) * (levels / 2)), 0, levels) / (levels / 2) - 1.0

  def evaluate(self, params, batch, key, **unused) -> dict[str, Array]:
    """The bound per example with eval_time_samples stratified times: bits_per_dim (or
    nats_per_dim) and its three terms in the same unit."""
    del unused  # ode_steps: the DDPM's probability-flow likelihood
    terms = self._terms(params, batch["x"], key, False, self.eval_time_samples)
    name = "bits_per_dim" if self.decoder == "discretized" else "nats_per_dim"
    return {
      name: self._per_dim(terms.total),
      "diffusion": self._per_dim(terms.diffusion),
      "prior": self._per_dim(terms.prior),
      "reconstruction": self._per_dim(terms.reconstruction),
    }

  def describe_sample(
    self,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    guidance_scale: float = 0.0,
    **options,
  ) -> dict:
    name = solvers.process_sampler_name(sampler, own=("ddpm",))
    if name is not None:
      # Only the process's name and range are read: no gamma parameters needed.
      return process_model.describe_on_process(
        name,
        process=process_lib.log_snr_process(_AnyShapeGamma(self.schedule), {}, name="vdm"),
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        prediction="eps",
        spacing="karras",
        options=options,
        requested=sampler,
      )
    steps = num_steps or self.sample_steps
    return {
      "sampler": f"{sampler}: ancestral p(z_s | z_t) on the model's gamma at t = i / {steps}",
      "num_steps": steps,
      "network_calls": steps,
    }

  def describe_evaluate(self, **unused) -> dict[str, str]:
    del unused
    unit = "bits/dim" if self.decoder == "discretized" else "nats/dim"
    diffusion_term = (
      "L_inf = 1/2 gamma'(t) ||eps - eps_hat||^2 (continuous time)"
      if not self.num_timesteps
      else f"L_T, T={self.num_timesteps} steps: T/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2"
    )
    decoder = (
      "-log p(x | z_0), the 256-level categorical proportional to q(z_0 | x), one z_0"
      if self.decoder == "discretized"
      else "-log N(x; z_0 / alpha_0, exp(gamma_0)), one z_0"
    )
    name = "bits_per_dim" if self.decoder == "discretized" else "nats_per_dim"
    return {
      name: f"the VDM bound (Kingma et al. 2021) in {unit}: prior + reconstruction + diffusion, "
      f"schedule '{self.schedule.kind}', data on the 8-bit grid as DDPM's bound, no dequantisation",
      "diffusion": f"{diffusion_term}, averaged over {self.eval_time_samples} stratified times "
      f"per example, one eps each; {unit}",
      "prior": f"KL(q(z_1 | x) || N(0, I)), analytic; {unit}",
      "reconstruction": f"{decoder}; {unit}",
    }


@dataclasses.dataclass(frozen=True)
class _AnyShapeGamma:
  """schedule(params, t) for t of any shape, a scalar included (the samplers' grids read
  lambda at scalar ends; the learned schedule's monotone net takes a vector of times). Frozen
  and compared by value, as log_snr_process wants: two views of one schedule share jit caches."""

  schedule: Any

  def __call__(self, params, t):
    t = jnp.asarray(t)
    return self.schedule(params, t.reshape(-1)).reshape(t.shape)


def vdm_config(
  schedule: str = "learned",
  gamma_min: float = -13.3,
  gamma_max: float = 5.0,
  num_timesteps: int = 0,
  interior: str = "variance",
):
  """The `config.vdm` section of a VDM experiment (vdm's CIFAR-10 defaults for gamma's range).

  schedule: "linear" | "cosine" | "learned" (monotone network, endpoints trained on the bound,
  interior on `interior`: "variance" or "bound"); num_timesteps 0: continuous time.
  """
  return ml_collections.ConfigDict(
    dict(
      schedule=schedule,
      gamma_min=gamma_min,
      gamma_max=gamma_max,
      num_timesteps=num_timesteps,
      interior=interior,
      num_features=1024,  # the learned schedule's hidden width (vdm's)
      antithetic=True,
      decoder="discretized",
      eval_time_samples=100,
      sample_steps=1000,
    )
  )


def check_config(config) -> None:
  """Checks what a VDM experiment adds to base_config(), raising ConfigError naming the field
  (configs.validate calls it): config.model (the U-Net, configs.unet_config), config.vdm
  (`vdm_config`), and config.sample: ancestral ("ddpm"), which takes no options, or a process
  sampler (`VDMModel.sample`), whose options configs.validate checks."""
  _common.check_unet_section(config.model)
  section = config.vdm
  if section.schedule not in diffusion.vdm.SCHEDULES:
    configs.fail("vdm.schedule", f"one of {diffusion.vdm.SCHEDULES}", section.schedule)
  for name in ("gamma_min", "gamma_max"):
    configs.check_real(section, name, prefix="vdm.")
  if not section.gamma_min < section.gamma_max:
    configs.fail(
      "vdm.gamma_max", f"greater than config.vdm.gamma_min={section.gamma_min}", section.gamma_max
    )
  if not checks.is_integer(section.num_timesteps) or section.num_timesteps < 0:
    configs.fail(
      "vdm.num_timesteps", "0 (continuous time) or a positive integer", section.num_timesteps
    )
  if section.interior not in ("variance", "bound"):
    configs.fail("vdm.interior", "'variance' or 'bound'", section.interior)
  if section.schedule == "learned" and section.interior == "variance" and section.num_timesteps:
    configs.fail(
      "vdm.interior",
      "'bound' with config.vdm.num_timesteps > 0 (the T-step bound depends on the schedule's "
      "interior; only the continuous one leaves it free for the variance)",
      section.interior,
    )
  if section.decoder not in diffusion.vdm.DECODERS:
    configs.fail("vdm.decoder", f"one of {diffusion.vdm.DECODERS}", section.decoder)
  if not isinstance(section.antithetic, bool):
    configs.fail("vdm.antithetic", "True or False", section.antithetic)
  for name in ("num_features", "eval_time_samples", "sample_steps"):
    if not checks.is_integer(section[name]) or section[name] <= 0:
      configs.fail(f"vdm.{name}", "a positive integer", section[name])
  try:
    ancestral = solvers.process_sampler_name(config.sample.sampler, own=("ddpm",)) is None
  except ValueError:
    configs.fail(
      "sample.sampler",
      f"one of {solvers.sampler_names(own=('ddpm',))} ('ddpm': ancestral on the VDM's own "
      "schedule; the others on its log-SNR process)",
      config.sample.sampler,
    )
  if not ancestral:  # the process sampler's options: configs._check_sample_options
    return
  for name, value in config.sample.get("options", {}).items():
    if value is not None:
      configs.fail(
        f"sample.options.{name}", "None: a VDM's ancestral sampler takes no options", value
      )


def make_unet_vdm(config, example_shape) -> VDMModel:
  """The U-Net VDM of vdm_digits and vdm_cifar: `config.model` (the U-Net) and `config.vdm`
  (`vdm_config`), as `check_config` checked them."""
  m, v = config.model, config.vdm
  if config.get("pretrained"):
    raise ConfigError(
      f"config.pretrained={config.pretrained}: pretrained diffusers U-Nets start DDPM "
      "experiments; a VDM trains its own network and schedule"
    )
  return VDMModel(
    net=nets.unet_from_config(m, m.compute_dtype, m.remat),
    schedule=diffusion.vdm.LogSNRSchedule(
      kind=v.schedule, gamma_min=v.gamma_min, gamma_max=v.gamma_max, num_features=v.num_features
    ),
    example_shape=tuple(example_shape),
    num_timesteps=v.num_timesteps,
    antithetic=v.antithetic,
    interior=v.interior,
    decoder=v.decoder,
    eval_time_samples=v.eval_time_samples,
    sample_steps=v.sample_steps,
  )
