"""Helpers shared by the model families: masked means, what a VAE decoder models."""

import jax
import jax.numpy as jnp


def _mean(values, mask=None):
  if mask is None:
    return jnp.mean(values)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1)


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
