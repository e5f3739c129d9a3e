"""Generative models = a network + the math core, behind one small interface.

The training loop (gen_jax.train) sees every experiment through this
interface and nothing else:

  init(key) -> params
  loss(params, batch, key, train) -> (scalar loss, metrics dict of scalars)
  sample(params, key, num_samples, **sampler) -> samples in data space
  evaluate(params, batch, key, **options) -> dict of per-example arrays (B,)
  describe_evaluate(**options) -> {name: how `evaluate` computes it}, for eval.json
  describe_sample(**sampler) -> how `sample` draws with these arguments

Batches are dicts {'x': (B, *example_shape) float32} (images in [-1, 1],
NHWC) with an optional boolean 'mask' in evaluation. The classes are frozen
dataclasses, so jitted functions can close over them.

Longer than the house's ~400 lines on purpose: the interface above is read
here, once, with its implementations (DiffusionModel, VAEModel, HVAEModel)
and the config builders that make them. HVAEModel was added beside VDM's
model in parallel work: this is the point to split the file into one module
per family.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gen_jax import (
  configs,
  decoders,
  diffusers_unet,
  diffusion,
  hvae,
  hvae_nets,
  nets,
  vae,
)
from gen_jax.configs import ConfigError

Array = jax.Array


def _mean(values, mask=None):
  if mask is None:
    return jnp.mean(values)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1)


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
    eta: float = 0.0,
    s_churn: float = 0.0,
    labels=None,
    guidance_scale: float = 0.0,
  ) -> Array:
    """Draws num_samples examples with the sampler registered as `sampler`
    in `diffusion.SAMPLERS` (which holds each one's default step count).

    ddpm: ancestral, all T steps (num_steps is ignored); ddim: num_steps
    (default T) DDIM steps with `eta`; respaced: ancestral on num_steps
    (default T) respaced timesteps; dpm++2m: DPM-Solver++(2M), num_steps
    (default 20) network calls; heun: EDM's Heun sampler, num_steps
    (default 18) sigmas, 2 num_steps - 1 calls, stochastic with s_churn > 0.
    Options that do not apply to the sampler (eta, s_churn) are ignored.

    labels: (num_samples,) int classes for a conditional model (None: the
    null class); guidance_scale: w of classifier-free guidance (every
    sampler; w != 0 doubles the network calls). The samplers read the
    network's output as `self.prediction` (`diffusion.eps_and_x0`), so a
    v-predictor samples a zero-terminal-SNR schedule exactly.
    """
    shape = (num_samples,) + tuple(self.example_shape)
    return diffusion.run_sampler(
      sampler,
      key,
      self.guided_model_fn(params, labels, guidance_scale),
      self.schedule,
      shape,
      num_steps,
      self.clip,
      prediction=self.prediction,
      variance=self.variance,
      eta=eta,
      s_churn=s_churn,
    )

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
    eta: float = 0.0,
    s_churn: float = 0.0,
    guidance_scale: float = 0.0,
  ) -> dict:
    """What `sample` runs with these arguments (`diffusion.describe_sampler`):
    the sampler, the steps and network calls per sample that actually run,
    and only the options that apply to it (variance: ddpm and respaced; eta:
    ddim; s_churn: heun). guidance_scale w != 0 (sampling with labels) is
    recorded and doubles the calls."""
    return diffusion.describe_sampler(
      sampler,
      num_steps,
      self.schedule.num_timesteps,
      guidance_scale,
      variance=self.variance,
      eta=eta,
      s_churn=s_churn,
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


@dataclasses.dataclass(frozen=True)
class VAEModel:
  """A VAE trained by maximising the ELBO.

  Attributes:
    encoder: Flax module x -> (mean, logvar), each (B, latent_dim).
    decoder: Flax module z -> raw outputs (B, *example_shape, P), read by gen_jax.decoders as
      the likelihood's parameters (P = decoders.num_outputs(likelihood, num_mixtures)).
    example_shape: shape of one data example.
    latent_dim: size of z.
    likelihood: 'logistic_mixture' or 'discretized_gaussian' (8-bit data in [-1, 1], bits/dim)
      or 'bernoulli' (data mapped to probabilities (x + 1) / 2 and, when `binarize`, sampled to
      {0, 1} anew for every batch: dynamic binarization).
    num_mixtures: K of 'logistic_mixture'.
    iwae_samples: K for the importance-weighted bound in `evaluate`.
  """

  encoder: nn.Module
  decoder: nn.Module
  example_shape: tuple[int, ...]
  latent_dim: int
  likelihood: str = "bernoulli"
  binarize: bool = True
  iwae_samples: int = 100
  iwae_chunk: int | None = None
  num_mixtures: int = 1

  def __post_init__(self):
    decoders.check_likelihood(self.likelihood, self.num_mixtures)

  def init(self, key) -> Any:
    enc_key, dec_key = jax.random.split(key)
    x = jnp.zeros((1,) + tuple(self.example_shape), jnp.float32)
    z = jnp.zeros((1, self.latent_dim), jnp.float32)
    return {"encoder": self.encoder.init(enc_key, x), "decoder": self.decoder.init(dec_key, z)}

  def _targets(self, x, key):
    return _likelihood_targets(self.likelihood, self.binarize, x, key)

  def _log_likelihood_fn(self, params):
    def log_likelihood(x, z):
      logp = decoders.log_prob(self.likelihood, x, self.decoder.apply(params["decoder"], z))
      return jnp.sum(logp.reshape(logp.shape[0], -1), axis=-1)

    return log_likelihood

  def _encode_fn(self, params):
    return lambda x: self.encoder.apply(params["encoder"], x)

  def loss(self, params, batch, key, train: bool = True):
    del train
    binarize_key, elbo_key = jax.random.split(key)
    x = self._targets(batch["x"], binarize_key)
    terms = vae.elbo(elbo_key, x, self._encode_fn(params), self._log_likelihood_fn(params))
    mask = batch.get("mask")
    loss = -_mean(terms.elbo, mask)
    metrics = {
      "loss": loss,
      "elbo": -loss,
      "log_likelihood": _mean(terms.log_likelihood, mask),
      "kl": _mean(terms.kl, mask),
    }
    if self.likelihood != "bernoulli":
      metrics["bits_per_dim"] = loss / (math.prod(self.example_shape) * math.log(2))
    return loss, metrics

  def sample(self, params, key, num_samples: int, **unused) -> Array:
    """z ~ N(0, I), then the decoder's mean in [-1, 1] (`decoders.mean`)."""
    del unused
    z = jax.random.normal(key, (num_samples, self.latent_dim))
    return decoders.mean(self.likelihood, self.decoder.apply(params["decoder"], z))

  def evaluate(self, params, batch, key, **unused) -> dict[str, Array]:
    """Per-example ELBO terms and the IWAE bound (nats; bits/dim on 8-bit data)."""
    del unused  # diffusion-only options (ode_steps)
    binarize_key, elbo_key, iwae_key = jax.random.split(key, 3)
    x = self._targets(batch["x"], binarize_key)
    encode, log_likelihood = self._encode_fn(params), self._log_likelihood_fn(params)
    terms = vae.elbo(elbo_key, x, encode, log_likelihood)
    iwae = vae.iwae_bound(iwae_key, x, encode, log_likelihood, self.iwae_samples, self.iwae_chunk)
    out = {
      "elbo": terms.elbo,
      "log_likelihood": terms.log_likelihood,
      "kl": terms.kl,
      "nll_iwae": -iwae,
    }
    if self.likelihood != "bernoulli":
      out["bits_per_dim"] = -iwae / (math.prod(self.example_shape) * math.log(2))
    return out

  def describe_sample(self, **unused) -> dict:
    """How `sample` draws (it takes no sampler settings)."""
    del unused
    return {"sampler": "z ~ N(0, I), then the decoder's mean", "network_calls": 1}

  def describe_evaluate(self, **unused) -> dict[str, str]:
    """How each figure of `evaluate` is computed."""
    del unused
    data = _describe_data(self.likelihood, self.binarize)
    chunks = f", in chunks of {self.iwae_chunk}" if self.iwae_chunk else ""
    out = {
      "elbo": f"ELBO in nats on {data}: one z ~ q(z|x), analytic KL; "
      f"{decoders.describe(self.likelihood, self.num_mixtures)}",
      "log_likelihood": "the ELBO's reconstruction term log p(x|z), one z ~ q(z|x)",
      "kl": "the ELBO's KL(q(z|x) || N(0, I)), analytic",
      "nll_iwae": f"test negative log-likelihood in nats: -L_K, the importance-weighted bound "
      f"with K={self.iwae_samples} samples per example{chunks}, on {data}",
    }
    if self.likelihood != "bernoulli":
      out["bits_per_dim"] = _BITS_PER_DIM
    return out


_BITS_PER_DIM = (
  "nll_iwae / (D ln 2), D the number of dimensions: -log P(x) of the 8-bit data itself (each "
  "value's bin of width 2/255, the end bins to +-inf), as the DDPM bound's discretized decoder"
)


def _likelihood_targets(likelihood: str, binarize: bool, x, key):
  """What the decoder models: 8-bit data as given, or for 'bernoulli' the pixel probabilities
  (x + 1) / 2, binarized by one Bernoulli draw when `binarize`."""
  if likelihood != "bernoulli":
    return x
  probs = (x + 1.0) / 2.0
  return jax.random.bernoulli(key, probs).astype(x.dtype) if binarize else probs


def _describe_data(likelihood: str, binarize: bool) -> str:
  if likelihood == "bernoulli" and binarize:
    return "dynamically binarized test data (one Bernoulli draw of each image per evaluation)"
  if likelihood == "bernoulli":
    return "the test data's pixel intensities as Bernoulli probabilities"
  return "the 8-bit test data"


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
    )
  )


def diffusion_betas(diffusion_cfg):
  """The float64 betas that a `config.diffusion` section describes (errors name its fields)."""
  num_timesteps = diffusion_cfg.num_timesteps
  if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
    raise ValueError(
      f"config.diffusion.num_timesteps must be an integer >= 2, got {num_timesteps!r}"
    )
  beta_start = diffusion_cfg.get("beta_start")
  beta_end = diffusion_cfg.get("beta_end")
  if diffusion_cfg.beta_schedule == "linear":
    betas = diffusion.linear_betas(num_timesteps, beta_start, beta_end)
    if not (0 < betas[0] and betas[-1] < 1 and betas[0] <= betas[-1]):
      raise ValueError(
        "config.diffusion.beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1, "
        f"got {betas[0]} and {betas[-1]}"
      )
  elif diffusion_cfg.beta_schedule == "cosine":
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
      if value is not None:
        raise ValueError(
          f"config.diffusion.{name} applies to beta_schedule 'linear' only, got {value!r} "
          "with 'cosine'"
        )
    betas = diffusion.cosine_betas(num_timesteps)
  else:
    raise ValueError(
      "config.diffusion.beta_schedule must be 'linear' or "
      f"'cosine', got {diffusion_cfg.beta_schedule!r}"
    )
  if diffusion_cfg.get("zero_terminal_snr", False):
    if diffusion_cfg.get("prediction", "eps") == "eps":
      raise ValueError(
        "config.diffusion.zero_terminal_snr=True needs config.diffusion.prediction 'v' or 'x0': "
        "eps-prediction is undefined at the last level (alphas_cumprod = 0, x0 = (x_t - eps) / 0)"
      )
    betas = diffusion.rescale_zero_terminal_snr(betas)
  return betas


def make_diffusion_model(
  diffusion_cfg, net: nn.Module, example_shape, num_classes: int = 0, cond_drop_prob: float = 0.0
) -> DiffusionModel:
  """A DiffusionModel from a `config.diffusion` section and a network.

  num_classes (config.model.num_classes) > 0 makes it class-conditional, with
  labels dropped to the null class with cond_drop_prob
  (config.model.cond_drop_prob); the network must then take labels.
  """
  betas = diffusion_betas(diffusion_cfg)
  if diffusion_cfg.variance not in diffusion.VARIANCES:
    raise ValueError(
      f"config.diffusion.variance must be one of "
      f"{diffusion.VARIANCES}, got {diffusion_cfg.variance!r}"
    )
  prediction = diffusion_cfg.get("prediction", "eps")
  if prediction not in diffusion.PREDICTIONS:
    raise ValueError(
      f"config.diffusion.prediction must be one of {diffusion.PREDICTIONS}, got {prediction!r}"
    )
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
    raise ValueError(
      f"config.model.num_classes must be an integer >= 0 (0: unconditional), got {num_classes!r}"
    )
  if not 0.0 <= cond_drop_prob < 1.0:
    raise ValueError(f"config.model.cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
  return DiffusionModel(
    net=net,
    schedule=diffusion.make_schedule(betas),
    example_shape=tuple(example_shape),
    variance=diffusion_cfg.variance,
    clip=diffusion_cfg.clip,
    prediction=prediction,
    num_classes=num_classes,
    cond_drop_prob=cond_drop_prob,
  )


def make_mlp_vae(model_config, example_shape) -> VAEModel:
  """The MLP VAE of vae_digits and vae_mnist.

  model_config: hidden (encoder widths; the decoder mirrors them), latent_dim, iwae_samples,
  iwae_chunk, and optionally likelihood ('bernoulli', the default: dynamically binarized
  images; 'logistic_mixture' or 'discretized_gaussian': 8-bit images), num_mixtures and
  binarize (default True).
  """
  m = model_config
  likelihood, num_mixtures = m.get("likelihood", "bernoulli"), m.get("num_mixtures", 1)
  decoders.check_likelihood(likelihood, num_mixtures)
  outputs = decoders.num_outputs(likelihood, num_mixtures)
  return VAEModel(
    encoder=nets.MLPEncoder(hidden=tuple(m.hidden), latent_dim=m.latent_dim),
    decoder=nets.MLPDecoder(
      out_shape=tuple(example_shape) + (outputs,), hidden=tuple(m.hidden)[::-1]
    ),
    example_shape=tuple(example_shape),
    latent_dim=m.latent_dim,
    likelihood=likelihood,
    binarize=m.get("binarize", True),
    iwae_samples=m.iwae_samples,
    iwae_chunk=m.iwae_chunk,
    num_mixtures=num_mixtures,
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


@dataclasses.dataclass(frozen=True)
class HVAEModel:
  """A top-down hierarchical VAE (gen_jax.hvae; networks gen_jax.hvae_nets), trained on its ELBO.

  Attributes:
    encoder: bottom-up network x -> {resolution: features}.
    decoder: top-down network (key, features | None, num_samples) -> (raw outputs, layers).
    example_shape: shape of one image.
    likelihood, num_mixtures, binarize: p(x | z_1), as VAEModel's (gen_jax.decoders).
    kl_warmup_steps: the KL's weight rises linearly from 0 to 1 over these steps (0: always 1).
    free_bits: nats per layer below which a layer's batch-mean KL is not pushed down (0: off).
    iwae_samples, iwae_chunk: K of the importance-weighted bound in `evaluate`, and how many
      top-down passes run at once.
    temperature: the prior's scale factor when sampling (1: the model's own distribution).
  """

  encoder: nn.Module
  decoder: nn.Module
  example_shape: tuple[int, ...]
  likelihood: str = "logistic_mixture"
  num_mixtures: int = 5
  binarize: bool = True
  kl_warmup_steps: int = 0
  free_bits: float = 0.0
  iwae_samples: int = 100
  iwae_chunk: int | None = None
  temperature: float = 1.0
  # train_step passes the step to `loss` (KL warm-up).
  loss_uses_step = True

  def __post_init__(self):
    decoders.check_likelihood(self.likelihood, self.num_mixtures)

  def init(self, key) -> Any:
    enc_key, dec_key, z_key = jax.random.split(key, 3)
    x = jnp.zeros((1,) + tuple(self.example_shape), jnp.float32)
    encoder_params = self.encoder.init(enc_key, x)
    features = self.encoder.apply(encoder_params, x)
    return {"encoder": encoder_params, "decoder": self.decoder.init(dec_key, z_key, features)}

  def _pass(self, params, x, key, features=None):
    """One top-down pass through the posterior: (log p(x | z) (B,), layers)."""
    if features is None:
      features = self.encoder.apply(params["encoder"], x)
    raw, layers = self.decoder.apply(params["decoder"], key, features)
    logp = decoders.log_prob(self.likelihood, x, raw)
    return jnp.sum(logp.reshape(logp.shape[0], -1), axis=-1), layers

  def _bits(self, nats):
    return nats / (math.prod(self.example_shape) * math.log(2))

  def loss(self, params, batch, key, train: bool = True, step=None):
    del train
    binarize_key, pass_key = jax.random.split(key)
    x = _likelihood_targets(self.likelihood, self.binarize, batch["x"], binarize_key)
    terms = hvae.elbo(*self._pass(params, x, pass_key))
    mask = batch.get("mask")
    # step=None (outside training): the objective itself, KL weight 1.
    kl_weight = 1.0 if step is None else hvae.kl_warmup_weight(step, self.kl_warmup_steps)
    loss = hvae.training_loss(terms, kl_weight=kl_weight, free_bits=self.free_bits, mask=mask)
    layer_kl = jnp.mean(terms.kl_per_layer, axis=0)
    metrics = {
      "loss": loss,
      "elbo": _mean(terms.elbo, mask),
      "log_likelihood": _mean(terms.log_likelihood, mask),
      "kl": _mean(terms.kl, mask),
      "kl_weight": kl_weight,
      # layers carrying information (batch-mean KL above 0.01 nats): posterior collapse shows here
      "active_layers": jnp.sum(layer_kl > 0.01),
    }
    if self.likelihood != "bernoulli":
      metrics["bits_per_dim"] = self._bits(-metrics["elbo"])
    return loss, metrics

  def sample(self, params, key, num_samples: int, **unused) -> Array:
    """z_L, ..., z_1 from the top-down prior (scaled by `temperature`), then the decoder's mean."""
    del unused
    raw, _ = self.decoder.apply(params["decoder"], key, None, num_samples, self.temperature)
    return decoders.mean(self.likelihood, raw)

  def evaluate(self, params, batch, key, **unused) -> dict[str, Array]:
    """Per-example ELBO terms and the IWAE bound (nats; bits/dim on 8-bit data)."""
    del unused
    binarize_key, elbo_key, iwae_key = jax.random.split(key, 3)
    x = _likelihood_targets(self.likelihood, self.binarize, batch["x"], binarize_key)
    features = self.encoder.apply(params["encoder"], x)  # once for all K passes
    terms = hvae.elbo(*self._pass(params, x, elbo_key, features))

    def log_weights(pass_key, num_draws):
      # num_draws passes as one: each example repeated in place, (B * n), so that the batch axis
      # keeps its layout over devices (a vmap over draws would merge it with the draw axis).
      repeat = lambda a: jnp.repeat(a, num_draws, axis=0)
      repeated = {r: repeat(f) for r, f in features.items()}
      log_w = hvae.log_importance_weight(*self._pass(params, repeat(x), pass_key, repeated))
      return log_w.reshape(x.shape[0], num_draws).T  # (n, B)

    iwae = hvae.iwae_bound(iwae_key, log_weights, self.iwae_samples, self.iwae_chunk)
    out = {
      "elbo": terms.elbo,
      "log_likelihood": terms.log_likelihood,
      "kl": terms.kl,
      "nll_iwae": -iwae,
    }
    if self.likelihood != "bernoulli":
      out["bits_per_dim"] = self._bits(-iwae)
    return out

  def describe_sample(self, **unused) -> dict:
    del unused
    return {
      "sampler": f"z_L..z_1 from the top-down prior (temperature {self.temperature:g}), then the "
      "decoder's mean",
      "network_calls": 1,
    }

  def describe_evaluate(self, **unused) -> dict[str, str]:
    del unused
    data = _describe_data(self.likelihood, self.binarize)
    chunks = f", {self.iwae_chunk} passes at a time" if self.iwae_chunk else ""
    out = {
      "elbo": f"ELBO in nats on {data}: one top-down pass z ~ q, the analytic Gaussian KL of "
      f"each layer given the layers above; {decoders.describe(self.likelihood, self.num_mixtures)}",
      "log_likelihood": "the ELBO's reconstruction term log p(x | z), one pass",
      "kl": "the sum over layers of KL(q(z_l | z_>l, x) || p(z_l | z_>l)), one pass",
      "nll_iwae": f"test negative log-likelihood in nats: -L_K, the importance-weighted bound "
      f"with K={self.iwae_samples} top-down passes per example{chunks}, on {data}",
    }
    if self.likelihood != "bernoulli":
      out["bits_per_dim"] = _BITS_PER_DIM
    return out


def make_hvae(config, example_shape) -> HVAEModel:
  """The hierarchical VAE of hvae_digits / hvae_cifar from `config.model` (see those files)."""
  m = config.model
  decoders.check_likelihood(m.likelihood, m.num_mixtures)
  image_shape = tuple(example_shape)
  resolutions, layers = tuple(m.resolutions), tuple(m.layers_per_resolution)
  if len(resolutions) != len(layers) or list(resolutions) != sorted(resolutions):
    raise configs.ConfigError(
      "config.model.resolutions must be increasing (top-down) and as long as "
      f"config.model.layers_per_resolution; got {resolutions} and {layers}"
    )
  if any(image_shape[0] % r for r in resolutions) or resolutions[-1] > image_shape[0]:
    raise configs.ConfigError(
      f"config.model.resolutions {resolutions} must divide the image size {image_shape[0]}"
    )
  return HVAEModel(
    encoder=hvae_nets.Encoder(
      width=m.width, resolutions=resolutions, blocks_per_resolution=m.encoder_blocks
    ),
    decoder=hvae_nets.Decoder(
      width=m.width,
      latent_channels=m.latent_channels,
      resolutions=resolutions,
      layers_per_resolution=layers,
      image_shape=image_shape,
      outputs_per_channel=decoders.num_outputs(m.likelihood, m.num_mixtures),
      min_scale=m.min_scale,
    ),
    example_shape=image_shape,
    likelihood=m.likelihood,
    num_mixtures=m.num_mixtures,
    binarize=m.binarize,
    kl_warmup_steps=m.kl_warmup_steps,
    free_bits=m.free_bits,
    iwae_samples=m.iwae_samples,
    iwae_chunk=m.iwae_chunk,
    temperature=m.temperature,
  )


# ----------------------------------------------------------------------------
# VDM: the continuous-time variational diffusion bound (Kingma et al. 2021)
# ----------------------------------------------------------------------------


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

  def sample(
    self,
    params,
    key,
    num_samples: int,
    sampler: str = "ddpm",
    num_steps: int | None = None,
    labels=None,
    guidance_scale: float = 0.0,
    **unused,
  ) -> Array:
    """Ancestral sampling on the learned (or fixed) schedule with num_steps steps (default
    sample_steps), `diffusion.vdm.sample`; sampler must be "ddpm" (ancestral)."""
    del unused  # eta, s_churn: options of other samplers
    if sampler != "ddpm":
      raise ValueError(
        f"a VDM samples ancestrally on its own schedule: sampler must be 'ddpm', got {sampler!r}"
      )
    if labels is not None or guidance_scale:
      raise ValueError("a VDM is unconditional: no labels or guidance_scale")
    return diffusion.vdm.sample(
      key,
      self.eps_fn(params),
      self.schedule,
      params.get("gamma", {}),
      (num_samples,) + tuple(self.example_shape),
      num_steps=num_steps or self.sample_steps,
      decoder=self.decoder,
    )

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

  def describe_sample(self, sampler: str = "ddpm", num_steps: int | None = None, **unused) -> dict:
    del unused
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


def make_unet_vdm(config, example_shape) -> VDMModel:
  """The U-Net VDM of vdm_digits and vdm_cifar: `config.model` (the U-Net) and `config.vdm`
  (`vdm_config`; checked by configs.validate)."""
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
