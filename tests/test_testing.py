"""Tests of the analytic oracles themselves (gen_jax/testing.py): the mixture's
exact eps is its scaled score, and its 8-bit bin masses sum to one."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion, testing
from tests.support.diffusion import GMM2, np_abar, np_linear_betas

F32 = jnp.float32


@pytest.fixture(scope="module")
def sched1000():
  return diffusion.make_schedule(diffusion.linear_betas(1000))


def test_oracle_eps_is_scaled_score(sched1000):
  """eps = -sqrt(1 - ab) grad log p_t, p_t by gmm_log_density (finite diff)."""
  abar = np_abar(np_linear_betas(1000))
  eps_fn = jax.jit(testing.gmm_eps_fn(sched1000, **GMM2))
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 2))
  t = np.array([0, 1, 3, 50, 200, 500, 800, 999])
  got = np.asarray(eps_fn(jnp.asarray(x, F32), jnp.asarray(t)))
  for i, ti in enumerate(t):
    a = abar[ti]
    ref = -math.sqrt(1 - a) * testing.gmm_noised_score_fd(x[i], a, **GMM2)
    np.testing.assert_allclose(got[i], ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
      testing.gmm_eps_np(x[i : i + 1], a, **GMM2)[0], ref, rtol=1e-5, atol=1e-6
    )


def test_oracle_discrete_mass():
  w, mu, s = [0.6, 0.4], np.array([[0.1, -0.9], [-0.5, 0.3]]), [0.3, 0.2]
  grid = np.linspace(-1, 1, 256)
  xx = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
  logp = testing.gmm_discrete_log_prob(xx, w, mu, s)
  assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-12)
  interior = np.all(np.abs(xx) < 0.9, axis=1)
  approx = testing.gmm_log_density(xx, w, mu, s) + 2 * np.log(2 / 255)
  np.testing.assert_allclose(logp[interior], approx[interior], atol=2e-3)
