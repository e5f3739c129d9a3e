"""Indexing and reductions shared by the diffusion modules (private)."""

import jax
import jax.numpy as jnp

Array = jax.Array


def at(values, t, x) -> Array:
  """values[t] reshaped to broadcast against x: t of shape (B,) or ()."""
  t = jnp.asarray(t)
  picked = values[t]
  return picked.reshape(t.shape + (1,) * (jnp.ndim(x) - t.ndim))


def sum_data_dims(values, batch_ndim: int) -> Array:
  """Sum over the axes after the first batch_ndim: (B, ...) -> (B,) for batch_ndim = 1."""
  return jnp.sum(values, axis=tuple(range(batch_ndim, values.ndim)))


def mean_data_dims(values, batch_ndim: int) -> Array:
  """Mean over the axes after the first batch_ndim."""
  return jnp.mean(values, axis=tuple(range(batch_ndim, values.ndim)))
