"""Every sampler on every Gaussian process (gen_jax.diffusion.process): Euler, EDM's Heun with
churn, DDIM, DPM-Solver++(2M) and Euler-Maruyama on the reverse SDE, on continuous time grids
that are never snapped to discrete levels.

A process is x_t = alpha(t) x0 + sigma(t) eps with lambda(t) = log(alpha^2 / sigma^2); a model is
`model_fn(x_t, t) -> output` in one target (`prediction`: eps | x0 | v | velocity | score), t the
process's time with shape (B,). Each sampler reads the output as (x0_hat, eps_hat) through
`process.to_x0_eps` and steps on the probability-flow ODE
  dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat                (Karras et al. 2022, eq. 4)
or on the reverse SDE (`euler_maruyama_sample`).

Time grids. A grid is a strictly decreasing vector t_0 > t_1 > ... > t_N of N + 1 times: the
sampler starts at t_0 and takes N steps, the model called at t_0..t_{N-1} (Heun also at the
t_{i+1} in range). Every time lies in [t_min, t_max] except that the last may be
`data_time(process)`, the data itself (sigma = 0), as EDM and k-diffusion append sigma = 0:
  * 0 for ve, rectified_flow and vp_linear (their sigma(0) = 0),
  * -1 for discrete DDPM processes (level -1 is DDPM's x_0, alphas_cumprod = 1),
  * t_min - 1 for processes whose sigma never reaches 0 (vp_cosine, log_snr_process).
A step to the data returns x0_hat at t_{N-1}: the exact limit of the Euler, DDIM and DPM-Solver
steps in EDM's coordinates (x / alpha, sigma / alpha), and EDM's last step (Euler, no Heun
correction). `time_grid` builds the grids; every sampler takes one as `t=` instead of num_steps.
On a discrete process an integer grid calls the model at integer levels (the Schedule's tables,
bit for bit: `ddim_sample` then reproduces gen_jax.diffusion.ddim_sample), a real one at real t
(lambda interpolated between levels). A grid outside the range is refused (ValueError naming
the bound), never clipped or snapped.

Options every sampler takes (keyword-only):
  shape, x_init: x_init is the state x at the grid's first time t_0 (t_max by default; a later
    t_0 with x_init = q_sample(x0, t_0, noise) is SDEdit); without it the start is
    process.prior_std() * N(0, I) drawn from split(key)[0], of `shape`.
  key: per-step noise from fold_in(split(key)[1], i) at step i (churn, eta > 0, Euler-Maruyama);
    None is allowed for a deterministic sampler given x_init.
  t / num_steps / spacing: the grid (t), or time_grid(process, num_steps, spacing=spacing);
    spacing None is "karras" (EDM's grid in sigma / alpha; "log_snr" for DPM-Solver++(2M), the
    spacing its authors recommend and the one that measures best for it on every process here),
    or "uniform" where the process has zero SNR at t_max (rectified flow at t = 1: sigma / alpha
    and lambda are infinite there).
  clip: clip x0_hat to [-1, 1] at every call (eps_hat re-derived: (x - alpha x0) / sigma).
  return_trajectory: also return a `SolverTrajectory` (the grid, the state at every grid time,
    x0_hat at every step). Without it the scan stacks nothing.
Classifier-free guidance composes through model_fn, as for gen_jax.diffusion.samplers:
`guided_eps_fn(cond_fn=..., uncond_fn=..., guidance_scale=w)` guides any target (each
conversion to (x0, eps) is affine in the output with weights summing to one).

`PROCESS_SAMPLERS` is the registry (names, default steps, options, network calls), shaped like
samplers.SAMPLERS.

Longer than the house's ~400 lines on purpose, as samplers.py: the samplers and the registry that
names them stay in one file, so adding a sampler is one edit in one place.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import checks
from gen_jax.diffusion._helpers import concrete_or_none
from gen_jax.diffusion.process import GaussianProcess, _expand, check_prediction, to_x0_eps

# What an option accepts: the same domains, in the same words, as samplers.SAMPLERS' rows.
from gen_jax.diffusion.samplers import (
  _NON_NEGATIVE,
  _NON_NEGATIVE_OR_INF,
  _UNIT_INTERVAL,
  _check_eta,
)
from gen_jax.diffusion.timesteps import spaced_timesteps

Array = jax.Array

SPACINGS = ("uniform", "karras", "log_snr", "linspace", "leading", "trailing")
INTEGER_SPACINGS = ("linspace", "leading", "trailing")  # discrete processes: integer levels

# Processes with sigma(0) = 0: their data end is t = 0 (EDM's appended sigma = 0).
_DATA_AT_ZERO = ("ve", "rectified_flow", "vp_linear")


class SolverTrajectory(NamedTuple):
  """What a process sampler went through, from the outputs of its scan.

  Attributes:
    t: (N + 1,) the grid.
    x: (N + 1, B, ...) the state at every grid time: x[0] the start, x[-1] the sample (Heun
      with churn: the state before the churn).
    x0: (N, B, ...) x0_hat at each step's first network call.
  """

  t: Array
  x: Array
  x0: Array


def _float():
  return jnp.result_type(float)


# ---------------------------------------------------------------------------------------------
# Time grids


def data_time(process: GaussianProcess) -> float:
  """The time that stands for the data (sigma = 0) as the last entry of a grid: 0 for ve,
  rectified_flow and vp_linear, -1 for discrete processes (DDPM's x_0), t_min - 1 otherwise."""
  if process.discrete_levels:
    return -1.0
  if process.name in _DATA_AT_ZERO and process.t_min >= 0.0:
    return 0.0
  return float(process.t_min) - 1.0


def _edm_sigma(process, t) -> Array:
  """sigma / alpha = exp(-lambda / 2): EDM's noise level of x / alpha."""
  return jnp.exp(-0.5 * process.log_snr(t))


def time_grid(
  process: GaussianProcess,
  num_steps: int,
  *,
  spacing: str = "uniform",
  rho: float = 7.0,
  t_start=None,
  t_end=None,
  shift: float = 1.0,
) -> Array:
  """N + 1 strictly decreasing times for N = num_steps steps, from t_start to the data.

  The N network-call times run from t_start (default t_max) to t_end (default t_min), both in
  [t_min, t_max], then `data_time(process)` is appended (the last step denoises), as EDM
  appends sigma = 0. Where t_end is the data itself (t_end = t_min = data_time: rectified
  flow's t = 0) the N + 1 points end there instead. Spacings of the call times s_0..s_{n-1} (i / (n - 1) = u):
    uniform   uniform in t: s = t_start + u (t_end - t_start)
    karras    EDM's rho-schedule in sigma / alpha (Karras et al. 2022, eq. 5):
              (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, mapped back
              through lambda^{-1}; sigma / alpha must be finite at t_start
    log_snr   uniform in lambda (DPM-Solver's grid); lambda finite at both ends
    linspace, leading, trailing   integer levels of a discrete process (diffusers' spacings,
              `timesteps.spaced_timesteps`); linspace also takes t_start / t_end (levels):
              round(linspace(t_end, t_start, N)) reversed
  shift (>= 1): SD3's resolution shift (Esser et al. 2024), every time moved to where lambda is
  2 log(shift) lower: t -> lambda^{-1}(lambda(t) - 2 log shift); on rectified flow
  t -> shift t / (1 + (shift - 1) t), diffusers' FlowMatchEulerDiscreteScheduler `shift`.

  Returns:
    (num_steps + 1,) float (int32 for the integer spacings).

  Raises:
    ValueError for t_start above t_max, t_end below t_min, t_end >= t_start, an unknown
    spacing, an infinite sigma / alpha (karras) or lambda (log_snr) at an end, or a grid that
    rounding leaves not strictly decreasing.
  """
  checks.check_integer(num_steps, "num_steps", 1)
  if spacing not in SPACINGS:
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
  checks.check_real(shift, "shift", 1.0)
  if spacing in INTEGER_SPACINGS:
    if shift != 1.0:
      raise ValueError(f"shift applies to the real spacings, not {spacing!r}")
    return _integer_grid(process, num_steps, spacing, t_start, t_end)
  t_hi = float(process.t_max if t_start is None else checks.check_real(t_start, "t_start"))
  t_lo = float(process.t_min if t_end is None else checks.check_real(t_end, "t_end"))
  _check_bounds(process, t_hi, t_lo)
  data = data_time(process)
  ends_at_data = t_lo == data
  num_points = num_steps + 1 if ends_at_data else num_steps
  dtype = _float()
  u = jnp.linspace(0.0, 1.0, num_points, dtype=dtype) if num_points > 1 else jnp.zeros(1, dtype)
  hi, lo = jnp.asarray(t_hi, dtype), jnp.asarray(t_lo, dtype)
  if spacing == "uniform":
    points = hi + u * (lo - hi)
  elif spacing == "karras":
    sigma_max, sigma_min = _edm_sigma(process, hi), _edm_sigma(process, lo)
    _require_finite(sigma_max, "karras", f"sigma / alpha at t_start = {t_hi}")
    ramp = sigma_max ** (1.0 / rho) + u * (sigma_min ** (1.0 / rho) - sigma_max ** (1.0 / rho))
    points = process.t_from_log_snr(-2.0 * rho * jnp.log(ramp))
  else:  # log_snr
    lam_hi, lam_lo = process.log_snr(hi), process.log_snr(lo)
    _require_finite(lam_hi, "log_snr", f"lambda at t_start = {t_hi}")
    _require_finite(lam_lo, "log_snr", f"lambda at t_end = {t_lo}")
    points = process.t_from_log_snr(lam_hi + u * (lam_lo - lam_hi))
  # The ends exactly as asked (lambda^{-1}(lambda(t)) may differ from t in the last digit).
  points = points.at[0].set(hi)
  if num_points > 1:
    points = points.at[-1].set(lo)
  if shift != 1.0:
    points = _shifted(process, points, shift)
  if not ends_at_data:
    points = jnp.append(points, jnp.asarray(data, dtype))
  values = concrete_or_none(points)
  if values is not None and np.any(np.diff(values) >= 0):
    raise ValueError(
      f"time_grid: {num_steps} steps from {t_hi} to {t_lo} ({spacing}) are not strictly "
      f"decreasing in {np.dtype(dtype).name}: {values.tolist()}"
    )
  return points


def _check_bounds(process, t_hi, t_lo):
  if t_hi > process.t_max:
    raise ValueError(f"t_start = {t_hi} is above the process's t_max = {process.t_max}")
  if t_lo < process.t_min:
    raise ValueError(f"t_end = {t_lo} is below the process's t_min = {process.t_min}")
  if not t_lo < t_hi:
    raise ValueError(f"need t_end < t_start, got t_end = {t_lo}, t_start = {t_hi}")


def _require_finite(value, spacing, what):
  value = concrete_or_none(value)
  if value is not None and not np.isfinite(value):
    raise ValueError(
      f"spacing {spacing!r} needs a finite {what} (zero SNR or the data there): "
      "pass t_start / t_end inside, or spacing 'uniform'"
    )


def _shifted(process, points, shift):
  if process.name == "rectified_flow":  # diffusers' formula, to the last digit
    shifted = shift * points / (1.0 + (shift - 1.0) * points)
  else:
    shifted = process.t_from_log_snr(process.log_snr(points) - 2.0 * math.log(shift))
    shifted = jnp.where(points <= process.t_min, points, shifted)
  values = concrete_or_none(shifted)
  if values is not None and np.any(values > process.t_max * (1 + 1e-12)):
    raise ValueError(f"shift {shift} moves the grid above t_max = {process.t_max}")
  return shifted


def _integer_grid(process, num_steps, spacing, t_start, t_end) -> Array:
  levels = process.discrete_levels
  if not levels:
    raise ValueError(
      f"spacing {spacing!r} gives integer levels of a discrete process; {process.name!r} is "
      "continuous: use 'uniform', 'karras' or 'log_snr'"
    )
  if spacing != "linspace":
    if t_start is not None or t_end is not None:
      raise ValueError(f"spacing {spacing!r} is fixed by T; t_start / t_end need 'linspace'")
    grid = spaced_timesteps(
      levels, checks.check_integer(num_steps, "num_steps", 1, levels), spacing
    )
  else:
    hi = levels - 1 if t_start is None else checks.check_integer(t_start, "t_start", 0, levels - 1)
    lo = 0 if t_end is None else checks.check_integer(t_end, "t_end", 0, levels - 1)
    if not lo < hi or num_steps > hi - lo + 1:
      raise ValueError(
        f"linspace: need t_end < t_start and num_steps <= t_start - t_end + 1 distinct levels, "
        f"got t_start = {hi}, t_end = {lo}, num_steps = {num_steps}"
      )
    grid = np.array([hi]) if num_steps == 1 else np.linspace(lo, hi, num_steps).round()[::-1]
  return jnp.asarray(np.append(grid, -1), jnp.int32)


def check_grid(process: GaussianProcess, t, name: str = "t") -> Array:
  """A sampler's `t=` as an array, checked: a vector of at least 2 strictly decreasing times
  in [t_min, t_max] (integer levels in [0, T - 1] for an integer grid on a discrete process),
  the last possibly `data_time(process)`. Values are checked when concrete (not under jit)."""
  if isinstance(t, (list, tuple)):
    t = np.asarray(t)
  t = jnp.asarray(t)
  integer = jnp.issubdtype(t.dtype, jnp.integer)
  if integer and not process.discrete_levels:
    integer = False
  t = t.astype(jnp.int32 if integer else _float())
  if t.ndim != 1 or t.shape[0] < 2:
    raise ValueError(f"{name} must be a vector of at least 2 times, got shape {t.shape}")
  values = concrete_or_none(t)
  if values is None:
    return t
  if integer:
    lo, hi, data = 0, process.discrete_levels - 1, -1
    bounds = f"the levels [0, {hi}]"
  else:
    lo, hi, data = process.t_min, process.t_max, data_time(process)
    bounds = f"[t_min, t_max] = [{lo}, {hi}]"
  if np.any(np.diff(values) >= 0) or not np.all(np.isfinite(values)):
    raise ValueError(f"{name} must be finite and strictly decreasing, got {values.tolist()}")
  if values[0] > hi:
    raise ValueError(f"{name}[0] = {values[0]} is above t_max: {name} must lie in {bounds}")
  below = values < lo
  below[-1] &= values[-1] != data
  if np.any(below):
    raise ValueError(
      f"{name} = {values.tolist()} goes below t_min: it must lie in {bounds}, its last entry "
      f"may be the data, data_time = {data}"
    )
  return t


# ---------------------------------------------------------------------------------------------
# What every sampler shares: the grid, the start, the coefficients at the grid, the model


@dataclasses.dataclass(frozen=True)
class _Plan:
  grid: Array  # (N + 1,)
  x: Array  # the start
  step_key: Any
  shape: tuple
  alpha: Array  # (N + 1,) at the grid, 1 at the data
  sigma: Array  # (N + 1,), 0 at the data
  d_alpha: Array  # (N + 1,) alpha'(t), 0 at the data
  d_sigma: Array
  log_snr: Array  # (N + 1,) lambda, +inf at the data, -inf at zero SNR
  to_data: Array  # (N,) bool: step i goes to the data


def _default_spacing(process, preferred: str = "karras") -> str:
  """ "uniform" where alpha(t_max) = 0 (rectified flow to t = 1: the karras grid's sigma/alpha and
  the log_snr grid's lambda are infinite there), else the sampler's `preferred` spacing. Read at
  trace time: t_max is static, and a process without traced parameters (rectified flow) gives a
  concrete alpha even inside jit."""
  with jax.ensure_compile_time_eval():
    alpha_top = concrete_or_none(process.alpha_sigma(process.t_max)[0])
  return "uniform" if alpha_top is not None and float(alpha_top) == 0.0 else preferred


def _prepare(
  name,
  process,
  key,
  shape,
  x_init,
  t,
  num_steps,
  spacing,
  prediction,
  default_steps,
  noisy,
  preferred_spacing="karras",
):
  """The grid, the start and the per-time coefficients; ValueError for what cannot run."""
  check_prediction(prediction)
  if t is not None:
    if num_steps is not None or spacing is not None:
      raise ValueError(f"{name}: pass t or num_steps / spacing, not both")
    grid = check_grid(process, t)
  else:
    steps = default_steps if num_steps is None else num_steps
    spacing = spacing or _default_spacing(process, preferred_spacing)
    grid = time_grid(process, steps, spacing=spacing)
  if key is None and (x_init is None or noisy):
    raise ValueError(
      f"{name}: key is None; a key is needed to draw "
      + ("the start (or give x_init)" if x_init is None else "the per-step noise")
    )
  init_key, step_key = jax.random.split(key) if key is not None else (None, None)
  if x_init is None:
    if shape is None:
      raise ValueError(f"{name}: give shape or x_init")
    shape = tuple(shape)
    x = process.prior_std().astype(_float()) * jax.random.normal(init_key, shape, _float())
  else:
    x = jnp.asarray(x_init)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(_float())
    if shape is not None and tuple(shape) != x.shape:
      raise ValueError(f"{name}: shape {tuple(shape)} differs from x_init's {x.shape}")
    shape = x.shape
  if len(shape) < 1:
    raise ValueError(f"{name}: shape must be (B, ...), got {shape}")
  is_data = grid == (-1 if jnp.issubdtype(grid.dtype, jnp.integer) else data_time(process))
  is_data = is_data & (jnp.arange(grid.shape[0]) == grid.shape[0] - 1)
  safe = jnp.where(is_data, grid[0], grid)  # never evaluate the process at the marker
  alpha, sigma = process.alpha_sigma(safe)
  _, _, d_alpha, d_sigma = process.derivatives(safe.astype(_float()))
  dtype = x.dtype
  alpha = jnp.where(is_data, 1.0, alpha).astype(dtype)
  sigma = jnp.where(is_data, 0.0, sigma).astype(dtype)
  d_alpha = jnp.where(is_data, 0.0, d_alpha).astype(dtype)
  d_sigma = jnp.where(is_data, 0.0, d_sigma).astype(dtype)
  log_snr = 2.0 * (jnp.log(alpha) - jnp.log(sigma))
  first_alpha = concrete_or_none(alpha[0])
  if first_alpha is not None and float(first_alpha) == 0.0 and prediction in ("eps", "score"):
    raise ValueError(
      f"{name}: alpha = 0 at t[0] (zero SNR), where an {prediction!r}-prediction says nothing "
      "about x0: use prediction 'x0', 'v' or 'velocity', or start below that time"
    )
  return _Plan(grid, x, step_key, shape, alpha, sigma, d_alpha, d_sigma, log_snr, is_data[1:])


def _denoise(model_fn, process, x, t, prediction, clip):
  """(x0_hat, eps_hat) of the model at (x, t) for a scalar time t."""
  t_batch = jnp.full((x.shape[0],), t, t.dtype)
  output = model_fn(x, t_batch)
  if prediction == "velocity" and jnp.issubdtype(t.dtype, jnp.integer):
    t_batch = t_batch.astype(_float())  # alpha' needs real t
  x0, eps = to_x0_eps(process, x_t=x, t=t_batch, output=output, prediction=prediction)
  x0, eps = x0.astype(x.dtype), eps.astype(x.dtype)
  if clip:
    alpha, sigma = (_expand(v, x).astype(x.dtype) for v in process.alpha_sigma(t_batch))
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = (x - alpha * x0) / sigma
  return x0, eps


def _noise(step_key, i, shape, dtype):
  return jax.random.normal(jax.random.fold_in(step_key, i), shape, dtype)


def _run(plan, step, xs, extra, return_trajectory):
  """One lax.scan of step(x, extra, inputs) -> (x_next, extra_next, x0_hat); states are stacked
  only with return_trajectory."""

  def body(carry, inputs):
    x, aux = carry
    x_next, aux_next, x0 = step(x, aux, inputs)
    return (x_next, aux_next), ((x, x0) if return_trajectory else None)

  (x_final, _), ys = jax.lax.scan(body, (plan.x, extra), xs)
  if not return_trajectory:
    return x_final
  states, x0s = ys
  return x_final, SolverTrajectory(plan.grid, jnp.concatenate([states, x_final[None]]), x0s)


def _steps(plan):
  return jnp.arange(plan.grid.shape[0] - 1)


# ---------------------------------------------------------------------------------------------
# The samplers


def euler_sample(
  model_fn,
  process: GaussianProcess,
  key=None,
  *,
  shape=None,
  x_init=None,
  t=None,
  num_steps: int | None = None,
  spacing: str | None = None,
  prediction: str = "eps",
  clip: bool = False,
  return_trajectory: bool = False,
):
  """Euler's method on the probability-flow ODE in the process's own time:
    x_{i+1} = x_i + (t_{i+1} - t_i) (alpha'(t_i) x0_hat + sigma'(t_i) eps_hat),
  and x0_hat on a step to the data. On ve (alpha = 1, sigma = t) it is k-diffusion's
  sample_euler; on rectified_flow (velocity = eps - x0) diffusers'
  FlowMatchEulerDiscreteScheduler. First order; N network calls (default N = 50).
  Options: see the module docstring.

  Returns:
    x at the grid's last time, of `shape`; with return_trajectory, (x, SolverTrajectory).
  """
  plan = _prepare(
    "euler_sample", process, key, shape, x_init, t, num_steps, spacing, prediction, 50, False
  )
  dt = (plan.grid[1:] - plan.grid[:-1]).astype(plan.x.dtype)

  def step(x, aux, inputs):
    t_i, h, d_a, d_s, to_data = inputs
    x0, eps = _denoise(model_fn, process, x, t_i, prediction, clip)
    return jnp.where(to_data, x0, x + h * (d_a * x0 + d_s * eps)), aux, x0

  xs = (plan.grid[:-1], dt, plan.d_alpha[:-1], plan.d_sigma[:-1], plan.to_data)
  return _run(plan, step, xs, None, return_trajectory)


def heun_sample(
  model_fn,
  process: GaussianProcess,
  key=None,
  *,
  shape=None,
  x_init=None,
  t=None,
  num_steps: int | None = None,
  spacing: str | None = None,
  prediction: str = "eps",
  clip: bool = False,
  return_trajectory: bool = False,
  s_churn: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = math.inf,
  s_noise: float = 1.0,
):
  """EDM's sampler (Karras et al. 2022, Algorithm 2; Algorithm 1's general form) in the
  process's own time. With EDM's noise level s(t) = sigma / alpha and N steps, at step i:
    gamma = min(s_churn / N, sqrt(2) - 1) if s_tmin <= s(t_i) <= s_tmax else 0,
    t_hat = lambda^{-1}(lambda(t_i) - 2 log(1 + gamma)), capped at t_max (s(t_hat) = (1 + gamma)
            s(t_i) below the cap: the churn never leaves the model's range),
    x_hat = (alpha_hat / alpha_i) x_i + alpha_hat sqrt(s_hat^2 - s_i^2) s_noise z_i,
    d = alpha'(t_hat) x0_hat + sigma'(t_hat) eps_hat at (x_hat, t_hat),
    x_{i+1} = x_hat + (t_{i+1} - t_hat) d, then Heun's correction with d' at (x_{i+1}, t_{i+1}):
    x_{i+1} = x_hat + (t_{i+1} - t_hat) (d + d') / 2; a step to the data returns x0_hat (EDM's
    last step). On ve it is k-diffusion's sample_heun step for step. z_i from
  fold_in(split(key)[1], i); s_hat^2 - s_i^2 is written (s_hat - s_i)(s_hat + s_i), exactly 0
  without churn. 2N - 1 network calls on a grid ending at the data (default N = 18, EDM's 35);
  the correction runs under lax.cond. With churn, an integer grid becomes real times.

  Returns:
    x at the grid's last time; with return_trajectory, (x, SolverTrajectory).
  """
  name = "heun_sample"
  s_churn = checks.check_real(s_churn, "s_churn", 0.0)
  s_noise = checks.check_real(s_noise, "s_noise", 0.0)
  if not s_tmin <= s_tmax:
    raise ValueError(f"{name}: need s_tmin <= s_tmax, got {s_tmin}, {s_tmax}")
  plan = _prepare(
    name, process, key, shape, x_init, t, num_steps, spacing, prediction, 18, s_churn > 0
  )
  grid, dtype = plan.grid, plan.x.dtype
  num = grid.shape[0] - 1
  t_cur, t_next = grid[:-1], grid[1:]
  alpha, sigma = plan.alpha[:-1], plan.sigma[:-1]
  d_alpha, d_sigma = plan.d_alpha[:-1], plan.d_sigma[:-1]
  if s_churn > 0:
    edm_sigma = jnp.exp(-0.5 * plan.log_snr[:-1])  # inf at zero SNR
    gamma = jnp.where(
      (edm_sigma >= s_tmin) & (edm_sigma <= s_tmax), min(s_churn / num, math.sqrt(2) - 1), 0.0
    )
    t_cur = t_cur.astype(_float())
    raised = process.t_from_log_snr(plan.log_snr[:-1] - 2.0 * jnp.log1p(gamma))
    churned = (gamma > 0) & (raised > t_cur)
    t_hat = jnp.where(churned, raised, t_cur)
    alpha_c, sigma_c = process.alpha_sigma(t_hat)
    _, _, d_alpha_c, d_sigma_c = process.derivatives(t_hat)
    alpha_hat = jnp.where(churned, alpha_c, alpha).astype(dtype)
    d_alpha = jnp.where(churned, d_alpha_c, d_alpha).astype(dtype)
    d_sigma = jnp.where(churned, d_sigma_c, d_sigma).astype(dtype)
    safe_alpha = jnp.where(churned, alpha, 1.0)
    s_cur, s_hat = sigma / safe_alpha, sigma_c / jnp.where(churned, alpha_c, 1.0)
    # (s_hat - s)(s_hat + s), not s_hat**2 - s**2: exactly 0 when equal (XLA's FMA).
    churn_std = jnp.where(
      churned, s_noise * alpha_hat * jnp.sqrt(jnp.maximum((s_hat - s_cur) * (s_hat + s_cur), 0)), 0
    ).astype(dtype)
    scale = jnp.where(churned, alpha_hat / safe_alpha, 1.0).astype(dtype)
    t_next = t_next.astype(_float())
  else:
    t_hat, churn_std, scale = t_cur, jnp.zeros(num, dtype), jnp.ones(num, dtype)
  h = (t_next - t_hat).astype(dtype)
  safe_next = jnp.where(plan.to_data, t_hat, t_next)  # the correction never runs at the data
  d_alpha_next, d_sigma_next = plan.d_alpha[1:], plan.d_sigma[1:]

  def step(x, aux, inputs):
    i, t_h, t_n, h_i, std, scl, d_a, d_s, d_a_n, d_s_n, to_data = inputs
    if s_churn > 0:
      x = scl * x + std * _noise(plan.step_key, i, plan.shape, dtype)
    x0, eps = _denoise(model_fn, process, x, t_h, prediction, clip)
    d = d_a * x0 + d_s * eps
    x_euler = x + h_i * d

    def heun(_):
      x0_n, eps_n = _denoise(model_fn, process, x_euler, t_n, prediction, clip)
      return x + h_i * 0.5 * (d + d_a_n * x0_n + d_s_n * eps_n)

    return jax.lax.cond(to_data, lambda _: x0, heun, None), aux, x0

  xs = (
    _steps(plan), t_hat, safe_next, h, churn_std, scale, d_alpha, d_sigma, d_alpha_next,
    d_sigma_next, plan.to_data,
  )  # fmt: skip
  return _run(plan, step, xs, None, return_trajectory)


def ddim_sample(
  model_fn,
  process: GaussianProcess,
  key=None,
  *,
  shape=None,
  x_init=None,
  t=None,
  num_steps: int | None = None,
  spacing: str | None = None,
  prediction: str = "eps",
  clip: bool = False,
  return_trajectory: bool = False,
  eta: float = 0.0,
):
  """DDIM (Song et al. 2021, eq. 12) on any process: from t to the next time s,
    c = eta sigma_s sqrt(1 - exp(lambda_t - lambda_s)),
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,   z from fold_in(split(key)[1], i).
  eta = 0 is Euler's step in EDM's coordinates (x / alpha, sigma / alpha), exact for a model
  that is right at t (the probability-flow ODE's first-order exponential integrator); eta = 1
  draws from the posterior q(x_s | x_t, x0_hat) (c^2 = its variance, for any alpha, sigma:
  sigma_s^2 (1 - alpha_t^2 sigma_s^2 / (alpha_s^2 sigma_t^2))), DDPM's ancestral step on a
  respaced grid. On a discrete process with an integer grid it is
  gen_jax.diffusion.ddim_sample. N network calls (default N = 50); eta in [0, 1].

  Returns:
    x at the grid's last time; with return_trajectory, (x, SolverTrajectory).
  """
  eta = checks.check_real(eta, "eta", 0.0)
  _check_eta(eta, "ddim_sample")
  plan = _prepare(
    "ddim_sample", process, key, shape, x_init, t, num_steps, spacing, prediction, 50, eta > 0
  )
  alpha_n, sigma_n = plan.alpha[1:], plan.sigma[1:]
  # 1 - exp(lambda_t - lambda_s) in [0, 1]: 1 to the data and from zero SNR.
  ratio = -jnp.expm1(plan.log_snr[:-1] - plan.log_snr[1:])
  noise_std = eta * sigma_n * jnp.sqrt(ratio)
  eps_coef = sigma_n * jnp.sqrt(jnp.maximum(1.0 - eta**2 * ratio, 0.0))
  dtype = plan.x.dtype

  def step(x, aux, inputs):
    i, t_i, a_n, e_c, n_s = inputs
    x0, eps = _denoise(model_fn, process, x, t_i, prediction, clip)
    x_next = a_n * x0 + e_c * eps
    if eta > 0:
      x_next = x_next + n_s * _noise(plan.step_key, i, plan.shape, dtype)
    return x_next, aux, x0

  xs = (_steps(plan), plan.grid[:-1], alpha_n, eps_coef, noise_std)
  return _run(plan, step, xs, None, return_trajectory)


def dpmpp_2m_sample(
  model_fn,
  process: GaussianProcess,
  key=None,
  *,
  shape=None,
  x_init=None,
  t=None,
  num_steps: int | None = None,
  spacing: str | None = None,
  prediction: str = "eps",
  clip: bool = False,
  return_trajectory: bool = False,
):
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in lambda: with h_i = (lambda_{i+1} -
  lambda_i) / 2 (the half log-SNR, k-diffusion's t = -log(sigma / alpha)) and D_i = x0_hat,
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (1 - e^{-h_i}) D'_i,
    D'_i = D_i + (h_i / (2 h_{i-1})) (D_i - D_{i-1}),
  first order (D'_i = D_i, a DDIM step) at the first step and on a step to the data. Exact
  limits at zero SNR (h_0 = inf: x_1 = (sigma_1 / sigma_0) x_0 + alpha_1 D_0, the next
  correction 0). On ve it is k-diffusion's sample_dpmpp_2m; on a discrete process with an
  integer grid gen_jax.diffusion.dpmpp_2m_sample on the same levels. N network calls (default
  N = 20); deterministic (key only for the start). Default grid: uniform in lambda (Lu et al.'s
  "logSNR" steps): on N(0.2, 0.3^2) with the exact model at 20 steps its std is off by 1.3%
  (vp_linear), 3.0% (vp_cosine), 1.7% (ve), against 5.2%, 15.9%, 5.7% on the karras grid.

  Returns:
    x at the grid's last time; with return_trajectory, (x, SolverTrajectory).
  """
  plan = _prepare(
    "dpmpp_2m_sample",
    process,
    key,
    shape,
    x_init,
    t,
    num_steps,
    spacing,
    prediction,
    20,
    False,
    preferred_spacing="log_snr",
  )
  half = 0.5 * plan.log_snr
  h = half[1:] - half[:-1]
  h_prev = jnp.append(1.0, h[:-1])
  coef_x = plan.sigma[1:] / plan.sigma[:-1]
  coef_d = plan.alpha[1:] * -jnp.expm1(-h)
  second = (_steps(plan) > 0) & ~plan.to_data
  correction = jnp.where(second, h / (2.0 * h_prev), 0.0)

  def step(x, x0_prev, inputs):
    t_i, c_x, c_d, c_corr = inputs
    x0, _ = _denoise(model_fn, process, x, t_i, prediction, clip)
    return c_x * x + c_d * (x0 + c_corr * (x0 - x0_prev)), x0, x0

  xs = (plan.grid[:-1], coef_x, coef_d, correction)
  return _run(plan, step, xs, jnp.zeros_like(plan.x), return_trajectory)


def euler_maruyama_sample(
  model_fn,
  process: GaussianProcess,
  key=None,
  *,
  shape=None,
  x_init=None,
  t=None,
  num_steps: int | None = None,
  spacing: str | None = None,
  prediction: str = "eps",
  clip: bool = False,
  return_trajectory: bool = False,
):
  """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6)
    dx = [f x - g^2 score] dt + g dW,  f = alpha'/alpha,  g^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha),
  score = -eps_hat / sigma, i.e. with dt = t_{i+1} - t_i < 0 and z from fold_in(split(key)[1], i):
    x_{i+1} = x_i + dt [alpha' x0_hat + (2 sigma' - sigma alpha'/alpha) eps_hat] + sqrt(-g^2 dt) z.
  f and g are infinite where alpha = 0 (rectified flow at t = 1): a step from zero SNR is the
  SDE's exact transition there, x_{i+1} = alpha_{i+1} x0_hat + sigma_{i+1} z (x_t carries no
  information at zero SNR). A step to the data returns x0_hat. Weak order 1: it needs many steps
  (default N = 500, N network calls).

  Returns:
    x at the grid's last time; with return_trajectory, (x, SolverTrajectory).
  """
  plan = _prepare(
    "euler_maruyama_sample", process, key, shape, x_init, t, num_steps, spacing, prediction,
    500, True,
  )  # fmt: skip
  alpha, sigma = plan.alpha[:-1], plan.sigma[:-1]
  d_alpha, d_sigma = plan.d_alpha[:-1], plan.d_sigma[:-1]
  zero_snr = alpha == 0
  rate = d_alpha / jnp.where(zero_snr, 1.0, alpha)  # f = alpha'/alpha
  dt = (plan.grid[1:] - plan.grid[:-1]).astype(plan.x.dtype)
  eps_coef = 2.0 * d_sigma - sigma * rate
  g2 = 2.0 * sigma * (d_sigma - sigma * rate)
  noise_std = jnp.where(zero_snr, plan.sigma[1:], jnp.sqrt(jnp.maximum(-g2 * dt, 0.0)))
  dtype = plan.x.dtype

  def step(x, aux, inputs):
    i, t_i, h, d_a, e_c, a_n, n_s, zero, to_data = inputs
    x0, eps = _denoise(model_fn, process, x, t_i, prediction, clip)
    drift = jnp.where(zero, a_n * x0, x + h * (d_a * x0 + e_c * eps))
    x_next = drift + n_s * _noise(plan.step_key, i, plan.shape, dtype)
    return jnp.where(to_data, x0, x_next), aux, x0

  xs = (
    _steps(plan), plan.grid[:-1], dt, d_alpha, eps_coef, plan.alpha[1:], noise_std, zero_snr,
    plan.to_data,
  )  # fmt: skip
  return _run(plan, step, xs, None, return_trajectory)


# ---------------------------------------------------------------------------------------------
# The registry


@dataclasses.dataclass(frozen=True)
class ProcessSamplerSpec:
  """A process sampler as the registry knows it (the fields of samplers.SamplerSpec).

  Attributes:
    fn: fn(model_fn, process, key, *, shape=, x_init=, t=, num_steps=, spacing=, prediction=,
      clip=, return_trajectory=, **options) -> samples.
    summary: what it is, in a few words.
    default_steps: N when neither num_steps nor t is given.
    options: the keyword options particular to it, with fn's defaults.
    takes_num_steps: always True here (every sampler runs on a grid of N steps).
    network_calls: N -> model evaluations per sample on a grid ending at the data.
    stochastic: whether it draws noise after the start (then it needs a key).
    domains: for each option, the values it accepts, (description, allows(value) -> bool), as
      samplers.SamplerSpec's: config.sample.options are checked against it at start-up.
  """

  fn: Callable[..., Any]
  summary: str
  default_steps: int
  options: Mapping[str, Any]
  takes_num_steps: bool = True
  network_calls: Callable[[int], int] = lambda num_steps: num_steps
  stochastic: bool = False
  domains: Mapping[str, tuple[str, Callable[[Any], bool]]] = dataclasses.field(default_factory=dict)


# Options every process sampler takes (see the module docstring).
PROCESS_COMMON_OPTIONS = ("t", "spacing", "x_init", "return_trajectory")

PROCESS_SAMPLERS: dict[str, ProcessSamplerSpec] = {
  "euler": ProcessSamplerSpec(euler_sample, "Euler on the probability-flow ODE in t", 50, {}),
  "heun": ProcessSamplerSpec(
    heun_sample,
    "EDM's Heun (Algorithm 2), optional churn; 2N - 1 network calls for N steps",
    18,
    {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0},
    network_calls=lambda num_steps: 2 * num_steps - 1,
    domains={
      "s_churn": _NON_NEGATIVE,
      "s_tmin": _NON_NEGATIVE,
      "s_tmax": _NON_NEGATIVE_OR_INF,
      "s_noise": _NON_NEGATIVE,
    },
  ),
  "ddim": ProcessSamplerSpec(
    ddim_sample,
    "DDIM (eta = 0: Euler in x / alpha)",
    50,
    {"eta": 0.0},
    domains={"eta": _UNIT_INTERVAL},
  ),
  "dpm++2m": ProcessSamplerSpec(dpmpp_2m_sample, "DPM-Solver++(2M) in log-SNR", 20, {}),
  "euler_maruyama": ProcessSamplerSpec(
    euler_maruyama_sample, "Euler-Maruyama on the reverse SDE", 500, {}, stochastic=True
  ),
}


# A model with samplers of its own besides the process view (DDPM's samplers.SAMPLERS, VDM's
# ancestral "ddpm") names these "process_<name>" (process_heun: EDM's Heun at real t, where
# DDPM's heun snaps sigma to its T levels), or by the bare name where it has no sampler of that
# name (euler, euler_maruyama beside DDPM's).
PROCESS_PREFIX = "process_"


def process_sampler_name(name: str, *, own: Collection[str] = ()) -> str | None:
  """The PROCESS_SAMPLERS name that sampler `name` selects on a model whose own samplers are
  `own`: name less PROCESS_PREFIX, or name itself where `own` has no sampler of that name;
  None where `own` serves it (a bare name in `own`).

  Raises:
    ValueError naming the accepted names (`sampler_names(own=own)`) for any other name.
  """
  if name.startswith(PROCESS_PREFIX) and name[len(PROCESS_PREFIX) :] in PROCESS_SAMPLERS:
    return name[len(PROCESS_PREFIX) :]
  if name in own:
    return None
  if name in PROCESS_SAMPLERS:
    return name
  raise ValueError(f"sampler must be one of {sampler_names(own=own)}, got {name!r}")


def sampler_names(*, own: Collection[str] = ()) -> tuple[str, ...]:
  """Every sampler name a model whose own samplers are `own` accepts: those, the process
  samplers it has no name for, and every process sampler as "process_<name>"."""
  bare = [name for name in PROCESS_SAMPLERS if name not in own]
  return (*own, *bare, *(PROCESS_PREFIX + name for name in PROCESS_SAMPLERS))


def process_sampler_spec(name: str) -> ProcessSamplerSpec:
  """PROCESS_SAMPLERS[name], or ValueError naming the registered samplers."""
  if name not in PROCESS_SAMPLERS:
    raise ValueError(f"sampler must be one of {tuple(PROCESS_SAMPLERS)}, got {name!r}")
  return PROCESS_SAMPLERS[name]
