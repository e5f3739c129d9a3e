"""Tests for gen_jax/diffusion/schedules.py: the betas, `make_schedule`, respacing and
the noise levels sigma_t, against float64 numpy references written from the papers
(Ho et al. 2020; Nichol & Dhariwal 2021), never by calling the code under test.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion
from tests.support.diffusion import (
  ABAR,
  BETAS20,
  SIGMAS,
  np_abar,
  np_cosine_betas,
  np_linear_betas,
  np_nearest_level,
  np_posterior,
  np_prior_kl,
  np_rescale_zero_terminal_snr,
  np_sigmoid_alphas_cumprod,
  np_tilde_beta,
)

F32 = jnp.float32


# ----------------------------------------------------------------------------
# Betas and make_schedule
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("num", [1, 2, 10, 1000])
def test_linear_betas_formula(num):
  betas = diffusion.linear_betas(num, 1e-4, 0.02)
  assert betas.dtype == np.float64 and betas.shape == (num,)
  np.testing.assert_allclose(betas, np_linear_betas(num), rtol=1e-13)
  np.testing.assert_allclose(
    diffusion.linear_betas(num, 0.1, 0.3), np_linear_betas(num, 0.1, 0.3), rtol=1e-13
  )


@pytest.mark.parametrize("num", [1, 10, 1000])
def test_cosine_betas_formula(num):
  betas = diffusion.cosine_betas(num)
  assert betas.dtype == np.float64 and betas.shape == (num,)
  np.testing.assert_allclose(betas, np_cosine_betas(num), rtol=1e-10, atol=1e-15)
  assert np.all(betas <= 0.999) and np.all(betas > 0)
  # f(T) = 0, so the last beta is the clipped one.
  assert betas[-1] == pytest.approx(0.999)
  # Where no beta is clipped, prod_{s<=t}(1 - beta_s) = f(t + 1) / f(0).
  f = lambda t: np.cos((t / num + 0.008) / 1.008 * np.pi / 2) ** 2
  ts = np.arange(num - 1)
  np.testing.assert_allclose(np_abar(betas)[:-1], f(ts + 1) / f(0), rtol=1e-10)
  np.testing.assert_allclose(
    diffusion.cosine_betas(num, s=0.02, max_beta=0.5), np_cosine_betas(num, 0.02, 0.5), rtol=1e-10
  )


@pytest.mark.parametrize(
  "betas",
  [BETAS20, np_cosine_betas(50), np_linear_betas(1000)],
  ids=["linear20", "cosine50", "linear1000"],
)
def test_make_schedule_fields(betas):
  sched = diffusion.make_schedule(betas)
  assert sched.betas.dtype == jnp.result_type(float)
  assert sched.num_timesteps == len(betas)
  abar = np_abar(betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  num = len(betas)
  tilde = np.array([0.0] + [np_tilde_beta(betas, t) for t in range(1, num)])
  # coefficients of the Bayes posterior mean, read off np_posterior at unit
  # inputs (x0 = 1, x_t = 0 gives coef1; x0 = 0, x_t = 1 gives coef2).
  ones, zeros = np.ones((num, 1)), np.zeros((num, 1))
  coef1 = np_posterior(betas, ones, zeros, np.arange(num))[0][:, 0]
  coef2 = np_posterior(betas, zeros, ones, np.arange(num))[0][:, 0]
  expected = dict(
    betas=betas,
    alphas=1 - betas,
    alphas_cumprod=abar,
    alphas_cumprod_prev=abar_prev,
    sqrt_alphas_cumprod=np.sqrt(abar),
    sqrt_one_minus_alphas_cumprod=np.sqrt(1 - abar),
    posterior_variance=tilde,
    posterior_log_variance_clipped=np.log(np.append(tilde[1], tilde[1:])),
    posterior_mean_coef1=coef1,
    posterior_mean_coef2=coef2,
  )
  for name, ref in expected.items():
    got = np.asarray(getattr(sched, name), np.float64)
    assert got.shape == (num,), name
    np.testing.assert_allclose(got, ref, rtol=3e-6, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
  "call",
  [
    lambda: diffusion.linear_betas(0),
    lambda: diffusion.linear_betas(-3),
    lambda: diffusion.linear_betas(2.5),
    lambda: diffusion.cosine_betas(0),
    lambda: diffusion.make_schedule([]),
    lambda: diffusion.make_schedule(np.full((2, 3), 0.1)),
    lambda: diffusion.make_schedule([0.1, 0.0]),
    lambda: diffusion.make_schedule([0.1, -0.1]),
    lambda: diffusion.make_schedule([0.1, 1.5]),
    lambda: diffusion.make_schedule([0.1, np.nan]),
    lambda: diffusion.make_schedule([1.0, 0.1]),
    lambda: diffusion.rescale_zero_terminal_snr([0.1]),
    lambda: diffusion.rescale_zero_terminal_snr([0.1, 1.5]),
    lambda: diffusion.schedule_from_alphas_cumprod([0.9, 0.95]),
    lambda: diffusion.schedule_from_alphas_cumprod([1.0, 0.5]),
    lambda: diffusion.schedule_from_alphas_cumprod([0.9, 0.5, -0.1]),
    lambda: diffusion.schedule_from_alphas_cumprod(np.full((2, 2), 0.5)),
    lambda: diffusion.ddim_timesteps(10, 0),
    lambda: diffusion.ddim_timesteps(10, 11),
  ],
)
def test_bad_inputs_raise(call):
  with pytest.raises(ValueError):
    call()


# ----------------------------------------------------------------------------
# Respacing
# ----------------------------------------------------------------------------


def test_respace_schedule(sched):
  kept = np.array([0, 3, 10, 500, 998, 999])
  got = diffusion.respace_schedule(sched, kept[::-1])
  abar_kept = ABAR[kept]
  betas_ref = 1 - abar_kept / np.append(1.0, abar_kept[:-1])
  np.testing.assert_allclose(got.alphas_cumprod, abar_kept, rtol=1e-5)
  np.testing.assert_allclose(got.betas, betas_ref, rtol=1e-5)
  # The posterior variance of the respaced chain, by Bayes' rule between
  # consecutive kept levels.
  tilde = betas_ref[1:] * (1 - abar_kept[:-1]) / (1 - abar_kept[1:])
  np.testing.assert_allclose(got.posterior_variance[1:], tilde, rtol=1e-5)
  # Keeping every step gives the schedule back.
  full = diffusion.respace_schedule(sched, np.arange(1000))
  for a, b in zip(full, sched):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
  for bad in ([], [0, 0, 5], [-1, 3], [3, 1000], [0.5, 3.0]):
    with pytest.raises(ValueError, match="timesteps"):
      diffusion.respace_schedule(sched, bad)
  with pytest.raises(ValueError, match="concrete"):
    jax.jit(lambda s: diffusion.respace_schedule(s, [0, 5]).betas)(sched)


# ----------------------------------------------------------------------------
# Noise levels
# ----------------------------------------------------------------------------


def test_schedule_sigmas_and_sigma_to_timestep(sched):
  np.testing.assert_allclose(diffusion.schedule_sigmas(sched), SIGMAS, rtol=2e-6)
  rng = np.random.default_rng(0)
  sigma = np.exp(rng.uniform(np.log(SIGMAS[0]) - 1, np.log(SIGMAS[-1]) + 1, 200))
  got = jax.jit(lambda s: diffusion.sigma_to_timestep(sched, s))(jnp.asarray(sigma, F32))
  ref = np_nearest_level(sigma)
  # float32 can only tie-break differently where two levels are equidistant.
  log_gap = np.abs(
    np.abs(np.log(SIGMAS[got]) - np.log(sigma)) - np.abs(np.log(SIGMAS[ref]) - np.log(sigma))
  )
  assert np.all((got == ref) | (log_gap < 1e-5))
  assert got.dtype == jnp.int32 and got.shape == (200,)
  assert diffusion.sigma_to_timestep(sched, SIGMAS[:5]).tolist() == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------
# Off the default path: scaled linear betas, zero terminal SNR, user-given
# alphas_cumprod, the prior-mismatch warning
# ----------------------------------------------------------------------------


def test_linear_betas_scaled_with_T():
  """None takes improved-diffusion's scaling 1000 / T: DDPM's betas at T = 1000
  (bit for bit), 10x at T = 100, 1/4 at T = 4000; explicit values as given."""
  np.testing.assert_array_equal(diffusion.linear_betas(1000), np.linspace(1e-4, 0.02, 1000))
  np.testing.assert_allclose(
    diffusion.linear_betas(100), 10 * np.linspace(1e-4, 0.02, 100), rtol=1e-14
  )
  np.testing.assert_allclose(
    diffusion.linear_betas(100), np_linear_betas(100, 1e-3, 0.2), rtol=1e-13
  )
  np.testing.assert_allclose(
    diffusion.linear_betas(4000), np_linear_betas(4000, 2.5e-5, 0.005), rtol=1e-13
  )
  np.testing.assert_allclose(diffusion.linear_betas(100, beta_end=0.02)[0], 1e-3, rtol=1e-14)
  np.testing.assert_allclose(diffusion.linear_betas(100, 1e-4, 0.02), np_linear_betas(100))
  # The point of the scaling: the last level stays near pure noise.
  for num in (50, 100, 1000, 4000):
    assert np_abar(diffusion.linear_betas(num))[-1] < 1e-4
  assert np_abar(np_linear_betas(100))[-1] == pytest.approx(0.364, abs=1e-3)
  # Below T = 20 the scaled beta_end would pass 1: capped at 0.999.
  np.testing.assert_allclose(diffusion.linear_betas(10), np.linspace(0.01, 0.999, 10), rtol=1e-14)
  assert diffusion.linear_betas(20)[-1] == 0.999


@pytest.mark.parametrize(
  "betas",
  [np_linear_betas(1000), np_cosine_betas(1000), np_linear_betas(50, 1e-3, 0.05)],
  ids=["linear1000", "cosine1000", "linear50"],
)
def test_rescale_zero_terminal_snr(betas):
  got = diffusion.rescale_zero_terminal_snr(betas)
  assert got.dtype == np.float64 and got.shape == betas.shape
  np.testing.assert_allclose(got, np_rescale_zero_terminal_snr(betas), rtol=1e-12, atol=1e-15)
  assert got[-1] == 1.0
  ac = np_abar(got)
  assert ac[-1] == 0.0
  np.testing.assert_allclose(ac[0], np_abar(betas)[0], rtol=1e-14)
  # sqrt(ac) is an affine function of the original sqrt(ac).
  ratio = np.diff(np.sqrt(ac)) / np.diff(np.sqrt(np_abar(betas)))
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-8)
  assert np.all((got > 0) & (got <= 1))


@pytest.mark.parametrize(
  "betas", [np_linear_betas(1000), np_cosine_betas(1000)], ids=["linear", "cosine"]
)
def test_rescale_zero_terminal_snr_matches_diffusers(betas):
  torch = pytest.importorskip("torch")
  ddim = pytest.importorskip("diffusers.schedulers.scheduling_ddim")
  ref = ddim.rescale_zero_terminal_snr(torch.tensor(betas, dtype=torch.float64)).numpy()
  # The same operations; torch's and numpy's cumprod round differently, and
  # 1 - alpha with alpha near 1 keeps only ~12 of those digits.
  got = diffusion.rescale_zero_terminal_snr(betas)
  np.testing.assert_allclose(got, ref, rtol=1e-11, atol=0)
  assert got[-1] == ref[-1] == 1.0


def test_make_schedule_zero_terminal_snr():
  """A last beta of 1: alphas_cumprod[T-1] = 0 exactly, every field finite,
  sigma_{T-1} = inf; the rest of the schedule as make_schedule's formulas."""
  betas = np_rescale_zero_terminal_snr(np_linear_betas(1000))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no prior-mismatch warning: KL = 0
    sched = diffusion.make_schedule(betas)
  for name, field in sched._asdict().items():
    assert np.all(np.isfinite(np.asarray(field))), name
  assert float(sched.alphas_cumprod[-1]) == 0.0
  assert float(sched.sqrt_alphas_cumprod[-1]) == 0.0
  assert float(sched.sqrt_one_minus_alphas_cumprod[-1]) == 1.0
  assert float(sched.posterior_mean_coef2[-1]) == 0.0
  sigmas = np.asarray(diffusion.schedule_sigmas(sched))
  assert sigmas[-1] == np.inf and np.all(np.isfinite(sigmas[:-1]))
  abar = np_abar(betas)
  np.testing.assert_allclose(sched.alphas_cumprod, abar, rtol=3e-6, atol=1e-30)
  np.testing.assert_allclose(
    sched.posterior_variance[1:], [np_tilde_beta(betas, t) for t in range(1, 1000)], rtol=3e-6
  )


def test_schedule_from_alphas_cumprod(x64):
  ac = np_sigmoid_alphas_cumprod(500)
  sched = diffusion.schedule_from_alphas_cumprod(ac)
  np.testing.assert_array_equal(np.asarray(sched.alphas_cumprod), ac)  # kept exactly
  betas = 1 - np.concatenate([ac[:1], ac[1:] / ac[:-1]])
  np.testing.assert_allclose(sched.betas, betas, rtol=1e-13)
  ref = diffusion.make_schedule(betas)
  for name in sched._fields:
    np.testing.assert_allclose(getattr(sched, name), getattr(ref, name), rtol=1e-12, err_msg=name)
  # Zero terminal SNR given as ac: the last beta is 1.
  zero = diffusion.schedule_from_alphas_cumprod(np.append(ac[:-1], 0.0))
  assert float(zero.betas[-1]) == 1.0 and float(zero.alphas_cumprod[-1]) == 0.0


def test_prior_mismatch_warning():
  """make_schedule warns when -0.5 log(1 - ac_{T-1}) > 1e-3 nats per dimension
  (the expected prior KL for unit-variance data, checked here against the
  float64 KL at x0 = +-1), naming ac_{T-1} and the fixes; scaled, cosine and
  zero-SNR schedules are quiet."""
  unscaled = np_linear_betas(100)
  ac_last = np_abar(unscaled)[-1]
  x0 = np.array([[1.0, -1.0]])
  assert diffusion.prior_kl_per_dim(ac_last) == pytest.approx(
    np_prior_kl(unscaled, x0)[0] / 2, rel=1e-12
  )
  assert diffusion.prior_kl_per_dim(ac_last) == pytest.approx(-0.5 * math.log(1 - ac_last))
  with pytest.warns(UserWarning, match=r"alphas_cumprod\[T-1\] = 0.364.*rescale_zero_terminal_snr"):
    diffusion.make_schedule(unscaled)
  with pytest.warns(UserWarning, match="schedule_from_alphas_cumprod"):
    diffusion.schedule_from_alphas_cumprod(np_abar(unscaled))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for betas in (
      diffusion.linear_betas(100),
      diffusion.linear_betas(1000),
      np_cosine_betas(250),
      np_rescale_zero_terminal_snr(np_linear_betas(100)),
    ):
      diffusion.make_schedule(betas)
  # The threshold: ac_{T-1} just above and below 1 - exp(-2e-3).
  edge = -math.expm1(-2 * diffusion.schedules.PRIOR_KL_WARNING)
  with pytest.warns(UserWarning):
    diffusion.schedule_from_alphas_cumprod([0.9, edge * 1.01])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    diffusion.schedule_from_alphas_cumprod([0.9, edge * 0.99])


# ----------------------------------------------------------------------------
# config.diffusion: the schedule options
# ----------------------------------------------------------------------------


def test_config_schedules():
  from gen_jax import models

  betas = lambda **kw: models.diffusion_betas(models.diffusion_config(**kw))
  np.testing.assert_array_equal(betas(), np.linspace(1e-4, 0.02, 1000))  # DDPM's, as before
  np.testing.assert_allclose(betas(num_timesteps=100), np_linear_betas(100, 1e-3, 0.2), rtol=1e-13)
  np.testing.assert_allclose(
    betas(num_timesteps=100, beta_start=1e-4, beta_end=0.02), np_linear_betas(100), rtol=1e-13
  )
  np.testing.assert_allclose(betas(beta_schedule="cosine"), np_cosine_betas(1000), rtol=1e-10)
  zero = betas(zero_terminal_snr=True, prediction="v")
  np.testing.assert_allclose(zero, np_rescale_zero_terminal_snr(np_linear_betas(1000)), rtol=1e-11)
  assert zero[-1] == 1.0
  # The placeholders take a typed override, as --config.diffusion.beta_start=... does.
  cfg = models.diffusion_config(num_timesteps=100)
  cfg.beta_start, cfg.beta_end = 1e-4, 0.02
  np.testing.assert_allclose(models.diffusion_betas(cfg), np_linear_betas(100), rtol=1e-13)
  assert models.diffusion_config().beta_start is None


@pytest.mark.parametrize(
  "options, field",
  [
    (dict(zero_terminal_snr=True), "config.diffusion.prediction"),
    (dict(beta_schedule="cosine", beta_start=1e-4), "config.diffusion.beta_start"),
    (dict(beta_schedule="sigmoid"), "config.diffusion.beta_schedule"),
    (dict(beta_start=0.1, beta_end=0.01), "config.diffusion.beta_start"),
    (dict(num_timesteps=1), "config.diffusion.num_timesteps"),
  ],
)
def test_config_errors_name_the_field(options, field):
  from gen_jax import models

  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    models.diffusion_betas(models.diffusion_config(**options))
