"""The top-down hierarchical VAE behind the model interface (gen_jax.models): HVAEModel and
its builder; the mathematics is gen_jax.vae.hvae, the networks gen_jax.nets.hvae."""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax import configs
from gen_jax.models import _common
from gen_jax.models._common import _BITS_PER_DIM, _describe_data, _likelihood_targets, _mean
from gen_jax.nets import hvae as hvae_nets
from gen_jax.vae import decoders, hvae

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class HVAEModel:
  """A top-down hierarchical VAE (gen_jax.vae.hvae; networks gen_jax.nets.hvae), trained on its ELBO.

  Attributes:
    encoder: bottom-up network x -> {resolution: features}.
    decoder: top-down network (key, features | None, num_samples) -> (raw outputs, layers).
    example_shape: shape of one image.
    likelihood, num_mixtures, binarize: p(x | z_1), as VAEModel's (gen_jax.vae.decoders).
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

    iwae = hvae.iwae_bound_from_log_weights(
      iwae_key, log_weights, self.iwae_samples, self.iwae_chunk
    )
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


def check_config(config) -> None:
  """Checks config.model of a hierarchical VAE (hvae_digits, hvae_cifar), raising ConfigError
  naming the field (configs.validate calls it): the sizes, the resolutions (increasing, one
  count of layers each), the KL's warm-up and free bits, min_scale, temperature, the decoder's
  likelihood and the IWAE bound. Whether the resolutions divide the images is the builder's
  check: only the data knows the image size."""
  model = config.model
  _common.check_integers(model, ("width", "latent_channels", "encoder_blocks"))
  _common.check_integers(model, ("kl_warmup_steps",), low=0, want="an integer >= 0 (0: no warm-up)")
  _common.check_positive_tuples(model, ("resolutions", "layers_per_resolution"))
  resolutions, layers = tuple(model.resolutions), tuple(model.layers_per_resolution)
  if len(resolutions) != len(layers) or list(resolutions) != sorted(resolutions):
    raise configs.ConfigError(
      "config.model.resolutions must be increasing (top-down) and as long as "
      f"config.model.layers_per_resolution; got {resolutions} and {layers}"
    )
  configs.check_real(model, "free_bits", 0.0, prefix="model.")
  configs.check_real(model, "min_scale", 0.0, 1.0, open_high=True, prefix="model.")
  if model.min_scale <= 0:
    configs.fail("model.min_scale", "a number in (0, 1)", model.min_scale)
  configs.check_real(model, "temperature", 0.0, prefix="model.")
  _common.check_vae_section(model)


def make_hvae(config, example_shape) -> HVAEModel:
  """The hierarchical VAE of hvae_digits / hvae_cifar from `config.model` (see those files)."""
  m = config.model
  image_shape = tuple(example_shape)
  resolutions, layers = tuple(m.resolutions), tuple(m.layers_per_resolution)
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
