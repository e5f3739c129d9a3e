"""The process samplers (gen_jax/diffusion/solvers.py) against analytic oracles.

Every sampler on every process (discrete linear T = 1000, vp_linear, vp_cosine, ve,
rectified_flow), driven by the exact model of a Gaussian and of a Gaussian mixture
(tests/support/solvers.py, written from the closed forms):
  * the law: sample mean and std within Monte Carlo error of the data's at generous step counts
    (4 standard errors; the numbers are in the assertion messages); the deterministic samplers
    on the Gaussian exactly (affine in x_T), their bias below one of those standard errors;
  * the deterministic samplers converge to the exact ODE endpoint with their order (Euler and
    DDIM 1, Heun and DPM-Solver++(2M) 2), measured by halving the step;
  * identities in float64: DDIM and DPM-Solver++(2M) on a discrete process with integer grids
    are today's gen_jax.diffusion.ddim_sample / dpmpp_2m_sample (1e-12); Euler-Maruyama and
    EDM's churn against float64 numpy references written from the papers;
  * the grids (time_grid) against their formulas, the refusals, jit / vmap, trajectories, the
    registry's network-call counts.
The full process x sampler grid is in the slow tier; the fast tier keeps one case of each.
The peers (k-diffusion, diffusers) are in test_solvers_peers.py.
"""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion, testing
from gen_jax.diffusion import process as proc
from gen_jax.diffusion import solvers
from tests.support.diffusion import GMM2, np_karras_sigmas
from tests.support.solvers import (
  gaussian,
  jit_sample,
  mixture_eps_x0,
  mixture_model_fn,
  processes,
)

pytestmark = pytest.mark.usefixtures("fast_compile")

MU, STD = 0.2, 0.3
PROCESS_NAMES = ("discrete", "vp_linear", "vp_cosine", "ve", "rectified_flow")


def make(name):
  """A fresh process: its parameters take the float dtype of the moment (float64 under x64)."""
  return processes()[name]


SAMPLERS = tuple(solvers.PROCESS_SAMPLERS)
# A target every process can use at its first time (eps says nothing at rectified flow's t = 1).
PREDICTION = {"rectified_flow": "velocity"}
# Generous step counts: the discretisation bias is then below one Monte Carlo standard error
# of the tests' 4000 x 2 draws (asserted exactly for Euler and DPM-Solver++(2M) on the Gaussian in
# test_law; first-order samplers need more).
LAW_STEPS = {"euler": 500, "heun": 100, "ddim": 500, "dpm++2m": 100, "euler_maruyama": 1000}


def law_failures(samples, mean, std, fourth, label):
  """Mean and std of all coordinates against the law's (mean, std, 4th central moment): within
  4 standard errors, SE(mean) = std / sqrt(n), SE(std) = sqrt(m4 - std^4) / (2 std sqrt(n))."""
  x = np.asarray(samples, np.float64).ravel()
  n = x.size
  se_mean = std / math.sqrt(n)
  se_std = math.sqrt(fourth - std**4) / (2 * std * math.sqrt(n))
  got_mean, got_std = x.mean(), x.std()
  message = (
    f"{label}: mean {got_mean:.4f} vs {mean:.4f} ({(got_mean - mean) / se_mean:+.1f} SE), "
    f"std {got_std:.4f} vs {std:.4f} ({(got_std - std) / se_std:+.1f} SE)"
  )
  ok = abs(got_mean - mean) < 4 * se_mean and abs(got_std - std) < 4 * se_std
  return ok, message


@functools.cache
def mixture_moments():
  """(mean, std, 4th central moment) of one coordinate of GMM2 pooled over the dimensions, from
  2e6 numpy draws (their own error is 30x below the tests'); drawn once per session."""
  x, _ = testing.gmm_sample(np.random.default_rng(7), 2_000_000, **GMM2)
  x = x.ravel()
  centred = x - x.mean()
  return x.mean(), x.std(), np.mean(centred**4)


# The stochastic variants (Heun with churn, DDIM with eta = 1); Euler and DPM-Solver++(2M) are
# deterministic: on the Gaussian their output is affine in x_T.
LAW_OPTIONS = {"ddim": {"eta": 1.0}, "heun": {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0}}


def affine_law(process, sampler, mu, std, **options):
  """(mean, std) of a deterministic sampler's output for x_T ~ N(0, prior_std^2 I) with the
  exact model of N(mu, std^2 I): the output is A x_T + B, so two runs (x_T = 0 and 1) give the
  law N(B, (A prior_std)^2) without Monte Carlo error."""
  ends = np.array([[0.0, 0.0], [1.0, 1.0]])
  out = np.asarray(jit_sample(sampler, process, gaussian(mu, std, 2), x_init=ends, **options))
  out = out.astype(np.float64)
  slope = out[1] - out[0]
  return out[0], np.abs(slope) * float(process.prior_std())


def check_law(process_name, sampler, data, seed=0):
  process = make(process_name)
  prediction = PREDICTION.get(process_name, "eps")
  label = f"{process_name}/{sampler}/{data}"
  options = dict(num_steps=LAW_STEPS[sampler], prediction=prediction)
  if (
    data == "gaussian"
    and not solvers.PROCESS_SAMPLERS[sampler].stochastic
    and sampler not in (LAW_OPTIONS)
  ):
    # Exact: the bias itself below one standard error of the Monte Carlo checks' 4000 x 2 draws
    # (their criterion, 4 SE, allows the bias and the draws' error together).
    got_mean, got_std = affine_law(process, sampler, MU, STD, **options)
    n = 8000
    se_mean = STD / math.sqrt(n)
    se_std = math.sqrt(3 * STD**4 - STD**4) / (2 * STD * math.sqrt(n))
    message = (
      f"{label} (exact): mean {got_mean} vs {MU} ({(got_mean - MU) / se_mean} SE), "
      f"std {got_std} vs {STD} ({(got_std - STD) / se_std} SE)"
    )
    assert np.all(np.abs(got_mean - MU) < se_mean) and np.all(np.abs(got_std - STD) < se_std), (
      message
    )
    return message
  if data == "gaussian":
    params = gaussian(MU, STD, 2)
    mean, std, fourth = MU, STD, 3 * STD**4
  else:
    params = GMM2
    mean, std, fourth = mixture_moments()
  samples = jit_sample(
    sampler, process, params, jax.random.key(seed), shape=(4000, 2),
    **options, **LAW_OPTIONS.get(sampler, {}),
  )  # fmt: skip
  ok, message = law_failures(samples, mean, std, fourth, label)
  assert ok, message
  return message


def test_law_fast():
  """One case in the fast tier (DPM-Solver++(2M) on ve, the Gaussian's exact law: two runs of
  two points); the whole grid, EDM's stochastic Heun included, is test_law."""
  check_law("ve", "dpm++2m", "gaussian")


@pytest.mark.slow
@pytest.mark.parametrize("data", ["gaussian", "mixture"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("process_name", list(PROCESS_NAMES))
def test_law(process_name, sampler, data, record_property):
  """Every sampler on every process reproduces the data's mean and std: Heun with churn, DDIM
  with eta = 1 and Euler-Maruyama (stochastic) and every sampler on the mixture by Monte Carlo
  (4000 x 2 draws, 4 SE); Euler and DPM-Solver++(2M) on the Gaussian exactly (affine in x_T),
  their bias below one SE of those draws. Their deterministic variants are in the order tests."""
  record_property("law", check_law(process_name, sampler, data, seed=1))


# ---------------------------------------------------------------------------------------------
# Convergence to the exact ODE endpoint


def flow_then_denoise(x_init, start, end):
  """The exact ODE flow of N(MU, STD^2) data from x_init at (alpha, sigma) = start to end (it
  keeps z = (x - alpha MU) / sqrt(alpha^2 STD^2 + sigma^2)), then E[x0 | x] there:
  MU + alpha STD^2 z / sqrt(alpha^2 STD^2 + sigma^2)."""
  alpha0, sigma0 = start
  alpha1, sigma1 = (float(v) for v in end)
  z = (x_init - alpha0 * MU) / np.sqrt(alpha0**2 * STD**2 + sigma0**2)
  return MU + alpha1 * STD**2 * z / np.sqrt(alpha1**2 * STD**2 + sigma1**2)


@functools.partial(jax.jit, static_argnames=("sampler", "n", "spacing", "prediction", "options"))
def _order_run(sampler, process, noise, n, spacing, prediction, options):
  """One compilation per (process, sampler, N) builds the grid, runs the sampler from
  sigma(t_0) * noise, and returns (alpha, sigma) at t_0 and at t_{N-1} with x_init and the
  sample (eagerly, each of time_grid's small ops compiled anew for every N)."""
  grid = solvers.time_grid(process, n, spacing=spacing, **dict(options))
  start, last = process.alpha_sigma(grid[0]), process.alpha_sigma(grid[-2])
  x_init = start[1] * noise
  model_fn = mixture_model_fn(process, gaussian(MU, STD, 2), prediction)
  fn = solvers.PROCESS_SAMPLERS[sampler].fn
  return (
    start,
    last,
    x_init,
    fn(model_fn, process, None, x_init=x_init, t=grid, prediction=prediction),
  )


def endpoint_errors(process_name, sampler, steps, spacing, x64=True, **grid_options):
  """Max |sample - exact| from the same x_init for each step count: the exact flow of the
  Gaussian from t_0 to the grid's last network time t_{N-1} (the same for every N), then
  E[x0 | x] there, as every sampler ends."""
  process = make(process_name)
  prediction = PREDICTION.get(process_name, "eps")
  noise = jax.random.normal(jax.random.key(3), (64, 2), jnp.float64)
  options = tuple(sorted(grid_options.items()))
  errors = []
  for n in steps:
    start, last, x_init, got = _order_run(sampler, process, noise, n, spacing, prediction, options)
    start = tuple(float(v) for v in start)
    exact = flow_then_denoise(np.asarray(x_init), start, last)
    errors.append(float(np.max(np.abs(np.asarray(got) - exact))))
  errors = np.array(errors)
  return errors, np.log2(errors[:-1] / errors[1:])


@pytest.mark.slow
def test_orders_fast(x64):
  """Heun is second order on EDM's grid (ve, karras); the rest is test_orders."""
  errors, orders = endpoint_errors("ve", "heun", (16, 32), "karras")
  assert 1.8 < orders[0] < 2.5, (errors, orders)


# Grids on which each sampler's order shows from small N: Euler and Heun step in t (uniform in
# t), DDIM and DPM-Solver++(2M) in lambda (uniform in lambda, finite at both ends); ve with
# EDM's grid (uniform in t would need thousands of steps before sigma = 0.3 is resolved).
ORDER_CASES = {
  "euler": ((64, 128, 256), 1.0),
  "ddim": ((64, 128, 256), 1.0),
  "heun": ((32, 64, 128), 2.0),
  "dpm++2m": ((32, 64, 128), 2.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", list(ORDER_CASES))
@pytest.mark.parametrize("process_name", list(PROCESS_NAMES))
def test_orders(x64, process_name, sampler, record_property):
  """Errors to the exact endpoint fall with the sampler's order: log2 of the ratio between N
  and 2N within 0.15 of it at the last halving (0.25 for discrete Euler / Heun, whose lambda
  is piecewise linear in t with kinks at the levels)."""
  steps, order = ORDER_CASES[sampler]
  options = {}
  if process_name == "ve":
    spacing = "karras"
  elif sampler in ("euler", "heun"):
    spacing = "uniform"
  else:
    spacing = "log_snr"
    if process_name == "rectified_flow":
      options = {"t_start": 0.999, "t_end": 1e-3}
  errors, orders = endpoint_errors(process_name, sampler, steps, spacing, **options)
  record_property("errors", errors.tolist())
  record_property("orders", orders.tolist())
  slack = 0.25 if process_name == "discrete" and sampler in ("euler", "heun") else 0.15
  assert abs(orders[-1] - order) < slack, (errors, orders)
  assert np.all(np.diff(errors) < 0), errors


# ---------------------------------------------------------------------------------------------
# Identities with today's discrete samplers


@pytest.fixture
def discrete1000(x64):
  """DDPM's schedule built under float64 (per test: x64 is a per-test switch)."""
  schedule = diffusion.make_schedule(diffusion.linear_betas(1000))
  return schedule, proc.discrete_process(schedule)


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("eta", [pytest.param(0.0, marks=pytest.mark.slow), 1.0])
def test_ddim_reproduces_discrete_ddim(x64, discrete1000, eta):
  """On the discrete process with an integer grid (diffusers' linspace levels and the data
  after them) ddim_sample is gen_jax.diffusion.ddim_sample: same start, same per-step noise,
  every state within 1e-12 (measured: 1e-15)."""
  schedule, process = discrete1000
  eps_fn = testing.gmm_eps_fn(schedule, **GMM2)
  key = jax.random.key(5)
  levels = diffusion.spaced_timesteps(1000, 25)
  old, old_traj = diffusion.ddim_sample(
    key, eps_fn, schedule, (64, 2), timesteps=levels, eta=eta, return_trajectory=True
  )
  grid = solvers.time_grid(process, 25, spacing="linspace")
  np.testing.assert_array_equal(grid, np.append(levels, -1))
  new, traj = solvers.ddim_sample(
    eps_fn, process, key, shape=(64, 2), t=grid, eta=eta, return_trajectory=True
  )
  assert rel(new, old) < 1e-12
  assert rel(traj.x[:-1], old_traj.x) < 1e-12
  assert rel(traj.x0, old_traj.x0) < 1e-12


@pytest.mark.slow
def test_dpmpp_2m_reproduces_discrete(x64, discrete1000):
  """DPM-Solver++(2M) on today's grid (20 levels uniform in log-sigma, then the data) is
  gen_jax.diffusion.dpmpp_2m_sample within 1e-12."""
  schedule, process = discrete1000
  eps_fn = testing.gmm_eps_fn(schedule, **GMM2)
  key = jax.random.key(6)
  levels = np.asarray(diffusion.log_sigma_timesteps(schedule, 20))[::-1]
  old = diffusion.dpmpp_2m_sample(key, eps_fn, schedule, (64, 2), timesteps=levels)
  new = solvers.dpmpp_2m_sample(eps_fn, process, key, shape=(64, 2), t=np.append(levels, -1))
  assert rel(new, old) < 1e-12


# ---------------------------------------------------------------------------------------------
# Float64 references written from the papers


def np_vp_linear(t, beta_min=0.1, beta_max=20.0):
  """(alpha, sigma, alpha', sigma') of score_sde's VP SDE in closed form."""
  log_alpha = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
  alpha = np.exp(log_alpha)
  d_alpha = alpha * (-0.5 * t * (beta_max - beta_min) - 0.5 * beta_min)
  sigma = np.sqrt(1 - alpha**2)
  return alpha, sigma, d_alpha, -alpha * d_alpha / sigma


@pytest.mark.slow
def test_euler_maruyama_against_numpy(x64):
  """Euler-Maruyama on vp_linear, step for step with the same noise, against numpy written
  from the SDE dx = f x dt + g dW of the forward process (f = d log alpha / dt,
  g^2 = d sigma^2 / dt - 2 f sigma^2) reversed: x += (f x - g^2 score) dt + g sqrt(|dt|) z."""
  process = make("vp_linear")
  model_fn = mixture_model_fn(process, GMM2, "eps")
  key = jax.random.key(8)
  grid = np.asarray(solvers.time_grid(process, 30, spacing="uniform"))
  got, traj = solvers.euler_maruyama_sample(
    model_fn, process, key, shape=(16, 2), t=grid, return_trajectory=True
  )
  x = np.asarray(traj.x[0])
  _, step_key = jax.random.split(key)
  for i in range(len(grid) - 1):
    t, s = grid[i], grid[i + 1]
    alpha, sigma, d_alpha, d_sigma = np_vp_linear(t)
    eps, x0 = (np.asarray(v) for v in _np_mixture(x, alpha, sigma))
    if s == solvers.data_time(process):
      x = x0
      break
    f = d_alpha / alpha
    g2 = 2 * sigma * d_sigma - 2 * f * sigma**2
    score = -eps / sigma
    z = np.asarray(jax.random.normal(jax.random.fold_in(step_key, i), x.shape, jnp.float64))
    x = x + (f * x - g2 * score) * (s - t) + math.sqrt(g2 * (t - s)) * z
    np.testing.assert_allclose(traj.x[i + 1], x, rtol=1e-10, atol=1e-12)
  assert rel(got, x) < 1e-10


def _np_mixture(x, alpha, sigma):
  n = x.shape[0]
  return mixture_eps_x0(np, x, np.full(n, alpha), np.full(n, sigma), **GMM2)


@pytest.mark.slow
def test_heun_churn_against_edm_general(x64):
  """Heun with churn on vp_cosine against numpy written from EDM's general sampler
  (Karras et al. 2022, Algorithm 1 with Algorithm 2's churn; edm/generate.py's
  ablation_sampler): s(t) = sigma / alpha, s(t_hat) = (1 + gamma) s(t),
  x_hat = (alpha_hat / alpha) x + alpha_hat sqrt(s_hat^2 - s^2) s_noise z, then Heun on the
  ODE dx/dt = alpha' x0 + sigma' eps with the cosine schedule's closed forms."""
  a = math.atan(math.exp(-15 / 2))
  b = math.atan(math.exp(15 / 2))

  def coeffs(t):
    angle = a + t * (b - a)
    return math.cos(angle), math.sin(angle), -math.sin(angle) * (b - a), math.cos(angle) * (b - a)

  def t_of_s(s):  # s = tan(angle)
    return (math.atan(s) - a) / (b - a)

  process = make("vp_cosine")
  key = jax.random.key(9)
  grid = np.asarray(solvers.time_grid(process, 12, spacing="karras", t_start=0.9))
  churn, s_tmin, s_tmax, s_noise = 6.0, 0.05, 5.0, 1.007
  model_fn = mixture_model_fn(process, GMM2, "eps")
  x_init = np.asarray(jax.random.normal(jax.random.key(10), (16, 2), jnp.float64))
  got = solvers.heun_sample(
    model_fn, process, key, x_init=x_init, t=grid, s_churn=churn, s_tmin=s_tmin,
    s_tmax=s_tmax, s_noise=s_noise,
  )  # fmt: skip
  _, step_key = jax.random.split(key)
  n = len(grid) - 1

  def velocity(x, t):
    alpha, sigma, d_alpha, d_sigma = coeffs(t)
    eps, x0 = _np_mixture(x, alpha, sigma)
    return d_alpha * x0 + d_sigma * eps, x0

  x = x_init
  churned = 0
  for i in range(n):
    t, t_next = grid[i], grid[i + 1]
    alpha, sigma, _, _ = coeffs(t)
    s = sigma / alpha
    gamma = min(churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
    t_hat = t_of_s(s * (1 + gamma)) if gamma > 0 else t
    churned += gamma > 0
    alpha_hat, sigma_hat, _, _ = coeffs(t_hat)
    z = np.asarray(jax.random.normal(jax.random.fold_in(step_key, i), x.shape, jnp.float64))
    x = alpha_hat / alpha * x + alpha_hat * math.sqrt((sigma_hat / alpha_hat) ** 2 - s**2) * (
      s_noise * z
    )
    d, x0 = velocity(x, t_hat)
    if t_next == solvers.data_time(process):
      x = x0
    else:
      x_euler = x + (t_next - t_hat) * d
      x = x + (t_next - t_hat) * 0.5 * (d + velocity(x_euler, t_next)[0])
  assert 3 <= churned < n  # the test covers steps with and without churn
  assert rel(got, x) < 1e-10


# ---------------------------------------------------------------------------------------------
# Grids


@pytest.mark.slow
def test_time_grid_formulas(x64):
  """Each spacing against its formula in numpy."""
  ve = make("ve")
  np.testing.assert_allclose(
    solvers.time_grid(ve, 18, spacing="karras"),
    np.append(np_karras_sigmas(0.002, 80.0, 18), 0.0),
    rtol=1e-13,
  )
  rf = make("rectified_flow")
  np.testing.assert_allclose(solvers.time_grid(rf, 10), np.linspace(1, 0, 11), atol=1e-15)
  # SD3's shift on rectified flow: shift t / (1 + (shift - 1) t), diffusers' formula.
  u = np.linspace(1, 0.05, 8)
  np.testing.assert_allclose(
    solvers.time_grid(rf, 8, t_end=0.05, shift=3.0), np.append(3 * u / (1 + 2 * u), 0.0)
  )
  vp = make("vp_linear")
  grid = np.asarray(solvers.time_grid(vp, 9, spacing="log_snr"))
  alpha, sigma, _, _ = np_vp_linear(grid[:-1])
  lam = np.log(alpha**2 / sigma**2)
  np.testing.assert_allclose(np.diff(lam), np.full(8, (lam[-1] - lam[0]) / 8), rtol=1e-9)
  assert grid[0] == vp.t_max and grid[-2] == vp.t_min and grid[-1] == 0.0
  discrete = proc.discrete_process(diffusion.make_schedule(diffusion.linear_betas(100)))
  for spacing in ("linspace", "leading", "trailing"):
    grid = solvers.time_grid(discrete, 7, spacing=spacing)
    assert grid.dtype == jnp.int32
    np.testing.assert_array_equal(grid, np.append(diffusion.spaced_timesteps(100, 7, spacing), -1))
  # linspace from an SDEdit start.
  np.testing.assert_array_equal(
    solvers.time_grid(discrete, 4, spacing="linspace", t_start=60), [60, 40, 20, 0, -1]
  )
  # Real grids on the discrete process are not snapped to levels.
  grid = np.asarray(solvers.time_grid(discrete, 5, spacing="karras"))
  assert np.any(grid[1:-2] != np.round(grid[1:-2])) and grid[-1] == -1.0


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"t_start": 81.0}, "t_max"),
    ({"t_end": 0.001}, "t_min"),
    ({"t_start": 1.0, "t_end": 2.0}, "t_end < t_start"),
    ({"spacing": "linspace"}, "continuous"),
    ({"spacing": "cosine"}, "spacing must be one of"),
    ({"shift": 0.5}, "shift"),
  ],
)
def test_time_grid_refuses(kwargs, match):
  with pytest.raises(ValueError, match=match):
    solvers.time_grid(make("ve"), 10, **kwargs)


def test_zero_snr_grids_refused_where_undefined():
  rf = make("rectified_flow")
  with pytest.raises(ValueError, match="karras"):
    solvers.time_grid(rf, 10, spacing="karras")
  with pytest.raises(ValueError, match="log_snr"):
    solvers.time_grid(rf, 10, spacing="log_snr", t_start=0.9)  # t_end = 0: the data
  model_fn = mixture_model_fn(rf, GMM2, "eps")
  with pytest.raises(ValueError, match="zero SNR"):
    solvers.euler_sample(model_fn, rf, jax.random.key(0), shape=(4, 2), num_steps=4)


@pytest.mark.parametrize(
  "t, match",
  [
    ([90.0, 10.0, 0.0], "above t_max"),
    ([80.0, 10.0, 0.001], "below t_min"),
    ([80.0, 0.001, 0.0], "below t_min"),
    ([80.0, 90.0, 0.0], "strictly decreasing"),
    ([80.0], "at least 2"),
  ],
)
def test_sampler_grid_refused(t, match):
  """A grid outside [t_min, t_max] is refused, never clipped (the last entry may be the data,
  t = 0 on ve)."""
  ve = make("ve")
  with pytest.raises(ValueError, match=match):
    solvers.euler_sample(lambda x, t: x, ve, jax.random.key(0), shape=(2, 2), t=np.array(t))


def test_argument_errors():
  ve = make("ve")
  model_fn = mixture_model_fn(ve, GMM2)
  with pytest.raises(ValueError, match="not both"):
    solvers.euler_sample(model_fn, ve, jax.random.key(0), shape=(2, 2), num_steps=3, t=[80.0, 0])
  with pytest.raises(ValueError, match="key"):
    solvers.euler_sample(model_fn, ve, None, shape=(2, 2), num_steps=3)
  with pytest.raises(ValueError, match="key"):
    solvers.ddim_sample(model_fn, ve, None, x_init=np.zeros((2, 2)), num_steps=3, eta=0.5)
  with pytest.raises(ValueError, match="prediction"):
    solvers.euler_sample(model_fn, ve, jax.random.key(0), shape=(2, 2), prediction="noise")
  with pytest.raises(ValueError, match="eta"):
    solvers.ddim_sample(model_fn, ve, jax.random.key(0), shape=(2, 2), eta=-1.0)
  with pytest.raises(ValueError, match="differs"):
    solvers.euler_sample(model_fn, ve, None, shape=(3, 2), x_init=np.zeros((2, 2)))
  with pytest.raises(TypeError):
    solvers.euler_sample(model_fn, ve, jax.random.key(0), (2, 2))  # shape is keyword-only


# ---------------------------------------------------------------------------------------------
# The API: x_init, key, trajectories, jit / vmap, guidance, clip, the registry


@pytest.mark.slow
def test_sdedit_start_and_no_key(x64):
  """x_init is the state at the grid's first time: from t_0 = 0.5 on rectified flow the exact
  velocity's Euler run lands on the exact endpoint of the flow from there; a deterministic
  sampler needs no key."""
  rf = make("rectified_flow")
  model_fn = mixture_model_fn(rf, gaussian(MU, STD, 2), "velocity")
  x_init = np.asarray(jax.random.normal(jax.random.key(2), (32, 2), jnp.float64))
  grid = solvers.time_grid(rf, 50, t_start=0.5)
  got = solvers.heun_sample(model_fn, rf, x_init=x_init, t=grid, prediction="velocity")
  exact = flow_then_denoise(x_init, (0.5, 0.5), rf.alpha_sigma(grid[-2]))
  # Heun's error at 50 steps is 2e-4; x_init read at t_max = 1 instead would be off by ~0.1.
  assert np.max(np.abs(np.asarray(got) - exact)) < 1e-3


def test_trajectory_and_no_stacking():
  """return_trajectory gives the grid, N + 1 states and N predictions; without it the scan
  stacks nothing (its only outputs are the carry)."""
  ve = make("ve")
  model_fn = mixture_model_fn(ve, GMM2)
  x, traj = solvers.heun_sample(
    model_fn, ve, jax.random.key(0), shape=(4, 2), num_steps=5, return_trajectory=True
  )
  assert traj.t.shape == (6,) and traj.x.shape == (6, 4, 2) and traj.x0.shape == (5, 4, 2)
  np.testing.assert_array_equal(traj.x[-1], x)
  np.testing.assert_array_equal(traj.t, solvers.time_grid(ve, 5, spacing="karras"))
  for name in SAMPLERS:
    fn = solvers.PROCESS_SAMPLERS[name].fn
    jaxpr = jax.make_jaxpr(lambda k: fn(model_fn, ve, k, shape=(4, 2), num_steps=5))(
      jax.random.key(0)
    )
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1
    assert len(scans[0].outvars) == scans[0].params["num_carry"], name


@pytest.mark.parametrize(
  "name", [n if n == "ddim" else pytest.param(n, marks=pytest.mark.slow) for n in SAMPLERS]
)
def test_jit_and_vmap(x64, name):
  """Under jit, with the process and the grid as traced arguments, every sampler gives its
  eager result; vmap over keys gives each key's own run."""
  vp = make("vp_cosine")
  model_fn = mixture_model_fn(vp, GMM2)
  grid = solvers.time_grid(vp, 8, spacing="log_snr", t_start=0.95)
  options = {"heun": {"s_churn": 2.0, "s_tmax": 10.0}, "ddim": {"eta": 0.5}}.get(name, {})
  fn = solvers.PROCESS_SAMPLERS[name].fn

  def sample(process, t, key):
    return fn(model_fn, process, key, shape=(4, 2), t=t, **options)

  keys = jax.random.split(jax.random.key(4), 2)
  eager = sample(vp, grid, keys[0])
  jitted = jax.jit(sample)
  batched = jax.vmap(sample, in_axes=(None, None, 0))(vp, grid, keys)
  np.testing.assert_allclose(jitted(vp, grid, keys[0]), eager, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(batched[0], eager, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(batched[1], jitted(vp, grid, keys[1]), rtol=1e-12, atol=1e-12)
  assert rel(batched[1], batched[0]) > 1e-3  # the keys matter


def test_default_grid_under_jit_on_rectified_flow():
  """The default spacing is decided at trace time: under jit rectified flow (alpha = 0 at t = 1)
  gets the uniform grid as it does eagerly. Before, jit saw alpha(t_max) as a tracer, took the
  karras grid (sigma / alpha infinite at t = 1) and every sample was NaN."""
  rf = proc.rectified_flow()
  model_fn = lambda x, t: -x  # any velocity model: the grid is the question
  sample = lambda key: solvers.euler_sample(
    model_fn, rf, key, shape=(3, 2), num_steps=4, prediction="velocity"
  )
  key = jax.random.key(0)
  jitted = jax.jit(sample)(key)
  assert np.all(np.isfinite(np.asarray(jitted)))
  np.testing.assert_allclose(jitted, sample(key), rtol=1e-6, atol=1e-6)


def test_dpmpp_2m_default_grid_is_uniform_in_log_snr(x64):
  """DPM-Solver++(2M) without t= / spacing= steps uniformly in lambda (the others keep karras).
  With the exact model of N(0.2, 0.3^2) the output is affine in x_T, so its std is |dx_0/dx_T| *
  prior_std with no Monte Carlo error: at 20 steps on vp_cosine (lambda in [-15, 15]) the
  default was 15.9% off on the karras grid, 3.0% on this one (docs/processes.md's table)."""
  vp = make("vp_cosine")
  model_fn = mixture_model_fn(vp, gaussian(MU, STD, 1))
  ends = jnp.array([[0.0], [1.0]])
  out = solvers.dpmpp_2m_sample(model_fn, vp, x_init=ends, num_steps=20)
  same = solvers.dpmpp_2m_sample(model_fn, vp, x_init=ends, num_steps=20, spacing="log_snr")
  np.testing.assert_array_equal(out, same)
  std = abs(float(out[1, 0] - out[0, 0])) * float(vp.prior_std())
  assert abs(std / STD - 1) < 0.035, std
  karras = solvers.dpmpp_2m_sample(model_fn, vp, x_init=ends, num_steps=20, spacing="karras")
  assert abs(abs(float(karras[1, 0] - karras[0, 0])) * float(vp.prior_std()) / STD - 1) > 0.1
  euler = solvers.euler_sample(model_fn, vp, x_init=ends, num_steps=5)
  np.testing.assert_array_equal(
    euler, solvers.euler_sample(model_fn, vp, x_init=ends, num_steps=5, spacing="karras")
  )


@pytest.mark.slow
def test_guidance_in_any_target(x64):
  """Classifier-free guidance composes through model_fn: guiding the velocity, or the x0, gives
  the sample that guiding eps gives (each conversion is affine in the output)."""
  vp = make("vp_cosine")
  uncond = dict(weights=[1.0], means=np.zeros((1, 2)), stds=[0.5])
  x_init = np.asarray(jax.random.normal(jax.random.key(11), (16, 2), jnp.float64))
  grid = solvers.time_grid(vp, 10)
  samples = []
  for prediction in ("eps", "x0", "velocity"):
    guided = diffusion.guided_eps_fn(
      cond_fn=mixture_model_fn(vp, GMM2, prediction),
      uncond_fn=mixture_model_fn(vp, uncond, prediction),
      guidance_scale=2.0,
    )
    samples.append(
      solvers.dpmpp_2m_sample(guided, vp, x_init=x_init, t=grid, prediction=prediction)
    )
  assert rel(samples[1], samples[0]) < 1e-10 and rel(samples[2], samples[0]) < 1e-10
  unguided = solvers.dpmpp_2m_sample(mixture_model_fn(vp, GMM2), vp, x_init=x_init, t=grid)
  assert rel(unguided, samples[0]) > 1e-2  # the guidance did something


@pytest.mark.slow
def test_clip():
  """clip keeps x0_hat, hence the sample, in [-1, 1] for data far outside it."""
  vp = make("vp_linear")
  model_fn = mixture_model_fn(vp, gaussian(3.0, 0.1, 2), "eps")
  for clip, inside in ((True, True), (False, False)):
    x = solvers.ddim_sample(model_fn, vp, jax.random.key(0), shape=(8, 2), num_steps=10, clip=clip)
    assert bool(np.all(np.abs(np.asarray(x)) <= 1.0)) == inside


@pytest.mark.slow
def test_registry():
  """Each spec's options are its function's keyword defaults, and its network_calls(N) is what
  a counting model sees on the default grid (Heun: 2N - 1)."""
  ve = make("ve")
  for name, spec in solvers.PROCESS_SAMPLERS.items():
    params = inspect.signature(spec.fn).parameters
    for option, default in spec.options.items():
      assert params[option].default == default, (name, option)
    calls = []

    def counted(x, t, calls=calls):
      jax.debug.callback(lambda: calls.append(1))
      return mixture_model_fn(ve, GMM2)(x, t)

    spec.fn(counted, ve, jax.random.key(0), shape=(2, 2), num_steps=6)
    jax.effects_barrier()
    assert len(calls) == spec.network_calls(6), name
  with pytest.raises(ValueError, match="sampler must be one of"):
    solvers.process_sampler_spec("euler_a")


def test_registry_domains_and_names():
  """Each row's domains cover only its options, allow its defaults and refuse -1, in the words
  of samplers.SAMPLERS' rows for the same option (configs.validate reports them alike); the
  names a model with samplers of its own gives the process samplers."""
  for name, spec in solvers.PROCESS_SAMPLERS.items():
    assert set(spec.domains) <= set(spec.options), name
    for option, (_, allows) in spec.domains.items():
      assert allows(spec.options[option]) and not allows(-1.0), (name, option)
  for name in ("ddim", "heun"):
    for option, (want, _) in solvers.PROCESS_SAMPLERS[name].domains.items():
      assert want == diffusion.SAMPLERS[name].domains[option][0], (name, option)
  own = diffusion.SAMPLERS
  resolved = {
    "ddpm": None,
    "heun": None,  # DDPM's own, snapped to its levels
    "ddim": None,
    "euler": "euler",
    "euler_maruyama": "euler_maruyama",
    "process_heun": "heun",
    "process_dpm++2m": "dpm++2m",
    "process_euler": "euler",
  }
  for given, want in resolved.items():
    assert solvers.process_sampler_name(given, own=own) == want, given
  assert solvers.process_sampler_name("heun") == solvers.process_sampler_name("process_heun")
  for bad in ("process_ddpm", "process_", "euler_a"):
    with pytest.raises(ValueError, match="sampler must be one of"):
      solvers.process_sampler_name(bad, own=own)
  names = solvers.sampler_names(own=own)
  assert len(names) == len(set(names))
  expected = {*own, "euler", "euler_maruyama", *(f"process_{n}" for n in solvers.PROCESS_SAMPLERS)}
  assert set(names) == expected


# ---------------------------------------------------------------------------------------------
# Zero terminal SNR (Lin et al. 2024): alpha = 0 at the top level


def zero_snr_discrete():
  betas = diffusion.rescale_zero_terminal_snr(diffusion.linear_betas(1000))
  schedule = diffusion.make_schedule(betas)
  return schedule, proc.discrete_process(schedule)


def test_zero_snr_derivatives_finite(x64):
  """alpha' is finite (0) where alpha underflows on the last, infinitely steep segment of a
  zero-terminal-SNR schedule; it was sqrt(sigmoid)'s 0 / 0 = nan, and Euler and Heun returned
  nan from level 999 (a fix in process.py)."""
  _, process = zero_snr_discrete()
  alpha, _, d_alpha, d_sigma = process.derivatives(jnp.array([999.0, process.t_max, 500.0]))
  assert np.all(np.isfinite(np.asarray(d_alpha))) and np.all(np.isfinite(np.asarray(d_sigma)))
  assert float(alpha[0]) == 0.0 and float(d_alpha[2]) < 0


@pytest.mark.slow
def test_zero_snr_samplers(x64):
  """On trailing levels from the zero-SNR level 999 with a v-model: DDIM and DPM-Solver++(2M)
  are today's discrete samplers (1e-12), and every sampler reproduces the Gaussian's law (the
  first step's exact limits at alpha = 0)."""
  schedule, process = zero_snr_discrete()
  model_fn = mixture_model_fn(process, gaussian(MU, STD, 2), "v")
  grid = solvers.time_grid(process, 50, spacing="trailing")
  key = jax.random.key(12)
  for new_fn, old_fn in (
    (solvers.ddim_sample, diffusion.ddim_sample),
    (solvers.dpmpp_2m_sample, diffusion.dpmpp_2m_sample),
  ):
    old = old_fn(key, model_fn, schedule, (64, 2), timesteps=np.asarray(grid[:-1]), prediction="v")
    new = new_fn(model_fn, process, key, shape=(64, 2), t=grid, prediction="v")
    assert rel(new, old) < 1e-12
  # Euler and Heun (no churn) are affine in x_T: their law exactly, the bias below one SE of
  # 4000 x 2 draws; Euler-Maruyama by Monte Carlo (4 SE).
  se_mean, se_std = STD / math.sqrt(8000), math.sqrt(2 * STD**4) / (2 * STD * math.sqrt(8000))
  for name, steps in (("euler", 200), ("heun", 100)):
    grid = solvers.time_grid(process, steps, spacing="trailing")
    mean, std = affine_law(process, name, MU, STD, t=grid, prediction="v")
    assert np.all(np.abs(mean - MU) < se_mean) and np.all(np.abs(std - STD) < se_std), (
      name, mean, std,
    )  # fmt: skip
  samples = jit_sample(
    "euler_maruyama", process, gaussian(MU, STD, 2), key, shape=(4000, 2), prediction="v",
    t=solvers.time_grid(process, 1000, spacing="trailing"),
  )  # fmt: skip
  ok, message = law_failures(samples, MU, STD, 3 * STD**4, "zero SNR/euler_maruyama")
  assert ok, message
