"""The probability-flow ODE likelihood on every Gaussian process (gen_jax.diffusion.process).

For x_t = alpha(t) x0 + sigma(t) eps the probability-flow ODE dx/dt = alpha' x0_hat + sigma' eps_hat
(`process.ode_velocity`; Song et al. 2021, Karras et al. 2022 eq. 4) reads, in the scaled
variables y = x_t / alpha and u = x_t / sigma against sigma~ = sigma / alpha = exp(-lambda / 2)
and r = 1 / sigma~,
  dy/dsigma~ = eps_hat,    du/dr = x0_hat,
whatever alpha and sigma are (dy/dt = eps_hat d(sigma / alpha)/dt: the ODE depends on the
process only through lambda(t)). So every process integrates in the same variables as DDPM's
discrete ODE (gen_jax.diffusion.ode, whose integrator this module calls): a grid uniform in
lambda, one Heun step per interval, in (u, r) where the SNR is below 1 (exact where x0_hat is
constant; regular at r = 0, the pure-noise end of rectified flow or a zero-terminal-SNR
schedule) and in (y, sigma~) above (exact where eps_hat is constant), the log-density by the
instantaneous change of variables d log p / dt = -div f (Chen et al. 2018) as a trapezoid in the
matching variable. The grid's times are lambda^{-1} of its points (`process.t_from_log_snr`),
real numbers, never snapped to levels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import checks, distributions
from gen_jax.diffusion._helpers import concrete_or_none, sum_data_dims
from gen_jax.diffusion.ode import (
  _check_8bit_grid,
  _dequantize,
  _dequantized_bits_per_dim,
  _divergence_evaluator,
  _integrate,
)
from gen_jax.diffusion.process import GaussianProcess, check_prediction, to_x0_eps

Array = jax.Array

TRACES = ("exact", "hutchinson")
DATA = ("8bit", "continuous")
DEFAULT_NUM_STEPS = 256
# Below this log-SNR (r = exp(-7.5) = 5.5e-4) the grid stops being uniform in lambda: the last
# step goes from there to t_end in one Heun step in (u, r), exact to O(r^2) where the model's
# x0_hat is nearly constant, so an end at lambda = -inf (rectified flow's t = 1) costs one step.
LOG_SNR_FLOOR = -15.0


def ode_log_likelihood(
  model_fn,
  process: GaussianProcess,
  *,
  x,
  key=None,
  prediction: str = "eps",
  trace: str = "exact",
  num_steps: int = DEFAULT_NUM_STEPS,
  num_probes: int = 1,
  t_start=None,
  t_end=None,
) -> Array:
  """log p(x) in nats per example, by the probability-flow ODE of `process` and the model.

  Which density: the ODE carries the prior N(0, P^2 I) of x at t_end (the samplers' start: P = 1
  for a variance-preserving process, else P = sigma(t_end), so `process.prior_std()` at t_max)
  to a density of y = x_t / alpha(t) at t_start, y = x0 + sigma~_0 eps with
  sigma~_0 = sigma(t_start) / alpha(t_start): x is at the data's scale, and for a perfect model
  the result is the log-density of the data convolved with N(0, sigma~_0^2 I) (the density of
  x_{t_start} itself is this minus D log alpha(t_start)). Neglected, as in DDPM's ODE and
  EDM: the prior mismatch at t_end. For a perfect model on Gaussian data N(mu, s^2) the result
  is exactly
    sum_d log N(x_end; 0, P^2) + 1/2 log(alpha_e^2 s^2 + sigma_e^2) - 1/2 log(s^2 + sigma~_0^2),
  x_end = alpha_e mu + sqrt(alpha_e^2 s^2 + sigma_e^2) (x - mu) / sqrt(s^2 + sigma~_0^2),
  which differs from log N(x; mu, s^2 + sigma~_0^2) by the mismatch of N(0, P^2) with the true
  marginal N(alpha_e mu, alpha_e^2 s^2 + sigma_e^2): nothing for rectified flow at t_end = 1
  (alpha_e = 0, sigma_e = 1), of order alpha_e^2 (mu^2 + s^2) for a VP process (e^-10 for
  vp_linear's defaults), (mu^2 + s^2) / sigma_max^2 for VE.

  Integration (module docstring): num_steps Heun steps on a grid uniform in lambda from
  lambda(t_start) to lambda(t_end) (to LOG_SNR_FLOOR, then one step to t_end, when lambda(t_end)
  is lower or -inf), 2 num_steps model calls with a JVP each (times D for the exact trace), one
  compiled scan;
    log p(x) = log p_u(u_end) + int div_u x0_hat dr + D log r(t_start),
  log p_u(u) = log N(sigma_e u; 0, P^2) + D log sigma_e.

  Accuracy (tests/diffusion/test_process_ode.py, float32, exact trace, default num_steps): on
  Gaussian data with the exact model, mean |error| 1e-4 to 5e-4 and at most 0.005 nats/dim
  against the closed form above for the discrete linear (T = 1000), cosine and zero-terminal-SNR
  schedules, vp_linear, vp_cosine, ve and rectified flow; on a 2-D Gaussian mixture at most
  0.005 on data draws (0.02 deep in the tails). Heun's error falls 4x per doubling of num_steps.

  Args:
    model_fn: batched model_fn(x_t, t) -> output in target `prediction`, x_t (B, ...), t (B,)
      real times of the process; its Jacobian must not mix examples. A discrete process's
      network is called at real t between its levels (`process.discrete_process`).
    process: any GaussianProcess; a jit argument like any pytree.
    x: (B, ...) points at the data's scale.
    key: PRNG key of the Rademacher probes (trace="hutchinson" only; required there).
    prediction: what model_fn predicts, one of process.PREDICTIONS. "eps" and "score" are
      undefined where alpha(t_end) = 0 (x0 = (x_t - sigma eps) / 0): pass t_end < t_max or train
      another target.
    trace: "exact" (D Jacobian-vector products per evaluation, vmapped: small D) or
      "hutchinson" (mean_p v_p^T J v_p over num_probes Rademacher probes per example, the same
      at every step so that the integral's estimate is unbiased; its variance falls as
      1 / num_probes; the choice for images).
    num_steps: Heun steps, >= 1.
    num_probes: probes per example (Hutchinson only), >= 1.
    t_start: the data end, in [t_min, t_max); None: process.t_min. sigma(t_start) must be > 0
      (the density at sigma = 0 is the data's own, singular for a model): for rectified flow
      (t_min = 0) pass e.g. t_start=1e-5 or build the process with t_min > 0.
    t_end: the noise end, in (t_start, t_max]; None: process.t_max.

  Returns:
    (B,) log-densities in nats.
  """
  checks.check_integer(num_steps, "num_steps", 1)
  checks.check_integer(num_probes, "num_probes", 1)
  check_prediction(prediction)
  if trace not in TRACES:
    raise ValueError(f"ode_log_likelihood: trace must be one of {TRACES}, got {trace!r}")
  if trace == "hutchinson" and key is None:
    raise ValueError("ode_log_likelihood: trace='hutchinson' needs key= (its Rademacher probes)")
  x = jnp.asarray(x)
  if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
      f"ode_log_likelihood: x must be a float array (B, ...) with data axes, got {x.dtype} "
      f"{x.shape}"
    )
  t_start, t_end = _check_endpoints(process, t_start, t_end, prediction, "ode_log_likelihood")
  times, r = ode_grid(process, num_steps=num_steps, t_start=t_start, t_end=t_end, dtype=x.dtype)
  batch = x.shape[0]

  def predict(u, t):
    """(x0_hat, eps_hat) at x_t = sigma(t) u."""
    t_batch = jnp.full((batch,), t, x.dtype)
    _, sigma = process.alpha_sigma(t_batch)
    x_t = sigma.reshape((batch,) + (1,) * (x.ndim - 1)).astype(x.dtype) * u
    x0, eps = to_x0_eps(
      process, x_t=x_t, t=t_batch, output=model_fn(x_t, t_batch), prediction=prediction
    )
    return x0.astype(x.dtype), eps.astype(x.dtype)

  probes = None
  if trace == "hutchinson":
    probes = jax.random.rademacher(key, (num_probes,) + x.shape, x.dtype)
  evaluate = _divergence_evaluator(predict, x, probes=probes)
  u_end, integral = _integrate(evaluate, x=x, times=times, r=r)
  # The prior on x_end = sigma_e u_end, and the Jacobian of u -> x.
  _, sigma_end = process.alpha_sigma(times[-1])
  prior_std = _prior_std_at(process, times[-1])
  num_dims = math.prod(x.shape[1:])
  log_prior = sum_data_dims(
    distributions.normal_log_prob(sigma_end * u_end, 0.0, 2.0 * jnp.log(prior_std)), 1
  )
  return log_prior + num_dims * jnp.log(sigma_end) + integral + num_dims * jnp.log(r[0])


def ode_bits_per_dim(
  model_fn,
  process: GaussianProcess,
  *,
  x,
  key=None,
  data: str = "8bit",
  prediction: str = "eps",
  trace: str = "exact",
  num_steps: int = DEFAULT_NUM_STEPS,
  num_probes: int = 1,
  t_start=None,
  t_end=None,
) -> Array:
  """Bits per dimension by the ODE likelihood (`ode_log_likelihood`, whose keyword options are
  passed on).

  data="8bit" (the default): an upper bound on -log2 P(x) / D for x on the 8-bit grid in
  [-1, 1] (x = 2 k / 255 - 1, bins of width 2/255), by uniform dequantization as in
  gen_jax.diffusion.ode: y = x + (u - 1/2) 2/255, u ~ U[0, 1)^D from split(key)[0], probes
  from split(key)[1], and
    bits/dim = -(log p(y) - D log 127.5) / (D ln 2)
  (Jensen: log P(k) >= E_u log p(y) + D log(2/255)). x off the grid (images in [0, 1] or 0..255)
  is refused with a ValueError (NaN per example when x is traced). key is required.
  data="continuous": -log p(x) / (D ln 2), the density's bits at x itself, no dequantization.

  Returns:
    (B,) bits per dimension.
  """
  if data not in DATA:
    raise ValueError(f"ode_bits_per_dim: data must be one of {DATA}, got {data!r}")
  options = dict(
    prediction=prediction,
    trace=trace,
    num_steps=num_steps,
    num_probes=num_probes,
    t_start=t_start,
    t_end=t_end,
  )
  x = jnp.asarray(x)
  if data == "continuous":
    log_p = ode_log_likelihood(model_fn, process, x=x, key=key, **options)
    return -log_p / (math.prod(x.shape[1:]) * math.log(2.0))
  if key is None:
    raise ValueError("ode_bits_per_dim: data='8bit' needs key= (its uniform dequantization)")
  _check_8bit_grid(x, name="ode_bits_per_dim")
  dequant_key, probe_key = jax.random.split(key)
  log_p = ode_log_likelihood(
    model_fn, process, x=_dequantize(dequant_key, x), key=probe_key, **options
  )
  return _dequantized_bits_per_dim(log_p, x)


def ode_grid(process: GaussianProcess, *, num_steps: int, t_start, t_end, dtype=None):
  """The times the ODE visits and r = alpha / sigma there.

  num_steps + 1 points uniform in lambda from lambda(t_start) to lambda(t_end), or, when
  lambda(t_end) < LOG_SNR_FLOOR (-inf included), num_steps points uniform down to the floor and
  then t_end; times = lambda^{-1} of the points, the first and last exactly t_start and t_end.
  Traceable in the process's parameters.

  Returns:
    (times (num_steps + 1,), r (num_steps + 1,)), times increasing, r decreasing to r(t_end)
    (0 where alpha(t_end) = 0).
  """
  dtype = dtype or jnp.result_type(float)
  n = num_steps
  ends = jnp.asarray([t_start, t_end], dtype)
  lam_start, lam_end = (v.astype(dtype) for v in process.log_snr(ends))
  floored = ~(lam_end >= LOG_SNR_FLOOR)  # -inf and NaN (alpha = 0) included
  lam_stop = jnp.where(floored, LOG_SNR_FLOOR, lam_end)
  k = jnp.arange(n + 1, dtype=dtype)
  # Unfloored: n intervals to lam_end; floored: n - 1 intervals to the floor, then t_end.
  intervals = jnp.where(floored, max(n - 1, 1), n).astype(dtype)
  lam = lam_start + (lam_stop - lam_start) * jnp.minimum(k / intervals, 1.0)
  times = process.t_from_log_snr(lam).astype(dtype)
  times = times.at[0].set(ends[0]).at[-1].set(ends[1])
  # lambda^{-1} then lambda can reorder neighbours by rounding: keep the times increasing.
  times = jax.lax.cummax(times)
  alpha, sigma = process.alpha_sigma(times)
  return times, (alpha / sigma).astype(dtype)


def _prior_std_at(process: GaussianProcess, t) -> Array:
  """The samplers' prior std at t: 1 for a variance-preserving process, else sigma(t)."""
  _, sigma = process.alpha_sigma(t)
  return jnp.ones_like(sigma) if process.variance_preserving else sigma


def _check_endpoints(process, t_start, t_end, prediction, name):
  """(t_start, t_end) resolved and checked: t_min <= t_start < t_end <= t_max, sigma(t_start) > 0,
  and alpha(t_end) > 0 for eps and score predictions (when the process is concrete)."""
  t_start = process.t_min if t_start is None else checks.check_real(t_start, "t_start")
  t_end = process.t_max if t_end is None else checks.check_real(t_end, "t_end")
  if not process.t_min <= t_start < t_end <= process.t_max:
    raise ValueError(
      f"{name}: need t_min <= t_start < t_end <= t_max for the {process.name} process "
      f"(t_min={process.t_min}, t_max={process.t_max}); got t_start={t_start}, t_end={t_end}"
    )
  with jax.ensure_compile_time_eval():  # concrete under jit too, unless the process is traced
    alpha_sigma = concrete_or_none(jnp.stack(process.alpha_sigma(jnp.asarray([t_start, t_end]))))
  if alpha_sigma is not None:
    (_, alpha_end), (sigma_start, _) = np.asarray(alpha_sigma, np.float64)
    if not sigma_start > 0:
      raise ValueError(
        f"{name}: sigma(t_start) = 0 at t_start={t_start} for the {process.name} process: the "
        "density at zero noise is singular; pass t_start > 0 (e.g. t_start=1e-5) or build the "
        "process with t_min > 0"
      )
    if prediction in ("eps", "score") and not alpha_end > 0:
      raise ValueError(
        f"{name}: alpha(t_end) = 0 at t_end={t_end} for the {process.name} process, where "
        f"prediction={prediction!r} does not determine x0 (x0 = (x_t - sigma eps) / 0): pass "
        "t_end < t_max, or use a model of another target (v, x0, velocity)"
      )
  return t_start, t_end
