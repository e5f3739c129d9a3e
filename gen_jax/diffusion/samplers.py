"""Samplers: ancestral DDPM, DDIM, respaced DDPM, DPM-Solver++(2M) and EDM's Heun,
DDIM inversion, and `SAMPLERS`, the one registry of their names, default step
counts, options and costs.

Every sampler is a pure function `fn(key, model_fn, schedule, shape, *, ...)
-> samples of shape`, one compiled `lax.scan` over its steps. The model's
output predicts `prediction` (eps | x0 | v) and is read through
`forward.eps_and_x0`, which never divides by sqrt(ac_t) for x0 and v: a
zero-terminal-SNR schedule (ac_{T-1} = 0, Lin et al. 2024) samples exactly
with a v- or x0-predictor (eps-prediction at such a level is refused).

Options every sampler takes (keyword-only):
  timesteps: the strictly decreasing int levels in [0, T) it visits (network
    calls there), replacing the default grid of num_steps (not both). The
    last step always goes to the data (to the x0 prediction at the last
    level), wherever the grid ends (ddpm, respaced, ddim: unless t_end).
    `spaced_timesteps` gives diffusers' spacings ("linspace", "leading",
    "trailing", and diffusers' steps_offset). Concrete timesteps are checked
    (ValueError); traced ones (built inside jit) cannot be, and are the
    caller's to get right: ascending levels give NaN, levels outside [0, T)
    are clamped by JAX's indexing to a finite wrong result.
  x_init: the state at the grid's first level, in VP coordinates (default
    N(0, I) from split(key)[0]). The rule, for every sampler: x_init is x_T,
    the default grids start at T - 1 whenever x_init is given (Heun's EDM grid
    then starts at sigma_{T-1}, not at its cap sigma_max = 80, which is level
    930 of linear T = 1000); with `timesteps=` (Heun: also `sigmas=` or
    `sigma_max=`) x_init is the state at that grid's first level,
    `Trajectory.timesteps[0]`. x_init is cast to the dtype the steps compute
    in, its own promoted with the schedule's (float32 under jax_enable_x64
    runs in float64, bfloat16 in the schedule's float32). A grid that starts
    below T - 1 with x_init = q_sample(x0=..., t=timesteps[0], noise=...) is
    SDEdit / img2img (Meng et al. 2022); `img2img_timesteps` gives diffusers'
    img2img grid for a strength:
      grid = diffusion.img2img_timesteps(1000, 50, 0.6)  # diffusers' get_timesteps
      t_start = jnp.full((B,), grid[0])
      x_t = diffusion.make_q_sample(schedule)(x0=images, t=t_start, noise=noise)
      edited = diffusion.ddim_sample(key, model_fn, schedule, timesteps=grid, x_init=x_t)
  t_end (ddpm, respaced, ddim): stop at level t_end instead of the data: the
    last step goes from the grid's last level to t_end (in [0, that level])
    and the sampler returns x_{t_end}, noise included (eta > 0, ddpm). t_end =
    0 is diffusers' set_alpha_to_one=False (final_alpha_cumprod =
    alphas_cumprod[0]); with `spaced_timesteps(T, K, "leading", steps_offset=1)`
    ddim_sample is DDIMScheduler of a Stable-Diffusion config step for step.
  return_trajectory: also return a `Trajectory` (the timesteps of the network
    calls, the state x_t there and the predicted x0 there), the outputs of the
    same scan; without it the scan stacks nothing, with or without jit.
  num_steps (all but ddpm) must be a static Python int: it fixes the scan's
    length (a traced one is refused by name).
Per-step noise comes from fold_in(split(key)[1], step).
`run_sampler` calls one by name; `describe_sampler` says what that call runs
(steps, network calls, the options that apply) without running it.

Longer than the house's ~400 lines on purpose: the samplers and the registry
that names them stay in one file, so adding a sampler is one edit in one place.
"""

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import checks
from gen_jax.diffusion._helpers import at, concrete_or_none
from gen_jax.diffusion.forward import ModelFn, check_prediction_for_schedule, eps_and_x0
from gen_jax.diffusion.reverse import VARIANCES, check_variance
from gen_jax.diffusion.schedules import Schedule, schedule_sigmas, sigma_to_timestep
from gen_jax.diffusion.timesteps import (
  check_timesteps,
  ddim_timesteps,
  edm_sigma_range,
  edm_timesteps,
  karras_sigmas,
  log_sigma_timesteps,
  snap_sigmas,
)

Array = jax.Array


class Trajectory(NamedTuple):
  """What a sampler saw at each of its K network calls (Heun: the first call
  of each step), from the outputs of its scan.

  Attributes:
    timesteps: int32 (K,), the level of each call.
    x: (K, B, ...), the state x_t there (VP coordinates: what the network saw).
    x0: (K, B, ...), the predicted x0 there (clipped if the sampler clips).
  """

  timesteps: Array
  x: Array
  x0: Array


# ----------------------------------------------------------------------------
# Shared pieces: the grid, the start, the model's prediction
# ----------------------------------------------------------------------------


def _check_static(num_steps, name) -> None:
  """ValueError naming `name` for a traced num_steps: it fixes the grid's length (the scan's)."""
  if num_steps is not None and concrete_or_none(num_steps) is None:
    raise ValueError(
      f"{name}: num_steps must be static (a Python int: it fixes the number of steps), got a "
      "traced value; under jax.jit close over it or mark it static (static_argnames), or "
      "pass timesteps="
    )


def _grid(schedule, num_steps, timesteps, default, name) -> Array:
  """The levels a sampler visits: `timesteps` checked, or default(num_steps)."""
  if timesteps is not None:
    if num_steps is not None:
      raise ValueError(f"{name}: pass num_steps or timesteps, not both")
    return check_timesteps(timesteps, schedule.num_timesteps, name)
  _check_static(num_steps, name)
  return jnp.asarray(default(num_steps), jnp.int32)


def _ddim_grid(schedule):
  """The default grid of ddim, respaced and ddim_invert: num_steps -> `ddim_timesteps(T,
  num_steps)`, all T levels for num_steps None."""
  num_timesteps = schedule.num_timesteps
  return lambda num_steps: ddim_timesteps(
    num_timesteps, num_timesteps if num_steps is None else num_steps
  )


def _state_dtype(schedule, x) -> Any:
  """The dtype a sampler's steps compute in: x's promoted with the schedule's (a float)."""
  dtype = jnp.promote_types(jnp.result_type(x), schedule.alphas_cumprod.dtype)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _check_shape(shape, name) -> tuple[int, ...]:
  """shape as a tuple of ints; ValueError naming `name` for anything else, such as a start
  state passed positionally where shape is expected."""
  try:
    return tuple(operator.index(d) for d in shape)
  except TypeError:
    got = f"an array of shape {jnp.shape(shape)}" if hasattr(shape, "shape") else repr(shape)
    raise ValueError(
      f"{name}: shape must be a tuple of ints (B, ...), got {got}; pass a start state as "
      "x_init= (keyword-only)"
    ) from None


def _start(key, shape, x_init, name, schedule):
  """(x at the first level, the per-step noise key, shape). x_init is cast to the dtype the
  steps compute in (`_state_dtype`), so that the scan's carry keeps one type."""
  init_key, step_key = jax.random.split(key)
  if shape is not None:
    shape = _check_shape(shape, name)
  if x_init is None:
    if shape is None:
      raise ValueError(f"{name}: give shape or x_init")
    dtype = _state_dtype(schedule, jnp.zeros((), jnp.result_type(float)))
    return jax.random.normal(init_key, shape, dtype), step_key, shape
  x_init = jnp.asarray(x_init)
  x_init = x_init.astype(_state_dtype(schedule, x_init))
  if shape is not None and shape != x_init.shape:
    raise ValueError(f"{name}: shape {shape} differs from x_init's {x_init.shape}")
  return x_init, step_key, x_init.shape


def _steps_out(return_trajectory, x, x0):
  """A scan body's per-step output: (x, x0) for the trajectory, else nothing, so that a
  sampler called without jit does not build (K, B, ...) stacks nobody asked for."""
  return (x, x0) if return_trajectory else None


def _check_t_end(t_end, grid, name):
  """t_end as an int32 scalar; ValueError unless in [0, the grid's last level] (concrete)."""
  if t_end is None:
    return None
  if isinstance(t_end, bool) or not jnp.issubdtype(jnp.result_type(t_end), jnp.integer):
    raise ValueError(f"{name}: t_end must be an integer level or None, got {t_end!r}")
  value, last = concrete_or_none(t_end), concrete_or_none(grid[-1])
  if value is not None and last is not None and not 0 <= int(value) <= int(last):
    raise ValueError(
      f"{name}: t_end must be a level in [0, {int(last)}] (at most the grid's last level, "
      f"the last step goes from there to t_end), got {int(value)}"
    )
  return jnp.asarray(t_end, jnp.int32)


def _predict(model_fn, schedule, x, t, prediction, clip):
  """(eps, x0) of the model at (x, t) for a scalar level t; with clip, x0 is
  clipped to [-1, 1] and eps re-derived from it, (x - a_t x0) / s_t."""
  t_batch = jnp.full((x.shape[0],), t, jnp.int32)
  eps, x0 = eps_and_x0(
    schedule, x_t=x, t=t_batch, output=model_fn(x, t_batch), prediction=prediction
  )
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = (x - at(schedule.sqrt_alphas_cumprod, t_batch, x) * x0) / at(
      schedule.sqrt_one_minus_alphas_cumprod, t_batch, x
    )
  return eps, x0


def _check_eta(eta, name) -> None:
  """ValueError naming `name` unless eta (when concrete) is in [0, 1]."""
  value = concrete_or_none(eta)
  if value is not None and (np.ndim(value) != 0 or not 0.0 <= float(value) <= 1.0):
    raise ValueError(
      f"{name}: eta must be a number in [0, 1] (0: deterministic DDIM, 1: the ancestral "
      f"sampler's noise), got {eta!r}"
    )


def _finish(x, grid, states, return_trajectory):
  if not return_trajectory:
    return x
  return x, Trajectory(grid, *states)


def _next_levels(grid, t_end=None):
  """alphas_cumprod index of the step after each level: the next level, last t_end (None:
  -1, the data)."""
  return jnp.append(grid[1:], -1 if t_end is None else t_end)


def _ac_at(schedule, levels):
  """alphas_cumprod at levels, 1 at level -1 (the data)."""
  return jnp.where(levels >= 0, schedule.alphas_cumprod[jnp.maximum(levels, 0)], 1.0)


# ----------------------------------------------------------------------------
# Ancestral sampling and DDIM
# ----------------------------------------------------------------------------


def _ancestral_coefficients(schedule, grid, variance, t_end=None):
  """Per step from level t to the next level s (ac_s = 1 after the last):
  the posterior q(x_s | x_t, x0) = N(c1 x0 + c2 x_t, v) of the respaced
  chain, beta' = 1 - ac_t / ac_s (Nichol & Dhariwal 2021, sec. 4):
    c1 = sqrt(ac_s) beta' / (1 - ac_t),  c2 = (1 - ac_s) sqrt(1 - beta') / (1 - ac_t),
    v = beta' (1 - ac_s) / (1 - ac_t) ("small") or beta' ("large").
  Between consecutive levels the schedule's own float64-precomputed values
  are used (beta' = beta_t), so all T steps are DDPM to the last digit; the
  last step's noise is 0 when it goes to the data (t_end None). Finite at a
  zero-SNR level (ac_t = 0, beta' = 1)."""
  nxt = _next_levels(grid, t_end)
  ac_t = schedule.alphas_cumprod[grid]
  ac_s = _ac_at(schedule, nxt)
  consecutive = nxt == grid - 1
  beta = jnp.where(consecutive, schedule.betas[grid], 1.0 - ac_t / ac_s)
  c1 = jnp.where(
    consecutive, schedule.posterior_mean_coef1[grid], jnp.sqrt(ac_s) * beta / (1.0 - ac_t)
  )
  c2 = jnp.where(
    consecutive,
    schedule.posterior_mean_coef2[grid],
    (1.0 - ac_s) * jnp.sqrt(1.0 - beta) / (1.0 - ac_t),
  )
  if variance == "small":
    var = jnp.where(
      consecutive, schedule.posterior_variance[grid], beta * (1.0 - ac_s) / (1.0 - ac_t)
    )
  else:
    var = beta
  std = jnp.where(nxt >= 0, jnp.sqrt(jnp.maximum(var, 0.0)), 0.0)
  return c1, c2, std


def ddpm_sample(
  key,
  model_fn: ModelFn,
  schedule: Schedule,
  shape=None,
  *,
  prediction: str = "eps",
  variance: str = "small",
  clip: bool = False,
  timesteps=None,
  t_end=None,
  x_init=None,
  return_trajectory: bool = False,
):
  """Ancestral sampling, x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t).

  Algorithm 2 of Ho et al. (2020): x_{t-1} = posterior mean at the predicted
  x0 + sigma_t z, sigma_t^2 = beta~_t ("small") or beta_t ("large"), all T
  levels by default, in one compiled `lax.scan`; the last step returns the
  mean (no noise). With `timesteps` (K levels) it is the respaced chain of
  `respaced_ddpm_sample` on them. x_init from split(key)[0] and the noise of
  step i (of K) from fold_in(split(key)[1], K - 1 - i) (= t on all T levels).

  Args:
    model_fn: batched (x_t, t) -> output predicting `prediction`.
    shape: (B, ...), the shape of the samples (or None with x_init).
    prediction: "eps" | "x0" | "v". variance: "small" | "large".
    clip: clip the predicted x_0 to [-1, 1] at every step.
    timesteps, t_end, x_init, return_trajectory: see the module docstring.

  Returns:
    Samples of `shape` (x_{t_end} with t_end); with return_trajectory,
    (samples, Trajectory).
  """
  name = "ddpm_sample"
  check_variance(variance)
  grid = _grid(
    schedule, None, timesteps, lambda _: jnp.arange(schedule.num_timesteps - 1, -1, -1), name
  )
  check_prediction_for_schedule(schedule, prediction, grid, name)
  t_end = _check_t_end(t_end, grid, name)
  x, step_key, shape = _start(key, shape, x_init, name, schedule)
  c1, c2, std = _ancestral_coefficients(schedule, grid, variance, t_end)
  num = grid.shape[0]

  def body(x, inputs):
    i, t, coef1, coef2, sigma = inputs
    _, x0 = _predict(model_fn, schedule, x, t, prediction, clip)
    noise = jax.random.normal(jax.random.fold_in(step_key, num - 1 - i), shape, x.dtype)
    return coef1 * x0 + coef2 * x + sigma * noise, _steps_out(return_trajectory, x, x0)

  x_data, states = jax.lax.scan(body, x, (jnp.arange(num), grid, c1, c2, std))
  return _finish(x_data, grid, states, return_trajectory)


def ddim_sample(
  key,
  model_fn: ModelFn,
  schedule: Schedule,
  shape=None,
  *,
  num_steps: int | None = None,
  timesteps=None,
  eta: float = 0.0,
  prediction: str = "eps",
  clip: bool = False,
  t_end=None,
  x_init=None,
  return_trajectory: bool = False,
):
  """DDIM sampling (Song et al. 2021, eq. 12) on `ddim_timesteps(T, num_steps)`
  (default: all T) or on `timesteps`.

  From t to the next level s (ac_s = 1 after the last step), with (eps, x0)
  the model's (`eps_and_x0`; clipped x0 and eps re-derived if `clip`):
    sigma = eta sqrt((1 - ac_s) / (1 - ac_t)) sqrt(1 - ac_t / ac_s),
    x_s = sqrt(ac_s) x0 + sqrt(1 - ac_s - sigma^2) eps + sigma z,
  z from fold_in(split(key)[1], i) at step i. eta = 0 is the deterministic
  sampler (the probability-flow ODE's discretisation; `ddim_invert` runs it
  backwards); eta = 1 matches ancestral sampling's marginals (respaced DDPM,
  "small" variance). eta outside [0, 1] is refused when concrete (eta > 1
  would clip the square root; traced, it is not checked).

  Args:
    shape: (B, ...) (or None with x_init). num_steps: in [1, T], static.
    eta: in [0, 1]. prediction: "eps" | "x0" | "v".
    timesteps, t_end, x_init, return_trajectory: see the module docstring.

  Returns:
    Samples of `shape` (the final x0 prediction; x_{t_end} with t_end); with
    return_trajectory, (samples, Trajectory).
  """
  name = "ddim_sample"
  _check_eta(eta, name)
  grid = _grid(
    schedule,
    num_steps,
    timesteps,
    _ddim_grid(schedule),
    name,
  )
  check_prediction_for_schedule(schedule, prediction, grid, name)
  t_end = _check_t_end(t_end, grid, name)
  x, step_key, shape = _start(key, shape, x_init, name, schedule)
  ac = schedule.alphas_cumprod
  ac_next = _ac_at(schedule, _next_levels(grid, t_end))

  def body(x, inputs):
    i, t, a_next = inputs
    eps, x0 = _predict(model_fn, schedule, x, t, prediction, clip)
    a_t = ac[t]
    sigma = eta * jnp.sqrt((1 - a_next) / (1 - a_t) * (1 - a_t / a_next))
    noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, x.dtype)
    x_next = (
      jnp.sqrt(a_next) * x0
      + jnp.sqrt(jnp.maximum(1 - a_next - sigma**2, 0.0)) * eps
      + sigma * noise
    )
    return x_next, _steps_out(return_trajectory, x, x0)

  x_data, states = jax.lax.scan(body, x, (jnp.arange(grid.shape[0]), grid, ac_next))
  return _finish(x_data, grid, states, return_trajectory)


def ddim_invert(
  model_fn: ModelFn,
  schedule: Schedule,
  x0,
  *,
  num_steps: int | None = None,
  timesteps=None,
  prediction: str = "eps",
  return_trajectory: bool = False,
):
  """Deterministic DDIM inversion: data -> the state at the grid's top level.

  The grid is `ddim_sample`'s (`ddim_timesteps(T, num_steps)`, or
  `timesteps`), visited upwards: from the current state x at level s (the
  data first, ac = 1) to the next level t,
    eps = the model's eps at (x, t)   (its output at t read as eps_and_x0 does),
    x0_hat = (x - sqrt(1 - ac_s) eps) / sqrt(ac_s),
    x_t = sqrt(ac_t) x0_hat + sqrt(1 - ac_t) eps,
  i.e. DDIM's eta = 0 step solved for x_t with eps(x_t, t) approximated by
  eps(x_s, t) (Song et al. 2021, sec. 4.3; diffusers' DDIMInverseScheduler).
  `ddim_sample(..., timesteps=grid, x_init=ddim_invert(...))` then returns
  to the data up to that approximation's error, which shrinks as the steps
  grow. ac_s > 0 at every source level, so nothing divides by 0 (a
  zero-SNR top level gives x_T = eps). x0 is cast to the dtype the steps
  compute in (its own promoted with the schedule's).

  Args:
    x0: (B, ...) data. num_steps: in [1, T] (default T), static.
    return_trajectory: also return a `Trajectory` in the inversion's order,
      levels ascending: timesteps = the grid reversed, x[k] = the state
      reached at level timesteps[k] (x[-1] is the result), x0[k] = x0_hat
      of that step. `trajectory.x[::-1]` are the latents a DDIM sampler
      visits from the result on the same grid (null-text inversion's targets).

  Returns:
    x at level timesteps[0], of x0's shape; with return_trajectory,
    (x, Trajectory).
  """
  name = "ddim_invert"
  grid = _grid(
    schedule,
    num_steps,
    timesteps,
    _ddim_grid(schedule),
    name,
  )
  check_prediction_for_schedule(schedule, prediction, grid[:0], name)
  up = grid[::-1]
  ac_from = jnp.append(1.0, schedule.alphas_cumprod[up[:-1]])
  x0 = jnp.asarray(x0)
  x0 = x0.astype(_state_dtype(schedule, x0))

  def body(x, inputs):
    t, a_from = inputs
    t_batch = jnp.full((x.shape[0],), t, jnp.int32)
    output = model_fn(x, t_batch)
    if prediction == "eps":
      eps = output
    else:
      eps, _ = eps_and_x0(schedule, x_t=x, t=t_batch, output=output, prediction=prediction)
    x0_hat = (x - jnp.sqrt(1 - a_from) * eps) / jnp.sqrt(a_from)
    a_t = schedule.alphas_cumprod[t]
    x_t = jnp.sqrt(a_t) * x0_hat + jnp.sqrt(1 - a_t) * eps
    return x_t, _steps_out(return_trajectory, x_t, x0_hat)

  x_top, states = jax.lax.scan(body, x0, (up, ac_from))
  return _finish(x_top, up, states, return_trajectory)


# ----------------------------------------------------------------------------
# Respaced DDPM (Nichol & Dhariwal 2021, improved-diffusion's respacing)
# ----------------------------------------------------------------------------


def respaced_ddpm_sample(
  key,
  model_fn: ModelFn,
  schedule: Schedule,
  shape=None,
  *,
  num_steps: int | None = None,
  timesteps=None,
  prediction: str = "eps",
  variance: str = "small",
  clip: bool = False,
  t_end=None,
  x_init=None,
  return_trajectory: bool = False,
):
  """Ancestral sampling on num_steps of the T timesteps (respaced DDPM).

  The kept timesteps are `ddim_timesteps(T, num_steps)` (or `timesteps`);
  between consecutive kept levels t > s the chain uses the respaced beta'
  = 1 - ac_t / ac_s, so "small" is beta~' = beta' (1 - ac_s) / (1 - ac_t)
  and "large" is beta' (Nichol & Dhariwal 2021, sec. 4). With "small" the
  chain has the law of DDIM with eta = 1 on the same timesteps; num_steps =
  T is `ddpm_sample`. One compiled scan of num_steps network calls; keys as
  in `ddpm_sample`.

  Args:
    shape: (B, ...). num_steps: in [1, T] (default T). variance: "small" | "large".
    clip: clip the predicted x_0 to [-1, 1] at every step.
    timesteps, t_end, x_init, return_trajectory: see the module docstring.

  Returns:
    Samples of `shape`; with return_trajectory, (samples, Trajectory).
  """
  grid = _grid(
    schedule,
    num_steps,
    timesteps,
    _ddim_grid(schedule),
    "respaced_ddpm_sample",
  )
  if shape is not None:
    shape = _check_shape(shape, "respaced_ddpm_sample")
  return ddpm_sample(
    key,
    model_fn,
    schedule,
    shape,
    prediction=prediction,
    variance=variance,
    clip=clip,
    timesteps=grid,
    t_end=t_end,
    x_init=x_init,
    return_trajectory=return_trajectory,
  )


# ----------------------------------------------------------------------------
# DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2)
# ----------------------------------------------------------------------------


def dpmpp_2m_sample(
  key,
  model_fn: ModelFn,
  schedule: Schedule,
  shape=None,
  *,
  num_steps: int | None = None,
  timesteps=None,
  prediction: str = "eps",
  clip: bool = False,
  x_init=None,
  return_trajectory: bool = False,
):
  """DPM-Solver++(2M): multistep second-order solver of the probability-flow
  ODE in the data prediction, deterministic given x_init.

  With alpha_i = sqrt(ac_{t_i}), sigma_i = sqrt(1 - ac_{t_i}), lambda_i =
  log(alpha_i / sigma_i), h_i = lambda_{i+1} - lambda_i and D_i the x0
  prediction at (x_i, t_i) (`eps_and_x0`, clipped if `clip`):
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (1 - e^{-h_i}) D'_i,
    D'_i = D_i + (h_i / (2 h_{i-1})) (D_i - D_{i-1})  (i.e. (1 + 1/(2 r_i)) D_i
           - 1/(2 r_i) D_{i-1}, r_i = h_{i-1} / h_i);  D'_0 = D_0 (first order).
  The network is called at t_0 > ... > t_{K-1}; the final step goes to
  sigma = 0 (alpha = 1, e^{-h} = 0) and so returns D_{K-1}, first order (the
  "lower-order final step"). A first-order step is exactly a deterministic
  DDIM step. At a zero-terminal-SNR top level (alpha_0 = 0, lambda_0 = -inf)
  the formulas are used at their exact limits: h_0 = inf, x_1 = (sigma_1 /
  sigma_0) x_0 + alpha_1 D_0, and the next step's correction h_1 / (2 h_0) = 0.
  K = num_steps network calls in one compiled scan.

  Time grid: K timesteps uniform in lambda (`log_sigma_timesteps`,
  consecutive levels where the discrete levels are sparser than the grid),
  or `timesteps`. On the Gaussian-mixture oracle this is far better than
  DDIM's grid uniform in t: at 20 steps sliced W1 0.015 against 0.10, at 10
  steps 0.034 against 0.25 (2000 samples; data vs data 0.011).

  Args:
    shape: (B, ...). num_steps: K in [1, T], default 20 (K = 1: the x0
      prediction at T-1).
    timesteps, x_init, return_trajectory: see the module docstring.

  Returns:
    Samples of `shape`; with return_trajectory, (samples, Trajectory).
  """
  name = "dpmpp_2m_sample"
  num_timesteps = schedule.num_timesteps

  def default(n):
    n = 20 if n is None else n
    checks.check_integer(n, "num_steps", 1, num_timesteps)
    if n == 1:
      return jnp.array([num_timesteps - 1], jnp.int32)
    return log_sigma_timesteps(schedule, n)[::-1]

  grid = _grid(schedule, num_steps, timesteps, default, name)
  check_prediction_for_schedule(schedule, prediction, grid, name)
  x, _, shape = _start(key, shape, x_init, name, schedule)
  alpha = schedule.sqrt_alphas_cumprod[grid]
  sigma = schedule.sqrt_one_minus_alphas_cumprod[grid]
  log_snr = jnp.log(alpha) - jnp.log(sigma)  # -inf at a zero-SNR level
  alpha_next = jnp.append(alpha[1:], 1.0)
  sigma_next = jnp.append(sigma[1:], 0.0)
  h = jnp.append(log_snr[1:] - log_snr[:-1], jnp.inf)  # (K,), last: to sigma 0
  h_prev = jnp.append(1.0, h[:-1])
  coef_x = sigma_next / sigma
  coef_d = alpha_next * -jnp.expm1(-h)
  num = grid.shape[0]
  # Second order except at the first and the final step.
  second = (jnp.arange(num) > 0) & (jnp.arange(num) < num - 1)
  correction = jnp.where(second, h / (2.0 * h_prev), 0.0)

  def body(carry, inputs):
    x, x0_prev = carry
    t, c_x, c_d, c_corr = inputs
    _, x0 = _predict(model_fn, schedule, x, t, prediction, clip)
    d = x0 + c_corr * (x0 - x0_prev)
    return (c_x * x + c_d * d, x0), _steps_out(return_trajectory, x, x0)

  (x_data, _), states = jax.lax.scan(
    body, (x, jnp.zeros_like(x)), (grid, coef_x, coef_d, correction)
  )
  return _finish(x_data, grid, states, return_trajectory)


# ----------------------------------------------------------------------------
# EDM sampler (Karras et al. 2022, Algorithm 2): Heun, optional churn
# ----------------------------------------------------------------------------


def _check_sigmas(sigmas, name) -> Array:
  """`sigmas=` as a float vector; ValueError unless positive and strictly
  decreasing (values checked when concrete; inf allowed first)."""
  if isinstance(sigmas, (list, tuple)):
    sigmas = np.asarray(sigmas, np.float64)
  if jnp.ndim(sigmas) != 1 or jnp.shape(sigmas)[0] < 1:
    raise ValueError(f"{name}: sigmas must be a non-empty vector, got shape {jnp.shape(sigmas)}")
  values = concrete_or_none(sigmas)
  if values is not None and (
    np.any(~(values > 0)) or np.any(np.diff(values) >= 0) or np.any(np.isinf(values[1:]))
  ):
    raise ValueError(f"{name}: sigmas must be positive and strictly decreasing, got {values}")
  return jnp.asarray(sigmas, jnp.result_type(float))


def _edm_timesteps_from_top(schedule, num_steps, rho, sigma_min) -> Array:
  """Heun's grid for a given x_T: EDM's rho-grid from sigma_{T-1} (not EDM's cap at 80), so
  that its first level is T - 1; at zero terminal SNR (sigma_{T-1} = inf) the level T - 1,
  then the rho-grid of num_steps - 1 levels from sigma_{T-2}."""
  num_timesteps = schedule.num_timesteps
  checks.check_integer(num_steps, "num_steps", 1, num_timesteps)
  sigmas = schedule_sigmas(schedule)
  top, below = sigmas[-1], sigmas[max(num_timesteps - 2, 0)]
  zero_snr = jnp.isinf(top)
  finite = edm_timesteps(schedule, num_steps, rho, sigma_min, jnp.where(zero_snr, below, top))
  if num_steps == 1:
    return jnp.full((1,), num_timesteps - 1, jnp.int32)
  low, _ = edm_sigma_range(schedule, sigma_min, None)
  rest = karras_sigmas(low, below, num_steps - 1, rho)
  from_inf = snap_sigmas(schedule, jnp.concatenate([jnp.full((1,), jnp.inf, rest.dtype), rest]))
  return jnp.where(zero_snr, from_inf, finite)


def heun_sample(
  key,
  model_fn: ModelFn,
  schedule: Schedule,
  shape=None,
  *,
  num_steps: int | None = None,
  timesteps=None,
  sigmas=None,
  rho: float = 7.0,
  sigma_min=None,
  sigma_max=None,
  s_churn: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = float("inf"),
  s_noise: float = 1.0,
  prediction: str = "eps",
  clip: bool = False,
  x_init=None,
  return_trajectory: bool = False,
):
  """EDM sampling: Heun's method on the probability-flow ODE over the
  rho-schedule, with Karras et al.'s optional "churn" (Algorithm 2).

  In VE coordinates (x = x_t / sqrt(ac_t), see `schedule_sigmas`) with
  sigmas sigma_0 > ... > sigma_{N-1} at discrete levels and sigma_N = 0:
  the levels are `edm_timesteps(schedule, N, rho, sigma_min, sigma_max)`
  (defaults sigma_max = min(80, sigma_{T-1}), sigma_min = max(0.002,
  sigma_0): EDM's values clamped to the schedule; with x_init and no
  sigma_max, sigmas or timesteps, sigma_max = sigma_{T-1}, so that x_init
  is x_T as for every sampler), or `sigmas` (a
  decreasing grid, snapped to the nearest levels, `snap_sigmas`), or
  `timesteps`. x_0 = sigma_0 z (z from split(key)[0]; or x_init / sqrt(ac)),
  then for i = 0..N-1:
    gamma_i = min(s_churn / N, sqrt(2) - 1) if s_tmin <= sigma_i <= s_tmax else 0,
    sigma_hat = sigma_i (1 + gamma_i) rounded to the nearest level t_hat,
    x_hat = x_i + sqrt((sigma_hat - sigma_i)(sigma_hat + sigma_i)) s_noise e,
            e ~ N(0, I) from fold_in(split(key)[1], i),
    d = eps at (x_hat sqrt(ac_{t_hat}), t_hat)       (= (x_hat - D) / sigma_hat),
    x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d,
    if sigma_{i+1} > 0: d' = eps at (x_{i+1}, t_{i+1}),
       x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2.
  The churn's difference is written as a product so that it is exactly 0
  when sigma_hat = sigma_i: sqrt(sigma_hat^2 - sigma_i^2) is compiled into a
  fused multiply-add whose result is the rounding residue of sigma_i^2, and
  s_churn = 0 would then depend on the key. The last step (to sigma = 0) is
  Euler: 2N - 1 network calls (N = 18: 35), in one compiled scan (the Heun
  correction under lax.cond). With `clip`, D is clipped to [-1, 1] and d
  re-derived from it.

  A zero-terminal-SNR top level (sigma = inf, reached only through
  `timesteps` or `sigmas` holding it) takes the exact sigma_0 -> inf limit
  of the Euler step: x_1 = D_0 + sigma_1 z with z = the VP state there
  (x_init, default N(0, I)); no Heun correction on that step.

  Args:
    shape: (B, ...) (or None with x_init). num_steps: N in [1, T], default 18, static.
    rho: the sigma-schedule's exponent. s_churn, s_tmin, s_tmax, s_noise:
      the stochastic sampler's parameters (Karras et al. 2022, Table 5).
    timesteps, sigmas, num_steps: at most one of them.
    x_init, return_trajectory: see the module docstring (the trajectory's x
      is the VP state x_hat sqrt(ac_{t_hat}) at the first call of each step).

  Returns:
    Samples of `shape` (x at sigma = 0, the data scale); with
    return_trajectory, (samples, Trajectory).
  """
  name = "heun_sample"
  options = {"num_steps": num_steps, "timesteps": timesteps, "sigmas": sigmas}
  given = [option for option, value in options.items() if value is not None]
  if len(given) > 1:
    raise ValueError(f"{name}: pass at most one of num_steps, timesteps, sigmas; got {given}")
  if timesteps is not None:
    grid = check_timesteps(timesteps, schedule.num_timesteps, name)
  elif sigmas is not None:
    grid = snap_sigmas(schedule, _check_sigmas(sigmas, name))
  else:
    _check_static(num_steps, name)
    num = 18 if num_steps is None else num_steps
    if x_init is not None and sigma_max is None:
      grid = _edm_timesteps_from_top(schedule, num, rho, sigma_min)
    else:
      grid = edm_timesteps(schedule, num, rho, sigma_min, sigma_max)
  check_prediction_for_schedule(schedule, prediction, grid, name)
  num = grid.shape[0]
  all_sigmas = schedule_sigmas(schedule)
  sig = all_sigmas[grid]
  sig_next = jnp.append(sig[1:], 0.0)
  t_next = jnp.append(grid[1:], 0)
  top = jnp.isinf(sig)
  churn = jnp.where(
    (sig >= s_tmin) & (sig <= s_tmax), min(s_churn / num, math.sqrt(2.0) - 1.0), 0.0
  )
  snapped = sigma_to_timestep(schedule, jnp.where(top, 1.0, sig * (1.0 + churn)))
  t_hat = jnp.where(top, grid, jnp.maximum(snapped, grid))
  sig_hat = all_sigmas[t_hat]
  # (sig_hat - sig)(sig_hat + sig), not sig_hat**2 - sig**2: exactly 0 when equal (FMA).
  churn_std = s_noise * jnp.where(
    sig_hat > sig, jnp.sqrt(jnp.maximum((sig_hat - sig) * (sig_hat + sig), 0.0)), 0.0
  )
  x_vp, step_key, shape = _start(key, shape, x_init, name, schedule)
  if x_init is None:
    x = jnp.where(top[0], x_vp, sig[0] * x_vp)
  else:
    x = jnp.where(top[0], x_vp, x_vp / schedule.sqrt_alphas_cumprod[grid[0]])
  sqrt_ac = schedule.sqrt_alphas_cumprod

  def derivative(x, t, sig_t, is_top):
    """(d, D) at VE x and level t: d = (x - D) / sigma = the model's eps."""
    x_t = jnp.where(is_top, x, x * sqrt_ac[t])
    eps, x0 = _predict(model_fn, schedule, x_t, t, prediction, False)
    if clip:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - x0) / sig_t
    return eps, x0, x_t

  def body(x, inputs):
    i, t_h, sig_h, std, t_n, sig_n, is_top = inputs
    noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, x.dtype)
    x_hat = x + std * noise
    d, x0, x_t = derivative(x_hat, t_h, sig_h, is_top)
    # At sigma_hat = inf, x_hat holds the VP state (pure noise) and Euler's
    # limit is x_1 = D + sigma_1 z.
    x_euler = jnp.where(is_top, x0 + sig_n * x_hat, x_hat + (sig_n - sig_h) * d)

    def heun(_):
      d_next, _, _ = derivative(x_euler, t_n, sig_n, False)
      return x_hat + (sig_n - sig_h) * 0.5 * (d + d_next)

    x_new = jax.lax.cond((sig_n > 0) & ~is_top, heun, lambda _: x_euler, None)
    return x_new, _steps_out(return_trajectory, x_t, x0)

  steps = (jnp.arange(num), t_hat, sig_hat, churn_std, t_next, sig_next, top)
  x_data, states = jax.lax.scan(body, x, steps)
  return _finish(x_data, t_hat, states, return_trajectory)


# ----------------------------------------------------------------------------
# The registry: sampler names, default step counts, options, network calls
# ----------------------------------------------------------------------------


# What an option accepts: (description, allows(value) -> bool), for errors such as
# "config.sample.options.eta must be a number in [0, 1], got -0.5".
_NON_NEGATIVE = ("a number >= 0", lambda v: checks.is_real(v) and v >= 0)
_NON_NEGATIVE_OR_INF = (
  "a number >= 0 or inf",
  lambda v: (checks.is_real(v) and v >= 0) or v == math.inf,
)
_POSITIVE = ("a number > 0", lambda v: checks.is_real(v) and v > 0)
_UNIT_INTERVAL = ("a number in [0, 1]", lambda v: checks.is_real(v) and 0 <= v <= 1)
_VARIANCE = (f"one of {VARIANCES}", lambda v: v in VARIANCES)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """A sampler as the registry knows it.

  Attributes:
    fn: fn(key, model_fn, schedule, shape, *, [num_steps=,] prediction=, clip=,
      timesteps=, x_init=, return_trajectory=, **options) -> samples.
    summary: what it is, in a few words (for help texts).
    default_steps: the step count when none is given; None means all T.
    options: the keyword options particular to it, with the defaults of `fn`
      (eta: DDIM's noise; variance: the ancestral samplers' "small" | "large";
      Heun's s_churn, s_tmin, s_tmax, s_noise, rho). Every sampler also takes
      COMMON_OPTIONS. A config sets them as config.sample.options.<name>
      (gen_jax.configs builds that section from this table).
    takes_num_steps: False for a sampler that always runs all T steps (ddpm).
    network_calls: num_steps -> model evaluations per sample (Heun: 2N - 1).
    domains: for each option, the values it accepts, (description, allows(value) -> bool):
      config.sample.options are checked against it at start-up.
  """

  fn: Callable[..., Any]
  summary: str
  default_steps: int | None
  options: Mapping[str, Any]
  takes_num_steps: bool = True
  network_calls: Callable[[int], int] = lambda num_steps: num_steps
  domains: Mapping[str, tuple[str, Callable[[Any], bool]]] = dataclasses.field(default_factory=dict)


# Options every sampler takes (see the module docstring).
COMMON_OPTIONS = ("timesteps", "x_init", "return_trajectory")

SAMPLERS: dict[str, SamplerSpec] = {
  "ddpm": SamplerSpec(
    ddpm_sample,
    "ancestral, all T steps",
    None,
    {"variance": "small"},
    takes_num_steps=False,
    domains={"variance": _VARIANCE},
  ),
  "ddim": SamplerSpec(ddim_sample, "DDIM", None, {"eta": 0.0}, domains={"eta": _UNIT_INTERVAL}),
  "respaced": SamplerSpec(
    respaced_ddpm_sample,
    "ancestral on fewer steps",
    None,
    {"variance": "small"},
    domains={"variance": _VARIANCE},
  ),
  "dpm++2m": SamplerSpec(dpmpp_2m_sample, "DPM-Solver++(2M)", 20, {}),
  "heun": SamplerSpec(
    heun_sample,
    "EDM's Heun, 2N - 1 network calls for N steps",
    18,
    {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0, "rho": 7.0},
    network_calls=lambda num_steps: 2 * num_steps - 1,
    domains={
      "s_churn": _NON_NEGATIVE,
      "s_tmin": _NON_NEGATIVE,
      "s_tmax": _NON_NEGATIVE_OR_INF,
      "s_noise": _NON_NEGATIVE,
      "rho": _POSITIVE,
    },
  ),
}


def sampler_spec(name: str) -> SamplerSpec:
  """SAMPLERS[name], or ValueError naming the registered samplers."""
  if name not in SAMPLERS:
    raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {name!r}")
  return SAMPLERS[name]


def sampler_num_steps(name: str, num_steps: int | None, num_timesteps: int) -> int:
  """The steps sampler `name` runs when asked for num_steps on a T-step schedule.

  ddpm: always T. The others: num_steps, or when it is None (or 0) the
  registry's default_steps (None: T); ValueError unless in [1, T].
  """
  spec = sampler_spec(name)
  if not spec.takes_num_steps:
    return num_timesteps
  steps = num_steps or spec.default_steps or num_timesteps
  checks.check_integer(steps, f"num_steps for sampler {name!r}", 1, num_timesteps)
  return steps


def _applying_options(spec: SamplerSpec, options: Mapping[str, Any]) -> dict[str, Any]:
  """The options that apply to `spec`, less those given as None (the sampler's default, as
  config.sample.options leaves them); ValueError for a name no sampler takes."""
  known = {option for other in SAMPLERS.values() for option in other.options}
  known.update(COMMON_OPTIONS)
  unknown = sorted(set(options) - known)
  if unknown:
    raise ValueError(f"unknown sampler options {unknown}; the samplers take {sorted(known)}")
  return {
    option: value
    for option, value in options.items()
    if option in COMMON_OPTIONS or (option in spec.options and value is not None)
  }


def run_sampler(
  name: str,
  key,
  model_fn: ModelFn,
  schedule: Schedule,
  shape=None,
  *,
  num_steps: int | None = None,
  clip: bool = False,
  prediction: str = "eps",
  **options,
):
  """Draws samples of `shape` with the registered sampler `name`.

  model_fn's output predicts `prediction` (eps | x0 | v). num_steps as
  `sampler_num_steps` resolves it, unless options hold `timesteps` (then
  those levels run and num_steps is ignored). options: keyword options of
  any registered sampler (eta, variance, s_churn, ...; None: its default) and COMMON_OPTIONS
  (timesteps, x_init, return_trajectory); those particular to other
  samplers are ignored, so that one call site can pass them all
  (`describe_sampler` records only those that apply).
  """
  spec = sampler_spec(name)
  kwargs = _applying_options(spec, options)
  if kwargs.get("timesteps") is None:
    kwargs.pop("timesteps", None)
    if spec.takes_num_steps:
      kwargs["num_steps"] = sampler_num_steps(name, num_steps, schedule.num_timesteps)
  return spec.fn(key, model_fn, schedule, shape, prediction=prediction, clip=clip, **kwargs)


def describe_sampler(
  name: str, num_steps: int | None, num_timesteps: int, guidance_scale: float = 0.0, **options
) -> dict:
  """What `run_sampler(name, ..., num_steps=num_steps, **options)` runs, for records such as eval.json.

  Returns:
    {"sampler": name, "num_steps": the steps it runs, "network_calls": model
    evaluations per sample, then each option particular to it: the given
    value, else its default}. Given `timesteps`, also "timesteps": the list,
    and num_steps is their number. With classifier-free guidance w =
    guidance_scale != 0 also "guidance_scale": w, and the network calls
    double (each guided output is a conditional and an unconditional call).
  """
  spec = sampler_spec(name)
  given = _applying_options(spec, options)
  timesteps = given.get("timesteps")
  if timesteps is not None:
    steps = len(check_timesteps(timesteps, num_timesteps, f"describe_sampler({name!r})"))
  else:
    steps = sampler_num_steps(name, num_steps, num_timesteps)
  out = {"sampler": name, "num_steps": steps, "network_calls": spec.network_calls(steps)}
  out.update({option: given.get(option, default) for option, default in spec.options.items()})
  if timesteps is not None:
    out["timesteps"] = [int(t) for t in np.asarray(timesteps)]
  if guidance_scale:
    out["guidance_scale"] = guidance_scale
    out["network_calls"] *= 2
  return out
