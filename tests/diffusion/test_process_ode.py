"""Tests for the probability-flow ODE likelihood on every process (gen_jax/diffusion/process_ode.py).

Oracle: Gaussian-mixture data sum_k w_k N(mu_k, s_k^2 I) and its exact posterior means under
x_t = alpha x0 + sigma eps, for any alpha and sigma (written here from Bayes' rule, not from
gen_jax): with var_k = alpha^2 s_k^2 + sigma^2 and r_k the responsibilities of the components
N(alpha mu_k, var_k I) of p_t,
  E[eps | x_t] = sum_k r_k sigma (x_t - alpha mu_k) / var_k,
  E[x0 | x_t]  = sum_k r_k (mu_k + alpha s_k^2 (x_t - alpha mu_k) / var_k).
The ODE of this exact model carries the true marginals, so it returns the density of the data
convolved with N(0, sigma~_0^2 I), sigma~_0 = sigma / alpha at t_start, up to the prior mismatch
at t_end. For one Gaussian the flow is affine and the model's density is closed form, mismatch
included (`np_gaussian_model_log_density`); the endpoints are computed here in float64 numpy
from the processes' formulas.
"""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from gen_jax import diffusion, testing
from gen_jax.diffusion import process as proc
from gen_jax.diffusion import process_ode
from tests.support.diffusion import (
  GAUSS_MU,
  GAUSS_STD,
  GMM2,
  np_abar,
  np_cosine_betas,
  np_discretized_log_prob,
  np_linear_betas,
  np_rescale_zero_terminal_snr,
)

# XLA's optimisation passes cost more than they save on these small programs.
pytestmark = pytest.mark.usefixtures("fast_compile")

F32 = jnp.float32
ONE_GAUSSIAN = dict(weights=[1.0], means=np.full((1, 2), GAUSS_MU), stds=[GAUSS_STD])


# ----------------------------------------------------------------------------
# The processes under test and their alpha, sigma in float64 numpy
# ----------------------------------------------------------------------------


def _np_vp_linear(t, beta_min=0.1, beta_max=20.0):
  alpha = np.exp(-0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min)
  return alpha, np.sqrt(1.0 - alpha**2)


def _np_vp_cosine(t, log_snr_min=-15.0, log_snr_max=15.0):
  a, b = math.atan(math.exp(-log_snr_max / 2)), math.atan(math.exp(-log_snr_min / 2))
  angle = a + t * (b - a)
  return math.cos(angle), math.sin(angle)


def _np_discrete(betas):
  """alpha, sigma at real t: lambda linear between the levels' log(ac / (1 - ac)), -inf (zero
  terminal SNR) capped at -1e4 as the process documents."""
  abar = np_abar(betas)
  with np.errstate(divide="ignore"):
    lam = np.maximum(np.log(abar) - np.log1p(-abar), -1e4)

  def alpha_sigma(t):
    if t == int(t):
      return math.sqrt(abar[int(t)]), math.sqrt(1.0 - abar[int(t)])
    lo = min(int(t), len(abar) - 2)
    value = lam[lo] + (t - lo) * (lam[lo + 1] - lam[lo])
    return math.sqrt(special.expit(value)), math.sqrt(special.expit(-value))

  return alpha_sigma


# name -> (process, options of the likelihood, numpy alpha_sigma(t)). Rectified flow starts at
# t = 1e-5 (sigma = 0 at its t_min = 0) and ends at t = 1, pure noise: no prior mismatch; its
# model predicts flow matching's velocity (eps is undefined at alpha = 0).
PROCESSES = {
  "discrete_linear1000": (
    lambda: proc.discrete_process(diffusion.make_schedule(diffusion.linear_betas(1000))),
    {},
    _np_discrete(np_linear_betas(1000)),
  ),
  "discrete_cosine1000": (
    lambda: proc.discrete_process(diffusion.make_schedule(diffusion.cosine_betas(1000))),
    {},
    _np_discrete(np_cosine_betas(1000)),
  ),
  # v-prediction: eps is undefined at the last level (alpha = 0), which the grid reaches.
  "discrete_zero_snr_linear1000": (
    lambda: proc.discrete_process(
      diffusion.make_schedule(diffusion.rescale_zero_terminal_snr(diffusion.linear_betas(1000)))
    ),
    {"prediction": "v"},
    _np_discrete(np_rescale_zero_terminal_snr(np_linear_betas(1000))),
  ),
  "vp_linear": (lambda: proc.vp_linear(t_min=1e-5), {}, _np_vp_linear),
  "vp_cosine": (proc.vp_cosine, {}, _np_vp_cosine),
  "ve": (proc.ve, {}, lambda t: (1.0, t)),
  "rectified_flow": (
    proc.rectified_flow,
    {"t_start": 1e-5, "prediction": "velocity"},
    lambda t: (1.0 - t, t),
  ),
}
FAST = ("vp_cosine", "rectified_flow")


def _params(names, fast=FAST):
  return [pytest.param(n, marks=() if n in fast else pytest.mark.slow) for n in names]


def _endpoints(name):
  make, options, np_alpha_sigma = PROCESSES[name]
  process = make()
  t_start = options.get("t_start", process.t_min)
  t_end = options.get("t_end", process.t_max)
  return process, dict(options), np_alpha_sigma(t_start), np_alpha_sigma(t_end)


# ----------------------------------------------------------------------------
# The exact model and the closed forms
# ----------------------------------------------------------------------------


def mixture_model_fn(process, mixture, prediction="eps"):
  """The exact model of the mixture under `process`, in target `prediction` (module docstring);
  x0 and eps from Bayes' rule directly, so both exist at alpha = 0 and at sigma = 0."""
  weights, means, stds = (np.asarray(mixture[k], np.float64) for k in ("weights", "means", "stds"))

  def model_fn(x_t, t):
    dtype = x_t.dtype
    alpha, sigma = (v.astype(dtype)[:, None, None] for v in process.alpha_sigma(t))  # (B, 1, 1)
    diff = x_t[:, None, :] - alpha * jnp.asarray(means, dtype)  # (B, K, D)
    var = alpha[..., 0] ** 2 * jnp.asarray(stds, dtype) ** 2 + sigma[..., 0] ** 2  # (B, K)
    logits = (
      jnp.log(jnp.asarray(weights, dtype))
      - 0.5 * means.shape[1] * jnp.log(var)
      - 0.5 * jnp.sum(diff**2, -1) / var
    )
    resp = jax.nn.softmax(logits, axis=-1)[..., None]  # (B, K, 1)
    eps = jnp.sum(resp * sigma * diff / var[..., None], axis=1)
    s2 = jnp.asarray(stds**2, dtype)[:, None]  # (K, 1)
    x0 = jnp.sum(resp * (jnp.asarray(means, dtype) + alpha * s2 * diff / var[..., None]), axis=1)
    return proc.from_x0_eps(process, t=t, x0=x0, eps=eps, prediction=prediction)

  return model_fn


def np_gaussian_model_log_density(y, mu, s, start, end, variance_preserving):
  """float64 log-density (nats, per example) that the ODE of the exact model of N(mu, s^2 I)
  assigns to y (n, D), start = (alpha, sigma) at t_start, end = at t_end, prior N(0, P^2) at
  t_end (P = 1 if variance preserving, else sigma_e). The flow keeps each dimension's z-score:
    x_end = alpha_e mu + m z,  m = sqrt(alpha_e^2 s^2 + sigma_e^2),  z = (y - mu) / sqrt(s^2 + st^2),
  st = sigma_0 / alpha_0, so log p(y) = sum_d log N(x_end; 0, P^2) + log m - log sqrt(s^2 + st^2).
  Returns (model, data): this, and the data's own smoothed density log N(y; mu, s^2 + st^2)."""
  (alpha_0, sigma_0), (alpha_e, sigma_e) = start, end
  prior = 1.0 if variance_preserving else sigma_e
  smoothed = math.sqrt(s * s + (sigma_0 / alpha_0) ** 2)
  z = (np.asarray(y, np.float64) - mu) / smoothed
  m = math.sqrt(alpha_e**2 * s * s + sigma_e**2)
  x_end = alpha_e * mu + m * z
  model = -0.5 * (math.log(2 * math.pi * prior**2) + (x_end / prior) ** 2) + math.log(m / smoothed)
  data = -0.5 * (math.log(2 * math.pi) + z**2) - math.log(smoothed)
  return model.sum(-1), data.sum(-1)


def _gaussian_points(n=256, seed=0):
  return GAUSS_MU + GAUSS_STD * np.random.default_rng(seed).standard_normal((n, 2))


def _log_likelihood(process, model_fn, x, **options):
  fn = jax.jit(
    lambda x, k: process_ode.ode_log_likelihood(model_fn, process, x=x, key=k, **options)
  )
  return np.asarray(fn(jnp.asarray(x, F32), jax.random.key(0)), np.float64)


@pytest.mark.slow
def test_mixture_model_is_the_exact_posterior_mean(x64):
  """The oracle itself, float64: for a VP process its eps is testing.gmm_eps_fn's (a DDPM
  schedule's alphas_cumprod = alpha^2), and for any process it is gmm_eps_fn's at
  x_t / sqrt(alpha^2 + sigma^2) (a rescaling keeps eps); x0 = (x_t - sigma eps) / alpha; and for
  rectified flow the velocity target is E[eps - x0 | x_t]."""
  f64 = jnp.float64
  x = jnp.asarray(np.random.default_rng(1).uniform(-1.5, 1.5, (6, 2)), f64)
  for process in (proc.vp_cosine(), proc.ve(), proc.rectified_flow()):
    t = jnp.linspace(process.t_min + 0.01, 0.9 * process.t_max, 6, dtype=f64)
    eps = mixture_model_fn(process, GMM2)(x, t)
    x0 = mixture_model_fn(process, GMM2, "x0")(x, t)
    alpha, sigma = (np.asarray(v, np.float64)[:, None] for v in process.alpha_sigma(t))
    norm = np.sqrt(alpha**2 + sigma**2)
    schedule = types.SimpleNamespace(alphas_cumprod=jnp.asarray((alpha / norm)[:, 0] ** 2))
    ref = testing.gmm_eps_fn(schedule, **GMM2)(x / norm, jnp.arange(6))
    np.testing.assert_allclose(eps, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(x0, (np.asarray(x) - sigma * np.asarray(eps)) / alpha, rtol=1e-9)
  rf = proc.rectified_flow()
  t = jnp.full((6,), 0.4, f64)
  velocity = mixture_model_fn(rf, GMM2, "velocity")(x, t)
  want = mixture_model_fn(rf, GMM2, "eps")(x, t) - mixture_model_fn(rf, GMM2, "x0")(x, t)
  np.testing.assert_allclose(velocity, want, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------
# One Gaussian: every process, against the closed form
# ----------------------------------------------------------------------------


def _gaussian_errors(name, **extra):
  """(ODE - model's closed form, model - data's smoothed density, ODE - log N(y; mu, s^2)), per
  dimension, nats, float32, exact trace unless `extra` says otherwise."""
  process, options, start, end = _endpoints(name)
  options = {**options, **extra}
  prediction = options.pop("prediction", "eps")
  y = _gaussian_points()
  model_fn = mixture_model_fn(process, ONE_GAUSSIAN, prediction)
  log_p = _log_likelihood(process, model_fn, y, prediction=prediction, **options)
  model, data = np_gaussian_model_log_density(
    y, GAUSS_MU, GAUSS_STD, start, end, process.variance_preserving
  )
  unsmoothed = testing.gmm_log_density(y, **ONE_GAUSSIAN)
  return (log_p - model) / 2, (model - data) / 2, (log_p - unsmoothed) / 2


@pytest.mark.parametrize("name", _params(PROCESSES))
def test_gaussian_oracle_every_process(name):
  """Exact trace, default num_steps (256), float32: within 0.01 nats/dim of the closed form.
  Measured |error| mean / max, nats/dim: discrete linear 0.00013 / 0.0011, discrete cosine
  0.00023 / 0.0019, discrete zero-terminal-SNR linear (v) 0.00022 / 0.0018, vp_linear 0.00021 / 0.0017, vp_cosine 0.00034 / 0.0027, ve 0.00016 / 0.0014,
  rectified flow 0.00052 / 0.0043 (Heun: 4x smaller per doubling of num_steps).

  The endpoints' expected bias against the data's own log N(x; mu, s^2): the smoothing by
  sigma~_0 (0.01 for DDPM's linear levels, 0.002 for EDM's sigma_min, 5.5e-4 for vp_cosine's
  log-SNR 15, 1e-5 for the others) and the prior mismatch at t_end, measured 7e-4 nats/dim for the
  discrete linear schedule and vp_linear (alpha_e^2 = 4e-5), 1.4e-3 for ve (sigma_max = 80),
  6e-5 for vp_cosine, 0 for rectified flow (t_end = 1 is pure noise)."""
  err, mismatch, total = _gaussian_errors(name)
  print(
    f"{name}: |err| mean {np.abs(err).mean():.5f} max {np.abs(err).max():.5f}; prior mismatch "
    f"{np.abs(mismatch).mean():.2e}; vs log N(x; mu, s^2) {np.abs(total).mean():.5f} nats/dim"
  )
  assert np.all(np.isfinite(err))
  assert np.abs(err).mean() < 0.002
  assert np.abs(err).max() < 0.01
  assert np.abs(mismatch).mean() < 2e-3
  assert np.abs(total).mean() < 0.01


@pytest.mark.parametrize(
  "name", _params(["vp_cosine", "rectified_flow", "ve", "discrete_linear1000"], fast=())
)
def test_every_prediction_gives_one_likelihood(name):
  """The same exact model as eps, x0, v, velocity or score predictor: one likelihood (the
  conversions are exact; what differs is float32 rounding). Rectified flow's eps and score are
  undefined at t = 1 (alpha = 0), so there the run ends at 1 - 1e-4 for every target."""
  process, options, _, _ = _endpoints(name)
  options = {k: v for k, v in options.items() if k != "prediction"}
  if name == "rectified_flow":
    options["t_end"] = 1 - 1e-4
  y = _gaussian_points(32)

  # One compilation for the five likelihoods (one program), not one per prediction.
  @jax.jit
  def every_prediction(x, key):
    return {
      prediction: process_ode.ode_log_likelihood(
        mixture_model_fn(process, ONE_GAUSSIAN, prediction),
        process,
        x=x,
        key=key,
        prediction=prediction,
        num_steps=32,
        **options,
      )
      for prediction in proc.PREDICTIONS
    }

  out = jax.tree.map(
    lambda v: np.asarray(v, np.float64), every_prediction(jnp.asarray(y, F32), jax.random.key(0))
  )
  for prediction in proc.PREDICTIONS:
    np.testing.assert_allclose(out[prediction], out["eps"], atol=2e-3, err_msg=prediction)


@pytest.mark.slow
def test_convergence_in_num_steps():
  """Heun is second order: the error falls about 4x per doubling of num_steps (measured on
  rectified flow: 0.0078 at 64 steps, 0.0018 at 128, 0.0005 at 256; 0.019 at 32, before the
  asymptotic regime)."""
  errors = [np.abs(_gaussian_errors("rectified_flow", num_steps=n)[0]).mean() for n in (64, 128)]
  print("mean |error| at 64, 128 steps:", errors)
  assert 3.0 < errors[0] / errors[1] < 5.0


# ----------------------------------------------------------------------------
# Hutchinson's estimator
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# A Gaussian mixture: the data's own density
# ----------------------------------------------------------------------------


def _mixture_points(n_data=128, n_spread=32, seed=0):
  rng = np.random.default_rng(seed)
  x, _ = testing.gmm_sample(rng, n_data, **GMM2)
  return np.concatenate([x, rng.uniform(-1.0, 1.0, (n_spread, 2))])


@pytest.mark.parametrize("name", _params(PROCESSES))
def test_mixture_every_process(name):
  """GMM2 (three components of std 0.08 to 0.12 in 2-D) with its exact model: the mixture
  convolved with N(0, sigma~_0^2) (its components' variances s_k^2 + sigma~_0^2), to 0.01
  nats/dim on average over data draws and 0.03 at worst on points spread over the square where
  log p reaches -60; the prior mismatch at t_end is below 2e-3 nats/dim here (its one-Gaussian
  values above)."""
  process, options, (alpha_0, sigma_0), _ = _endpoints(name)
  prediction = options.pop("prediction", "eps")
  x = _mixture_points()
  model_fn = mixture_model_fn(process, GMM2, prediction)
  log_p = _log_likelihood(process, model_fn, x, prediction=prediction, **options)
  smoothed = dict(GMM2, stds=list(np.sqrt(np.square(GMM2["stds"]) + (sigma_0 / alpha_0) ** 2)))
  err = (log_p - testing.gmm_log_density(x, **smoothed)) / 2
  print(
    f"{name}: |err| data mean {np.abs(err[:128]).mean():.4f} max {np.abs(err[:128]).max():.4f}; "
    f"spread mean {np.abs(err[128:]).mean():.4f} max {np.abs(err[128:]).max():.4f} nats/dim"
  )
  assert np.abs(err[:128]).mean() < 0.01
  assert np.abs(err).max() < 0.03


@pytest.mark.parametrize("name", _params(["rectified_flow", "ve"], ["rectified_flow"]))
@pytest.mark.slow
def test_hutchinson_within_its_monte_carlo_error(name):
  """Rademacher probes, the same at every step, on the mixture (on one isotropic Gaussian the
  Jacobian is a multiple of I and v^T J v is its trace exactly): the estimate minus the exact
  trace has mean 0 within 4 standard errors over examples (unbiased), so it agrees with the
  mixture's density within its Monte Carlo error plus the exact trace's own error (0.01 nats/dim
  above); the key matters; the per-example spread falls like 1 / sqrt(num_probes)."""
  process, options, (alpha_0, sigma_0), _ = _endpoints(name)
  prediction = options.pop("prediction", "eps")
  x = _mixture_points(192, 0, seed=5)
  model_fn = mixture_model_fn(process, GMM2, prediction)
  options = dict(options, prediction=prediction, num_steps=128)
  smoothed = dict(GMM2, stds=list(np.sqrt(np.square(GMM2["stds"]) + (sigma_0 / alpha_0) ** 2)))
  density = testing.gmm_log_density(x, **smoothed)

  # One compilation for the exact trace and both probe counts; the key is an argument.
  @jax.jit
  def likelihoods(x, key):
    run = lambda **extra: process_ode.ode_log_likelihood(
      model_fn, process, x=x, key=key, **options, **extra
    )
    return run(), {p: run(trace="hutchinson", num_probes=p) for p in (1, 16)}

  as_np = lambda v: np.asarray(v, np.float64)
  exact, estimates = jax.tree.map(as_np, likelihoods(jnp.asarray(x, F32), jax.random.key(1)))
  _, others = jax.tree.map(as_np, likelihoods(jnp.asarray(x, F32), jax.random.key(2)))
  spreads = {}
  for probes in (1, 16):
    estimate = estimates[probes]
    diff = estimate - exact
    se = diff.std() / math.sqrt(len(diff))
    closed = estimate - density
    print(
      f"{name}, {probes} probes: Hutchinson - exact {diff.mean():.4f} +- {se:.4f} (std "
      f"{diff.std():.3f}); - density {closed.mean():.4f} nats"
    )
    assert abs(diff.mean()) < 4 * se
    assert abs(closed.mean()) < 4 * se + 2 * 0.01
    spreads[probes] = diff.std()
    other = others[probes]
    assert np.max(np.abs(other - estimate)) > 1e-3
  assert spreads[1] > 1e-2
  assert spreads[16] < 0.4 * spreads[1]


# ----------------------------------------------------------------------------
# Bits per dimension
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(["vp_cosine", "rectified_flow", "ve"], ["rectified_flow"]))
def test_bits_per_dim_on_8bit_gaussian_data(name):
  """ode_bits_per_dim on 8-bit one-Gaussian data (4-D, N(0, 0.25^2) rounded to the grid):
  equals the closed form at the documented dequantized points y = x + (u - 1/2) 2/255, u from
  split(key)[0], and is within the ODE's own error of the data's exact bits/dim from its
  closed-form bin masses: the dequantization gap of data this smooth (std 0.25 = 32 bins) is
  of order h^2 / (24 s^2) = 4e-5 nats/dim, and a bin width of 1/255 or data scaled to [0, 1]
  would be off by a whole bit. (The data keep off the edge bins, whose mass includes the tail
  beyond +-1 that the dequantized density cannot see: N(0.2, 0.3^2) put 4 of 256 examples
  there, 0.01 bit/dim on average.)"""
  mu, s = 0.0, 0.25
  process, options, start, end = _endpoints(name)
  prediction = options.pop("prediction", "eps")
  mixture = dict(weights=[1.0], means=np.full((1, 4), mu), stds=[s])
  x = testing.quantize(mu + s * np.random.default_rng(3).standard_normal((256, 4)))
  assert np.all(np.abs(x) < 1)
  key = jax.random.key(4)
  model_fn = mixture_model_fn(process, mixture, prediction)
  bpd = np.asarray(
    jax.jit(
      lambda x: process_ode.ode_bits_per_dim(
        model_fn, process, x=x, key=key, prediction=prediction, **options
      )
    )(jnp.asarray(x, F32)),
    np.float64,
  )
  u = np.asarray(jax.random.uniform(jax.random.split(key)[0], x.shape, F32), np.float64)
  y = np.asarray(jnp.asarray(x, F32), np.float64) + (u - 0.5) * 2 / 255
  model, _ = np_gaussian_model_log_density(y, mu, s, start, end, process.variance_preserving)
  ref = -(model - 4 * math.log(127.5)) / (4 * math.log(2))
  np.testing.assert_allclose(bpd, ref, atol=0.01 / math.log(2))
  exact = -np.sum(np_discretized_log_prob(x, mu, s), -1) / (4 * math.log(2))
  gap = bpd - exact
  se = gap.std() / math.sqrt(len(gap))
  print(
    f"{name}: ODE {bpd.mean():.4f} bits/dim, exact {exact.mean():.4f}, gap {gap.mean():.4f} "
    f"+- {se:.4f}"
  )
  assert abs(gap.mean()) < 0.002 + 4 * se


def test_continuous_bits_per_dim_is_the_density():
  """data="continuous": -log p(x) / (D ln 2) at x itself, no dequantization, any real x."""
  process = proc.vp_cosine()
  model_fn = mixture_model_fn(process, ONE_GAUSSIAN)
  x = jnp.asarray(_gaussian_points(8) + 0.123, F32)
  bpd = jax.jit(
    lambda x: process_ode.ode_bits_per_dim(model_fn, process, x=x, data="continuous", num_steps=16)
  )(x)
  log_p = jax.jit(lambda x: process_ode.ode_log_likelihood(model_fn, process, x=x, num_steps=16))(x)
  np.testing.assert_allclose(bpd, -log_p / (2 * math.log(2)), rtol=1e-6)


@pytest.mark.slow
def test_bits_per_dim_refuses_data_off_the_grid():
  """Images in [0, 1] or 0..255 are refused with a message naming x; traced, those examples are
  NaN and the others are not."""
  process = proc.vp_cosine()
  model_fn = mixture_model_fn(process, ONE_GAUSSIAN)
  key = jax.random.key(0)
  k = np.random.default_rng(0).integers(0, 256, (3, 2))
  call = lambda x: process_ode.ode_bits_per_dim(model_fn, process, x=x, key=key, num_steps=4)
  for bad in (k / 255, k.astype(np.float64), np.full((3, 2), 0.5)):
    with pytest.raises(ValueError, match=r"ode_bits_per_dim: x must lie on the 8-bit grid"):
      call(jnp.asarray(bad, F32))
  mixed = jnp.asarray(np.concatenate([2 * k[:2] / 255 - 1, k[2:] / 255 + 1 / 510]), F32)
  traced = np.asarray(jax.jit(call)(mixed))
  assert np.all(np.isfinite(traced[:2])) and np.isnan(traced[2])
  with pytest.raises(ValueError, match="data='8bit' needs key"):
    process_ode.ode_bits_per_dim(model_fn, process, x=mixed[:2], num_steps=4)
  with pytest.raises(ValueError, match="data must be one of"):
    process_ode.ode_bits_per_dim(model_fn, process, x=mixed[:2], key=key, data="binary")


# ----------------------------------------------------------------------------
# Arguments, jit, the grid
# ----------------------------------------------------------------------------


def test_refusals():
  rf, vp = proc.rectified_flow(), proc.vp_cosine()
  x = jnp.zeros((2, 2))
  fn = lambda x_t, t: jnp.zeros_like(x_t)
  call = process_ode.ode_log_likelihood
  with pytest.raises(ValueError, match=r"sigma\(t_start\) = 0 .*rectified_flow.*t_start=1e-5"):
    call(fn, rf, x=x, prediction="velocity")
  with pytest.raises(ValueError, match=r"alpha\(t_end\) = 0 .*prediction='eps'"):
    call(fn, rf, x=x, t_start=1e-5)
  with pytest.raises(ValueError, match=r"alpha\(t_end\) = 0 .*prediction='score'"):
    call(fn, rf, x=x, t_start=1e-5, prediction="score")
  with pytest.raises(ValueError, match="t_min <= t_start < t_end <= t_max .*t_start=-0.1"):
    call(fn, vp, x=x, t_start=-0.1)
  with pytest.raises(ValueError, match="t_start=0.5, t_end=0.5"):
    call(fn, vp, x=x, t_start=0.5, t_end=0.5)
  with pytest.raises(ValueError, match="t_end=2.0"):
    call(fn, vp, x=x, t_end=2.0)
  with pytest.raises(ValueError, match="t_start must be a finite number"):
    call(fn, vp, x=x, t_start=float("nan"))
  with pytest.raises(ValueError, match="trace must be one of"):
    call(fn, vp, x=x, trace="exact_trace")
  with pytest.raises(ValueError, match="trace='hutchinson' needs key"):
    call(fn, vp, x=x, trace="hutchinson")
  with pytest.raises(ValueError, match="prediction must be one of"):
    call(fn, vp, x=x, prediction="noise")
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError, match="num_steps"):
      call(fn, vp, x=x, num_steps=bad)
  with pytest.raises(ValueError, match="num_probes"):
    call(fn, vp, x=x, key=jax.random.key(0), trace="hutchinson", num_probes=0)
  with pytest.raises(ValueError, match=r"x must be a float array \(B, ...\)"):
    call(fn, vp, x=jnp.zeros(3))
  with pytest.raises(ValueError, match="x must be a float array"):
    call(fn, vp, x=jnp.zeros((2, 2), jnp.int32))


@pytest.mark.slow
def test_process_as_jit_argument_and_log_snr_process():
  """The process is an ordinary jit argument (its parameters traced: the grid and the checks
  follow), and a log-SNR process with VDM's cosine schedule (bisection inverse) gives
  vp_cosine's likelihood with the same endpoints."""
  process = proc.vp_cosine(-10.0, 8.0)
  y = jnp.asarray(_gaussian_points(8), F32)

  def run(p, x):
    return process_ode.ode_log_likelihood(mixture_model_fn(p, ONE_GAUSSIAN), p, x=x, num_steps=16)

  closed = jax.jit(lambda x: run(process, x))(y)
  traced = jax.jit(run)(process, y)
  np.testing.assert_allclose(traced, closed, rtol=1e-5)
  vdm_process = proc.log_snr_process(
    diffusion.vdm.LogSNRSchedule("cosine", gamma_min=-8.0, gamma_max=10.0), {}
  )
  np.testing.assert_allclose(jax.jit(run)(vdm_process, y), closed, rtol=1e-4)


@pytest.mark.slow
def test_grid_uniform_in_log_snr():
  """num_steps + 1 times from t_start to t_end, uniform in lambda; at an end of infinite
  log-SNR (rectified flow's t = 1) uniform down to LOG_SNR_FLOOR, then t_end; one scan of
  num_steps steps."""
  vp = proc.vp_linear(t_min=1e-5)
  times, r = process_ode.ode_grid(vp, num_steps=8, t_start=1e-5, t_end=1.0)
  assert times.shape == (9,) and float(times[0]) == pytest.approx(1e-5) and float(times[-1]) == 1
  lam = np.asarray(vp.log_snr(times), np.float64)
  np.testing.assert_allclose(np.diff(lam), np.full(8, (lam[-1] - lam[0]) / 8), rtol=1e-3)
  np.testing.assert_allclose(r, np.exp(lam / 2), rtol=1e-5)
  rf = proc.rectified_flow()
  times, r = process_ode.ode_grid(rf, num_steps=8, t_start=1e-5, t_end=1.0)
  lam = np.asarray(rf.log_snr(times[:-1]), np.float64)
  np.testing.assert_allclose(lam[-1], process_ode.LOG_SNR_FLOOR, atol=1e-3)  # 1 - t in float32
  np.testing.assert_allclose(np.diff(lam), np.full(7, (lam[-1] - lam[0]) / 7), rtol=1e-3)
  assert float(times[-1]) == 1.0 and float(r[-1]) == 0.0
  model_fn = lambda x_t, t: jnp.zeros_like(x_t)
  closed = jax.make_jaxpr(
    lambda x: process_ode.ode_log_likelihood(model_fn, rf, x=x, t_start=1e-5, prediction="x0")
  )(jnp.zeros((2, 2)))
  scans = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
  assert len(scans) == 1 and scans[0].params["length"] == process_ode.DEFAULT_NUM_STEPS


# ----------------------------------------------------------------------------
# Peer: facebookresearch's flow_matching package
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_rectified_flow_matches_flow_matching_package(x64):
  """flow_matching 1.0.10's ODESolver.compute_likelihood (torchdiffeq's dopri5 at rtol = atol =
  1e-9, exact divergence, float64) on the same mixture velocity, in its convention: tau = 1 - t
  from noise (tau = 0) to data (tau = 1), x_tau = tau x1 + (1 - tau) x0, u = x1 - x0 = minus our
  velocity; its log_p0 is N(0, I). It integrates to the data itself (tau = 1), we to t = 1e-5
  (smoothing sigma~ = 1e-5, a change of 1e-8 nats here). Agreement per example within our
  float64 Heun error at 256 steps on data draws (measured: mean 0.0011, max 0.0026 nats/dim;
  the peer is within 2e-9 of the mixture's density).
  """
  torch = pytest.importorskip("torch")
  solver_module = pytest.importorskip("flow_matching.solver")
  weights, means, stds = (
    torch.tensor(np.asarray(GMM2[k], np.float64)) for k in ("weights", "means", "stds")
  )

  def peer_velocity(x, t):
    # Bayes' rule for the mixture at alpha = tau, sigma = 1 - tau, written again in torch.
    alpha, sigma = t, 1.0 - t
    diff = x[:, None, :] - alpha * means  # (B, K, D)
    var = alpha**2 * stds**2 + sigma**2  # (K,)
    logits = torch.log(weights) - 0.5 * means.shape[1] * torch.log(var)
    logits = logits - 0.5 * (diff**2).sum(-1) / var
    resp = torch.softmax(logits, -1)[..., None]
    eps = (resp * sigma * diff / var[:, None]).sum(1)
    x1 = (resp * (means + alpha * (stds**2 / var)[:, None] * diff)).sum(1)
    return x1 - eps

  x = _mixture_points(48, 0, seed=7)
  solver = solver_module.ODESolver(velocity_model=peer_velocity)
  log_p0 = lambda z: -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
  _, peer = solver.compute_likelihood(
    x_1=torch.tensor(x),
    log_p0=log_p0,
    step_size=None,
    method="dopri5",
    atol=1e-9,
    rtol=1e-9,
    time_grid=torch.tensor([1.0, 0.0], dtype=torch.float64),
    exact_divergence=True,
  )
  peer = peer.numpy()
  density = testing.gmm_log_density(x, **GMM2)
  rf = proc.rectified_flow()
  ours = np.asarray(
    jax.jit(
      lambda x: process_ode.ode_log_likelihood(
        mixture_model_fn(rf, GMM2, "velocity"), rf, x=x, prediction="velocity", t_start=1e-5
      )
    )(jnp.asarray(x)),
    np.float64,
  )
  err = np.abs(ours - peer) / 2
  print(
    f"gen_jax - flow_matching: mean {err.mean():.5f} max {err.max():.5f} nats/dim; peer - "
    f"density max {np.abs(peer - density).max() / 2:.2e}"
  )
  assert np.abs(peer - density).max() / 2 < 1e-5  # the peer is the reference it claims to be
  assert err.mean() < 0.003
  assert err.max() < 0.01


@pytest.mark.slow
def test_image_shaped_data():
  """x of any shape (B, H, W, C): the result is the flattened data's, with the exact trace and
  with Hutchinson (exact too here: the one-Gaussian Jacobian is a multiple of I, and
  Rademacher probes have v_i^2 = 1)."""
  process = proc.rectified_flow()
  flat_model = mixture_model_fn(process, dict(ONE_GAUSSIAN, means=np.full((1, 4), GAUSS_MU)), "x0")
  image_model = lambda x_t, t: flat_model(x_t.reshape(len(x_t), -1), t).reshape(x_t.shape)
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 4)), F32)
  options = dict(prediction="x0", t_start=1e-3, num_steps=8)
  run = jax.jit(
    lambda model, x, trace: process_ode.ode_log_likelihood(
      model, process, x=x, key=jax.random.key(0), trace=trace, **options
    ),
    static_argnums=(0, 2),
  )
  flat = run(flat_model, x, "exact")
  np.testing.assert_allclose(run(image_model, x.reshape(3, 2, 2, 1), "exact"), flat, rtol=1e-5)
  np.testing.assert_allclose(run(image_model, x.reshape(3, 2, 2, 1), "hutchinson"), flat, rtol=1e-5)
