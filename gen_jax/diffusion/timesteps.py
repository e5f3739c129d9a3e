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
from gen_jax.diffusion._helpers import concrete_or_none
from gen_jax.diffusion.schedules import Schedule, schedule_sigmas, sigma_to_timestep

Array = jax.Array


SPACINGS = ("linspace", "leading", "trailing")


def spaced_timesteps(
  num_timesteps: int, num_steps: int, spacing: str = "linspace", *, steps_offset: int = 0
) -> np.ndarray:
  """num_steps distinct timesteps in [0, T), decreasing: diffusers' `timestep_spacing`.

    linspace: round(linspace(0, T - 1, n))[::-1]      (T-1 ... 0; n = 1: [T - 1])
    leading:  arange(n) * (T // n) + steps_offset, reversed   (steps_offset ... ;
              starts below T - 1)
    trailing: round(arange(T, 0, -T / n)) - 1          (T - 1 ... T/n - 1; Lin et al. 2024
              recommend it with zero terminal SNR: it starts at the last level)
  Rounding is numpy's (half to even), as in diffusers' DDIMScheduler.set_timesteps;
  steps_offset is diffusers' (Stable Diffusion's configs: 1), which DDIMScheduler
  adds to the "leading" grid only, so it is refused with the other spacings. The
  one difference: diffusers' linspace gives [0] for n = 1, a sampler that never
  sees noise, so here n = 1 is [T - 1]. A sampler steps from the last of them
  straight to the data (or to `t_end`).

  Returns:
    int32 numpy array (num_steps,), strictly decreasing.
  """
  checks.check_integer(num_timesteps, "num_timesteps", 1)
  checks.check_integer(num_steps, "num_steps", 1, num_timesteps)
  if spacing not in SPACINGS:
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
  if spacing == "leading":
    stride = num_timesteps // num_steps
    checks.check_integer(
      steps_offset,
      "spaced_timesteps: steps_offset",
      0,
      num_timesteps - 1 - (num_steps - 1) * stride,
    )
  elif steps_offset != 0:
    raise ValueError(
      f"spaced_timesteps: steps_offset applies to spacing='leading' only (as in diffusers' "
      f"DDIMScheduler), got steps_offset={steps_offset!r} with spacing={spacing!r}"
    )
  if spacing == "linspace":
    if num_steps == 1:
      return np.array([num_timesteps - 1], dtype=np.int32)
    grid = np.linspace(0, num_timesteps - 1, num_steps).round()[::-1]
  elif spacing == "leading":
    grid = (np.arange(num_steps) * stride).round()[::-1] + steps_offset
  else:
    grid = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
  return np.ascontiguousarray(grid).astype(np.int32)


def img2img_timesteps(
  num_timesteps: int,
  num_steps: int,
  strength: float,
  *,
  spacing: str = "leading",
  steps_offset: int = 0,
) -> np.ndarray:
  """The levels an img2img / SDEdit edit of `strength` visits: diffusers'
  StableDiffusionImg2ImgPipeline.get_timesteps on DDIMScheduler's grid,

    grid = spaced_timesteps(T, n, spacing, steps_offset=steps_offset)
    grid[n - min(int(n * strength), n):]      (int() truncates, as diffusers does)

  i.e. the last int(n * strength) of the n levels; noise the data to the first
  of them (x_init = q_sample(x0=..., t=grid[0], noise=...)) and sample on them.
  The defaults are DDIMScheduler's (spacing "leading", steps_offset 0;
  Stable Diffusion's configs set steps_offset=1). It is not the grid of
  round(strength * T) levels from the top: strength 0.6 at n = 50 on T = 1000
  is 30 levels from 580 down to 0, not `spaced_timesteps(601, 30)`.

  Args:
    num_timesteps: T. num_steps: n in [1, T], the steps of the full grid.
    strength: in (0, 1], with int(n * strength) >= 1.

  Returns:
    int32 numpy array (int(n * strength),), strictly decreasing.
  """
  name = "img2img_timesteps"
  checks.check_integer(num_steps, f"{name}: num_steps", 1, num_timesteps)
  if not checks.is_real(strength) or not 0.0 < strength <= 1.0:
    raise ValueError(f"{name}: strength must be a number in (0, 1], got {strength!r}")
  kept = min(int(num_steps * strength), num_steps)
  if kept < 1:
    raise ValueError(
      f"{name}: strength {strength} keeps int({num_steps} * {strength}) = 0 of the {num_steps} "
      "steps; raise strength or num_steps"
    )
  grid = spaced_timesteps(num_timesteps, num_steps, spacing, steps_offset=steps_offset)
  return grid[num_steps - kept :]


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """num_steps distinct timesteps from T - 1 down to 0, evenly spaced:
  `spaced_timesteps(T, num_steps, "linspace")`."""
  return spaced_timesteps(num_timesteps, num_steps, "linspace")


def check_timesteps(timesteps, num_timesteps: int, name: str) -> Array:
  """A sampler's `timesteps=` argument as int32 (K,), checked.

  TypeError naming `name` for float values; ValueError unless it is a
  non-empty vector, strictly decreasing, in [0, T) (values checked when
  concrete).
  """
  if isinstance(timesteps, (list, tuple)):
    timesteps = np.asarray(timesteps)
  dtype = jnp.result_type(timesteps)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
      f"{name}: timesteps must hold integer timesteps of the discrete schedule "
      f"(0..{num_timesteps - 1}), got {dtype}"
    )
  if jnp.ndim(timesteps) != 1 or jnp.shape(timesteps)[0] < 1:
    raise ValueError(
      f"{name}: timesteps must be a non-empty vector, got shape {jnp.shape(timesteps)}"
    )
  values = concrete_or_none(timesteps)
  if values is not None and (
    np.any(np.diff(values) >= 0) or values.min() < 0 or values.max() >= num_timesteps
  ):
    raise ValueError(
      f"{name}: timesteps must be strictly decreasing integers in [0, {num_timesteps}), "
      f"got {values.tolist()}"
    )
  return jnp.asarray(timesteps, jnp.int32)


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
  are sparse in log-sigma) it takes consecutive levels. With zero terminal
  SNR (sigma_{T-1} = inf) the first num_points - 1 points are uniform up to
  sigma_{T-2} and the last is T - 1.

  Args:
    num_points: in [2, T].

  Returns:
    int32 (num_points,), strictly increasing, first 0, last T - 1.
  """
  num_timesteps = schedule.num_timesteps
  checks.check_integer(num_points, "num_points", 2, num_timesteps)
  log_sigmas = jnp.log(schedule_sigmas(schedule))
  zero_snr = jnp.isinf(log_sigmas[-1])
  top = jnp.where(zero_snr, log_sigmas[-2] if num_timesteps > 1 else 0.0, log_sigmas[-1])
  finite = jnp.exp(jnp.linspace(log_sigmas[0], top, num_points))
  finite_short = jnp.append(jnp.exp(jnp.linspace(log_sigmas[0], top, num_points - 1)), 1.0)
  levels = sigma_to_timestep(schedule, jnp.where(zero_snr, finite_short, finite))
  levels = jnp.where(zero_snr, levels.at[-1].set(num_timesteps - 1), levels)
  return _distinct_increasing(levels, num_timesteps)


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


EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0


def edm_sigma_range(schedule: Schedule, sigma_min=None, sigma_max=None) -> tuple[Array, Array]:
  """EDM's defaults clamped to the schedule: sigma_min = max(0.002, sigma_0),
  sigma_max = min(80, sigma_{T-1}) (Karras et al. 2022, Table 1); given
  values are used as they are."""
  sigmas = schedule_sigmas(schedule)
  if sigma_min is None:
    sigma_min = jnp.maximum(EDM_SIGMA_MIN, sigmas[0])
  if sigma_max is None:
    sigma_max = jnp.minimum(EDM_SIGMA_MAX, sigmas[-1])
  return sigma_min, sigma_max


def snap_sigmas(schedule: Schedule, sigmas) -> Array:
  """A decreasing sigma grid rounded to the nearest discrete levels in
  log-sigma (sigma = inf: the last level, which is then a zero-terminal-SNR
  level) and made strictly decreasing, as `log_sigma_timesteps` does.

  Returns:
    int32 of sigmas' length, strictly decreasing.
  """
  num_timesteps = schedule.num_timesteps
  sigmas = jnp.asarray(sigmas)
  levels = sigma_to_timestep(schedule, jnp.where(jnp.isinf(sigmas), 1.0, sigmas))
  levels = jnp.where(jnp.isinf(sigmas), num_timesteps - 1, levels)
  return _distinct_increasing(levels[::-1], num_timesteps)[::-1]


def edm_timesteps(
  schedule: Schedule, num_steps: int, rho: float = 7.0, sigma_min=None, sigma_max=None
) -> Array:
  """`karras_sigmas(sigma_min, sigma_max, num_steps, rho)` rounded to the nearest
  discrete levels and made strictly decreasing (`snap_sigmas`).

  Defaults (`edm_sigma_range`): sigma_min = max(0.002, sigma_0), sigma_max =
  min(80, sigma_{T-1}), EDM's values clamped to the schedule. The cap at 80
  matters where the top levels are far apart in sigma: cosine_betas(1000)
  jumps from sigma = 642 to 20,291 at its last level, and a grid reaching
  that level spends most of its steps among the few top levels.

  Args:
    num_steps: in [1, T].

  Returns:
    int32 (num_steps,), strictly decreasing.
  """
  num_timesteps = schedule.num_timesteps
  checks.check_integer(num_steps, "num_steps", 1, num_timesteps)
  sigma_min, sigma_max = edm_sigma_range(schedule, sigma_min, sigma_max)
  return snap_sigmas(schedule, karras_sigmas(sigma_min, sigma_max, num_steps, rho))
