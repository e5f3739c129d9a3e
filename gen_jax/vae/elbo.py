"""The variational autoencoder's objective: reparameterization, ELBO, IWAE bound.

Model: p(z) = N(0, I), a decoder p(x|z), and an encoder
q(z|x) = N(mean(x), diag(exp(logvar(x)))). The functions take the encoder and
the decoder's log-likelihood as plain callables, so any network (or an
analytic model, as in the tests) plugs in:

  encode(x) -> (mean, logvar)          each (..., latent_dim)
  log_likelihood(x, z) -> log p(x|z)   (...,), summed over data dimensions

`...` is any batch shape (usually (B,)); latents are vectors (a convolutional
encoder flattens its output). These shapes are checked when the functions are
traced (ValueError), because broadcasting would otherwise turn a wrong shape
into a silently wrong bound: a logvar of shape (B, 1) would give every latent
dimension one variance, and a log_likelihood that forgot to sum over the data
dimensions, (B, D), would be broadcast against the KL's (B,) when D == B.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gen_jax import distributions

Array = jax.Array
Encoder = Callable[[Array], tuple[Array, Array]]
LogLikelihood = Callable[[Array, Array], Array]


def reparameterize(key, mean, logvar, *, noise=None) -> Array:
  """Draws z ~ N(mean, exp(logvar)) as z = mean + exp(logvar / 2) * eps.

  eps ~ N(0, I) comes from `key`, or is the given `noise`, so z is a
  differentiable function of (mean, logvar) (Kingma & Welling 2014, sec. 2.4).

  Args:
    key: a PRNG key (unused, may be None, when noise is given).
    mean, logvar: arrays of the same shape (logvar may also be a scalar or
      anything else that broadcasts to mean's shape without enlarging it).
    noise: eps itself, of mean's shape (keyword-only): exact expectations and
      common random numbers without recovering the noise afterwards.

  Returns:
    z, of the shape of `mean`.
  """
  mean = jnp.asarray(mean)
  if jnp.broadcast_shapes(mean.shape, jnp.shape(logvar)) != mean.shape:
    raise ValueError(
      f"reparameterize: logvar of shape {jnp.shape(logvar)} does not fit mean of "
      f"shape {mean.shape}; give them the same shape"
    )
  eps = _noise("reparameterize", key, noise, mean)
  return mean + jnp.exp(0.5 * logvar) * eps


def _noise(name, key, noise, like) -> Array:
  """N(0, I) of like's shape and dtype from key, or the given noise (checked: like's shape)."""
  if noise is None:
    if key is None:
      raise ValueError(f"{name}: give a key or noise=")
    return jax.random.normal(key, jnp.shape(like), dtype=like.dtype)
  noise = jnp.asarray(noise)
  if noise.shape != jnp.shape(like):
    raise ValueError(
      f"{name}: noise must have the latent's shape {jnp.shape(like)}, got {noise.shape}"
    )
  return noise


class ELBO(NamedTuple):
  """Per-example terms of the evidence lower bound, in nats.

  elbo = log_likelihood - kl <= log p(x); the training loss is -elbo.
  """

  elbo: Array  # (...,)  E_q[log p(x|z)] - KL(q(z|x) || p(z)), one draw
  log_likelihood: Array  # (...,)  reconstruction term log p(x|z), z ~ q(z|x)
  kl: Array  # (...,)  analytic KL(q(z|x) || N(0, I))


def elbo(key, x, encode: Encoder, log_likelihood: LogLikelihood, *, noise=None) -> ELBO:
  """The ELBO with one reparameterized sample and the analytic KL.

  Formula: ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || N(0, I)),
  estimated with a single z = mean + sigma * eps; the KL is exact
  (sum over latent dimensions of distributions.standard_normal_kl).

  Args:
    key: PRNG key for eps.
    x: data, (..., *data_shape).
    encode: x -> (mean, logvar), each (..., latent_dim).
    log_likelihood: (x, z) -> log p(x|z), (...,).
    noise: the eps of z = mean + sigma eps, (..., latent_dim), instead of
      one drawn from key (keyword-only; key may then be None).

  Returns:
    ELBO record of per-example arrays of shape (...,).
  """
  mean, logvar = _encoding(encode, x)
  z = reparameterize(key, mean, logvar, noise=noise)
  rec = _check_per_example(log_likelihood(x, z), mean.shape[:-1])
  kl = jnp.sum(distributions.standard_normal_kl(mean, logvar), axis=-1)
  return ELBO(elbo=rec - kl, log_likelihood=rec, kl=kl)


def iwae_bound(
  key,
  x,
  encode: Encoder,
  log_likelihood: LogLikelihood,
  num_samples: int,
  chunk_size: int | None = None,
) -> Array:
  """The importance-weighted bound on log p(x) (Burda et al. 2016).

  Formula: L_K(x) = log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),
  z_k ~ q(z|x) i.i.d., computed with logsumexp. L_1 equals the ELBO in
  expectation, L_K increases with K and tends to log p(x); this is how test
  log-likelihood in nats is reported.

  Args:
    key: PRNG key for the K draws.
    x: data, (..., *data_shape).
    encode, log_likelihood: as in `elbo`.
    num_samples: K >= 1.
    chunk_size: if given (a divisor of K), the K samples are processed
      `chunk_size` at a time with a running logsumexp, so memory stays bounded
      for K in the thousands. The chunks draw from split keys, so the value
      differs from the unchunked one's draw but has the same distribution.

  Returns:
    L_K(x), per example, (...,), in nats.
  """
  if num_samples < 1:
    raise ValueError(f"iwae_bound: num_samples must be >= 1, got {num_samples}")
  chunk = num_samples if chunk_size is None else chunk_size
  if chunk < 1 or num_samples % chunk:
    raise ValueError(f"iwae_bound: chunk_size={chunk_size} must divide num_samples={num_samples}")
  mean, logvar = _encoding(encode, x)

  def log_weights(chunk_key):
    eps = jax.random.normal(chunk_key, (chunk,) + mean.shape, mean.dtype)
    z = mean + jnp.exp(0.5 * logvar) * eps
    log_q = jnp.sum(distributions.normal_log_prob(z, mean, logvar), axis=-1)
    log_prior = jnp.sum(distributions.normal_log_prob(z, 0.0, 0.0), axis=-1)
    log_lik = jax.vmap(lambda zk: _check_per_example(log_likelihood(x, zk), mean.shape[:-1]))(z)
    return log_lik + log_prior - log_q  # (chunk, ...)

  return log_mean_exp_chunked(key, log_weights, num_samples, chunk)


def log_mean_exp_chunked(key, log_weights_fn, num_samples: int, chunk_size: int) -> Array:
  """log (1/K) sum_k exp(w_k) over K = num_samples log-weights drawn chunk by chunk.

  The importance-weighted bound of any latent-variable model (this module's
  VAE, gen_jax.vae.hvae's hierarchy): log_weights_fn(key) returns `chunk_size`
  draws of log w = log p(x, z) - log q(z | x), shape (chunk_size, ...). With
  one chunk it is called once with `key`; with several, with
  jax.random.split(key, K / chunk_size) in a lax.scan carrying a running
  logsumexp, so memory stays that of one chunk for K in the thousands.

  Returns:
    (...,): logsumexp_k w_k - log K.
  """
  if num_samples < 1 or chunk_size < 1 or num_samples % chunk_size:
    raise ValueError(
      f"chunk_size={chunk_size} must be >= 1 and divide num_samples={num_samples} (>= 1)"
    )
  num_chunks = num_samples // chunk_size
  if num_chunks == 1:
    total = jax.nn.logsumexp(log_weights_fn(key), axis=0)
  else:

    def body(running, chunk_key):
      return jnp.logaddexp(running, jax.nn.logsumexp(log_weights_fn(chunk_key), axis=0)), None

    chunk_keys = jax.random.split(key, num_chunks)
    init = jax.nn.logsumexp(log_weights_fn(chunk_keys[0]), axis=0)
    total, _ = jax.lax.scan(body, init, chunk_keys[1:])
  return total - math.log(num_samples)


def _encoding(encode: Encoder, x) -> tuple[Array, Array]:
  """encode(x), checked: mean and logvar of one shape (..., latent_dim)."""
  mean, logvar = (jnp.asarray(a) for a in encode(x))
  if mean.shape != logvar.shape or mean.ndim < 1:
    raise ValueError(
      f"encode(x) returned mean of shape {mean.shape} and logvar of shape "
      f"{logvar.shape}; both must have the shape (..., latent_dim)"
    )
  return mean, logvar


def _check_per_example(log_lik, batch_shape) -> Array:
  """log_likelihood(x, z) must give one value per example: the encoder's batch shape."""
  if jnp.shape(log_lik) != tuple(batch_shape):
    raise ValueError(
      f"log_likelihood(x, z) returned shape {jnp.shape(log_lik)}; it must return "
      f"one value per example, shape {tuple(batch_shape)} (sum over the data "
      "dimensions)"
    )
  return log_lik
