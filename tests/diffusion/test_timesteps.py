"""Tests for the time grids of gen_jax/diffusion/timesteps.py (DDIM's, uniform in
log-sigma, Karras et al.'s rho-grid, eq. 5), against float64 numpy written from
the papers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion
from tests.support.diffusion import (
  SIGMAS,
  np_abar,
  np_karras_sigmas,
  np_linear_betas,
  np_nearest_level,
)

F32 = jnp.float32


def test_ddim_timesteps_properties():
  for num in (1, 2, 7, 10, 100, 1000):
    for steps in sorted({1, 2, 3, num // 3, num // 2, num - 1, num}):
      if not 1 <= steps <= num:
        continue
      ts = diffusion.ddim_timesteps(num, steps)
      assert len(ts) == steps, (num, steps)
      assert ts[0] == num - 1
      if steps > 1:
        assert ts[-1] == 0
      assert np.all(np.diff(ts) < 0), (num, steps, ts)  # distinct, decreasing
      assert np.issubdtype(ts.dtype, np.integer)
  ts = diffusion.ddim_timesteps(1000, 50)
  gaps = -np.diff(ts)
  assert gaps.min() >= 20 and gaps.max() <= 21  # evenly spaced


def test_karras_sigmas_formula():
  got = diffusion.karras_sigmas(0.002, 80.0, 18)
  np.testing.assert_allclose(got, np_karras_sigmas(0.002, 80.0, 18), rtol=1e-5)
  np.testing.assert_allclose(
    diffusion.karras_sigmas(0.1, 10.0, 5, rho=3.0), np_karras_sigmas(0.1, 10.0, 5, 3.0), rtol=1e-5
  )
  np.testing.assert_allclose(diffusion.karras_sigmas(0.1, 10.0, 1), [10.0])


def test_edm_timesteps(sched):
  grid = jax.jit(diffusion.edm_timesteps, static_argnums=1)
  got = np.asarray(grid(sched, 18))
  # 18 rho = 7 sigmas between the schedule's extremes, rounded to the levels.
  ref = np_nearest_level(np_karras_sigmas(SIGMAS[0], SIGMAS[-1], 18))
  np.testing.assert_array_equal(got, ref)
  assert got[0] == 999 and got[-1] == 0
  for num in (1, 2, 1000):
    ts = np.asarray(grid(sched, num))
    assert len(ts) == num and ts[0] == 999 and np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("num_timesteps", [10, pytest.param(1000, marks=pytest.mark.slow)])
def test_log_sigma_timesteps(num_timesteps):
  sched = diffusion.make_schedule(diffusion.linear_betas(num_timesteps, 1e-4, 0.02))
  sigmas = np.sqrt(
    (1 - np_abar(np_linear_betas(num_timesteps))) / np_abar(np_linear_betas(num_timesteps))
  )
  grid = jax.jit(diffusion.log_sigma_timesteps, static_argnums=1)
  for num in sorted(
    {2, 3, num_timesteps // 3, num_timesteps // 2, num_timesteps - 1, num_timesteps}
  ):
    ts = np.asarray(grid(sched, num))
    assert len(ts) == num and ts[0] == 0 and ts[-1] == num_timesteps - 1
    assert np.all(np.diff(ts) > 0), ts
    # Each point is the level nearest to its log-uniform target, or, where
    # the levels are sparser than the grid, the level after the previous
    # point (pushed up), or the highest level that leaves room for the rest.
    targets = np.linspace(np.log(sigmas[0]), np.log(sigmas[-1]), num)
    nearest = np.argmin(np.abs(np.log(sigmas)[None] - targets[:, None]), 1)
    room = num_timesteps - num + np.arange(num)
    previous_plus_one = np.append(0, ts[:-1] + 1)
    assert np.all((ts == nearest) | (ts == previous_plus_one) | (ts == room))
    assert np.all(ts >= np.minimum(nearest, room))
    assert np.all(ts <= room)
  if num_timesteps == 1000:
    # DDPM's levels are sparse in log-sigma at small sigma (0.39 from t = 0
    # to 1): the 20-point grid (spacing 0.51) starts 0, 1, 4; the 257-point
    # grid (spacing 0.038) takes the first 30 levels one by one.
    ts = np.asarray(grid(sched, 20))
    np.testing.assert_array_equal(ts[:3], [0, 1, 4])
    ts = np.asarray(grid(sched, 257))
    assert np.all(ts[:30] == np.arange(30)) and ts[-1] == 999
