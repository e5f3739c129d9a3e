"""The forward process q and the prediction targets: how data is noised, and
how eps, x0, v and the score of a noised point determine each other.

With a_t = sqrt(ac_t), s_t = sqrt(1 - ac_t) and x_t = a_t x0 + s_t eps:
  x0    = (x_t - s_t eps) / a_t                  predict_x0_from_eps
  eps   = (x_t - a_t x0) / s_t                   predict_eps_from_x0
  v     = a_t eps - s_t x0 = (eps - s_t x_t) / a_t   (Salimans & Ho 2022)
  eps   = a_t v + s_t x_t                        predict_eps_from_v
  score = grad log q(x_t) = -eps / s_t           score_from_eps
Each takes x_t (B, ...) or one example, t (B,) or a scalar, and returns an
array of the shape of x_t. Their array arguments are keyword-only
(`predict_x0_from_eps(schedule, x_t=..., t=..., eps=...)`): x_t, x0, eps and v
have the same shape, so a swap would run silently.

A model (`ModelFn`) is any batched function `model_fn(x_t, t) -> output`
with x_t of shape (B, ...) and t int32 of shape (B,): a Flax model's `apply`
with bound parameters, an analytic predictor, or a guided combination. Its
output predicts eps, x0 or v (`prediction`); `eps_and_x0` reads both eps and
x0 from it without dividing by sqrt(ac_t) for x0 and v, which is what the
samplers use. An epsilon-predictor (`EpsFn`) is a model with prediction
"eps"; `as_eps_fn` turns an x0- or v-predictor into one (for the bound and
the ODE likelihood; it divides by sqrt(ac_t) and so is undefined at a
zero-terminal-SNR level).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.diffusion._helpers import at, check_integer_timesteps, concrete_or_none
from gen_jax.diffusion.schedules import Schedule

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]
ModelFn = Callable[[Array, Array], Array]
PREDICTIONS = ("eps", "x0", "v")


def check_prediction(prediction: str) -> None:
  """Raises ValueError unless `prediction` is one of PREDICTIONS."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


# ----------------------------------------------------------------------------
# Forward process
# ----------------------------------------------------------------------------


def make_q_sample(schedule: Schedule) -> Callable[..., Array]:
  """Returns q_sample(*, x0, t, noise) -> x_t, a draw from q(x_t | x_0).

  Formula: x_t = sqrt(ac_t) x_0 + sqrt(1 - ac_t) noise, noise ~ N(0, I),
  the closed form of the forward process (Ho et al. 2020, eq. 4).

  The closure is written for one example (x0 of any shape, t a scalar) and
  also accepts a batch (x0 (B, ...), t (B,)); `jax.vmap(q_sample)` over a
  batch gives the same values. Keyword-only: x0 and noise have the same
  shape, so a swap would run silently.
  """

  def q_sample(*, x0, t, noise):
    check_integer_timesteps(t, "q_sample")
    return (
      at(schedule.sqrt_alphas_cumprod, t, x0) * x0
      + at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )

  return q_sample


def q_step(schedule: Schedule, *, x_prev, t, noise) -> Array:
  """One forward step: a draw from q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

  With t = 0, x_prev is the data x_0. Chaining q_step for t = 0..k gives a
  draw from q(x_k | x_0) (`make_q_sample`). Keyword-only (x_prev and noise
  have the same shape).

  Args:
    x_prev: (B, ...) or one example; t: (B,) or scalar; noise: like x_prev.
  """
  check_integer_timesteps(t, "q_step")
  return (
    jnp.sqrt(at(schedule.alphas, t, x_prev)) * x_prev
    + jnp.sqrt(at(schedule.betas, t, x_prev)) * noise
  )


def q_posterior(schedule: Schedule, *, x0, x_t, t) -> tuple[Array, Array, Array]:
  """The forward-process posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7).

  Keyword-only: x0 and x_t have the same shape, so a swap would run silently.

  Args:
    x0, x_t: (B, ...) or one example. t: int (B,) or scalar.

  Returns:
    (mean, variance, log_variance_clipped), each of the shape of x_t:
    mean = coef1_t x_0 + coef2_t x_t, variance = beta~_t.
  """
  check_integer_timesteps(t, "q_posterior")
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


def predict_x0_from_eps(schedule: Schedule, *, x_t, t, eps) -> Array:
  """x_0 implied by x_t and a noise estimate: (x_t - sqrt(1 - ac_t) eps) / sqrt(ac_t)."""
  check_integer_timesteps(t, "predict_x0_from_eps")
  return (x_t - at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / at(
    schedule.sqrt_alphas_cumprod, t, x_t
  )


def predict_eps_from_x0(schedule: Schedule, *, x_t, t, x0) -> Array:
  """The inverse of `predict_x0_from_eps`: (x_t - sqrt(ac_t) x_0) / sqrt(1 - ac_t)."""
  check_integer_timesteps(t, "predict_eps_from_x0")
  return (x_t - at(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / at(
    schedule.sqrt_one_minus_alphas_cumprod, t, x_t
  )


def v_target(schedule: Schedule, *, x0, t, noise) -> Array:
  """The v-prediction target of x_t = q_sample(x0, t, noise):
  v = sqrt(ac_t) noise - sqrt(1 - ac_t) x0 (Salimans & Ho 2022, sec. 4)."""
  check_integer_timesteps(t, "v_target")
  return (
    at(schedule.sqrt_alphas_cumprod, t, x0) * noise
    - at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0
  )


def predict_eps_from_v(schedule: Schedule, *, x_t, t, v) -> Array:
  """eps = sqrt(ac_t) v + sqrt(1 - ac_t) x_t, the inverse of `predict_v_from_eps`."""
  check_integer_timesteps(t, "predict_eps_from_v")
  return (
    at(schedule.sqrt_alphas_cumprod, t, x_t) * v
    + at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
  )


def predict_v_from_eps(schedule: Schedule, *, x_t, t, eps) -> Array:
  """v = (eps - sqrt(1 - ac_t) x_t) / sqrt(ac_t), i.e. sqrt(ac_t) eps - sqrt(1 - ac_t) x0."""
  check_integer_timesteps(t, "predict_v_from_eps")
  return (eps - at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t) / at(
    schedule.sqrt_alphas_cumprod, t, x_t
  )


def score_from_eps(schedule: Schedule, *, x_t, t, eps) -> Array:
  """The score grad_x log q(x_t) implied by eps: -eps / sqrt(1 - ac_t)."""
  check_integer_timesteps(t, "score_from_eps")
  return -eps / at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


def predict_eps_from_score(schedule: Schedule, *, x_t, t, score) -> Array:
  """The inverse of `score_from_eps`: eps = -sqrt(1 - ac_t) score."""
  check_integer_timesteps(t, "predict_eps_from_score")
  return -at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * score


def eps_from_prediction(schedule: Schedule, *, x_t, t, output, prediction: str) -> Array:
  """eps from a model output that predicts `prediction` (eps | x0 | v)."""
  check_prediction(prediction)
  if prediction == "x0":
    return predict_eps_from_x0(schedule, x_t=x_t, t=t, x0=output)
  if prediction == "v":
    return predict_eps_from_v(schedule, x_t=x_t, t=t, v=output)
  return output


def prediction_from_eps(schedule: Schedule, *, x_t, t, eps, prediction: str) -> Array:
  """The inverse of `eps_from_prediction`: eps -> eps | x0 | v."""
  check_prediction(prediction)
  if prediction == "x0":
    return predict_x0_from_eps(schedule, x_t=x_t, t=t, eps=eps)
  if prediction == "v":
    return predict_v_from_eps(schedule, x_t=x_t, t=t, eps=eps)
  return eps


def check_prediction_for_schedule(schedule: Schedule, prediction: str, t, name: str) -> None:
  """ValueError for eps-prediction at a level with alphas_cumprod = 0.

  At a zero-terminal-SNR level (Lin et al. 2024) x_t is pure noise and
  x0 = (x_t - s_t eps) / a_t divides by a_t = 0: an eps-predictor carries no
  information about x0 there. Checked when the schedule and t are concrete
  (outside jit); traced, the result is inf / NaN.
  """
  check_prediction(prediction)
  if prediction != "eps":
    return
  alphas_cumprod = concrete_or_none(schedule.alphas_cumprod)
  levels = concrete_or_none(t)
  if alphas_cumprod is None or levels is None:
    return
  if np.any(alphas_cumprod[np.asarray(levels, np.int64)] == 0):
    raise ValueError(
      f"{name}: prediction='eps' is undefined at a level with alphas_cumprod = 0 (zero "
      "terminal SNR: x0 = (x_t - sqrt(1 - ac_t) eps) / sqrt(ac_t) divides by 0); use a "
      "v- or x0-predictor (prediction='v' or 'x0'), or start below the last level"
    )


def eps_and_x0(schedule: Schedule, *, x_t, t, output, prediction: str) -> tuple[Array, Array]:
  """(eps, x0) implied by a model output that predicts `prediction` at (x_t, t).

  With a_t = sqrt(ac_t), s_t = sqrt(1 - ac_t):
    eps: eps = output,              x0 = (x_t - s_t eps) / a_t
    x0:  x0 = output,               eps = (x_t - a_t x0) / s_t
    v:   eps = a_t v + s_t x_t,     x0 = a_t x_t - s_t v      (Salimans & Ho 2022)
  x0- and v-prediction never divide by a_t, so they stay exact where ac_t = 0
  (zero terminal SNR, Lin et al. 2024); s_t > 0 at every level (beta_0 > 0).
  eps-prediction at a level with ac_t = 0 is refused (ValueError) when the
  schedule and t are concrete (`check_prediction_for_schedule`).

  Args:
    x_t, output: (B, ...) or one example. t: int (B,) or scalar.

  Returns:
    (eps, x0), each of the shape of x_t.
  """
  check_integer_timesteps(t, "eps_and_x0")
  check_prediction_for_schedule(schedule, prediction, t, "eps_and_x0")
  a_t = at(schedule.sqrt_alphas_cumprod, t, x_t)
  s_t = at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
  if prediction == "eps":
    return output, (x_t - s_t * output) / a_t
  if prediction == "x0":
    return (x_t - a_t * output) / s_t, output
  return a_t * output + s_t * x_t, a_t * x_t - s_t * output


def as_eps_fn(
  model_fn: Callable[[Array, Array], Array], schedule: Schedule, prediction: str = "eps"
) -> EpsFn:
  """Turns a batched predictor of eps, x0 or v into an eps_fn(x_t, t).

  eps_fn(x_t, t) = eps_from_prediction(schedule, x_t=x_t, t=t,
  output=model_fn(x_t, t), prediction=prediction), so every sampler, `vlb_term` and `vlb_terms` run on a model
  trained for any target. prediction = "eps" returns model_fn itself.
  """
  check_prediction(prediction)
  if prediction == "eps":
    return model_fn
  return lambda x_t, t: eps_from_prediction(
    schedule, x_t=x_t, t=t, output=model_fn(x_t, t), prediction=prediction
  )
