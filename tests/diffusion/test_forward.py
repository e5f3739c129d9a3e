"""Tests for the forward process of gen_jax/diffusion/forward.py: q(x_t | x_0), one
step q(x_t | x_{t-1}), the posterior q(x_{t-1} | x_t, x_0) from Bayes' rule (a
product of two Gaussians), and x0 from eps, in float32 and float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion
from tests.support.diffusion import (
  BETAS20,
  np_abar,
  np_linear_betas,
  np_posterior,
  np_tilde_beta,
  posterior_inputs,
)

F32 = jnp.float32


@pytest.mark.slow
def test_q_sample_formula_and_moments(sched1000):
  betas = np_linear_betas(1000)
  abar = np_abar(betas)
  q_sample = jax.jit(diffusion.make_q_sample(sched1000))
  x0 = jnp.array([[0.7, -0.3, 0.0]], F32)
  # Exact formula, per element.
  noise = jax.random.normal(jax.random.key(0), (5, 3))
  t = jnp.array([0, 1, 250, 700, 999])
  got = q_sample(x0=jnp.broadcast_to(x0, (5, 3)), t=t, noise=noise)
  ref = np.sqrt(abar[t])[:, None] * np.asarray(x0, np.float64) + np.sqrt(1 - abar[t])[
    :, None
  ] * np.asarray(noise, np.float64)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  # Monte Carlo: mean sqrt(ab) x0, variance 1 - ab.
  n = 40000
  for ti in (3, 400, 999):
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(1), ti), (n, 3))
    x = q_sample(x0=jnp.broadcast_to(x0, (n, 3)), t=jnp.full((n,), ti), noise=noise)
    x = np.asarray(x, np.float64)
    v = 1 - abar[ti]
    mean_se = math.sqrt(v / n)
    np.testing.assert_array_less(
      np.abs(x.mean(0) - math.sqrt(abar[ti]) * np.asarray(x0[0])), 5 * mean_se
    )
    var_se = v * math.sqrt(2 / n)
    np.testing.assert_array_less(np.abs(x.var(0) - v), 5 * var_se)


@pytest.mark.slow
def test_make_q_sample_vmap_matches_batch(sched20):
  q_sample = diffusion.make_q_sample(sched20)
  x0 = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))
  noise = jax.random.normal(jax.random.key(1), (6, 4, 4, 2))
  t = jnp.array([0, 3, 7, 11, 19, 5])
  batched = q_sample(x0=x0, t=t, noise=noise)
  mapped = jax.jit(jax.vmap(q_sample))(x0=x0, t=t, noise=noise)
  np.testing.assert_allclose(mapped, batched, rtol=1e-6, atol=1e-7)
  # One example with a scalar t.
  one = q_sample(x0=x0[2], t=jnp.int32(7), noise=noise[2])
  np.testing.assert_allclose(one, batched[2], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_q_step_chain_matches_q_sample(sched20):
  abar = np_abar(BETAS20)
  n, dims, t_final = 40000, 2, 12
  x0 = jnp.broadcast_to(jnp.array([0.8, -0.5], F32), (n, dims))

  @jax.jit
  def chain(key):
    def body(x, s):
      noise = jax.random.normal(jax.random.fold_in(key, s), x.shape)
      return diffusion.q_step(sched20, x_prev=x, t=jnp.full((n,), s), noise=noise), None

    x, _ = jax.lax.scan(body, x0, jnp.arange(t_final + 1))
    return x

  x_chain = np.asarray(chain(jax.random.key(2)), np.float64)
  noise = jax.random.normal(jax.random.key(3), (n, dims))
  x_direct = np.asarray(
    diffusion.make_q_sample(sched20)(x0=x0, t=jnp.full((n,), t_final), noise=noise), np.float64
  )
  mean_ref = math.sqrt(abar[t_final]) * np.array([0.8, -0.5])
  var_ref = 1 - abar[t_final]
  for x in (x_chain, x_direct):
    np.testing.assert_array_less(np.abs(x.mean(0) - mean_ref), 5 * math.sqrt(var_ref / n))
    np.testing.assert_array_less(np.abs(x.var(0) - var_ref), 5 * var_ref * math.sqrt(2 / n))
  # q_step at one example with a scalar t is the paper's kernel.
  got = diffusion.q_step(
    sched20, x_prev=jnp.array([0.5, 1.0]), t=jnp.int32(4), noise=jnp.array([1.0, -2.0])
  )
  ref = math.sqrt(1 - BETAS20[4]) * np.array([0.5, 1.0]) + math.sqrt(BETAS20[4]) * np.array(
    [1.0, -2.0]
  )
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_q_posterior_bayes(sched20):
  x0, x_t, t = posterior_inputs((40, 3))
  mean, var, log_var = jax.jit(diffusion.q_posterior)(
    sched20, x0=jnp.asarray(x0, F32), x_t=jnp.asarray(x_t, F32), t=jnp.asarray(t)
  )
  ref_mean, ref_var = np_posterior(BETAS20, x0, x_t, t)
  assert mean.shape == var.shape == log_var.shape == x0.shape
  np.testing.assert_allclose(mean, ref_mean, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(var, ref_var, rtol=2e-5, atol=1e-12)
  # t = 0: the posterior is the point mass at x0; the log is clipped to beta~_1.
  at0 = t == 0
  np.testing.assert_allclose(mean[at0], x0[at0], rtol=1e-6)
  np.testing.assert_array_equal(var[at0], 0.0)
  log_ref = np.log(np.where(at0[:, None], np_tilde_beta(BETAS20, 1), ref_var))
  np.testing.assert_allclose(log_var, log_ref, rtol=1e-5)


@pytest.mark.slow
def test_predict_x0_inverts_q_sample(sched1000):
  x0 = jax.random.uniform(jax.random.key(0), (6, 5), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(1), (6, 5))
  t = jnp.array([0, 1, 10, 300, 700, 999])
  x_t = diffusion.make_q_sample(sched1000)(x0=x0, t=t, noise=noise)
  x0_back = jax.jit(diffusion.predict_x0_from_eps)(sched1000, x_t=x_t, t=t, eps=noise)
  # float32: the error is amplified by 1/sqrt(ab) (~160 at t = 999).
  np.testing.assert_allclose(x0_back, x0, atol=5e-5)
  eps_back = jax.jit(diffusion.predict_eps_from_x0)(sched1000, x_t=x_t, t=t, x0=x0)
  np.testing.assert_allclose(eps_back[:4], noise[:4], atol=5e-3)
  np.testing.assert_allclose(eps_back[4:], noise[4:], atol=2e-5)
  # A wrong noise does not invert.
  wrong = diffusion.predict_x0_from_eps(sched1000, x_t=x_t, t=t, eps=noise + 0.1)
  assert np.max(np.abs(wrong - x0)) > 1e-2


def test_float64(x64):
  betas = np_linear_betas(1000)
  sched = diffusion.make_schedule(diffusion.linear_betas(1000))
  for field in sched:
    assert field.dtype == jnp.float64
  np.testing.assert_allclose(sched.alphas_cumprod, np_abar(betas), rtol=1e-13)
  rng = np.random.default_rng(0)
  x0, x_t = rng.uniform(-1, 1, (30, 3)), rng.standard_normal((30, 3))
  t = np.concatenate([[0, 1, 2, 999], rng.integers(0, 1000, 26)])
  mean, var, _ = jax.jit(diffusion.q_posterior)(sched, x0=x0, x_t=x_t, t=t)
  assert mean.dtype == jnp.float64
  ref_mean, ref_var = np_posterior(betas, x0, x_t, t)
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(var, ref_var, rtol=1e-12, atol=1e-15)
  # predict_x0_from_eps inverts q_sample to float64 precision.
  noise = rng.standard_normal((30, 3))
  xt = diffusion.make_q_sample(sched)(x0=jnp.asarray(x0), t=t, noise=noise)
  back = diffusion.predict_x0_from_eps(sched, x_t=xt, t=t, eps=noise)
  np.testing.assert_allclose(back, x0, atol=1e-12)
