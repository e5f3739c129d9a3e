"""Tests for `ode_log_likelihood` and `ode_bits_per_dim` (gen_jax/diffusion/ode.py).

Oracle: for Gaussian-mixture data and the mixture's exact eps, the
probability-flow ODE carries the exact noised marginals, so the density it
returns at the smallest noise level sigma_0 = sqrt((1 - ac_0) / ac_0) is the
mixture convolved with N(0, sigma_0^2 I): the same mixture with variances
s_k^2 + sigma_0^2, in closed form (testing.gmm_log_density).
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion, testing
from tests.support.diffusion import (
  ABAR,
  GAUSS_MU,
  GAUSS_STD,
  GMM2,
  GMM4,
  gaussian_model_fn,
  np_abar,
  np_cosine_betas,
  np_gaussian_ode_log_density,
  np_linear_betas,
  np_rescale_zero_terminal_snr,
  np_sigmoid_alphas_cumprod,
)

# XLA's optimisation passes cost more than they save on these small programs.
pytestmark = pytest.mark.usefixtures("fast_compile")

F32 = jnp.float32


SIGMA_MIN2 = (1 - ABAR[0]) / ABAR[0]


def _smoothed_log_density(x, weights, means, stds):
  """log of the mixture convolved with N(0, sigma_0^2 I), float64."""
  return testing.gmm_log_density(x, weights, means, np.sqrt(np.square(stds) + SIGMA_MIN2))


def _points(n_data=192, n_spread=64, seed=0):
  """Data draws plus points spread over the square, where the density is low."""
  rng = np.random.default_rng(seed)
  x, _ = testing.gmm_sample(rng, n_data, **GMM2)
  return np.concatenate([x, rng.uniform(-1.0, 1.0, (n_spread, 2))])


@pytest.fixture(scope="module")
def exact_gmm2(sched):
  """Exact-trace log-likelihoods of _points() under GMM2's exact eps."""
  x = _points()
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  fn = jax.jit(lambda k, x: diffusion.ode_log_likelihood(k, eps_fn, sched, x, exact_trace=True))
  return x, np.asarray(fn(jax.random.key(0), jnp.asarray(x, F32)), np.float64)


# Accuracy, nats per dimension: 0.02 on data points (measured: mean 0.0014,
# max 0.007 at the default 256 steps); 0.05 on points spread over the square,
# deep in the tails where log p reaches -60 (measured: mean 0.009, max 0.032).
# What is left at 256 steps is the floor of a discrete-time model: eps_fn
# exists only at the T levels, 0.39 apart in log-sigma between t = 0 and 1,
# and a float64 continuous-sigma Heun on those levels shows the same errors.
TOL_DATA, TOL_TAILS = 0.02, 0.05


def _assert_close_per_dim(log_p, ref, num_data):
  err = np.abs(log_p - ref) / 2
  print(
    f"|error| nats/dim: data mean {err[:num_data].mean():.4f} max "
    f"{err[:num_data].max():.4f}; tails mean {err[num_data:].mean():.4f} "
    f"max {err[num_data:].max():.4f}"
  )
  assert np.max(err[:num_data]) < TOL_DATA
  assert np.max(err[num_data:]) < TOL_TAILS
  return err


def test_exact_trace_matches_closed_form(exact_gmm2):
  x, log_p = exact_gmm2
  ref = _smoothed_log_density(x, **GMM2)
  assert log_p.shape == (len(x),)
  _assert_close_per_dim(log_p, ref, 192)


@pytest.mark.slow
def test_other_mixture_gives_its_own_density(sched):
  """The ODE of a different mixture's eps returns that mixture's density (not
  the data's): the likelihood follows the model."""
  wide = dict(GMM2, stds=list(1.5 * np.array(GMM2["stds"])), weights=[0.2, 0.3, 0.5])
  x = _points(n_data=64, n_spread=32, seed=1)
  eps_fn = testing.gmm_eps_fn(sched, **wide)
  log_p = np.asarray(
    jax.jit(lambda k, x: diffusion.ode_log_likelihood(k, eps_fn, sched, x, exact_trace=True))(
      jax.random.key(0), jnp.asarray(x, F32)
    )
  )
  _assert_close_per_dim(log_p, _smoothed_log_density(x, **wide), 64)
  assert np.mean(np.abs(log_p - _smoothed_log_density(x, **GMM2))) > 0.5


@pytest.mark.slow
def test_hutchinson_agrees_with_exact_trace(sched, exact_gmm2):
  """Hutchinson's estimate with num_probes Rademacher probes per example:
  unbiased (the mean difference to the exact trace within 4 standard
  errors), a real estimator (the probes and the key matter), and its
  per-example spread falls like 1 / sqrt(num_probes)."""
  x, exact = exact_gmm2
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  # Both probe counts in one compilation; the key is an argument (called with keys 1 and 2).
  fn = jax.jit(
    lambda k, x: {
      p: diffusion.ode_log_likelihood(k, eps_fn, sched, x, num_probes=p) for p in (1, 16)
    }
  )
  runs = {key: fn(jax.random.key(key), jnp.asarray(x, F32)) for key in (1, 2)}
  spreads = {}
  for probes in (1, 16):
    hutchinson = np.asarray(runs[1][probes], np.float64)
    diff = hutchinson - exact
    se = diff.std() / math.sqrt(len(diff))
    print(
      f"{probes} probes: Hutchinson - exact {diff.mean():.4f} +- {se:.4f} (std {diff.std():.3f})"
    )
    assert abs(diff.mean()) < 4 * se
    spreads[probes] = diff.std()
    # Rademacher in 2-D: v^T J v misses the trace by 2 v_1 v_2 J_12-terms;
    # another key gives other values.
    other = np.asarray(runs[2][probes])
    assert np.max(np.abs(other - hutchinson)) > 1e-3
  assert spreads[1] > 1e-3
  assert spreads[16] < 0.4 * spreads[1]


@pytest.mark.slow
def test_convergence_in_num_steps(sched):
  """Second-order steps on the log-SNR grid: the error falls with the step count."""
  x = _points(n_data=48, n_spread=16, seed=2)
  ref = _smoothed_log_density(x, **GMM2)
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  # Both step counts in one compilation.
  log_ps = jax.jit(
    lambda k, x: [
      diffusion.ode_log_likelihood(k, eps_fn, sched, x, s, exact_trace=True) for s in (32, 128)
    ]
  )(jax.random.key(0), jnp.asarray(x, F32))
  errors = [np.mean(np.abs(np.asarray(log_p) - ref)) for log_p in log_ps]
  print("mean |error| at 32, 128 steps:", errors)
  assert errors[1] < errors[0] / 4


@pytest.mark.slow
def test_bits_per_dim_dequantized(sched):
  """ode_bits_per_dim on 8-bit GMM4 data (4-D): equals the closed-form
  smoothed density at the documented dequantized points y = x + (u - 1/2)
  2/255, u from split(key)[0], and bounds the data's true discrete NLL."""
  rng = np.random.default_rng(3)
  x, _ = testing.gmm_sample(rng, 256, **GMM4)
  x = testing.quantize(x)
  key = jax.random.key(4)
  eps_fn = testing.gmm_eps_fn(sched, **GMM4)
  bpd = np.asarray(
    jax.jit(lambda k, x: diffusion.ode_bits_per_dim(k, eps_fn, sched, x, exact_trace=True))(
      key, jnp.asarray(x, F32)
    ),
    np.float64,
  )
  u = np.asarray(jax.random.uniform(jax.random.split(key)[0], x.shape, F32), np.float64)
  y = np.asarray(jnp.asarray(x, F32), np.float64) + (u - 0.5) * 2 / 255
  d = x.shape[1]
  ref = -(_smoothed_log_density(y, **GMM4) - d * math.log(127.5)) / (d * math.log(2))
  np.testing.assert_allclose(bpd, ref, atol=0.02 / math.log(2))
  nll = -testing.gmm_discrete_log_prob(x, **GMM4) / (d * math.log(2))
  gap = bpd - nll
  se = gap.std() / math.sqrt(len(gap))
  print(
    f"ODE bits/dim {bpd.mean():.3f}, true NLL {nll.mean():.3f}, gap {gap.mean():.4f} +- {se:.4f}"
  )
  # Dequantization bounds the model's discrete NLL, and for data this smooth
  # (component std 0.15 = 19 bins; smoothing sigma_0 = 0.01) the bound is
  # within the ODE's own error of the true NLL (measured gap -0.002 bits):
  # a wrong bin width (1/255, or [0, 1] scaling) would be off by a full bit.
  assert abs(gap.mean()) < TOL_DATA / math.log(2)


# ----------------------------------------------------------------------------
# Every schedule: one-Gaussian data N(0.2, 0.3^2) in 2-D with its exact model
# ----------------------------------------------------------------------------


# name -> (betas, prediction). Before the (u, r) integration, cosine T = 1000
# was off by +0.46 nats/dim (6.654 bits/dim for a true 7.302) at any step
# count, cosine T = 250 refused its own default num_steps, and the zero-SNR
# schedule gave NaN.
ORACLE_SCHEDULES = {
  "linear100_scaled": (lambda: np_linear_betas(100, 1e-3, 0.2), "eps"),
  "linear1000": (lambda: np_linear_betas(1000), "eps"),
  "linear4000_scaled": (lambda: np_linear_betas(4000, 2.5e-5, 0.005), "eps"),
  "cosine250": (lambda: np_cosine_betas(250), "eps"),
  "cosine1000": (lambda: np_cosine_betas(1000), "eps"),
  "zero_snr_linear1000": (lambda: np_rescale_zero_terminal_snr(np_linear_betas(1000)), "v"),
  # given as alphas_cumprod (schedule_from_alphas_cumprod), not betas
  "user_alphas_cumprod500": (lambda: np_sigmoid_alphas_cumprod(500), "eps"),
}
FAST_ORACLES = ("cosine1000", "zero_snr_linear1000")


def _gaussian_points(n=256, seed=0):
  rng = np.random.default_rng(seed)
  return GAUSS_MU + GAUSS_STD * rng.standard_normal((n, 2))


def _oracle_error(name, **options):
  """Per-dimension error (nats) of the exact-trace ODE likelihood at the default
  num_steps, against the closed form of the model (prior N(0, I) at the top)."""
  make, prediction = ORACLE_SCHEDULES[name]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every schedule here has a small prior mismatch
    if name.startswith("user"):
      alphas_cumprod = make()
      sched = diffusion.schedule_from_alphas_cumprod(alphas_cumprod)
    else:
      alphas_cumprod = np_abar(make())
      sched = diffusion.make_schedule(make())
  model_fn = gaussian_model_fn(sched, GAUSS_MU, GAUSS_STD, options.pop("prediction", prediction))
  y = _gaussian_points()
  fn = jax.jit(
    lambda k, x: diffusion.ode_log_likelihood(
      k, model_fn, sched, x, prediction=prediction, **options
    )
  )
  log_p = np.asarray(fn(jax.random.key(0), jnp.asarray(y, F32)), np.float64)
  model, data = np_gaussian_ode_log_density(y, GAUSS_MU, GAUSS_STD, alphas_cumprod)
  return (log_p - model) / 2, (model - data) / 2


@pytest.mark.parametrize(
  "name",
  [pytest.param(n, marks=() if n in FAST_ORACLES else pytest.mark.slow) for n in ORACLE_SCHEDULES],
)
def test_gaussian_oracle_every_schedule(name):
  """Exact trace, default num_steps: within 0.01 nats/dim of the closed form
  on average over data draws (measured, float32: mean |error| <= 0.0008,
  max 0.011 at a 3.9-sigma point of the 100-level schedule, where the levels
  are 0.7 apart in log-SNR at the low-noise end)."""
  err, mismatch = _oracle_error(name, exact_trace=True)
  print(f"{name}: mean |err| {np.abs(err).mean():.5f}, max {np.abs(err).max():.5f} nats/dim")
  assert np.all(np.isfinite(err))
  assert np.abs(err).mean() < 0.01
  assert np.abs(err).max() < 0.025
  # The closed form is the model's, with its prior at the top; the data's
  # own density differs by the prior mismatch, which these schedules keep small.
  assert np.abs(mismatch).mean() < 1e-3


def test_eps_prediction_refused_at_zero_terminal_snr():
  betas = np_rescale_zero_terminal_snr(np_linear_betas(1000))
  sched = diffusion.make_schedule(betas)
  fn = gaussian_model_fn(sched, GAUSS_MU, GAUSS_STD, "eps")
  with pytest.raises(ValueError, match="ode_log_likelihood.*zero terminal SNR"):
    diffusion.ode_log_likelihood(jax.random.key(0), fn, sched, jnp.zeros((2, 2)))


@pytest.mark.slow
def test_predictions_agree(sched):
  """The same exact model as an eps, x0 or v predictor gives one likelihood."""
  y = jnp.asarray(_gaussian_points(32), F32)

  @jax.jit  # the three likelihoods in one compilation
  def likelihoods(key, y):
    return {
      prediction: diffusion.ode_log_likelihood(
        key,
        gaussian_model_fn(sched, GAUSS_MU, GAUSS_STD, prediction),
        sched,
        y,
        64,
        exact_trace=True,
        prediction=prediction,
      )
      for prediction in ("eps", "x0", "v")
    }

  out = {k: np.asarray(v) for k, v in likelihoods(jax.random.key(0), y).items()}
  np.testing.assert_allclose(out["x0"], out["eps"], atol=2e-3)
  np.testing.assert_allclose(out["v"], out["eps"], atol=2e-3)


@pytest.mark.slow
def test_traced_schedule_matches_closed_over(sched):
  """The grid and the integration are traceable: a schedule passed as a jit
  argument gives the closed-over result."""
  fn = gaussian_model_fn(sched, GAUSS_MU, GAUSS_STD, "eps")
  y = jnp.asarray(_gaussian_points(8), F32)
  closed = jax.jit(lambda x: diffusion.ode_log_likelihood(None, fn, sched, x, 16, exact_trace=True))
  traced = jax.jit(
    lambda s, x: diffusion.ode_log_likelihood(
      None, gaussian_model_fn(s, GAUSS_MU, GAUSS_STD, "eps"), s, x, 16, exact_trace=True
    )
  )
  np.testing.assert_allclose(traced(sched, y), closed(y), rtol=1e-5)


def test_default_num_steps_valid_for_small_T():
  """The default is min(256, T - 1): a 20-level schedule runs 19 steps."""
  sched = diffusion.make_schedule(np_linear_betas(20, 1e-3, 0.2))
  fn = gaussian_model_fn(sched, GAUSS_MU, GAUSS_STD, "eps")
  closed = jax.make_jaxpr(
    lambda x: diffusion.ode_log_likelihood(None, fn, sched, x, exact_trace=True)
  )(jnp.zeros((2, 2)))
  scans = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
  assert len(scans) == 1 and scans[0].params["length"] == 19
  assert (
    diffusion.ode.default_ode_steps(1000) == 256 and diffusion.ode.default_ode_steps(250) == 249
  )
  with pytest.raises(ValueError, match="num_probes"):
    diffusion.ode_log_likelihood(jax.random.key(0), fn, sched, jnp.zeros((2, 2)), num_probes=0)


@pytest.mark.slow
def test_bits_per_dim_refuses_data_off_the_grid():
  """Images in [0, 1] or 0..255 are refused with a message naming x (before the fix they gave a
  number off by whole bits, silently); traced, those examples are NaN and the others are not."""
  sched = diffusion.make_schedule(np_linear_betas(20, 1e-3, 0.2))
  fn = gaussian_model_fn(sched, GAUSS_MU, GAUSS_STD, "eps")
  key = jax.random.key(0)
  k = np.random.default_rng(0).integers(0, 256, (3, 2))
  on_grid = 2 * k / 255 - 1
  call = lambda x: diffusion.ode_bits_per_dim(key, fn, sched, x, 4, exact_trace=True)
  for bad in (k / 255, k.astype(np.float64), np.full((3, 2), 0.5)):
    with pytest.raises(ValueError, match=r"ode_bits_per_dim: x must lie on the 8-bit grid"):
      call(jnp.asarray(bad, F32))
  assert np.all(np.isfinite(call(jnp.asarray(on_grid, F32))))
  mixed = jnp.asarray(np.concatenate([on_grid[:2], k[2:] / 255 + 1 / 510]), F32)
  traced = np.asarray(jax.jit(call)(mixed))
  assert np.all(np.isfinite(traced[:2])) and np.isnan(traced[2])
