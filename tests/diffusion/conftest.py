"""Fixtures shared by the diffusion tests: schedules and the mixture's sampling baseline."""

import numpy as np
import pytest

from gen_jax import diffusion, testing
from tests.support.diffusion import GMM2, N_SAMPLES


@pytest.fixture(scope="module")
def sched20():
  """T = 20 with large betas (1e-3 to 0.2): the small schedule of most exact tests."""
  return diffusion.make_schedule(diffusion.linear_betas(20, 1e-3, 0.2))


@pytest.fixture(scope="module")
def sched1000():
  """DDPM's schedule: T = 1000 linear betas from 1e-4 to 0.02."""
  return diffusion.make_schedule(diffusion.linear_betas(1000))


@pytest.fixture(scope="module")
def sched(sched1000):
  """The same T = 1000 schedule, under the name the sampler tests use."""
  return sched1000


@pytest.fixture(scope="module")
def sw_baseline():
  """Mean sliced W1 between independent data samples of size N_SAMPLES."""
  ref, _ = testing.gmm_sample(np.random.default_rng(123), N_SAMPLES, **GMM2)
  vals = [
    testing.sliced_wasserstein(
      testing.gmm_sample(np.random.default_rng(s), N_SAMPLES, **GMM2)[0], ref
    )
    for s in range(4)
  ]
  return float(np.mean(vals))
