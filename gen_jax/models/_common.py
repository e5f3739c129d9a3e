"""Helpers shared by the model families: masked means, what a VAE decoder models, the config
checks of the U-Net and of the VAEs' decoders."""

import jax
import jax.numpy as jnp

from gen_jax import checks, configs, nets
from gen_jax.vae import decoders


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


# ----------------------------------------------------------------------------
# Config checks that two families share (each family's check_config calls them)
# ----------------------------------------------------------------------------


def check_integers(model, names, low: int = 1, want: str | None = None) -> None:
  """Each of `names` present in config.model must be an integer >= low (`want` says so)."""
  want = want or ("a positive integer" if low == 1 else f"an integer >= {low}")
  for name in names:
    if name in model and (not checks.is_integer(model[name]) or model[name] < low):
      configs.fail(f"model.{name}", want, model[name])


def check_positive_tuples(model, names, *, may_be_empty=()) -> None:
  """Each of `names` present in config.model must be a tuple of positive integers (empty only
  for those in may_be_empty)."""
  for name in names:
    value = model.get(name)
    if name in model and not (
      isinstance(value, tuple | list)
      and (value or name in may_be_empty)
      and all(checks.is_integer(v) and v > 0 for v in value)
    ):
      configs.fail(f"model.{name}", "a tuple of positive integers", value)


def check_bools(model, names) -> None:
  for name in names:
    if name in model and not isinstance(model[name], bool):
      configs.fail(f"model.{name}", "True or False", model[name])


def check_unet_section(model) -> None:
  """config.model of a U-Net (configs.unet_config, read by nets.unet_from_config)."""
  check_integers(model, ("ch", "num_res_blocks", "num_groups"))
  check_positive_tuples(model, ("ch_mult", "attn_resolutions"), may_be_empty=("attn_resolutions",))
  if "dropout" in model:
    configs.check_real(model, "dropout", 0.0, 1.0, open_high=True, prefix="model.")
  if "compute_dtype" in model and model.compute_dtype not in nets.COMPUTE_DTYPES:
    configs.fail("model.compute_dtype", f"one of {nets.COMPUTE_DTYPES}", model.compute_dtype)
  check_bools(model, ("remat",))


def check_vae_section(model) -> None:
  """config.model's fields of both VAE families: the decoder's likelihood and the IWAE bound."""
  if "likelihood" in model and model.likelihood not in decoders.LIKELIHOODS:
    configs.fail("model.likelihood", f"one of {decoders.LIKELIHOODS}", model.likelihood)
  check_integers(model, ("num_mixtures", "iwae_samples"))
  check_bools(model, ("binarize",))
  if "iwae_chunk" in model and model.iwae_chunk is not None:
    chunk, samples = model.iwae_chunk, model.get("iwae_samples")
    if not checks.is_integer(chunk) or chunk < 1 or (samples and samples % chunk):
      configs.fail("model.iwae_chunk", f"None or a divisor of model.iwae_samples={samples}", chunk)
