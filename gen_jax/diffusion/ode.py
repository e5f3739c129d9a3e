"""Exact likelihood through the probability-flow ODE: log p(x) and bits per dimension.

The integration variables (docs/math.md, "The ODE likelihood's integration
variables"): with a_t = sqrt(ac_t), s_t = sqrt(1 - ac_t), the forward process
x_t = a_t x0 + s_t eps, sigma_t = s_t / a_t and r_t = 1 / sigma_t = exp(lambda_t)
(the square root of the SNR), the probability-flow ODE (Song et al. 2021;
Karras et al. 2022, eq. 4) reads, in two equivalent pairs of variables,

  y = x_t / a_t = x0 + sigma eps:   dy/dsigma = eps_hat(y, sigma),
  u = x_t / s_t = r x0 + eps:       du/dr     = D(u, r) = x0_hat,

(u = r y, eps_hat = u - r D). Euler in either is DDIM's step. Heun in (u, r)
is exact where D is constant: the huge sigma gaps at the noisy end of a
cosine schedule (sigma 642 -> 20,291) cost nothing, and a zero-terminal-SNR
end (r = 0, u = eps ~ N(0, I) exactly) is a regular point. Heun in (y, sigma)
is exact where eps is constant, which is the low-noise regime (y barely
moves). So each step uses (u, r) where the SNR is below 1 and (y, sigma)
where it is at least 1 at both ends; the predictor (DDIM) is shared. The
log-density follows the instantaneous change of variables (Chen et al. 2018),
d log p(u) / dr = -div_u D, whose integral is taken in the matching form:
int div_u D dr as a trapezoid in r (regular at r = 0), and, at low noise,
int div_y D dlambda = D_dims dlambda + int div_y eps dsigma with a trapezoid
in sigma. (A trapezoid of div_y D in lambda, or Heun in (u, r) everywhere,
measured 10x larger errors on the 100-level schedule.)
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import checks, distributions
from gen_jax.diffusion._helpers import at, sum_data_dims
from gen_jax.diffusion.forward import check_prediction, check_prediction_for_schedule, eps_and_x0
from gen_jax.diffusion.losses import _on_grid
from gen_jax.diffusion.schedules import Schedule

Array = jax.Array

DEFAULT_MAX_STEPS = 256


def default_ode_steps(num_timesteps: int) -> int:
  """The default step count of the ODE likelihood: min(256, T - 1), valid for every T >= 2."""
  return min(DEFAULT_MAX_STEPS, num_timesteps - 1)


def _root_snr(schedule: Schedule) -> Array:
  """r_t = sqrt(ac_t / (1 - ac_t)) = 1 / sigma_t, (T,), 0 at a zero-SNR end."""
  return schedule.sqrt_alphas_cumprod / schedule.sqrt_one_minus_alphas_cumprod


def ode_timesteps(schedule: Schedule, num_points: int) -> Array:
  """The levels the ODE visits: num_points levels from 0 up to T - 1, uniform
  in lambda = log r between lambda_0 and the highest finite lambda (lambda_{T-2}
  when ac_{T-1} = 0, where lambda_{T-1} = -inf), rounded to the nearest level
  in lambda, then made strictly increasing (consecutive levels where the grid
  is finer than the levels) with the last point T - 1.

  Traceable in the schedule (jnp throughout).

  Returns:
    int32 (num_points,), strictly increasing, first 0, last T - 1.
  """
  num_timesteps = schedule.num_timesteps
  checks.check_integer(num_points, "num_points", 2, num_timesteps)
  r = _root_snr(schedule)
  lam = jnp.log(jnp.where(r > 0, r, 1.0))
  lam = jnp.where(r > 0, lam, -jnp.inf)
  lam_top = jnp.where(r[-1] > 0, lam[-1], lam[max(num_timesteps - 2, 0)])
  grid = jnp.linspace(lam[0], lam_top, num_points)
  # lambda decreases with t; |grid - (-inf)| = inf is never the nearest.
  nearest = jnp.argmin(jnp.abs(grid[:, None] - lam[None, :]), axis=-1).astype(jnp.int32)
  nearest = nearest.at[0].set(0).at[-1].set(num_timesteps - 1)
  k = jnp.arange(num_points, dtype=jnp.int32)
  fixed = k + jax.lax.cummax(nearest - k, axis=0)
  return jnp.minimum(fixed, num_timesteps - num_points + k)


# ---------------------------------------------------------------------------------------------
# The integrator, shared with the ODE likelihood of every continuous-time process
# (process_ode.py): both see the model only through predict(u, t) -> (D, eps) at x_t = s_t u.


def _divergence_evaluator(predict, x, *, probes=None):
  """evaluate(u, t) -> (D, eps, div_u D, div_u eps) at one time t, the last two (B,).

  predict(u, t) -> (D, eps), each of x's shape (B, ...), must not mix examples. The divergences
  are exact (one Jacobian-vector product per data dimension, vmapped: small D only) when
  `probes` is None, else Hutchinson's estimate mean_p v_p^T J v_p over probes (P, B, ...).
  """
  batch = x.shape[0]
  num_dims = math.prod(x.shape[1:])
  if probes is None:
    basis = jnp.eye(num_dims, dtype=x.dtype).reshape((num_dims, 1) + x.shape[1:])

    def evaluate(u, t):
      f = lambda z: predict(z, t)
      out, jvps = jax.vmap(lambda v: jax.jvp(f, (u,), (jnp.broadcast_to(v, u.shape),)))(basis)
      # trace = sum_i (J e_i)_i: row i of the flattened JVPs, entry i.
      trace = lambda j: jnp.trace(j.reshape(num_dims, batch, num_dims), axis1=0, axis2=2)
      return out[0][0], out[1][0], trace(jvps[0]), trace(jvps[1])

    return evaluate

  def evaluate(u, t):
    f = lambda z: predict(z, t)
    out, jvps = jax.vmap(lambda v: jax.jvp(f, (u,), (v,)))(probes)
    quad = lambda j: jnp.mean(sum_data_dims(probes * j, 2), axis=0)
    return out[0][0], out[1][0], quad(jvps[0]), quad(jvps[1])

  return evaluate


def _integrate(evaluate, *, x, times, r) -> tuple[Array, Array]:
  """The module docstring's integration from times[0] to times[-1], one scan.

  Args:
    evaluate: from `_divergence_evaluator`.
    x: (B, ...) the points, y = x_t / a_t at times[0].
    times: (N + 1,) the times evaluate is called at (levels or real times).
    r: (N + 1,) r = a_t / s_t at those times, decreasing (0 allowed at the end).

  Returns:
    (u_end (B, ...), integral (B,)): u = x_t / s_t at times[-1], and int div_u D dr, so that
    log p(x) = log p_u(u_end) + integral + D log r[0].
  """
  num_dims = math.prod(x.shape[1:])

  def body(carry, inputs):
    u, integral = carry
    t, t_next, r_a, r_b = inputs
    d_a, eps_a, g_a, h_a = evaluate(u, t)
    # The predictor is DDIM's step, the same in both forms: u + (r_b - r_a) D.
    d_b, eps_b, g_b, h_b = evaluate(u + (r_b - r_a) * d_a, t_next)
    # Low noise (both sigmas <= 1): Heun in y = u / r against sigma = 1 / r,
    # exact where eps is constant; the log-det as
    # int div_y D dlambda = D dlambda + int div_y eps dsigma, div_y = r div_u.
    low = (r_a >= 1.0) & (r_b >= 1.0)
    ra_low, rb_low = jnp.where(low, r_a, 1.0), jnp.where(low, r_b, 1.0)
    dsigma = 1.0 / rb_low - 1.0 / ra_low
    u_low = rb_low * (u / ra_low + 0.5 * dsigma * (eps_a + eps_b))
    int_low = num_dims * jnp.log(rb_low / ra_low) + 0.5 * dsigma * (ra_low * h_a + rb_low * h_b)
    # High noise: Heun in u against r, exact where D is constant and regular
    # at r = 0 (zero terminal SNR); the log-det as int div_u D dr.
    u_high = u + 0.5 * (r_b - r_a) * (d_a + d_b)
    int_high = 0.5 * (r_b - r_a) * (g_a + g_b)
    u = jnp.where(low, u_low, u_high)
    return (u, integral + jnp.where(low, int_low, int_high)), None

  u0 = r[0] * x
  (u_end, integral), _ = jax.lax.scan(
    body, (u0, jnp.zeros((x.shape[0],), x.dtype)), (times[:-1], times[1:], r[:-1], r[1:])
  )
  return u_end, integral


def _check_8bit_grid(x, *, name: str) -> None:
  """ValueError when a concrete `x` is off the 8-bit grid in [-1, 1] (x = 2 k / 255 - 1,
  k in 0..255): data in [0, 1] or 0..255 would otherwise give a number off by whole bits with no
  warning. A traced `x` is checked per example by `_on_grid` (the caller returns NaN there)."""
  if isinstance(x, jax.core.Tracer):
    return
  values = np.asarray(x, np.float64)
  ok = np.asarray(_on_grid(values, 1)) & np.all(
    np.isfinite(values).reshape(values.shape[0], -1), axis=1
  )
  if not np.all(ok):
    raise ValueError(
      f"{name}: x must lie on the 8-bit grid in [-1, 1] (x = 2 k / 255 - 1, k in 0..255); got "
      f"values in [{np.nanmin(values):.4g}, {np.nanmax(values):.4g}], {np.mean(~ok):.1%} of the "
      "examples off the grid. Images in [0, 1]: pass 2 x - 1; in 0..255: x / 127.5 - 1."
    )


def ode_log_likelihood(
  key,
  model_fn,
  schedule: Schedule,
  x,
  num_steps: int | None = None,
  *,
  exact_trace: bool = False,
  num_probes: int = 1,
  prediction: str = "eps",
) -> Array:
  """log p(x) in nats per example, by the probability-flow ODE and the
  instantaneous change of variables (Chen et al. 2018; Song et al. 2021).

  Which density: in VE coordinates y = x_t / sqrt(ac_t) the forward process
  is y = x0 + sigma_t eps. The model's ODE carries the prior N(0, I) on
  u = x_{T-1} / sqrt(1 - ac_{T-1}) at the top level (exact for a
  zero-terminal-SNR schedule, where u = eps; otherwise the prior mismatch
  of `prior_kl`) to a density p of y at sigma_0 = sqrt((1 - ac_0) / ac_0)
  (0.01 for DDPM's schedule). The returned value is log p(x) at that
  smallest noise level, x at the data's scale: for a perfect model, the
  log-density of the data convolved with N(0, sigma_0^2 I). (The density of
  the VP variable x_0 = sqrt(ac_0) y is this minus D log sqrt(ac_0), D the
  data dimension.)

  Integration (module docstring): from r_0 down to r_{T-1} (0 at a zero-SNR
  end) over the num_steps + 1 levels of `ode_timesteps` (uniform in
  log-SNR), one second-order step per interval, Heun in u = x_t / s_t
  against r = 1 / sigma where the SNR is below 1 and in y = x_t / a_t against
  sigma above, D the x0 and eps_hat the eps of the model output
  (`prediction`); then
    log p(x) = log N(u_end; 0, I) + D_dims log r_0 - integral of div_y D dlambda
  with the integral a trapezoid over the same evaluations: 2 num_steps
  network calls with a JVP each, one compiled scan.

  The divergence: Hutchinson's estimate mean_p v_p^T (dD/dy) v_p over
  `num_probes` Rademacher probes v_p per example (from `key`, the same at
  every step, so the integral's estimate is unbiased; its variance falls as
  1 / num_probes), or, with exact_trace=True, the exact trace from D
  Jacobian-vector products (small D only). The default of one probe is
  unbiased but noisy per example (a standard deviation of order a nat on a
  2-D model): average over many examples, or raise num_probes.

  Accuracy: with the exact eps (or v) of Gaussian data and the exact trace,
  the default steps are within 0.01 nats/dim of the closed form for linear
  (T = 100 scaled, 1000, 4000 scaled), cosine (T = 250, 1000), the zero-SNR
  rescale of linear (v-prediction) and a user-given alphas_cumprod
  (tests/diffusion/test_ode.py). eps_fn is only defined at the T levels, so
  the grid snaps to them; the levels are sparse in lambda at small sigma,
  and that sets the floor of a discrete-time model.

  Args:
    key: PRNG key for the probes (unused with exact_trace).
    model_fn: batched model_fn(x_t, t) -> output of kind `prediction`; its
      Jacobian must not mix examples. An eps_fn with prediction="eps".
    schedule: T >= 2 levels. eps-prediction on a zero-terminal-SNR schedule
      (ac_{T-1} = 0) is refused: x0 = (x_t - s_t eps) / a_t is undefined there.
    x: (B, ...) points at the data scale.
    num_steps: in [1, T - 1]; None: min(256, T - 1).
    exact_trace: the exact divergence instead of Hutchinson's estimate.
    num_probes: Rademacher probes per example (Hutchinson only), >= 1.
    prediction: "eps", "x0" or "v": what model_fn predicts.

  Returns:
    (B,) log-densities in nats.
  """
  num_timesteps = schedule.num_timesteps
  if num_timesteps < 2:
    raise ValueError(
      f"ode_log_likelihood needs a schedule of at least 2 timesteps, got {num_timesteps}"
    )
  if num_steps is None:
    num_steps = default_ode_steps(num_timesteps)
  checks.check_integer(num_steps, "num_steps", 1, num_timesteps - 1)
  checks.check_integer(num_probes, "num_probes", 1)
  check_prediction(prediction)
  check_prediction_for_schedule(schedule, prediction, num_timesteps - 1, "ode_log_likelihood")
  timesteps = ode_timesteps(schedule, num_steps + 1)
  r = _root_snr(schedule)[timesteps]
  batch = x.shape[0]
  num_dims = math.prod(x.shape[1:])

  def predict(u, t):
    """(D, eps) at x_t = s_t u: the model's x0 and eps at level t."""
    t_batch = jnp.full((batch,), t, jnp.int32)
    x_t = at(schedule.sqrt_one_minus_alphas_cumprod, t_batch, u) * u
    eps, x0 = eps_and_x0(
      schedule, x_t=x_t, t=t_batch, output=model_fn(x_t, t_batch), prediction=prediction
    )
    return x0, eps

  probes = None if exact_trace else jax.random.rademacher(key, (num_probes,) + x.shape, x.dtype)
  evaluate = _divergence_evaluator(predict, x, probes=probes)
  u_end, integral = _integrate(evaluate, x=x, times=timesteps, r=r)
  prior = sum_data_dims(distributions.normal_log_prob(u_end, 0.0, 0.0), 1)
  return prior + integral + num_dims * jnp.log(r[0])


def ode_bits_per_dim(
  key,
  model_fn,
  schedule: Schedule,
  x,
  num_steps: int | None = None,
  *,
  exact_trace: bool = False,
  num_probes: int = 1,
  prediction: str = "eps",
) -> Array:
  """An upper bound on -log2 P(x) / D for 8-bit data, by the ODE likelihood
  of uniformly dequantized data.

  Convention: x is on the 8-bit grid in [-1, 1], x = 2 k / 255 - 1 for
  pixel k in {0..255}, so each value owns the bin [x - 1/255, x + 1/255) of
  width 2/255. Dequantize y = x + (u - 1/2) 2/255, u ~ U[0, 1)^D
  (from split(key)[0]); then log P(k) >= E_u[log p(y)] + D log(2/255)
  (Jensen), and
    bits/dim = -(log p(y) - D log 127.5) / (D ln 2)
  with log p(y) = `ode_log_likelihood` (probes from split(key)[1]; the
  keyword options are passed on), one u per example. This differs from the
  discrete bound (`vlb_bits_per_dim`), whose discretized-Gaussian decoder
  integrates the model's mass over the bins directly; score_sde reports
  data scaled as (k + u) / 256, an offset of 7 bits instead of
  log2(127.5) = 6.994.

  Args:
    x: (B, ...) on the 8-bit grid in [-1, 1]; anything else (images in [0, 1]
      or 0..255) is refused with a ValueError, or gives NaN when x is traced.

  Returns:
    (B,) bits per dimension.
  """
  _check_8bit_grid(x, name="ode_bits_per_dim")
  dequant_key, probe_key = jax.random.split(key)
  log_p = ode_log_likelihood(
    probe_key,
    model_fn,
    schedule,
    _dequantize(dequant_key, x),
    num_steps,
    exact_trace=exact_trace,
    num_probes=num_probes,
    prediction=prediction,
  )
  return _dequantized_bits_per_dim(log_p, x)


def _dequantize(key, x) -> Array:
  """y = x + (u - 1/2) 2/255, u ~ U[0, 1) of x's shape: a uniform point in x's 8-bit bin."""
  u = jax.random.uniform(key, x.shape, x.dtype)
  return x + (u - 0.5) * (2.0 / 255.0)


def _dequantized_bits_per_dim(log_p, x) -> Array:
  """-(log p(y) - D log 127.5) / (D ln 2): bits/dim of the bins from the density of the
  dequantized y (bin width 2/255), NaN for examples of x off the 8-bit grid (a traced x, which
  `_check_8bit_grid` cannot see)."""
  num_dims = math.prod(x.shape[1:])
  bits = -(log_p - num_dims * math.log(127.5)) / (num_dims * math.log(2.0))
  return jnp.where(_on_grid(x, 1), bits, jnp.nan)
