"""Tests for classifier-free guidance (gen_jax/diffusion/guidance.py): the formula,
and guided DPM-Solver++ / Heun on a labelled Gaussian mixture against float64
numpy references (the model-level guidance is tested in tests/models/test_guidance_end_to_end.py).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion, testing
from tests.support.diffusion import (
  ABAR,
  GMM2,
  assert_trajectories_close,
  draw_x_T,
  np_dpmpp_2m,
  np_edm_heun,
)

F32 = jnp.float32


def test_guided_eps_fn_formula():
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.standard_normal((5, 3)), F32)
  t = jnp.arange(5)
  cond = lambda x, t: jnp.sin(x) + 0.1 * t[:, None]
  uncond = lambda x, t: jnp.cos(x)
  for w in (0.0, 1.0, 3.5):
    got = jax.jit(
      lambda x, t, w: diffusion.guided_eps_fn(cond_fn=cond, uncond_fn=uncond, guidance_scale=w)(
        x, t
      )
    )(x, t, w)
    xn, tn = np.asarray(x, np.float64), np.arange(5)[:, None]
    ref = (1 + w) * (np.sin(xn) + 0.1 * tn) - w * np.cos(xn)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    diffusion.guided_eps_fn(cond_fn=cond, uncond_fn=uncond, guidance_scale=0.0)(x, t),
    cond(x, t),
    rtol=1e-7,
  )


# ----------------------------------------------------------------------------
# Guided samplers on a labelled mixture
# ----------------------------------------------------------------------------


def _labelled(sched, component):
  """Exact conditional eps (component `component` alone) and unconditional
  eps (the whole mixture) of GMM2."""
  cond = dict(
    weights=[1.0], means=GMM2["means"][component : component + 1], stds=[GMM2["stds"][component]]
  )
  return (testing.gmm_eps_fn(sched, **cond), testing.gmm_eps_fn(sched, **GMM2), cond)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["dpm++2m", "heun"])
def test_guided_sampler_matches_numpy(x64, sampler):
  sched = diffusion.make_schedule(diffusion.linear_betas(1000))
  cond_fn, uncond_fn, cond = _labelled(sched, 2)
  w = 2.0
  guided_np = lambda x, a: (
    (1 + w) * testing.gmm_eps_np(x, a, **cond) - w * testing.gmm_eps_np(x, a, **GMM2)
  )
  eps_fn = diffusion.guided_eps_fn(cond_fn=cond_fn, uncond_fn=uncond_fn, guidance_scale=w)
  key, shape = jax.random.key(7), (200, 2)
  if sampler == "dpm++2m":
    got = jax.jit(lambda k: diffusion.dpmpp_2m_sample(k, eps_fn, sched, shape, num_steps=15))(key)
    ts = np.asarray(diffusion.log_sigma_timesteps(sched, 15))[::-1]
    ref = np_dpmpp_2m(draw_x_T(key, shape), ts, ABAR, guided_np)
  else:
    got = jax.jit(lambda k: diffusion.heun_sample(k, eps_fn, sched, shape, num_steps=10))(key)
    ts = np.asarray(diffusion.edm_timesteps(sched, 10))
    ref = np_edm_heun(draw_x_T(key, shape), ts, ABAR, guided_np)
  assert_trajectories_close(got, ref, tight=1e-7)
  # Guidance moved the samples: the unguided (w = 0) result differs.
  unguided = (
    jax.jit(lambda k: diffusion.dpmpp_2m_sample(k, cond_fn, sched, shape, num_steps=15))(key)
    if sampler == "dpm++2m"
    else None
  )
  if unguided is not None:
    assert np.max(np.abs(np.asarray(unguided) - np.asarray(got))) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("component", [0, 1, 2])
def test_guidance_zero_samples_the_component(sched, component):
  """At w = 0 the guided eps is the conditional one: samples follow
  N(mu_c, s_c^2 I)."""
  cond_fn, uncond_fn, cond = _labelled(sched, component)
  eps_fn = diffusion.guided_eps_fn(cond_fn=cond_fn, uncond_fn=uncond_fn, guidance_scale=0.0)
  n = 4000
  x = np.asarray(
    jax.jit(lambda k: diffusion.dpmpp_2m_sample(k, eps_fn, sched, (n, 2), num_steps=20))(
      jax.random.key(8)
    ),
    np.float64,
  )
  mu, s = cond["means"][0], cond["stds"][0]
  labels = np.argmin(((x[:, None] - GMM2["means"]) ** 2).sum(-1), 1)
  assert np.all(labels == component)
  np.testing.assert_array_less(np.abs(x.mean(0) - mu), 5 * s / math.sqrt(n))
  assert 0.93 < x.std(0).mean() / s < 1.07
  ref = testing.gmm_sample(np.random.default_rng(9), n, **cond)[0]
  base = testing.sliced_wasserstein(
    testing.gmm_sample(np.random.default_rng(10), n, **cond)[0], ref
  )
  assert testing.sliced_wasserstein(x, ref) < 2 * base + 0.003
