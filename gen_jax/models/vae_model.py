"""The one-layer VAE behind the model interface (gen_jax.models): VAEModel and its MLP and
convolutional builders."""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax import nets, vae
from gen_jax.models import _common
from gen_jax.models._common import _BITS_PER_DIM, _describe_data, _likelihood_targets, _mean
from gen_jax.vae import decoders

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VAEModel:
  """A VAE trained by maximising the ELBO.

  Attributes:
    encoder: Flax module x -> (mean, logvar), each (B, latent_dim).
    decoder: Flax module z -> raw outputs (B, *example_shape, P), read by gen_jax.vae.decoders as
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


def check_config(config) -> None:
  """Checks config.model of a one-layer VAE, raising ConfigError naming the field
  (configs.validate calls it): the MLP's hidden widths (vae_digits, vae_mnist) or the
  convolutions' channels (vae_cifar), latent_dim, the decoder's likelihood and the IWAE bound."""
  model = config.model
  _common.check_integers(model, ("latent_dim",))
  _common.check_positive_tuples(model, ("hidden", "channels"))
  _common.check_vae_section(model)


def make_mlp_vae(config, example_shape) -> VAEModel:
  """The MLP VAE of vae_digits and vae_mnist, from a whole config (as every builder).

  config.model: hidden (encoder widths; the decoder mirrors them), latent_dim, iwae_samples,
  iwae_chunk, and optionally likelihood ('bernoulli', the default: dynamically binarized
  images; 'logistic_mixture' or 'discretized_gaussian': 8-bit images), num_mixtures and
  binarize (default True).
  """
  m = config.model
  likelihood, num_mixtures = m.get("likelihood", "bernoulli"), m.get("num_mixtures", 1)
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


def make_conv_vae(config, example_shape) -> VAEModel:
  """The convolutional VAE of vae_cifar, from a whole config.

  config.model: channels (encoder widths, halving the resolution each; the decoder mirrors
  them), latent_dim, likelihood, num_mixtures, binarize, iwae_samples, iwae_chunk (as
  `make_mlp_vae`'s, all required).
  """
  m = config.model
  decoders.check_likelihood(m.likelihood, m.num_mixtures)
  return VAEModel(
    encoder=nets.ConvEncoder(channels=tuple(m.channels), latent_dim=m.latent_dim),
    decoder=nets.ConvDecoder(
      image_shape=tuple(example_shape),
      channels=tuple(m.channels)[::-1],
      outputs_per_channel=decoders.num_outputs(m.likelihood, m.num_mixtures),
    ),
    example_shape=tuple(example_shape),
    latent_dim=m.latent_dim,
    likelihood=m.likelihood,
    binarize=m.binarize,
    num_mixtures=m.num_mixtures,
    iwae_samples=m.iwae_samples,
    iwae_chunk=m.iwae_chunk,
  )
