"""The hierarchical (top-down, ladder) VAE's objective: per-layer KLs, the ELBO, the IWAE bound
(`iwae_bound_from_log_weights`).

Model (Sønderby et al. 2016; Kingma et al. 2016; NVAE, Vahdat & Kautz 2020; VDVAE, Child 2021):
latents z_1..z_L, generated top down, each given the ones above it,

  p(x, z) = p(x | z_{1:L}) prod_l p(z_l | z_{>l}),     q(z | x) = prod_l q(z_l | z_{>l}, x),

both diagonal Gaussians per layer: the prior's parameters come from the top-down state h_l (a
function of the z's above), the posterior's from h_l and the bottom-up features of x at that
layer's resolution, so one top-down pass samples z_l ~ q, and the KL of each layer is analytic
given the z's above:

  ELBO(x) = E_q[ log p(x | z) ] - sum_l E_q[ KL(q(z_l | z_{>l}, x) || p(z_l | z_{>l})) ]  <=  log p(x),

estimated with one pass. The network (gen_jax.nets.hvae) calls `stochastic_layer` once per layer;
the functions here turn its LayerSample records into the bound, the training objective (KL warm-up,
free bits) and the importance-weighted bound. Per-example arrays have shape (B,); a layer's latent
has any shape (B, ...) (a feature map in the networks, a vector in the tests).
"""

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gen_jax import distributions
from gen_jax.vae.elbo import _noise, log_mean_exp_chunked, reparameterize

Array = jax.Array


class LayerSample(NamedTuple):
  """One stochastic layer of a top-down pass, per example, in nats."""

  z: Array  # (B, ...) the sample
  kl: Array  # (B,) analytic KL(q(z_l | .) || p(z_l | .)), summed over the layer; 0 from the prior
  log_p: Array  # (B,) log p(z_l | z_{>l}) at z
  log_q: Array  # (B,) log q(z_l | z_{>l}, x) at z; 0 from the prior


def _sum_per_example(values) -> Array:
  return jnp.sum(values.reshape(values.shape[0], -1), axis=-1)


def stochastic_layer(
  key,
  *,
  prior_mean,
  prior_logvar,
  posterior_mean=None,
  posterior_logvar=None,
  temperature: float = 1.0,
  noise=None,
) -> LayerSample:
  """Draws z_l and scores it: from the posterior when it is given, else from the prior.

  With the posterior: z = mu_q + sigma_q eps, kl = sum normal_kl(q, p) (exact, given the
  z's above). Without: z = mu_p + temperature sigma_p eps (generation; temperature < 1 gives
  the reduced-temperature samples of NVAE / VDVAE), kl = log_q = 0. All arguments but the key
  are keyword-only (a swapped prior and posterior would run silently) and of one shape (B, ...).
  eps ~ N(0, I) is drawn from key, or is the given `noise` (then key may be None): exact
  expectations and common random numbers without recovering the noise from z.
  """
  prior_mean, prior_logvar = jnp.asarray(prior_mean), jnp.asarray(prior_logvar)
  if prior_logvar.shape != prior_mean.shape:
    raise ValueError(
      f"stochastic_layer: prior_logvar {prior_logvar.shape} must have prior_mean's shape "
      f"{prior_mean.shape}"
    )
  if posterior_mean is None:
    if posterior_logvar is not None:
      raise ValueError("stochastic_layer: posterior_logvar given without posterior_mean")
    eps = _noise("stochastic_layer", key, noise, prior_mean)
    z = prior_mean + temperature * jnp.exp(0.5 * prior_logvar) * eps
    zero = jnp.zeros(prior_mean.shape[:1], prior_mean.dtype)
    log_p = _sum_per_example(distributions.normal_log_prob(z, prior_mean, prior_logvar))
    return LayerSample(z=z, kl=zero, log_p=log_p, log_q=zero)
  posterior_mean, posterior_logvar = jnp.asarray(posterior_mean), jnp.asarray(posterior_logvar)
  if not posterior_mean.shape == posterior_logvar.shape == prior_mean.shape:
    raise ValueError(
      "stochastic_layer: posterior_mean, posterior_logvar, prior_mean must have one shape, got "
      f"{posterior_mean.shape}, {posterior_logvar.shape}, {prior_mean.shape}"
    )
  eps = _noise("stochastic_layer", key, noise, posterior_mean)
  z = reparameterize(key, posterior_mean, posterior_logvar, noise=eps)
  return LayerSample(
    z=z,
    kl=_sum_per_example(
      distributions.normal_kl(posterior_mean, posterior_logvar, prior_mean, prior_logvar)
    ),
    log_p=_sum_per_example(distributions.normal_log_prob(z, prior_mean, prior_logvar)),
    log_q=_sum_per_example(distributions.normal_log_prob(z, posterior_mean, posterior_logvar)),
  )


def bounded_logvar(raw, *, min_scale: float) -> Array:
  """log sigma^2 with sigma = min_scale + softplus(raw): the scale never reaches 0 (a KL or
  log-density with sigma -> 0 blows up, NVAE's and VDVAE's main instability) and grows only
  linearly in raw (not exponentially, as exp(raw) would). raw = 0 gives sigma = min_scale +
  log 2."""
  return 2.0 * jnp.log(min_scale + jax.nn.softplus(raw))


class HierarchicalELBO(NamedTuple):
  """Per-example terms of the hierarchical ELBO, in nats; elbo = log_likelihood - kl."""

  elbo: Array  # (B,)
  log_likelihood: Array  # (B,) log p(x | z), z ~ q
  kl: Array  # (B,) sum over layers
  kl_per_layer: Array  # (B, L), top layer first


def elbo(log_likelihood, layers: Sequence[LayerSample]) -> HierarchicalELBO:
  """ELBO = log p(x | z) - sum_l KL_l from one top-down pass through the posterior.

  log_likelihood: (B,) log p(x | z) of the pass; layers: its L LayerSamples, top first.
  """
  log_likelihood = jnp.asarray(log_likelihood)
  kl_per_layer = jnp.stack([layer.kl for layer in layers], axis=-1)
  if kl_per_layer.shape[:1] != log_likelihood.shape or log_likelihood.ndim != 1:
    raise ValueError(
      f"elbo: log_likelihood must be per example, shape (B,) = {kl_per_layer.shape[:1]}, got "
      f"{log_likelihood.shape}"
    )
  kl = jnp.sum(kl_per_layer, axis=-1)
  return HierarchicalELBO(
    elbo=log_likelihood - kl, log_likelihood=log_likelihood, kl=kl, kl_per_layer=kl_per_layer
  )


def log_importance_weight(log_likelihood, layers: Sequence[LayerSample]) -> Array:
  """log w = log p(x | z) + sum_l [log p(z_l | z_{>l}) - log q(z_l | z_{>l}, x)], (B,).

  E_q[log w] is the ELBO; with the exact posterior, log w = log p(x) at every z."""
  return jnp.asarray(log_likelihood) + sum(layer.log_p - layer.log_q for layer in layers)


def iwae_bound_from_log_weights(
  key,
  log_weights_fn: Callable[[Array, int], Array],
  num_samples: int,
  chunk_size: int | None = None,
) -> Array:
  """L_K = log (1/K) sum_k w_k (Burda et al. 2016) of the hierarchy, per example, nats.

  log_weights_fn(key, n) -> (n, B): `log_importance_weight` of n independent top-down passes
  through the posterior (the networks run them as one pass over the batch repeated n times, so
  the bottom-up features are computed once and the batch axis keeps its layout over devices).
  The K passes come `chunk_size` at a time (default: all K), with a running logsumexp over the
  chunks (log_mean_exp_chunked), so memory stays one chunk's for K = 5000.
  """
  chunk = num_samples if chunk_size is None else chunk_size
  return log_mean_exp_chunked(key, lambda k: log_weights_fn(k, chunk), num_samples, chunk)


def iwae_bound(*args, **kwargs) -> Array:
  """Deprecated alias of `iwae_bound_from_log_weights` (renamed in gen_jax 0.2, removed in 0.3):
  `gen_jax.vae.iwae_bound(key, x, encode, log_likelihood, ...)` is the one-layer VAE's bound,
  a different function, so the hierarchical one is named after what it takes."""
  warnings.warn(
    "gen_jax.vae.hvae.iwae_bound is renamed iwae_bound_from_log_weights in gen_jax 0.2; the old "
    "name goes in 0.3 (gen_jax.vae.iwae_bound is the one-layer VAE's, a different function)",
    DeprecationWarning,
    stacklevel=2,
  )
  return iwae_bound_from_log_weights(*args, **kwargs)


def kl_warmup_weight(step, warmup_steps: int) -> Array:
  """beta = min(1, step / warmup_steps) (1 with warmup_steps = 0): the KL's weight in the
  training objective, annealed from 0 (Sønderby et al. 2016). The reported ELBO never uses it."""
  if warmup_steps <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def training_loss(
  terms: HierarchicalELBO, *, kl_weight=1.0, free_bits: float = 0.0, mask=None
) -> Array:
  """The objective minimised in training, a scalar:

    -mean_b log p(x_b | z) + kl_weight * sum_l max(free_bits, mean_b KL_l(b)),

  i.e. -ELBO averaged over the batch when kl_weight = 1 and free_bits = 0. Free bits (Kingma et
  al. 2016, per layer and over the batch): a layer whose average KL is below `free_bits` nats
  gets no gradient pushing it lower, so layers are not switched off early (posterior collapse).
  mask: optional (B,) weights of the examples (padding in evaluation batches).
  """
  weights = jnp.ones_like(terms.log_likelihood) if mask is None else jnp.asarray(mask, jnp.float32)
  norm = jnp.maximum(jnp.sum(weights), 1.0)
  rec = jnp.sum(weights * terms.log_likelihood) / norm
  kl_layers = jnp.sum(weights[:, None] * terms.kl_per_layer, axis=0) / norm  # (L,)
  kl = jnp.sum(jnp.maximum(kl_layers, free_bits)) if free_bits > 0 else jnp.sum(kl_layers)
  return -rec + kl_weight * kl
