"""Tests for the Gaussian noising processes (gen_jax/diffusion/process.py).

References are float64 numpy written from the papers' formulas (never by calling gen_jax):
alpha, sigma of each process, DDPM's alphas_cumprod by an explicit running product, derivatives by
central differences, the prediction targets from their definitions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion
from gen_jax.diffusion import process as proc
from gen_jax.diffusion import vdm
from tests.support.diffusion import (
  np_abar,
  np_cosine_betas,
  np_linear_betas,
  np_sigmoid_alphas_cumprod,
)

# XLA's optimisation passes cost more than they save on these small programs.
pytestmark = pytest.mark.usefixtures("fast_compile")

# ----------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------


def np_vp_linear(t, beta_min=0.1, beta_max=20.0):
  """score_sde's VP SDE: alpha = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2) / 2)."""
  alpha = np.exp(-0.5 * (beta_min * t + 0.5 * (beta_max - beta_min) * t**2))
  return alpha, np.sqrt(1.0 - alpha**2)


def np_vp_cosine(t, log_snr_min=-15.0, log_snr_max=15.0):
  a, b = math.atan(math.exp(-log_snr_max / 2)), math.atan(math.exp(-log_snr_min / 2))
  return np.cos(a + t * (b - a)), np.sin(a + t * (b - a))


def np_discrete_log_snr(abar, t):
  """lambda at real t: linear between the levels' log(ac / (1 - ac))."""
  lam = np.log(abar) - np.log1p(-abar)
  lo = np.minimum(np.floor(t).astype(int), len(abar) - 2)
  return lam[lo] + (t - lo) * (lam[lo + 1] - lam[lo])


# name -> (constructor, numpy alpha_sigma(t) at real t, real test times in (t_min, t_max)).
ABAR_LINEAR = np_abar(np_linear_betas(1000))


def _np_discrete(abar):
  def alpha_sigma(t):
    lam = np_discrete_log_snr(abar, np.asarray(t, np.float64))
    return np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))

  return alpha_sigma


UNIT = np.array([0.013, 0.1, 0.25, 0.5, 0.731, 0.9, 0.987])
CASES = {
  "discrete_linear1000": (
    lambda: proc.discrete_process(diffusion.make_schedule(diffusion.linear_betas(1000))),
    _np_discrete(ABAR_LINEAR),
    np.array([0.3, 1.5, 17.25, 250.5, 500.7, 998.4]),
  ),
  "vp_linear": (proc.vp_linear, np_vp_linear, UNIT),
  "vp_linear_scaled": (
    lambda: proc.vp_linear(0.5, 10.0, t_min=0.1, t_max=0.9),
    lambda t: np_vp_linear(t, 0.5, 10.0),
    0.1 + 0.8 * UNIT,
  ),
  "vp_cosine": (proc.vp_cosine, np_vp_cosine, UNIT),
  "vp_cosine_narrow": (
    lambda: proc.vp_cosine(-8.0, 6.0),
    lambda t: np_vp_cosine(t, -8.0, 6.0),
    UNIT,
  ),
  "ve": (proc.ve, lambda t: (np.ones_like(t), t), np.array([0.0025, 0.01, 0.5, 3.0, 40.0, 79.0])),
  "rectified_flow": (proc.rectified_flow, lambda t: (1.0 - t, t), UNIT),
  "log_snr_vdm_linear": (
    lambda: proc.log_snr_process(vdm.LogSNRSchedule("linear", -13.3, 5.0), {}),
    lambda t: (
      np.sqrt(1 / (1 + np.exp(-13.3 + 18.3 * t))),
      np.sqrt(1 / (1 + np.exp(13.3 - 18.3 * t))),
    ),
    UNIT,
  ),
}


@pytest.fixture
def f64(x64):
  """float64 for the test (processes built inside it carry float64 parameters)."""
  return jnp.float64


def _case(name):
  make, np_alpha_sigma, times = CASES[name]
  return make(), np_alpha_sigma, times


def _central_difference(fn, t, h):
  return (fn(t + h) - fn(t - h)) / (2 * h)


# ----------------------------------------------------------------------------
# discrete_process: DDPM's tables
# ----------------------------------------------------------------------------


DISCRETE_SCHEDULES = {
  "linear1000": lambda: diffusion.make_schedule(diffusion.linear_betas(1000)),
  "cosine1000": lambda: diffusion.make_schedule(diffusion.cosine_betas(1000)),
  "zero_snr_linear1000": lambda: diffusion.make_schedule(
    diffusion.rescale_zero_terminal_snr(diffusion.linear_betas(1000))
  ),
  "user_betas": lambda: diffusion.make_schedule(np.geomspace(1e-3, 0.6, 60)),
  "user_alphas_cumprod": lambda: diffusion.schedule_from_alphas_cumprod(
    np_sigmoid_alphas_cumprod(500)
  ),
}


@pytest.mark.parametrize("name", DISCRETE_SCHEDULES)
@pytest.mark.slow
def test_discrete_process_is_the_schedule_at_integer_t(name):
  """Integer t reads the schedule's own sqrt(ac) and sqrt(1 - ac), bit for bit (default dtype):
  every discrete sampler and bound sees the same numbers through the process; the real-t path
  at the same times agrees to float precision; t range [0, T - 1], just below it at zero
  terminal SNR (where lambda = -inf)."""
  schedule = DISCRETE_SCHEDULES[name]()
  process = proc.discrete_process(schedule)
  num = schedule.num_timesteps
  t = jnp.arange(num)
  alpha, sigma = process.alpha_sigma(t)
  np.testing.assert_array_equal(alpha, schedule.sqrt_alphas_cumprod)
  np.testing.assert_array_equal(sigma, schedule.sqrt_one_minus_alphas_cumprod)
  assert process.discrete_levels == num and process.variance_preserving
  assert process.t_min == 0.0
  zero_snr = name.startswith("zero_snr")
  assert process.t_max == (num - 1 - 1e-3 if zero_snr else num - 1)
  # Real t at the levels: alpha^2 = sigmoid(lambda) reproduces the tables to float32 rounding.
  finite = slice(0, num - 1) if zero_snr else slice(None)
  real = process.alpha_sigma(t[finite].astype(jnp.float32))
  np.testing.assert_allclose(real[0], alpha[finite], rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(real[1], sigma[finite], rtol=2e-6, atol=1e-6)
  if zero_snr:
    assert float(alpha[-1]) == 0.0 and float(sigma[-1]) == 1.0
    a_end, s_end = process.alpha_sigma(jnp.float32(process.t_max))
    assert float(a_end) < 1e-3 and float(s_end) == 1.0
    assert np.isfinite(float(process.d_log_snr(jnp.float32(num - 2.5))))


@pytest.mark.slow
def test_discrete_log_snr_is_linear_between_levels(f64):
  """Between levels lambda is the linear interpolation of the levels' log-SNRs (float64
  reference from an explicit running product), so d lambda / dt is constant on each interval;
  alpha^2 + sigma^2 = 1 everywhere."""
  schedule = diffusion.make_schedule(np_cosine_betas(1000))
  process = proc.discrete_process(schedule)
  abar = np_abar(np_cosine_betas(1000))
  lam = np.log(abar) - np.log1p(-abar)
  levels = np.array([0, 1, 10, 500, 997])
  for frac in (0.0, 0.25, 0.5, 0.9):
    t = levels + frac
    got = np.asarray(process.log_snr(jnp.asarray(t, f64)))
    np.testing.assert_allclose(got, (1 - frac) * lam[levels] + frac * lam[levels + 1], rtol=1e-11)
  slope = np.asarray(process.d_log_snr(jnp.asarray(levels + 0.3, f64)))
  np.testing.assert_allclose(slope, lam[levels + 1] - lam[levels], rtol=1e-9)
  alpha, sigma = process.alpha_sigma(jnp.linspace(0.0, 999.0, 77, dtype=f64))
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-14)


# ----------------------------------------------------------------------------
# Every process: values, derivatives, the inverse of lambda
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_alpha_sigma_and_log_snr(name, f64):
  """alpha, sigma against the papers' formulas; lambda = log(alpha^2 / sigma^2), decreasing;
  variance preserving where it says so."""
  process, np_alpha_sigma, times = _case(name)
  alpha, sigma = process.alpha_sigma(jnp.asarray(times, f64))
  ref_alpha, ref_sigma = np_alpha_sigma(times)
  np.testing.assert_allclose(alpha, ref_alpha, rtol=1e-12)
  np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-12)
  lam = np.asarray(process.log_snr(jnp.asarray(times, f64)))
  np.testing.assert_allclose(lam, np.log(ref_alpha**2 / ref_sigma**2), rtol=1e-11, atol=1e-11)
  assert np.all(np.diff(lam) < 0)
  if process.variance_preserving:
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-14)


@pytest.mark.parametrize("name", CASES)
def test_derivatives_match_central_differences(name, f64):
  """(alpha', sigma') by forward-mode autodiff against float64 central differences of the
  numpy formulas (h = 1e-6 t: truncation ~1e-12, rounding ~1e-10 relative);
  lambda' = 2 (alpha'/alpha - sigma'/sigma) < 0."""
  process, np_alpha_sigma, times = _case(name)
  h = 1e-6 * times
  _, _, d_alpha, d_sigma = process.derivatives(jnp.asarray(times, f64))
  ref_da = _central_difference(lambda s: np_alpha_sigma(s)[0], times, h)
  ref_ds = _central_difference(lambda s: np_alpha_sigma(s)[1], times, h)
  np.testing.assert_allclose(d_alpha, ref_da, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(d_sigma, ref_ds, rtol=1e-7, atol=1e-9)
  ref_lam = lambda s: 2 * np.log(np_alpha_sigma(s)[0] / np_alpha_sigma(s)[1])
  d_lam = np.asarray(process.d_log_snr(jnp.asarray(times, f64)))
  np.testing.assert_allclose(d_lam, _central_difference(ref_lam, times, h), rtol=1e-7)
  assert np.all(d_lam < 0)


@pytest.mark.parametrize("name", CASES)
def test_t_from_log_snr_inverts_log_snr(name, f64):
  """lambda^{-1}(lambda(t)) = t (closed forms, the discrete interpolation, or bisection for a
  log-SNR function); clipped to [t_min, t_max] beyond the range."""
  process, _, times = _case(name)
  t = jnp.asarray(times, f64)
  back = np.asarray(process.t_from_log_snr(process.log_snr(t)))
  np.testing.assert_allclose(back, times, rtol=1e-9, atol=1e-12)
  ends = np.asarray(process.t_from_log_snr(jnp.asarray([1e3, -1e3], f64)))
  np.testing.assert_allclose(ends, [process.t_min, process.t_max], atol=1e-9)


def test_vp_linear_is_ddpm_linear_in_the_limit(f64):
  """DDPM's linear betas (1e-4 .. 0.02, T = 1000) discretise vp_linear(0.1, 20) at
  t = (i + 1) / T: the same log alpha^2 to 1e-3 or 1% (a Riemann sum, and log(1 - beta) = -beta -
  beta^2 / 2: 0.07 of -10.05 at the last level)."""
  process = proc.vp_linear()
  t = (np.arange(1000) + 1) / 1000
  alpha, _ = process.alpha_sigma(jnp.asarray(t, f64))
  np.testing.assert_allclose(2 * np.log(alpha), np.log(ABAR_LINEAR), rtol=0.01, atol=1e-3)


def test_prior_std():
  """The std samplers start from: 1 for VP processes and rectified flow (sigma(1) = 1),
  sigma_max for VE."""
  assert float(proc.vp_linear().prior_std()) == 1.0
  assert float(proc.vp_cosine().prior_std()) == 1.0
  assert float(proc.rectified_flow().prior_std()) == 1.0
  assert float(proc.ve(0.002, 80.0).prior_std()) == 80.0
  assert float(proc.ve(0.01, 50.0).prior_std()) == 50.0
  schedule = diffusion.make_schedule(diffusion.linear_betas(1000))
  assert float(proc.discrete_process(schedule).prior_std()) == 1.0


# ----------------------------------------------------------------------------
# The forward process and the targets
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_targets_convert_and_round_trip(name, f64):
  """Every target from (x0, eps) against its definition (eps, x0, v = alpha eps - sigma x0,
  velocity = alpha' x0 + sigma' eps, score = -eps / sigma, with numpy alpha, sigma and central
  differences), and every pair converts there and back to float64 precision."""
  process, np_alpha_sigma, times = _case(name)
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (len(times), 3))
  eps = rng.standard_normal((len(times), 3))
  t = jnp.asarray(times, f64)
  a, s = (v[:, None] for v in np_alpha_sigma(times))
  h = 1e-6 * times
  da = _central_difference(lambda u: np_alpha_sigma(u)[0], times, h)[:, None]
  ds = _central_difference(lambda u: np_alpha_sigma(u)[1], times, h)[:, None]
  x_t = a * x0 + s * eps
  np.testing.assert_allclose(
    proc.q_sample(process, x0=jnp.asarray(x0), t=t, noise=jnp.asarray(eps)), x_t, rtol=1e-12
  )
  want = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps}
  want["score"] = -eps / s
  outputs = {}
  for target in proc.PREDICTIONS:
    outputs[target] = np.asarray(
      proc.from_x0_eps(process, t=t, x0=jnp.asarray(x0), eps=jnp.asarray(eps), prediction=target)
    )
    np.testing.assert_allclose(outputs[target], want[target], rtol=1e-7, atol=1e-9, err_msg=target)
    got_x0, got_eps = proc.to_x0_eps(
      process, x_t=jnp.asarray(x_t), t=t, output=jnp.asarray(outputs[target]), prediction=target
    )
    # x0 from eps divides by alpha: 1e-9 relative at rectified flow's t = 0.987.
    np.testing.assert_allclose(got_x0, x0, rtol=1e-9, atol=1e-9, err_msg=target)
    np.testing.assert_allclose(got_eps, eps, rtol=1e-9, atol=1e-9, err_msg=target)
  for source in proc.PREDICTIONS:
    for target in proc.PREDICTIONS:
      out = proc.convert(
        process, x_t=jnp.asarray(x_t), t=t, output=outputs[source], source=source, target=target
      )
      np.testing.assert_allclose(
        out, outputs[target], rtol=1e-8, atol=1e-8, err_msg=f"{source} -> {target}"
      )


def test_rectified_flow_velocity_is_eps_minus_x0(f64):
  process = proc.rectified_flow()
  rng = np.random.default_rng(1)
  x0, eps = rng.standard_normal((2, 5, 4))
  t = jnp.asarray(rng.uniform(0, 1, 5), f64)
  velocity = proc.from_x0_eps(
    process, t=t, x0=jnp.asarray(x0), eps=jnp.asarray(eps), prediction="velocity"
  )
  np.testing.assert_array_equal(velocity, eps - x0)
  x_t = proc.q_sample(process, x0=jnp.asarray(x0), t=t, noise=jnp.asarray(eps))
  drift = proc.ode_velocity(process, x_t=x_t, t=t, x0=jnp.asarray(x0), eps=jnp.asarray(eps))
  np.testing.assert_array_equal(drift, eps - x0)


@pytest.mark.parametrize("name", ["vp_cosine", "ve", "rectified_flow", "discrete_linear1000"])
@pytest.mark.slow
def test_q_sample_law(name):
  """x_t given x0 is N(alpha x0, sigma^2 I): the mean and std of 20000 draws within 5 standard
  errors (the std's standard error is sigma / sqrt(2 n))."""
  process, np_alpha_sigma, times = _case(name)
  t_value = float(times[len(times) // 2])
  n = 20000
  x0 = jnp.asarray([[0.7, -0.3]], jnp.float32)
  noise = jax.random.normal(jax.random.key(0), (n, 2))
  x_t = np.asarray(
    proc.q_sample(process, x0=jnp.broadcast_to(x0, (n, 2)), t=jnp.full((n,), t_value), noise=noise)
  )
  alpha, sigma = np_alpha_sigma(np.float64(t_value))
  assert np.all(np.abs(x_t.mean(0) - alpha * np.asarray(x0[0])) < 5 * sigma / math.sqrt(n))
  assert np.all(np.abs(x_t.std(0) - sigma) < 5 * sigma / math.sqrt(2 * n))


# ----------------------------------------------------------------------------
# A pytree: jit, vmap, grad
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_process_is_a_jit_vmap_and_grad_argument(f64):
  """A process passes through jit as an argument (its parameters traced); a batch of processes
  (parameters with a leading axis, one treedef) vmaps; gradients reach its parameters (d alpha /
  d beta_max against a central difference)."""
  t = jnp.asarray(UNIT, f64)
  for make in (proc.vp_linear, proc.vp_cosine, proc.ve, proc.rectified_flow):
    process = make()
    fn = lambda p, t: jnp.stack(p.derivatives(t))
    np.testing.assert_allclose(jax.jit(fn)(process, t), fn(process, t), rtol=1e-14)
  schedule = diffusion.make_schedule(diffusion.linear_betas(100, 1e-3, 0.2))
  discrete = proc.discrete_process(schedule)
  levels = jnp.arange(100)
  np.testing.assert_array_equal(
    jax.jit(lambda p, t: p.alpha_sigma(t)[0])(discrete, levels), schedule.sqrt_alphas_cumprod
  )
  base = proc.vp_linear()
  leaves, treedef = jax.tree.flatten(base)
  beta_max = jnp.asarray([5.0, 10.0, 20.0], f64)
  batched = jax.tree.unflatten(
    treedef,
    [
      jnp.full((3,), 0.1, f64) if leaf.shape == () and float(leaf) == 0.1 else beta_max
      for leaf in leaves
    ],
  )
  alphas = jax.vmap(lambda p: p.alpha_sigma(t)[0])(batched)
  for i, b in enumerate((5.0, 10.0, 20.0)):
    np.testing.assert_allclose(alphas[i], np_vp_linear(UNIT, 0.1, b)[0], rtol=1e-13)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(p.alpha_sigma(t)[0])))(base)  # not op by op
  h = 1e-6
  ref = (np_vp_linear(UNIT, 0.1, 20 + h)[0].sum() - np_vp_linear(UNIT, 0.1, 20 - h)[0].sum()) / (
    2 * h
  )
  np.testing.assert_allclose(grad.params["beta_max"], ref, rtol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "cosine", "learned"])
def test_log_snr_process_is_vdm(kind, f64):
  """log_snr_process(LogSNRSchedule) has vdm's alpha_sigma(gamma(t)) bit for bit, lambda' =
  -gamma'(t) (vdm's own slope), and a learned schedule's parameters get gradients."""
  schedule = vdm.LogSNRSchedule(kind, -13.3, 5.0, num_features=16)
  params = schedule.init(jax.random.key(0))
  params = jax.tree.map(lambda a: jnp.asarray(a, f64), params)
  process = proc.log_snr_process(schedule, params)
  t = jnp.asarray(UNIT, f64)
  gamma, slope, _ = schedule.gamma_and_slope(params, t)
  alpha, sigma = process.alpha_sigma(t)
  ref_alpha, ref_sigma = vdm.alpha_sigma(gamma)
  np.testing.assert_array_equal(alpha, ref_alpha)
  np.testing.assert_array_equal(sigma, ref_sigma)
  np.testing.assert_allclose(process.d_log_snr(t), -slope, rtol=1e-10)
  np.testing.assert_allclose(process.t_from_log_snr(-gamma), UNIT, rtol=1e-9)
  if kind == "learned":
    # Jitted: an eager backward pass through the monotone net dispatches op by op (seconds).
    grads = jax.jit(jax.grad(lambda p: jnp.sum(proc.log_snr_process(schedule, p).log_snr(t))))(
      params
    )
    assert float(jnp.abs(grads["gamma_1"])) > 0 and float(jnp.abs(grads["gamma_0"])) > 0


# ----------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------


def test_bad_ranges_are_refused():
  for call, pattern in (
    (lambda: proc.vp_linear(t_min=-0.1), r"vp_linear: need 0.0 <= t_min < t_max <= 1.0"),
    (lambda: proc.vp_linear(t_min=0.5, t_max=0.5), "t_min=0.5, t_max=0.5"),
    (lambda: proc.vp_linear(t_max=1.5), "t_max=1.5"),
    (lambda: proc.vp_linear(20.0, 0.1), "beta_min < beta_max"),
    (lambda: proc.vp_linear(-1.0, 20.0), "0 <= beta_min"),
    (lambda: proc.vp_cosine(5.0, -5.0), "log_snr_min < log_snr_max"),
    (lambda: proc.vp_cosine(t_min=0.9, t_max=0.1), "vp_cosine: need"),
    (lambda: proc.ve(0.0, 80.0), r"ve: need 0 < sigma_min < sigma_max"),
    (lambda: proc.ve(80.0, 0.002), "sigma_min < sigma_max"),
    (lambda: proc.rectified_flow(t_max=1.1), "rectified_flow: need"),
    (lambda: proc.rectified_flow(t_min=-1e-3), "rectified_flow: need"),
  ):
    with pytest.raises(ValueError, match=pattern):
      call()
  process = proc.vp_cosine()
  x = jnp.zeros((2, 2))
  with pytest.raises(ValueError, match="prediction must be one of"):
    proc.to_x0_eps(process, x_t=x, t=jnp.full((2,), 0.5), output=x, prediction="noise")
  with pytest.raises(ValueError, match="prediction must be one of"):
    proc.convert(process, x_t=x, t=jnp.full((2,), 0.5), output=x, source="eps", target="flow")
  with pytest.raises(ValueError, match="prediction must be one of"):
    proc.convert(process, x_t=x, t=jnp.full((2,), 0.5), output=x, source="v0", target="v0")
  with pytest.raises(TypeError):
    proc.to_x0_eps(process, x, jnp.full((2,), 0.5), x, "eps")  # keyword-only


def test_equal_processes_share_one_compilation():
  """A process's functions are static parts of its pytree: two processes built alike (same
  constructor and range, any parameter values) are one jit cache entry. (Closures made per
  constructor call compiled anew for every process instance.)"""
  traces = []

  @jax.jit
  def fn(p, t):
    traces.append(p.name)
    return p.alpha_sigma(t)[0]

  t = jnp.full((3,), 0.5)
  schedule = diffusion.make_schedule(diffusion.linear_betas(100, 1e-3, 0.2))
  for make in (
    proc.vp_linear,
    lambda: proc.vp_linear(0.2, 10.0),
    proc.vp_cosine,
    proc.ve,
    proc.rectified_flow,
    lambda: proc.discrete_process(schedule),
    lambda: proc.log_snr_process(vdm.LogSNRSchedule("cosine"), {}),
  ):
    fn(make(), t)
  assert len(traces) == 6, traces  # vp_linear twice with other betas: one trace
  for make in (proc.vp_linear, proc.ve, lambda: proc.discrete_process(schedule)):
    fn(make(), t)
  assert len(traces) == 6, traces


@pytest.mark.slow
def test_zero_terminal_snr_inverse_in_the_last_interval(f64):
  """At zero terminal SNR the last level's lambda = -inf is capped at -1e4 for real t, and
  lambda^{-1} interpolates the same last interval (it returned T - 2 for every lambda below the
  last finite level)."""
  schedule = diffusion.make_schedule(
    diffusion.rescale_zero_terminal_snr(diffusion.linear_betas(1000))
  )
  process = proc.discrete_process(schedule)
  t = jnp.asarray([997.5, 998.0001, 998.001, 998.01], f64)
  np.testing.assert_allclose(process.t_from_log_snr(process.log_snr(t)), t, rtol=1e-12)
