"""Tests for the prediction targets of gen_jax/diffusion/forward.py (eps, x0, v,
score) and `as_eps_fn`.

References are float64 numpy written from the definitions (x_t = a x0 + s
eps, v = a eps - s x0, score = grad log q(x_t)) and the Gaussian-mixture
oracle, whose posterior mean of x0 is derived here independently of its eps.
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
)

F32 = jnp.float32


def _inputs(batch=8, dims=(3,), seed=0):
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1, 1, (batch,) + dims)
  eps = rng.standard_normal((batch,) + dims)
  t = np.concatenate([[0, 1, 500, 999], rng.integers(0, 1000, batch - 4)])
  a = np.sqrt(ABAR[t]).reshape((batch,) + (1,) * len(dims))
  s = np.sqrt(1 - ABAR[t]).reshape(a.shape)
  return x0, eps, t, a, s


# ----------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------


def test_conversions_match_definitions(x64):
  sched = diffusion.make_schedule(diffusion.linear_betas(1000))
  x0, eps, t, a, s = _inputs(dims=(2, 3))
  x_t = a * x0 + s * eps
  v = a * eps - s * x0
  got = {
    "v_target": diffusion.v_target(sched, x0=x0, t=t, noise=eps),
    "predict_eps_from_v": diffusion.predict_eps_from_v(sched, x_t=x_t, t=t, v=v),
    "predict_v_from_eps": diffusion.predict_v_from_eps(sched, x_t=x_t, t=t, eps=eps),
    "predict_x0_from_eps": diffusion.predict_x0_from_eps(sched, x_t=x_t, t=t, eps=eps),
    "predict_eps_from_x0": diffusion.predict_eps_from_x0(sched, x_t=x_t, t=t, x0=x0),
    "score_from_eps": diffusion.score_from_eps(sched, x_t=x_t, t=t, eps=eps),
    "predict_eps_from_score": diffusion.predict_eps_from_score(sched, x_t=x_t, t=t, score=-eps / s),
  }
  ref = {
    "v_target": v,
    "predict_eps_from_v": eps,
    "predict_v_from_eps": v,
    "predict_x0_from_eps": x0,
    "predict_eps_from_x0": eps,
    "score_from_eps": -eps / s,
    "predict_eps_from_score": eps,
  }
  for name, value in got.items():
    assert value.shape == x0.shape, name
    np.testing.assert_allclose(value, ref[name], rtol=1e-9, atol=1e-9, err_msg=name)
  for prediction, target in (("eps", eps), ("x0", x0), ("v", v)):
    np.testing.assert_allclose(
      diffusion.prediction_from_eps(sched, x_t=x_t, t=t, eps=eps, prediction=prediction),
      target,
      rtol=1e-9,
      atol=1e-9,
    )
    np.testing.assert_allclose(
      diffusion.eps_from_prediction(sched, x_t=x_t, t=t, output=target, prediction=prediction),
      eps,
      rtol=1e-9,
      atol=1e-9,
    )


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.slow
def test_round_trip_float32(sched, prediction):
  """eps -> target -> eps in float32, jitted and vmapped per example.
  x0 round trips lose digits where sqrt(ac) is small (t near T), v where
  sqrt(1 - ac) is (t near 0): tolerances follow the conditioning."""
  x0, eps, t, a, s = _inputs(batch=64, seed=1)
  x_t = jnp.asarray(a * x0 + s * eps, F32)
  eps32, t32 = jnp.asarray(eps, F32), jnp.asarray(t)
  there = jax.jit(
    lambda x, tt, e: diffusion.prediction_from_eps(sched, x_t=x, t=tt, eps=e, prediction=prediction)
  )(x_t, t32, eps32)
  back = jax.jit(
    lambda x, tt, o: diffusion.eps_from_prediction(
      sched, x_t=x, t=tt, output=o, prediction=prediction
    )
  )(x_t, t32, there)
  cond = {"eps": 1.0, "x0": a / s, "v": 1 / a}[prediction] + 1.0
  tolerance = np.broadcast_to(4e-6 * cond, eps.shape)
  np.testing.assert_array_less(np.abs(back - eps32), tolerance)
  # One example at a time with a scalar t gives the batched values.
  one = jax.jit(
    jax.vmap(
      lambda x, tt, e: diffusion.prediction_from_eps(
        sched, x_t=x, t=tt, eps=e, prediction=prediction
      )
    )
  )(x_t, t32, eps32)
  target_cond = {"eps": 1.0, "x0": 1 / a, "v": 1 / a}[prediction] + 1.0
  np.testing.assert_array_less(np.abs(one - there), np.broadcast_to(4e-6 * target_cond, eps.shape))


@pytest.mark.slow
def test_score_is_gradient_of_log_density(sched):
  """score_from_eps(oracle eps) = grad log p_t, p_t the noised mixture
  (central finite differences of its closed-form log-density)."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal((6, 2))
  t = np.array([0, 3, 50, 300, 700, 999])
  eps = testing.gmm_eps_fn(sched, **GMM2)(jnp.asarray(x, F32), jnp.asarray(t))
  score = diffusion.score_from_eps(sched, x_t=jnp.asarray(x, F32), t=jnp.asarray(t), eps=eps)
  score = np.asarray(score)
  for i, ti in enumerate(t):
    a = ABAR[ti]
    grad = testing.gmm_noised_score_fd(x[i], a, **GMM2)
    np.testing.assert_allclose(score[i], grad, rtol=2e-3, atol=2e-3 / math.sqrt(1 - a))


def test_bad_prediction_raises(sched):
  x = jnp.zeros((2, 3))
  t = jnp.array([1, 2])
  for call in (
    lambda: diffusion.as_eps_fn(lambda x, t: x, sched, "score"),
    lambda: diffusion.eps_from_prediction(sched, x_t=x, t=t, output=x, prediction="noise"),
    lambda: diffusion.prediction_from_eps(sched, x_t=x, t=t, eps=x, prediction="x_0"),
    lambda: diffusion.simple_loss(
      jax.random.key(0), lambda x, t: x, sched, x, prediction="velocity"
    ),
  ):
    with pytest.raises(ValueError, match="prediction must be one of"):
      call()


# ----------------------------------------------------------------------------
# as_eps_fn on the oracle: the posterior means of x0 and v
# ----------------------------------------------------------------------------


def gmm_x0_fn(schedule, weights, means, stds):
  """E[x0 | x_t] of the mixture, derived per component (not from eps):
  x0 | x_t, k ~ Gaussian with mean mu_k + sqrt(a) s_k^2 / (a s_k^2 + 1 - a)
  (x_t - sqrt(a) mu_k), weighted by the responsibilities of p_t."""
  means = jnp.asarray(means, F32)
  var0 = jnp.asarray(np.square(stds), F32)
  log_w = jnp.log(jnp.asarray(weights, F32))

  def x0_fn(x_t, t):
    a = schedule.alphas_cumprod[t][:, None]  # (B, 1)
    var = a * var0 + 1 - a  # (B, K)
    diff = x_t[:, None, :] - jnp.sqrt(a)[:, :, None] * means  # (B, K, D)
    logits = log_w - 0.5 * x_t.shape[1] * jnp.log(var) - 0.5 * jnp.sum(diff**2, -1) / var
    resp = jax.nn.softmax(logits, -1)
    gain = jnp.sqrt(a) * var0 / var  # (B, K)
    post = means + gain[:, :, None] * diff
    return jnp.sum(resp[:, :, None] * post, axis=1)

  return x0_fn


def test_as_eps_fn_of_oracle_x0_and_v_predictors(sched):
  x0_fn = gmm_x0_fn(sched, **GMM2)

  # E[v | x_t] = (sqrt(a) x_t - E[x0 | x_t]) / sqrt(1 - a), since v =
  # sqrt(a) eps - sqrt(1 - a) x0 and eps = (x_t - sqrt(a) x0) / sqrt(1 - a).
  def v_fn(x_t, t):
    a = sched.alphas_cumprod[t][:, None]
    return (jnp.sqrt(a) * x_t - x0_fn(x_t, t)) / jnp.sqrt(1 - a)

  rng = np.random.default_rng(3)
  t = np.concatenate([[1, 10, 100, 500, 900, 999], rng.integers(5, 1000, 26)])
  x0, _ = testing.gmm_sample(rng, len(t), **GMM2)
  a = ABAR[t][:, None]
  x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape)
  ref = testing.gmm_eps_np(x_t, ABAR[t], **GMM2)
  args = (jnp.asarray(x_t, F32), jnp.asarray(t))
  for prediction, fn in (("x0", x0_fn), ("v", v_fn)):
    eps = jax.jit(diffusion.as_eps_fn(fn, sched, prediction))(*args)
    np.testing.assert_allclose(eps, ref, rtol=2e-3, atol=2e-3, err_msg=prediction)
  assert diffusion.as_eps_fn(x0_fn, sched, "eps") is x0_fn


def test_array_arguments_are_keyword_only(sched):
  """Issue 26: swapped positional arrays ran silently (predict_x0_from_eps with x_t and eps
  swapped: RMS error 0.65; v_target with x0 and noise swapped: 1.9). Every function whose
  arrays share a shape now takes them by keyword only: a positional call is a TypeError."""
  x = jnp.zeros((2, 3))
  t = jnp.array([1, 2])
  q_sample = diffusion.make_q_sample(sched)
  positional = {
    "predict_x0_from_eps": lambda: diffusion.predict_x0_from_eps(sched, x, t, x),
    "predict_eps_from_x0": lambda: diffusion.predict_eps_from_x0(sched, x, t, x),
    "predict_v_from_eps": lambda: diffusion.predict_v_from_eps(sched, x, t, x),
    "predict_eps_from_v": lambda: diffusion.predict_eps_from_v(sched, x, t, x),
    "score_from_eps": lambda: diffusion.score_from_eps(sched, x, t, x),
    "predict_eps_from_score": lambda: diffusion.predict_eps_from_score(sched, x, t, x),
    "v_target": lambda: diffusion.v_target(sched, x, t, x),
    "eps_from_prediction": lambda: diffusion.eps_from_prediction(sched, x, t, x, "v"),
    "prediction_from_eps": lambda: diffusion.prediction_from_eps(sched, x, t, x, "v"),
    "q_sample": lambda: q_sample(x, t, x),
    "q_step": lambda: diffusion.q_step(sched, x, t, x),
    "vdm.ancestral_step": lambda: diffusion.vdm.ancestral_step(
      x, x, x, gamma_t=jnp.float32(1.0), gamma_s=jnp.float32(0.0)
    ),
    "run_sampler num_steps": lambda: diffusion.run_sampler(
      "ddim", jax.random.key(0), lambda x, t: x, sched, (2, 3), 5
    ),
    "run_sampler clip": lambda: diffusion.run_sampler(
      "ddim", jax.random.key(0), lambda x, t: x, sched, (2, 3), None, True
    ),
  }
  for name, call in positional.items():
    with pytest.raises(TypeError, match="positional argument"):
      call()
      pytest.fail(f"{name} ran with positional arrays")
  # By keyword, the swap is visible at the call site and the values are right.
  eps = jnp.ones((2, 3))
  x_t = q_sample(x0=x, t=t, noise=eps)
  np.testing.assert_allclose(
    diffusion.predict_x0_from_eps(sched, x_t=x_t, t=t, eps=eps), x, atol=1e-5
  )
