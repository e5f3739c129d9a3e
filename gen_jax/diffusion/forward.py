"""The forward process q and the prediction targets: how data is noised, and
how eps, x0, v and the score of a noised point determine each other.

With a_t = sqrt(ac_t), s_t = sqrt(1 - ac_t) and x_t = a_t x0 + s_t eps:
  x0    = (x_t - s_t eps) / a_t                  predict_x0_from_eps
  eps   = (x_t - a_t x0) / s_t                   predict_eps_from_x0
  v     = a_t eps - s_t x0 = (eps - s_t x_t) / a_t   (Salimans & Ho 2022)
  eps   = a_t v + s_t x_t                        predict_eps_from_v
  score = grad log q(x_t) = -eps / s_t           score_from_eps
Each takes x_t (B, ...) or one example, t (B,) or a scalar, and returns an
array of the shape of x_t.

An epsilon-predictor (`EpsFn`) is any batched function `eps_fn(x_t, t) ->
eps` with x_t of shape (B, ...) and t int32 of shape (B,): a Flax model's
`apply` with bound parameters, an analytic predictor, or a guided
combination; `as_eps_fn` turns an x0- or v-predictor into one.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gen_jax.diffusion._helpers import at
from gen_jax.diffusion.schedules import Schedule

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]
PREDICTIONS = ("eps", "x0", "v")


def check_prediction(prediction: str) -> None:
  """Raises ValueError unless `prediction` is one of PREDICTIONS."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


# ----------------------------------------------------------------------------
# Forward process
# ----------------------------------------------------------------------------


def make_q_sample(schedule: Schedule) -> Callable[[Array, Array, Array], Array]:
  """Returns q_sample(x0, t, noise) -> x_t, a draw from q(x_t | x_0).

  Formula: x_t = sqrt(ac_t) x_0 + sqrt(1 - ac_t) noise, noise ~ N(0, I),
  the closed form of the forward process (Ho et al. 2020, eq. 4).

  The closure is written for one example (x0 of any shape, t a scalar) and
  also accepts a batch (x0 (B, ...), t (B,)); `jax.vmap(q_sample)` over a
  batch gives the same values.
  """

  def q_sample(x0, t, noise):
    return (
      at(schedule.sqrt_alphas_cumprod, t, x0) * x0
      + at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )

  return q_sample


def q_step(schedule: Schedule, x_prev, t, noise) -> Array:
  """One forward step: a draw from q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

  With t = 0, x_prev is the data x_0. Chaining q_step for t = 0..k gives a
  draw from q(x_k | x_0) (`make_q_sample`).

  Args:
    x_prev: (B, ...) or one example; t: (B,) or scalar; noise: like x_prev.
  """
  return (
    jnp.sqrt(at(schedule.alphas, t, x_prev)) * x_prev
    + jnp.sqrt(at(schedule.betas, t, x_prev)) * noise
  )


def q_posterior(schedule: Schedule, x0, x_t, t) -> tuple[Array, Array, Array]:
  """The forward-process posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7).

  Returns:
    (mean, variance, log_variance_clipped), each of the shape of x_t:
    mean = coef1_t x_0 + coef2_t x_t, variance = beta~_t.
  """
  mean = (
    at(schedule.posterior_mean_coef1, t, x_t) * x0 + at(schedule.posterior_mean_coef2, t, x_t) * x_t
  )
  shape = jnp.shape(x_t)
  variance = jnp.broadcast_to(at(schedule.posterior_variance, t, x_t), shape)
  log_variance = jnp.broadcast_to(at(schedule.posterior_log_variance_clipped, t, x_t), shape)
  return mean, variance, log_variance


# ----------------------------------------------------------------------------
# Prediction targets: eps, x0, v and the score
# ----------------------------------------------------------------------------


def predict_x0_from_eps(schedule: Schedule, x_t, t, eps) -> Array:
  """x_0 implied by x_t and a noise estimate: (x_t - sqrt(1 - ac_t) eps) / sqrt(ac_t)."""
  return (x_t - at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / at(
    schedule.sqrt_alphas_cumprod, t, x_t
  )


def predict_eps_from_x0(schedule: Schedule, x_t, t, x0) -> Array:
  """The inverse of `predict_x0_from_eps`: (x_t - sqrt(ac_t) x_0) / sqrt(1 - ac_t)."""
  return (x_t - at(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / at(
    schedule.sqrt_one_minus_alphas_cumprod, t, x_t
  )


def v_target(schedule: Schedule, x0, t, noise) -> Array:
  """The v-prediction target of x_t = q_sample(x0, t, noise):
  v = sqrt(ac_t) noise - sqrt(1 - ac_t) x0 (Salimans & Ho 2022, sec. 4)."""
  return (
    at(schedule.sqrt_alphas_cumprod, t, x0) * noise
    - at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0
  )


def predict_eps_from_v(schedule: Schedule, x_t, t, v) -> Array:
  """eps = sqrt(ac_t) v + sqrt(1 - ac_t) x_t, the inverse of `predict_v_from_eps`."""
  return (
    at(schedule.sqrt_alphas_cumprod, t, x_t) * v
    + at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
  )


def predict_v_from_eps(schedule: Schedule, x_t, t, eps) -> Array:
  """v = (eps - sqrt(1 - ac_t) x_t) / sqrt(ac_t), i.e. sqrt(ac_t) eps - sqrt(1 - ac_t) x0."""
  return (eps - at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t) / at(
    schedule.sqrt_alphas_cumprod, t, x_t
  )


def score_from_eps(schedule: Schedule, x_t, t, eps) -> Array:
  """The score grad_x log q(x_t) implied by eps: -eps / sqrt(1 - ac_t)."""
  return -eps / at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


def predict_eps_from_score(schedule: Schedule, x_t, t, score) -> Array:
  """The inverse of `score_from_eps`: eps = -sqrt(1 - ac_t) score."""
  return -at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * score


def eps_from_prediction(schedule: Schedule, x_t, t, pred, prediction: str) -> Array:
  """eps from a model output `pred` that predicts `prediction` (eps | x0 | v)."""
  check_prediction(prediction)
  if prediction == "x0":
    return predict_eps_from_x0(schedule, x_t, t, pred)
  if prediction == "v":
    return predict_eps_from_v(schedule, x_t, t, pred)
  return pred


def prediction_from_eps(schedule: Schedule, x_t, t, eps, prediction: str) -> Array:
  """The inverse of `eps_from_prediction`: eps -> eps | x0 | v."""
  check_prediction(prediction)
  if prediction == "x0":
    return predict_x0_from_eps(schedule, x_t, t, eps)
  if prediction == "v":
    return predict_v_from_eps(schedule, x_t, t, eps)
  return eps


def as_eps_fn(
  model_fn: Callable[[Array, Array], Array], schedule: Schedule, prediction: str = "eps"
) -> EpsFn:
  """Turns a batched predictor of eps, x0 or v into an eps_fn(x_t, t).

  eps_fn(x_t, t) = eps_from_prediction(schedule, x_t, t, model_fn(x_t, t),
  prediction), so every sampler, `vlb_term` and `vlb_terms` run on a model
  trained for any target. prediction = "eps" returns model_fn itself.
  """
  check_prediction(prediction)
  if prediction == "eps":
    return model_fn
  return lambda x_t, t: eps_from_prediction(schedule, x_t, t, model_fn(x_t, t), prediction)
