"""How a decoder network's raw output becomes a distribution over pixels: p(x | z) of the VAEs.

A decoder emits `num_outputs(likelihood, num_mixtures)` numbers per data element (per channel of each
pixel), on a last axis: raw of shape (..., *example_shape, P). This module reads them as

  bernoulli             P = 1: the logit of x = 1 (binarized data; x in {0, 1} or a probability)
  discretized_gaussian  P = 2: mean and log-scale of a Gaussian on the 8-bit grid
                        (distributions.discretized_gaussian_log_prob, Ho et al. 2020's decoder)
  logistic_mixture      P = 3K: K mixture logits, K means and K log-scales of discretized logistics
                        (distributions.discretized_logistic_mixture_log_prob; PixelCNN++, VDVAE)

Log-scales are bounded below softly, log_scale = MIN_LOG_SCALE + softplus(raw - MIN_LOG_SCALE): a
scale far below the bin width (2/255) buys no likelihood on 8-bit data and only makes the gradient
stiff; PixelCNN++ and VDVAE clamp at -7 with a hard max, whose gradient is zero below it.
"""

import jax
import jax.numpy as jnp

from gen_jax import distributions

Array = jax.Array

LIKELIHOODS = ("bernoulli", "discretized_gaussian", "logistic_mixture")
# exp(-7) = 9e-4, an eighth of the 8-bit bin width.
MIN_LOG_SCALE = -7.0


def check_likelihood(likelihood: str, num_mixtures: int, field: str = "config.model") -> None:
  """Raises ValueError naming `{field}.likelihood` / `{field}.num_mixtures` unless they are usable."""
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"{field}.likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
  if likelihood == "logistic_mixture" and (
    isinstance(num_mixtures, bool) or not isinstance(num_mixtures, int) or num_mixtures < 1
  ):
    raise ValueError(f"{field}.num_mixtures must be an integer >= 1, got {num_mixtures!r}")


def num_outputs(likelihood: str, num_mixtures: int = 1) -> int:
  """P, the decoder outputs per data element."""
  check_likelihood(likelihood, num_mixtures)
  return {"bernoulli": 1, "discretized_gaussian": 2, "logistic_mixture": 3 * num_mixtures}[
    likelihood
  ]


def bounded_log_scale(raw) -> Array:
  """MIN_LOG_SCALE + softplus(raw - MIN_LOG_SCALE): about raw above -5, never below -7."""
  return MIN_LOG_SCALE + jax.nn.softplus(raw - MIN_LOG_SCALE)


def log_prob(likelihood: str, x, raw) -> Array:
  """log p(x | raw) per data element, (...,) = x's shape; raw is (..., P).

  x: binarized {0, 1} (or probabilities) for 'bernoulli', else 8-bit data in [-1, 1].
  """
  if likelihood == "bernoulli":
    return distributions.bernoulli_log_prob(x, logits=raw[..., 0])
  if likelihood == "discretized_gaussian":
    log_scale = bounded_log_scale(raw[..., 1])
    return distributions.discretized_gaussian_log_prob(x, mean=raw[..., 0], logvar=2.0 * log_scale)
  logits, means, log_scales = jnp.split(raw, 3, axis=-1)
  return distributions.discretized_logistic_mixture_log_prob(
    x, logits=logits, means=means, log_scales=bounded_log_scale(log_scales)
  )


def mean(likelihood: str, raw) -> Array:
  """The decoder's mean in data space [-1, 1], (...,): 2 sigmoid(logit) - 1 for 'bernoulli' (the
  pixel probability), the clipped mean of the Gaussian or of the logistic mixture otherwise."""
  if likelihood == "bernoulli":
    return 2.0 * jax.nn.sigmoid(raw[..., 0]) - 1.0
  if likelihood == "discretized_gaussian":
    return jnp.clip(raw[..., 0], -1.0, 1.0)
  logits, means, _ = jnp.split(raw, 3, axis=-1)
  return distributions.discretized_logistic_mixture_mean(logits=logits, means=means)


def describe(likelihood: str, num_mixtures: int = 1) -> str:
  """One line for eval.json and tables."""
  return {
    "bernoulli": "Bernoulli decoder on binarized pixels",
    "discretized_gaussian": "discretized Gaussian decoder on the 8-bit grid",
    "logistic_mixture": f"mixture of {num_mixtures} discretized logistics on the 8-bit grid",
  }[likelihood]
