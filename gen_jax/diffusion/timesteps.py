"""Time grids: which of the T discrete timesteps a sampler or an ODE solver visits.

DDIM's grid is evenly spaced in t; the others are continuous grids in sigma
(uniform in log-sigma, or Karras et al.'s rho-schedule) rounded to the
nearest discrete levels (`schedules.sigma_to_timestep`) and then made
strictly monotone, so that no level is visited twice.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import checks
from gen_jax.diffusion.schedules import Schedule, schedule_sigmas, sigma_to_timestep

Array = jax.Array


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """num_steps distinct timesteps from T - 1 down to 0, evenly spaced."""
  checks.check_integer(num_steps, "num_steps", 1, num_timesteps)
  if num_steps == 1:
    return np.array([num_timesteps - 1], dtype=np.int32)
  return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)


def _distinct_increasing(timesteps, num_timesteps: int) -> Array:
  """A strictly increasing sequence in [0, T) close to an increasing one
  t_0..t_{n-1} (n <= T): t'_k = min(k + cummax_{j<=k}(t_j - j), T - n + k).
  The first term turns a run of equal levels into consecutive levels, the
  second leaves room for the remaining n - 1 - k levels below T; the minimum
  of two strictly increasing sequences is strictly increasing."""
  num = timesteps.shape[0]
  k = jnp.arange(num, dtype=jnp.int32)
  fixed = k + jax.lax.cummax(timesteps.astype(jnp.int32) - k, axis=0)
  return jnp.minimum(fixed, num_timesteps - num + k)


def log_sigma_timesteps(schedule: Schedule, num_points: int) -> Array:
  """num_points timesteps from 0 up to T - 1, uniform in log-sigma (= in log-SNR).

  exp(linspace(log sigma_0, log sigma_{T-1}, num_points)) rounded to the
  nearest levels (`sigma_to_timestep`), then made strictly increasing: where
  the grid is finer than the discrete levels (small sigma, where the levels
  are sparse in log-sigma) it takes consecutive levels.

  Args:
    num_points: in [2, T].

  Returns:
    int32 (num_points,), strictly increasing, first 0, last T - 1.
  """
  num_timesteps = schedule.num_timesteps
  checks.check_integer(num_points, "num_points", 2, num_timesteps)
  log_sigmas = jnp.log(schedule_sigmas(schedule))
  grid = jnp.exp(jnp.linspace(log_sigmas[0], log_sigmas[-1], num_points))
  return _distinct_increasing(sigma_to_timestep(schedule, grid), num_timesteps)


def karras_sigmas(sigma_min, sigma_max, num_steps: int, rho: float = 7.0) -> Array:
  """The EDM noise levels (Karras et al. 2022, eq. 5), decreasing:

  sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
  i = 0..N-1 (N = 1: sigma_max). The sampler appends sigma_N = 0.

  Returns:
    (num_steps,).
  """
  checks.check_integer(num_steps, "num_steps", 1, np.iinfo(np.int32).max)
  if num_steps == 1:
    return jnp.reshape(jnp.asarray(sigma_max, jnp.result_type(float)), (1,))
  ramp = jnp.linspace(0.0, 1.0, num_steps)
  max_inv_rho = jnp.asarray(sigma_max) ** (1.0 / rho)
  min_inv_rho = jnp.asarray(sigma_min) ** (1.0 / rho)
  return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def edm_timesteps(schedule: Schedule, num_steps: int, rho: float = 7.0) -> Array:
  """`karras_sigmas` between sigma_0 and sigma_{T-1} of the schedule, rounded
  to the nearest discrete levels and made strictly decreasing (as in
  `log_sigma_timesteps`).

  Args:
    num_steps: in [1, T].

  Returns:
    int32 (num_steps,), strictly decreasing from T - 1 (down to 0 when
    num_steps > 1).
  """
  num_timesteps = schedule.num_timesteps
  checks.check_integer(num_steps, "num_steps", 1, num_timesteps)
  sigmas = schedule_sigmas(schedule)
  grid = karras_sigmas(sigmas[0], sigmas[-1], num_steps, rho)
  ascending = sigma_to_timestep(schedule, grid)[::-1]
  return _distinct_increasing(ascending, num_timesteps)[::-1]
