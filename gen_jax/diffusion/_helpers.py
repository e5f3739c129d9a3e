"""Indexing and reductions shared by the diffusion modules (private)."""

import jax
import jax.numpy as jnp
import numpy as np

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


def check_integer_timesteps(t, name: str) -> None:
  """TypeError unless t (array, tracer or Python number) holds integers.

  A discrete schedule is indexed by t, and a float index fails deep inside
  JAX with a message that names no public function; `name` is the function
  the user called.
  """
  dtype = jnp.result_type(t)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
      f"{name}: t must hold integer timesteps of the discrete schedule (0..T-1), got {dtype}"
    )


def concrete_or_none(values):
  """values as a numpy array when concrete, None when traced (inside jit)."""
  try:
    return np.asarray(values)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None
