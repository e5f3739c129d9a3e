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
  np_rescale_zero_terminal_snr,
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


@pytest.mark.slow
def test_edm_timesteps(sched):
  grid = jax.jit(diffusion.edm_timesteps, static_argnums=1)
  got = np.asarray(grid(sched, 18))
  # EDM's defaults clamped to the schedule: sigma_min = max(0.002, sigma_0) = sigma_0
  # (0.01), sigma_max = min(80, sigma_999 = 157) = 80; rounded to the levels.
  ref = np_nearest_level(np_karras_sigmas(max(0.002, SIGMAS[0]), min(80.0, SIGMAS[-1]), 18))
  np.testing.assert_array_equal(got, ref)
  assert got[-1] == 0 and SIGMAS[got[0]] == pytest.approx(80.0, rel=0.01)
  # The schedule's whole range, when asked for.
  full = np.asarray(diffusion.edm_timesteps(sched, 18, sigma_min=SIGMAS[0], sigma_max=SIGMAS[-1]))
  np.testing.assert_array_equal(full, np_nearest_level(np_karras_sigmas(SIGMAS[0], SIGMAS[-1], 18)))
  assert full[0] == 999
  for num in (1, 2, 1000):
    ts = np.asarray(grid(sched, num))
    assert len(ts) == num and np.all(np.diff(ts) < 0)


def test_edm_timesteps_cosine_cap():
  """cosine_betas(1000)'s last level jumps from sigma = 642 to 20,291; the cap
  at 80 keeps the 18 levels off the top few (without it 9 of 18 sit above 80)."""
  sched = diffusion.make_schedule(diffusion.cosine_betas(1000))
  sigmas = np.asarray(diffusion.schedule_sigmas(sched), np.float64)
  ts = np.asarray(diffusion.edm_timesteps(sched, 18))
  assert sigmas[ts[0]] == pytest.approx(80.0, rel=0.05) and np.all(sigmas[ts] <= 81.0)
  uncapped = np.asarray(diffusion.edm_timesteps(sched, 18, sigma_max=sigmas[-1]))
  assert np.sum(sigmas[uncapped] > 80.0) == 9


def np_spaced(num_timesteps, num_steps, spacing):
  """diffusers 0.42 DDIMScheduler.set_timesteps (steps_offset = 0), transcribed."""
  if spacing == "linspace":
    return np.linspace(0, num_timesteps - 1, num_steps).round()[::-1].astype(np.int64)
  if spacing == "leading":
    ratio = num_timesteps // num_steps
    return (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64)
  ratio = num_timesteps / num_steps
  return np.round(np.arange(num_timesteps, 0, -ratio)).astype(np.int64) - 1


def test_spaced_timesteps_are_diffusers():
  for num in (10, 100, 250, 1000):
    for steps in sorted({2, 3, 7, 27, 50, num // 3, num - 1, num} - {0}):
      if steps > num:
        continue
      for spacing in diffusion.SPACINGS:
        got = diffusion.spaced_timesteps(num, steps, spacing)
        np.testing.assert_array_equal(got, np_spaced(num, steps, spacing), err_msg=spacing)
        assert got.dtype == np.int32 and np.all(np.diff(got) < 0)
  assert diffusion.spaced_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
  assert diffusion.spaced_timesteps(1000, 4, "leading").tolist() == [750, 500, 250, 0]
  assert diffusion.spaced_timesteps(1000, 1).tolist() == [999]  # diffusers: [0]
  np.testing.assert_array_equal(
    diffusion.ddim_timesteps(1000, 27), diffusion.spaced_timesteps(1000, 27, "linspace")
  )
  with pytest.raises(ValueError, match="spacing"):
    diffusion.spaced_timesteps(1000, 4, "uniform")


def test_check_timesteps_names_the_caller():
  with pytest.raises(TypeError, match=r"ddim_sample: timesteps must hold integer .*float32"):
    diffusion.timesteps.check_timesteps(np.array([5.0, 1.0], np.float32), 10, "ddim_sample")
  for bad in ([1, 5], [5, 5, 1], [10, 2], [3, -1], []):
    with pytest.raises(ValueError, match="ddim_sample: timesteps"):
      diffusion.timesteps.check_timesteps(np.array(bad, np.int32), 10, "ddim_sample")


def test_log_sigma_timesteps_zero_snr():
  """With sigma_{T-1} = inf the last point is T - 1 and the others are uniform
  in log-sigma up to sigma_{T-2}; no NaN."""
  betas = np_rescale_zero_terminal_snr(np_linear_betas(100, 1e-3, 0.2))
  sched = diffusion.make_schedule(betas)
  ts = np.asarray(diffusion.log_sigma_timesteps(sched, 10))
  assert ts[0] == 0 and ts[-1] == 99 and np.all(np.diff(ts) > 0)
  abar = np_abar(betas)
  log_sig = np.log(np.sqrt((1 - abar[:99]) / abar[:99]))
  nearest = np.argmin(np.abs(log_sig[None] - np.linspace(log_sig[0], log_sig[-1], 9)[:, None]), 1)
  np.testing.assert_array_equal(ts[:9], nearest)


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
