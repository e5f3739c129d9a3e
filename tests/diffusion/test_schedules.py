"""Tests for gen_jax/diffusion/schedules.py: the betas, `make_schedule`, respacing and
the noise levels sigma_t, against float64 numpy references written from the papers
(Ho et al. 2020; Nichol & Dhariwal 2021), never by calling the code under test.
"""

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
  np_tilde_beta,
)

F32 = jnp.float32


# ----------------------------------------------------------------------------
# Betas and make_schedule
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("num", [1, 2, 10, 1000])
def test_linear_betas_formula(num):
  betas = diffusion.linear_betas(num)
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
