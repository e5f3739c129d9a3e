"""Tests for the prediction targets of gen_jax/diffusion.py (eps, x0, v, score),
their losses, `as_eps_fn` and `guided_eps_fn`, and DiffusionModel's
`prediction` field.

References are float64 numpy written from the definitions (x_t = a x0 + s
eps, v = a eps - s x0, score = grad log q(x_t)) and the Gaussian-mixture
oracle, whose posterior mean of x0 is derived here independently of its eps.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion, models
from tests import oracles
from tests.test_diffusion import GMM2, np_abar, np_linear_betas

F32 = jnp.float32
BETAS = np_linear_betas(1000)
ABAR = np_abar(BETAS)


@pytest.fixture(scope="module")
def sched():
  return diffusion.make_schedule(diffusion.linear_betas(1000))


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
    "v_target": diffusion.v_target(sched, x0, t, eps),
    "predict_eps_from_v": diffusion.predict_eps_from_v(sched, x_t, t, v),
    "predict_v_from_eps": diffusion.predict_v_from_eps(sched, x_t, t, eps),
    "predict_x0_from_eps": diffusion.predict_x0_from_eps(sched, x_t, t, eps),
    "predict_eps_from_x0": diffusion.predict_eps_from_x0(sched, x_t, t, x0),
    "score_from_eps": diffusion.score_from_eps(sched, x_t, t, eps),
    "predict_eps_from_score": diffusion.predict_eps_from_score(sched, x_t, t, -eps / s),
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
      diffusion.prediction_from_eps(sched, x_t, t, eps, prediction), target, rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
      diffusion.eps_from_prediction(sched, x_t, t, target, prediction), eps, rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_round_trip_float32(sched, prediction):
  """eps -> target -> eps in float32, jitted and vmapped per example.
  x0 round trips lose digits where sqrt(ac) is small (t near T), v where
  sqrt(1 - ac) is (t near 0): tolerances follow the conditioning."""
  x0, eps, t, a, s = _inputs(batch=64, seed=1)
  x_t = jnp.asarray(a * x0 + s * eps, F32)
  eps32, t32 = jnp.asarray(eps, F32), jnp.asarray(t)
  there = jax.jit(lambda *args: diffusion.prediction_from_eps(sched, *args, prediction))(
    x_t, t32, eps32
  )
  back = jax.jit(lambda *args: diffusion.eps_from_prediction(sched, *args, prediction))(
    x_t, t32, there
  )
  cond = {"eps": 1.0, "x0": a / s, "v": 1 / a}[prediction] + 1.0
  tolerance = np.broadcast_to(4e-6 * cond, eps.shape)
  np.testing.assert_array_less(np.abs(back - eps32), tolerance)
  # One example at a time with a scalar t gives the batched values.
  one = jax.jit(
    jax.vmap(lambda x, tt, e: diffusion.prediction_from_eps(sched, x, tt, e, prediction))
  )(x_t, t32, eps32)
  target_cond = {"eps": 1.0, "x0": 1 / a, "v": 1 / a}[prediction] + 1.0
  np.testing.assert_array_less(np.abs(one - there), np.broadcast_to(4e-6 * target_cond, eps.shape))


def test_score_is_gradient_of_log_density(sched):
  """score_from_eps(oracle eps) = grad log p_t, p_t the noised mixture
  (central finite differences of its closed-form log-density)."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal((6, 2))
  t = np.array([0, 3, 50, 300, 700, 999])
  eps = oracles.gmm_eps_fn(sched, **GMM2)(jnp.asarray(x, F32), jnp.asarray(t))
  score = np.asarray(diffusion.score_from_eps(sched, jnp.asarray(x, F32), jnp.asarray(t), eps))
  for i, ti in enumerate(t):
    a = ABAR[ti]
    grad = oracles.gmm_noised_score_fd(x[i], a, **GMM2)
    np.testing.assert_allclose(score[i], grad, rtol=2e-3, atol=2e-3 / math.sqrt(1 - a))


def test_bad_prediction_raises(sched):
  x = jnp.zeros((2, 3))
  t = jnp.array([1, 2])
  for call in (
    lambda: diffusion.as_eps_fn(lambda x, t: x, sched, "score"),
    lambda: diffusion.eps_from_prediction(sched, x, t, x, "noise"),
    lambda: diffusion.prediction_from_eps(sched, x, t, x, "x_0"),
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
  x0, _ = oracles.gmm_sample(rng, len(t), **GMM2)
  a = ABAR[t][:, None]
  x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape)
  ref = oracles.gmm_eps_np(x_t, ABAR[t], **GMM2)
  args = (jnp.asarray(x_t, F32), jnp.asarray(t))
  for prediction, fn in (("x0", x0_fn), ("v", v_fn)):
    eps = jax.jit(diffusion.as_eps_fn(fn, sched, prediction))(*args)
    np.testing.assert_allclose(eps, ref, rtol=2e-3, atol=2e-3, err_msg=prediction)
  assert diffusion.as_eps_fn(x0_fn, sched, "eps") is x0_fn


# ----------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------


def _np_loss(key, x0, prediction, pred_np):
  """float64 reference: t and noise drawn as documented (split(key): t, noise)."""
  t_key, noise_key = jax.random.split(key)
  t = np.asarray(jax.random.randint(t_key, (x0.shape[0],), 0, 1000))
  noise = np.asarray(jax.random.normal(noise_key, x0.shape, F32), np.float64)
  x0 = np.asarray(x0, np.float64)
  a = np.sqrt(ABAR[t]).reshape((-1,) + (1,) * (x0.ndim - 1))
  s = np.sqrt(1 - ABAR[t]).reshape(a.shape)
  x_t = a * x0 + s * noise
  target = {"eps": noise, "x0": x0, "v": a * noise - s * x0}[prediction]
  err = (target - pred_np(x_t, t)) ** 2
  return err.reshape(len(x0), -1).mean(1), t, x_t, noise


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_simple_loss_each_target_vs_numpy(sched, prediction):
  x0 = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (64, 2, 3)), F32)
  key = jax.random.key(5)
  # A t-dependent predictor that is wrong by a known amount.
  model_fn = lambda x, t: 0.7 * x + 1e-3 * t.reshape((-1,) + (1,) * (x.ndim - 1))
  pred_np = lambda x, t: 0.7 * x + 1e-3 * t.reshape((-1,) + (1,) * (x.ndim - 1))
  got = jax.jit(lambda k, x: diffusion.simple_loss(k, model_fn, sched, x, prediction=prediction))(
    key, x0
  )
  ref, *_ = _np_loss(key, x0, prediction, pred_np)
  assert got.shape == (64,)
  np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
  if prediction == "eps":  # the default is the old L_simple
    default = jax.jit(lambda k, x: diffusion.simple_loss(k, model_fn, sched, x))
    np.testing.assert_allclose(default(key, x0), got, rtol=1e-6)


def test_loss_weighting_relations(sched):
  """For the same underlying eps estimate, per example:
  x0-MSE = eps-MSE / SNR_t and v-MSE = eps-MSE / ac_t (the docstring's
  SNR weightings), SNR_t = ac_t / (1 - ac_t)."""
  x0 = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, (256, 4)), F32)
  key = jax.random.key(7)
  eps_hat = lambda x, t: 0.5 * jnp.sin(3 * x)
  losses, t = {}, None
  for prediction in ("eps", "x0", "v"):
    model_fn = lambda x, tt, p=prediction: diffusion.prediction_from_eps(
      sched, x, tt, eps_hat(x, tt), p
    )
    losses[prediction] = np.asarray(
      diffusion.simple_loss(key, model_fn, sched, x0, prediction), np.float64
    )
  t = np.asarray(jax.random.randint(jax.random.split(key)[0], (256,), 0, 1000))
  snr = ABAR[t] / (1 - ABAR[t])
  keep = t < 900  # x0 from eps is ill-conditioned where sqrt(ac) ~ 0.01
  np.testing.assert_allclose(losses["x0"][keep], (losses["eps"] / snr)[keep], rtol=1e-3)
  np.testing.assert_allclose(losses["v"][keep], (losses["eps"] / ABAR[t])[keep], rtol=1e-3)


# ----------------------------------------------------------------------------
# Guidance
# ----------------------------------------------------------------------------


def test_guided_eps_fn_formula():
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.standard_normal((5, 3)), F32)
  t = jnp.arange(5)
  cond = lambda x, t: jnp.sin(x) + 0.1 * t[:, None]
  uncond = lambda x, t: jnp.cos(x)
  for w in (0.0, 1.0, 3.5):
    got = jax.jit(lambda x, t, w: diffusion.guided_eps_fn(cond, uncond, w)(x, t))(x, t, w)
    xn, tn = np.asarray(x, np.float64), np.arange(5)[:, None]
    ref = (1 + w) * (np.sin(xn) + 0.1 * tn) - w * np.cos(xn)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    diffusion.guided_eps_fn(cond, uncond, 0.0)(x, t), cond(x, t), rtol=1e-7
  )


# ----------------------------------------------------------------------------
# DiffusionModel.prediction
# ----------------------------------------------------------------------------


class Zeros(nn.Module):
  """A network that predicts 0 (plus a parameter so init has something)."""

  @nn.compact
  def __call__(self, x, t, train=False):
    del t, train
    return 0.0 * self.param("b", nn.initializers.zeros, ()) + jnp.zeros_like(x)


def test_model_trains_and_samples_its_prediction():
  cfg = models.diffusion_config(num_timesteps=50, clip=False, prediction="x0")
  model = models.make_diffusion_model(cfg, Zeros(), (3,))
  assert model.prediction == "x0"
  params = model.init(jax.random.key(0))
  x = jnp.asarray(np.random.default_rng(9).uniform(-1, 1, (32, 3)), F32)
  # Predicting x0 = 0: the x0-loss is mean(x0^2) whatever t and the noise.
  loss, _ = model.loss(params, {"x": x}, jax.random.key(1))
  np.testing.assert_allclose(loss, np.mean(np.asarray(x, np.float64) ** 2), rtol=1e-5)
  # Its eps_fn is the x0 = 0 predictor converted: eps = x_t / sqrt(1 - ac).
  t = jnp.array([0, 10, 49] * 10 + [5, 6])
  eps = model.eps_fn(params)(x, t)
  ref = np.asarray(x) / np.sqrt(1 - np_abar(np_linear_betas(50))[np.asarray(t)])[:, None]
  np.testing.assert_allclose(eps, ref, rtol=1e-5)
  # The x0 = 0 model samples 0 with a deterministic sampler.
  out = model.sample(params, jax.random.key(2), 4, sampler="dpm++2m", num_steps=5)
  np.testing.assert_allclose(out, 0.0, atol=1e-5)
  evaluated = model.evaluate(params, {"x": x}, jax.random.key(3))
  np.testing.assert_allclose(evaluated["loss"], np.mean(np.asarray(x) ** 2, 1), rtol=1e-5)


def test_config_prediction_checked():
  cfg = models.diffusion_config(prediction="noise")
  with pytest.raises(ValueError, match="--config.diffusion.prediction"):
    models.make_diffusion_model(cfg, Zeros(), (3,))
  assert models.diffusion_config().prediction == "eps"
