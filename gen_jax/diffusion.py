"""Gaussian diffusion (DDPM, Ho et al. 2020) and its samplers, as pure functions.

Conventions:
  * t is 0-based: t = 0 is the first noising step (the paper's x_1) and
    t = T - 1 the last; x_0 is the data. `alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)`
    so q(x_t | x_0) = N(sqrt(alphas_cumprod[t]) x_0, (1 - alphas_cumprod[t]) I)
    is the distribution of the paper's x_{t+1}.
  * An epsilon-predictor is any batched function `eps_fn(x_t, t) -> eps` with
    x_t of shape (B, ...) and t int32 of shape (B,): a Flax model's `apply`
    with bound parameters, an analytic predictor, or a guided combination.
  * Per-example values are returned with shape (B,); "data dimensions" are the
    axes after the batch axis. Likelihoods are in nats unless the name says
    bits per dimension.
  * The schedule is built once on the host (float64 numpy, then cast to the
    default float dtype: float32, or float64 under `jax_enable_x64`) and
    passed to jitted functions as an ordinary pytree argument.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import distributions

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]


# ----------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------


def linear_betas(
  num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
  """The DDPM schedule: betas linear from beta_start to beta_end.

  Returns:
    float64 numpy array of shape (num_timesteps,).
  """
  _check_num_timesteps(num_timesteps)
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """The cosine schedule of Nichol & Dhariwal (2021), eq. 17.

  alphas_cumprod(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2),
  beta_t = min(1 - alphas_cumprod(t + 1) / alphas_cumprod(t), max_beta).

  Returns:
    float64 numpy array of shape (num_timesteps,).
  """
  _check_num_timesteps(num_timesteps)
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
  alphas_cumprod = f / f[0]
  betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
  return np.minimum(betas, max_beta)


def _check_num_timesteps(num_timesteps):
  if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")


class Schedule(NamedTuple):
  """Everything derived from the betas, each of shape (T,). A pytree."""

  betas: Array
  alphas: Array  # 1 - beta_t
  alphas_cumprod: Array  # prod_{s<=t} alpha_s
  alphas_cumprod_prev: Array  # alphas_cumprod[t-1], 1 at t = 0
  sqrt_alphas_cumprod: Array
  sqrt_one_minus_alphas_cumprod: Array
  posterior_variance: Array  # beta~_t = beta_t (1 - ac_prev) / (1 - ac)
  posterior_log_variance_clipped: Array  # log beta~_t, with beta~_0 := beta~_1
  posterior_mean_coef1: Array  # multiplies x_0
  posterior_mean_coef2: Array  # multiplies x_t

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def make_schedule(betas) -> Schedule:
  """Precomputes the schedule's quantities (Ho et al. 2020, eqs. 4, 6, 7).

  posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t I) with
    beta~_t = beta_t (1 - ac_{t-1}) / (1 - ac_t),
    coef1 = beta_t sqrt(ac_{t-1}) / (1 - ac_t),
    coef2 = (1 - ac_{t-1}) sqrt(alpha_t) / (1 - ac_t),
  where ac = alphas_cumprod. beta~_0 = 0 (x_0 is known given the paper's x_1),
  so its log is clipped to log beta~_1, as in the DDPM code.

  Args:
    betas: (T,) values in (0, 1]. Computed in float64 on the host, then cast
      to the default float dtype.

  Returns:
    A Schedule (an immutable pytree, usable as a jit argument).
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size < 1:
    raise ValueError(f"betas must be a non-empty vector, got shape {betas.shape}")
  if not (np.all(betas > 0) and np.all(betas <= 1)):
    raise ValueError("betas must lie in (0, 1]")
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
  clip_from = posterior_variance[1] if betas.size > 1 else betas[0]
  posterior_log_variance_clipped = np.log(np.append(clip_from, posterior_variance[1:]))
  dtype = jnp.result_type(float)
  as_array = lambda a: jnp.asarray(a, dtype=dtype)
  return Schedule(
    betas=as_array(betas),
    alphas=as_array(alphas),
    alphas_cumprod=as_array(alphas_cumprod),
    alphas_cumprod_prev=as_array(alphas_cumprod_prev),
    sqrt_alphas_cumprod=as_array(np.sqrt(alphas_cumprod)),
    sqrt_one_minus_alphas_cumprod=as_array(np.sqrt(1 - alphas_cumprod)),
    posterior_variance=as_array(posterior_variance),
    posterior_log_variance_clipped=as_array(posterior_log_variance_clipped),
    posterior_mean_coef1=as_array(betas * np.sqrt(alphas_cumprod_prev) / (1 - alphas_cumprod)),
    posterior_mean_coef2=as_array(
      (1 - alphas_cumprod_prev) * np.sqrt(alphas) / (1 - alphas_cumprod)
    ),
  )


def _at(values, t, x) -> Array:
  """values[t] reshaped to broadcast against x: t of shape (B,) or ()."""
  t = jnp.asarray(t)
  picked = values[t]
  return picked.reshape(t.shape + (1,) * (jnp.ndim(x) - t.ndim))


def _sum_data_dims(values, batch_ndim: int) -> Array:
  return jnp.sum(values, axis=tuple(range(batch_ndim, values.ndim)))


def _mean_data_dims(values, batch_ndim: int) -> Array:
  return jnp.mean(values, axis=tuple(range(batch_ndim, values.ndim)))


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
      _at(schedule.sqrt_alphas_cumprod, t, x0) * x0
      + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
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
    jnp.sqrt(_at(schedule.alphas, t, x_prev)) * x_prev
    + jnp.sqrt(_at(schedule.betas, t, x_prev)) * noise
  )


def q_posterior(schedule: Schedule, x0, x_t, t) -> tuple[Array, Array, Array]:
  """The forward-process posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7).

  Returns:
    (mean, variance, log_variance_clipped), each of the shape of x_t:
    mean = coef1_t x_0 + coef2_t x_t, variance = beta~_t.
  """
  mean = (
    _at(schedule.posterior_mean_coef1, t, x_t) * x0
    + _at(schedule.posterior_mean_coef2, t, x_t) * x_t
  )
  shape = jnp.shape(x_t)
  variance = jnp.broadcast_to(_at(schedule.posterior_variance, t, x_t), shape)
  log_variance = jnp.broadcast_to(_at(schedule.posterior_log_variance_clipped, t, x_t), shape)
  return mean, variance, log_variance


def predict_x0_from_eps(schedule: Schedule, x_t, t, eps) -> Array:
  """x_0 implied by x_t and a noise estimate: (x_t - sqrt(1 - ac_t) eps) / sqrt(ac_t)."""
  return (x_t - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _at(
    schedule.sqrt_alphas_cumprod, t, x_t
  )


def predict_eps_from_x0(schedule: Schedule, x_t, t, x0) -> Array:
  """The inverse of `predict_x0_from_eps`: (x_t - sqrt(ac_t) x_0) / sqrt(1 - ac_t)."""
  return (x_t - _at(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / _at(
    schedule.sqrt_one_minus_alphas_cumprod, t, x_t
  )


# ----------------------------------------------------------------------------
# Prediction targets: eps, x0, v and the score
# ----------------------------------------------------------------------------
#
# With a_t = sqrt(ac_t), s_t = sqrt(1 - ac_t) and x_t = a_t x0 + s_t eps:
#   x0    = (x_t - s_t eps) / a_t                  predict_x0_from_eps
#   eps   = (x_t - a_t x0) / s_t                   predict_eps_from_x0
#   v     = a_t eps - s_t x0 = (eps - s_t x_t) / a_t   (Salimans & Ho 2022)
#   eps   = a_t v + s_t x_t                        predict_eps_from_v
#   score = grad log q(x_t) = -eps / s_t           score_from_eps
# Each takes x_t (B, ...) or one example, t (B,) or a scalar, and returns an
# array of the shape of x_t.

PREDICTIONS = ("eps", "x0", "v")


def _check_prediction(prediction):
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def v_target(schedule: Schedule, x0, t, noise) -> Array:
  """The v-prediction target of x_t = q_sample(x0, t, noise):
  v = sqrt(ac_t) noise - sqrt(1 - ac_t) x0 (Salimans & Ho 2022, sec. 4)."""
  return (
    _at(schedule.sqrt_alphas_cumprod, t, x0) * noise
    - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0
  )


def predict_eps_from_v(schedule: Schedule, x_t, t, v) -> Array:
  """eps = sqrt(ac_t) v + sqrt(1 - ac_t) x_t, the inverse of `predict_v_from_eps`."""
  return (
    _at(schedule.sqrt_alphas_cumprod, t, x_t) * v
    + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
  )


def predict_v_from_eps(schedule: Schedule, x_t, t, eps) -> Array:
  """v = (eps - sqrt(1 - ac_t) x_t) / sqrt(ac_t), i.e. sqrt(ac_t) eps - sqrt(1 - ac_t) x0."""
  return (eps - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t) / _at(
    schedule.sqrt_alphas_cumprod, t, x_t
  )


def score_from_eps(schedule: Schedule, x_t, t, eps) -> Array:
  """The score grad_x log q(x_t) implied by eps: -eps / sqrt(1 - ac_t)."""
  return -eps / _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


def predict_eps_from_score(schedule: Schedule, x_t, t, score) -> Array:
  """The inverse of `score_from_eps`: eps = -sqrt(1 - ac_t) score."""
  return -_at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * score


def eps_from_prediction(schedule: Schedule, x_t, t, pred, prediction: str) -> Array:
  """eps from a model output `pred` that predicts `prediction` (eps | x0 | v)."""
  _check_prediction(prediction)
  if prediction == "x0":
    return predict_eps_from_x0(schedule, x_t, t, pred)
  if prediction == "v":
    return predict_eps_from_v(schedule, x_t, t, pred)
  return pred


def prediction_from_eps(schedule: Schedule, x_t, t, eps, prediction: str) -> Array:
  """The inverse of `eps_from_prediction`: eps -> eps | x0 | v."""
  _check_prediction(prediction)
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
  _check_prediction(prediction)
  if prediction == "eps":
    return model_fn
  return lambda x_t, t: eps_from_prediction(schedule, x_t, t, model_fn(x_t, t), prediction)


def guided_eps_fn(cond_eps_fn: EpsFn, uncond_eps_fn: EpsFn, guidance_scale) -> EpsFn:
  """Classifier-free guidance (Ho & Salimans 2022, eq. 6) as an eps_fn.

  eps(x_t, t) = (1 + w) cond_eps_fn(x_t, t) - w uncond_eps_fn(x_t, t),
  w = guidance_scale (a float or a scalar array; w = 0 is the conditional
  model, w > 0 sharpens towards the condition). Both functions are batched
  eps_fns of the same x_t and t (for a class-conditional network: the same
  network with the class label and with the null label bound).
  """

  def eps_fn(x_t, t):
    cond = cond_eps_fn(x_t, t)
    return cond + guidance_scale * (cond - uncond_eps_fn(x_t, t))

  return eps_fn


# ----------------------------------------------------------------------------
# Reverse process
# ----------------------------------------------------------------------------

VARIANCES = ("small", "large")


def p_mean_variance(
  schedule: Schedule, x_t, t, eps, variance: str = "small", clip: bool = False
) -> tuple[Array, Array, Array]:
  """The reverse step p(x_{t-1} | x_t) = N(mean, exp(log_variance)) from eps.

  mean = posterior mean at the predicted x_0 (Ho et al. 2020, eq. 11);
  variance "small" is beta~_t (the posterior's, log clipped at t = 0),
  "large" is beta_t (with beta~_1 at t = 0, as the DDPM code does, so the
  decoder's scale stays finite).

  Returns:
    (mean, log_variance, x0_pred), each of the shape of x_t.
  """
  _check_variance(variance)
  x0_pred = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip:
    x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
  mean, _, log_small = q_posterior(schedule, x0_pred, x_t, t)
  if variance == "small":
    log_variance = log_small
  else:
    log_large = jnp.log(jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]]))
    log_variance = jnp.broadcast_to(_at(log_large, t, x_t), jnp.shape(x_t))
  return mean, log_variance, x0_pred


def _check_variance(variance):
  if variance not in VARIANCES:
    raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


# ----------------------------------------------------------------------------
# Losses and the variational bound
# ----------------------------------------------------------------------------


def simple_loss(key, model_fn, schedule: Schedule, x0, prediction: str = "eps") -> Array:
  """The denoising loss for an eps, x0 or v predictor, per example.

  t ~ Uniform{0, ..., T-1} (from split(key)[0]), noise ~ N(0, I) (from
  split(key)[1]), x_t = q_sample(x0, t, noise), pred = model_fn(x_t, t);
  loss = mean over data dimensions of (target - pred)^2 with
    eps: target = noise: L_simple (Ho et al. 2020, eq. 14);
    x0:  target = x0;   since x0 - x0_hat = -(eps - eps_hat) / sqrt(SNR_t),
         this is the eps-MSE weighted by 1 / SNR_t;
    v:   target = sqrt(ac_t) noise - sqrt(1 - ac_t) x0 (`v_target`);
         v - v_hat = (eps - eps_hat) / sqrt(ac_t), so the eps-MSE weighted by
         1 / ac_t = 1 + 1 / SNR_t, i.e. the x0-MSE weighted by 1 + SNR_t
         (Salimans & Ho 2022, "SNR+1" weighting),
  where SNR_t = ac_t / (1 - ac_t).

  Args:
    key: PRNG key for t and the noise.
    model_fn: batched (x_t, t) -> prediction of `prediction`.
    x0: data, (B, ...).
    prediction: "eps", "x0" or "v".

  Returns:
    (B,) losses.
  """
  _check_prediction(prediction)
  t_key, noise_key = jax.random.split(key)
  batch = x0.shape[0]
  t = jax.random.randint(t_key, (batch,), 0, schedule.num_timesteps)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  x_t = make_q_sample(schedule)(x0, t, noise)
  if prediction == "eps":
    target = noise
  elif prediction == "x0":
    target = x0
  else:
    target = v_target(schedule, x0, t, noise)
  return _mean_data_dims(jnp.square(target - model_fn(x_t, t)), 1)


def vlb_term(
  schedule: Schedule, x0, x_t, t, eps_pred, variance: str = "small", clip: bool = False
) -> Array:
  """One term of the variational bound, per example, in nats.

  For t > 0: L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), summed over
  data dimensions. For t = 0: L_0 = -log p(x_0 | x_1) under the discretized
  Gaussian decoder with the reverse step's mean and scale (Ho et al. 2020,
  eqs. 5 and 13); x0 must then lie on the 8-bit grid in [-1, 1].

  Args:
    x0, x_t, eps_pred: (B, ...); t: (B,) int.
    variance: the reverse process' variance, "small" or "large".
    clip: clip the predicted x_0 to [-1, 1] in the reverse mean.

  Returns:
    (B,) values in nats.
  """
  batch_ndim = jnp.ndim(t)
  true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
  model_mean, model_log_var, _ = p_mean_variance(schedule, x_t, t, eps_pred, variance, clip)
  kl = _sum_data_dims(
    distributions.normal_kl(true_mean, true_log_var, model_mean, model_log_var), batch_ndim
  )
  decoder_nll = -_sum_data_dims(
    distributions.discretized_gaussian_log_prob(x0, model_mean, 0.5 * model_log_var), batch_ndim
  )
  return jnp.where(jnp.asarray(t) == 0, decoder_nll, kl)


def prior_kl(schedule: Schedule, x0) -> Array:
  """KL(q(x_T | x_0) || N(0, I)), summed over data dimensions.

  Args:
    x0: (B, ...).

  Returns:
    (B,) values in nats.
  """
  last = schedule.num_timesteps - 1
  mean = schedule.sqrt_alphas_cumprod[last] * x0
  log_var = jnp.log1p(-schedule.alphas_cumprod[last]) * jnp.ones_like(x0)
  return _sum_data_dims(distributions.standard_normal_kl(mean, log_var), 1)


class VLBTerms(NamedTuple):
  """The variational bound's terms, per example, in nats."""

  terms: Array  # (B, T): terms[:, t] = vlb_term at t (t = 0: the decoder)
  prior: Array  # (B,): KL(q(x_T | x_0) || N(0, I))
  total: Array  # (B,): terms.sum(-1) + prior


def vlb_terms(
  key, eps_fn: EpsFn, schedule: Schedule, x0, variance: str = "small", clip: bool = False
) -> VLBTerms:
  """Every term of the variational bound at one x_t draw per t.

  -log p(x_0) <= L = L_prior + sum_{t>0} L_t + L_0, each L_t estimated with
  one x_t ~ q(x_t | x_0) (noise from fold_in(key, t)); one compiled
  `lax.scan` over t, T network calls of batch B.

  Args:
    x0: (B, ...) data on the 8-bit grid in [-1, 1].
  """
  q_sample = make_q_sample(schedule)
  batch = x0.shape[0]

  def body(_, t):
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
    t_batch = jnp.full((batch,), t, jnp.int32)
    x_t = q_sample(x0, t_batch, noise)
    term = vlb_term(schedule, x0, x_t, t_batch, eps_fn(x_t, t_batch), variance, clip)
    return None, term

  _, terms = jax.lax.scan(body, None, jnp.arange(schedule.num_timesteps))
  terms = terms.T
  prior = prior_kl(schedule, x0)
  return VLBTerms(terms=terms, prior=prior, total=terms.sum(-1) + prior)


def vlb_bits_per_dim(
  key, eps_fn: EpsFn, schedule: Schedule, x0, variance: str = "small", clip: bool = False
) -> Array:
  """The full variational bound in bits per dimension, per example.

  bits/dim = (L_prior + sum_t L_t) / (D ln 2), D the number of data
  dimensions (Ho et al. 2020, Table 2). See `vlb_terms`.

  Returns:
    (B,) upper bounds on -log2 p(x_0) / D.
  """
  num_dims = math.prod(x0.shape[1:])
  return vlb_terms(key, eps_fn, schedule, x0, variance, clip).total / (num_dims * math.log(2.0))


# ----------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------


def ddpm_sample(
  key, eps_fn: EpsFn, schedule: Schedule, shape, variance: str = "small", clip: bool = False
) -> Array:
  """Ancestral sampling, x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t).

  Algorithm 2 of Ho et al. (2020), T network calls in one compiled
  `lax.scan`; the last step returns the mean (no noise). x_T comes from
  split(key)[0] and the noise of step t from fold_in(split(key)[1], t).

  Args:
    shape: (B, ...), the shape of the samples.
    variance: "small" (beta~_t) or "large" (beta_t).
    clip: clip the predicted x_0 to [-1, 1] at every step.

  Returns:
    Samples of `shape`.
  """
  _check_variance(variance)
  shape = tuple(shape)
  init_key, step_key = jax.random.split(key)
  x_T = jax.random.normal(init_key, shape, jnp.result_type(float))

  def body(x, t):
    t_batch = jnp.full((shape[0],), t, jnp.int32)
    mean, log_var, _ = p_mean_variance(schedule, x, t_batch, eps_fn(x, t_batch), variance, clip)
    noise = jax.random.normal(jax.random.fold_in(step_key, t), shape, x.dtype)
    x = mean + jnp.where(t > 0, jnp.exp(0.5 * log_var), 0.0) * noise
    return x, None

  timesteps = jnp.arange(schedule.num_timesteps - 1, -1, -1)
  x_0, _ = jax.lax.scan(body, x_T, timesteps)
  return x_0


def _check_num_steps(num_steps, low: int, high: int, name: str = "num_steps"):
  if (
    not isinstance(num_steps, (int, np.integer))
    or isinstance(num_steps, bool)
    or not low <= num_steps <= high
  ):
    raise ValueError(f"{name} must be an integer in [{low}, {high}], got {num_steps!r}")


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """num_steps distinct timesteps from T - 1 down to 0, evenly spaced."""
  _check_num_steps(num_steps, 1, num_timesteps)
  if num_steps == 1:
    return np.array([num_timesteps - 1], dtype=np.int32)
  return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)


def ddim_sample(
  key,
  eps_fn: EpsFn,
  schedule: Schedule,
  shape,
  num_steps: int,
  eta: float = 0.0,
  clip: bool = False,
) -> Array:
  """DDIM sampling (Song et al. 2021) on num_steps timesteps from T-1 to 0.

  From t to the next timestep s (ac_s = 1 after the last step):
    x0 = predict_x0_from_eps(x_t, eps),
    sigma = eta sqrt((1 - ac_s) / (1 - ac_t)) sqrt(1 - ac_t / ac_s),
    x_s = sqrt(ac_s) x0 + sqrt(1 - ac_s - sigma^2) eps + sigma z.
  eta = 0 is the deterministic sampler (the probability-flow ODE's
  discretisation); eta = 1 matches ancestral sampling's marginals.

  Args:
    shape: (B, ...). num_steps: in [1, T]. eta >= 0.

  Returns:
    Samples of `shape` (the final x0 prediction).
  """
  shape = tuple(shape)
  timesteps = ddim_timesteps(schedule.num_timesteps, num_steps)
  next_timesteps = np.append(timesteps[1:], -1)
  ac = schedule.alphas_cumprod
  ac_next = jnp.where(next_timesteps >= 0, ac[np.maximum(next_timesteps, 0)], 1.0)
  init_key, step_key = jax.random.split(key)
  x_T = jax.random.normal(init_key, shape, jnp.result_type(float))

  def body(x, inputs):
    i, t, a_next = inputs
    t_batch = jnp.full((shape[0],), t, jnp.int32)
    eps = eps_fn(x, t_batch)
    a_t = ac[t]
    x0 = predict_x0_from_eps(schedule, x, t_batch, eps)
    if clip:
      x0 = jnp.clip(x0, -1.0, 1.0)
      # Re-derive eps from the clipped x0 so the step stays consistent.
      eps = predict_eps_from_x0(schedule, x, t_batch, x0)
    sigma = eta * jnp.sqrt((1 - a_next) / (1 - a_t) * (1 - a_t / a_next))
    noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, x.dtype)
    x = (
      jnp.sqrt(a_next) * x0
      + jnp.sqrt(jnp.maximum(1 - a_next - sigma**2, 0.0)) * eps
      + sigma * noise
    )
    return x, None

  steps = (jnp.arange(len(timesteps)), jnp.asarray(timesteps), ac_next)
  x_0, _ = jax.lax.scan(body, x_T, steps)
  return x_0


# ----------------------------------------------------------------------------
# Respaced DDPM (Nichol & Dhariwal 2021, improved-diffusion's respacing)
# ----------------------------------------------------------------------------


def respace_schedule(schedule: Schedule, timesteps) -> Schedule:
  """The schedule of a sub-sequence of timesteps, as improved-diffusion respaces.

  For kept timesteps t_0 < t_1 < ... < t_{K-1} (original indices), the new
  schedule has K steps with the same noise levels, alphas_cumprod'[i] =
  ac[t_i], so beta'_i = 1 - ac[t_i] / ac[t_{i-1}] (beta'_0 = 1 - ac[t_0]).
  beta'_i is computed in float64 on the host as -expm1(sum of
  log1p(-beta_s) over t_{i-1} < s <= t_i), which keeps every digit when the
  kept steps are consecutive (then beta'_i = beta_{t_i} exactly).

  The schedule must be concrete (built by `make_schedule`, closed over
  rather than passed as a traced jit argument): respacing is host work.

  Args:
    schedule: the original schedule (T steps).
    timesteps: K distinct original timesteps in [0, T), any order.

  Returns:
    A Schedule of K steps; new index i stands for original timestep
    sorted(timesteps)[i].
  """
  try:
    betas = np.asarray(schedule.betas, dtype=np.float64)
  except jax.errors.TracerArrayConversionError as e:
    raise ValueError(
      "respace_schedule needs a concrete schedule: close over "
      "it instead of passing it as a jit argument"
    ) from e
  kept = np.unique(np.asarray(timesteps))
  if (
    kept.size < 1
    or kept.size != np.asarray(timesteps).size
    or not np.issubdtype(kept.dtype, np.integer)
    or kept[0] < 0
    or kept[-1] >= betas.size
  ):
    raise ValueError(f"timesteps must be distinct integers in [0, {betas.size}), got {timesteps!r}")
  log_alphas = np.log1p(-betas)
  starts = np.append(0, kept[:-1] + 1)
  log_alpha_segments = np.array([log_alphas[a : b + 1].sum() for a, b in zip(starts, kept)])
  return make_schedule(-np.expm1(log_alpha_segments))


def respaced_ddpm_sample(
  key,
  eps_fn: EpsFn,
  schedule: Schedule,
  shape,
  num_steps: int,
  variance: str = "small",
  clip: bool = False,
) -> Array:
  """Ancestral sampling on num_steps of the T timesteps (respaced DDPM).

  The kept timesteps are `ddim_timesteps(T, num_steps)`; `ddpm_sample` runs
  on `respace_schedule(schedule, kept)` with eps_fn called at the original
  timestep of each respaced step, so "small" is beta~'_i = beta'_i
  (1 - ac[t_{i-1}]) / (1 - ac[t_i]) and "large" is beta'_i (Nichol & Dhariwal
  2021, sec. 4). With "small" the chain has the law of DDIM with eta = 1 on
  the same timesteps; num_steps = T is `ddpm_sample`. One compiled scan of
  num_steps network calls; keys as in `ddpm_sample` (step i of the respaced
  schedule draws from fold_in(split(key)[1], i)).

  Args:
    shape: (B, ...). num_steps: in [1, T]. variance: "small" | "large".
    clip: clip the predicted x_0 to [-1, 1] at every step.

  Returns:
    Samples of `shape`.
  """
  kept = ddim_timesteps(schedule.num_timesteps, num_steps)[::-1].copy()
  respaced = respace_schedule(schedule, kept)
  original = jnp.asarray(kept, jnp.int32)
  return ddpm_sample(key, lambda x, t: eps_fn(x, original[t]), respaced, shape, variance, clip)


# ----------------------------------------------------------------------------
# The continuous-time view: sigma(t), log-SNR, time grids
# ----------------------------------------------------------------------------
#
# Dividing x_t by sqrt(ac_t) turns the discrete VP process into the
# variance-exploding one of Karras et al. (2022): x_t / sqrt(ac_t) =
# x0 + sigma_t eps with sigma_t = sqrt((1 - ac_t) / ac_t); the log-SNR is
# lambda_t = log(sqrt(ac_t) / sqrt(1 - ac_t)) = -log sigma_t. In these
# coordinates the probability-flow ODE is dx/dsigma = eps(x / sqrt(1 +
# sigma^2), t(sigma)) (Karras et al. 2022, eq. 4 with D = x - sigma eps).
# A discrete eps_fn is only defined at the T levels sigma_t, so every
# continuous grid below is rounded to the nearest level in log-sigma (as
# k-diffusion's DiscreteEpsDDPMDenoiser quantizes) and the solvers then use
# the rounded levels, so that each network call sees exactly its noise level.


def schedule_sigmas(schedule: Schedule) -> Array:
  """sigma_t = sqrt((1 - ac_t) / ac_t), shape (T,), increasing in t."""
  return schedule.sqrt_one_minus_alphas_cumprod / schedule.sqrt_alphas_cumprod


def sigma_to_timestep(schedule: Schedule, sigma) -> Array:
  """The discrete timestep whose sigma_t is nearest to sigma in log-sigma.

  Args:
    sigma: positive array of any shape.

  Returns:
    int32 array of sigma's shape, values in [0, T).
  """
  log_sigmas = jnp.log(schedule_sigmas(schedule))
  distance = jnp.abs(jnp.log(jnp.asarray(sigma))[..., None] - log_sigmas)
  return jnp.argmin(distance, axis=-1).astype(jnp.int32)


def _distinct_increasing(timesteps, num_timesteps: int) -> Array:
  """A strictly increasing sequence in [0, T) close to an increasing one
  t_0..t_{n-1} (n <= T): t'_k = min(k + cummax_{j<=k}(t_j - j), T - n + k).
  The first term turns a run of equal levels into consecutive levels, the
  second leaves room for the remaining n - 1 - k levels below T; the minimum
  of two strictly increasing sequences is strictly increasing."""
  num = timesteps.shape[0]
  k = jnp.arange(num, dtype=jnp.int32)
  fixed = k + jax.lax.cummax(timesteps.astype(jnp.int32) - k, axis=0)
  return jnp.minimum(fixed, num_timesteps - num + k)


def log_sigma_timesteps(schedule: Schedule, num_points: int) -> Array:
  """num_points timesteps from 0 up to T - 1, uniform in log-sigma (= in log-SNR).

  exp(linspace(log sigma_0, log sigma_{T-1}, num_points)) rounded to the
  nearest levels (`sigma_to_timestep`), then made strictly increasing: where
  the grid is finer than the discrete levels (small sigma, where the levels
  are sparse in log-sigma) it takes consecutive levels.

  Args:
    num_points: in [2, T].

  Returns:
    int32 (num_points,), strictly increasing, first 0, last T - 1.
  """
  num_timesteps = schedule.num_timesteps
  _check_num_steps(num_points, 2, num_timesteps, "num_points")
  log_sigmas = jnp.log(schedule_sigmas(schedule))
  grid = jnp.exp(jnp.linspace(log_sigmas[0], log_sigmas[-1], num_points))
  return _distinct_increasing(sigma_to_timestep(schedule, grid), num_timesteps)


def karras_sigmas(sigma_min, sigma_max, num_steps: int, rho: float = 7.0) -> Array:
  """The EDM noise levels (Karras et al. 2022, eq. 5), decreasing:

  sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
  i = 0..N-1 (N = 1: sigma_max). The sampler appends sigma_N = 0.

  Returns:
    (num_steps,).
  """
  _check_num_steps(num_steps, 1, np.iinfo(np.int32).max)
  if num_steps == 1:
    return jnp.reshape(jnp.asarray(sigma_max, jnp.result_type(float)), (1,))
  ramp = jnp.linspace(0.0, 1.0, num_steps)
  max_inv_rho = jnp.asarray(sigma_max) ** (1.0 / rho)
  min_inv_rho = jnp.asarray(sigma_min) ** (1.0 / rho)
  return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def edm_timesteps(schedule: Schedule, num_steps: int, rho: float = 7.0) -> Array:
  """`karras_sigmas` between sigma_0 and sigma_{T-1} of the schedule, rounded
  to the nearest discrete levels and made strictly decreasing (as in
  `log_sigma_timesteps`).

  Args:
    num_steps: in [1, T].

  Returns:
    int32 (num_steps,), strictly decreasing from T - 1 (down to 0 when
    num_steps > 1).
  """
  num_timesteps = schedule.num_timesteps
  _check_num_steps(num_steps, 1, num_timesteps)
  sigmas = schedule_sigmas(schedule)
  grid = karras_sigmas(sigmas[0], sigmas[-1], num_steps, rho)
  ascending = sigma_to_timestep(schedule, grid)[::-1]
  return _distinct_increasing(ascending, num_timesteps)[::-1]


# ----------------------------------------------------------------------------
# DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2)
# ----------------------------------------------------------------------------


def dpmpp_2m_sample(
  key, eps_fn: EpsFn, schedule: Schedule, shape, num_steps: int = 20, clip: bool = False
) -> Array:
  """DPM-Solver++(2M): multistep second-order solver of the probability-flow
  ODE in the data prediction, deterministic given x_T.

  With alpha_i = sqrt(ac_{t_i}), sigma_i = sqrt(1 - ac_{t_i}), lambda_i =
  log(alpha_i / sigma_i), h_i = lambda_{i+1} - lambda_i and D_i the x0
  prediction at (x_i, t_i) (`predict_x0_from_eps`, clipped if `clip`):
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (1 - e^{-h_i}) D'_i,
    D'_i = D_i + (h_i / (2 h_{i-1})) (D_i - D_{i-1})  (i.e. (1 + 1/(2 r_i)) D_i
           - 1/(2 r_i) D_{i-1}, r_i = h_{i-1} / h_i);  D'_0 = D_0 (first order).
  The network is called at t_0 = T-1 > ... > t_{K-1} = 0; the final step goes
  to sigma = 0 (alpha = 1, e^{-h} = 0) and so returns D_{K-1}, the x0
  prediction at t = 0, first order (the "lower-order final step"). A
  first-order step is exactly a deterministic DDIM step. K = num_steps
  network calls in one compiled scan.

  Time grid: the K timesteps are uniform in lambda (`log_sigma_timesteps`,
  consecutive levels where the discrete levels are sparser than the grid).
  On the Gaussian-mixture oracle this is far better than DDIM's grid uniform
  in t (whose last step, from t ~ T/K to 0, spans a huge lambda-interval):
  at 20 steps sliced W1 0.015 against 0.10, at 10 steps 0.034 against 0.25
  (2000 samples; data vs data 0.011).

  Args:
    key: PRNG key for x_T ~ N(0, I) (split(key)[0], as in the other samplers).
    shape: (B, ...). num_steps: K in [1, T] (K = 1: the x0 prediction at T-1).

  Returns:
    Samples of `shape`.
  """
  shape = tuple(shape)
  num_timesteps = schedule.num_timesteps
  _check_num_steps(num_steps, 1, num_timesteps)
  timesteps = (
    log_sigma_timesteps(schedule, num_steps)[::-1]
    if num_steps > 1
    else jnp.array([num_timesteps - 1], jnp.int32)
  )
  alpha = schedule.sqrt_alphas_cumprod[timesteps]
  sigma = schedule.sqrt_one_minus_alphas_cumprod[timesteps]
  log_snr = jnp.log(alpha) - jnp.log(sigma)
  alpha_next = jnp.append(alpha[1:], 1.0)
  sigma_next = jnp.append(sigma[1:], 0.0)
  h = jnp.append(log_snr[1:] - log_snr[:-1], jnp.inf)  # (K,), last: to sigma 0
  h_prev = jnp.append(1.0, h[:-1])
  coef_x = sigma_next / sigma
  coef_d = alpha_next * -jnp.expm1(-h)
  num = timesteps.shape[0]
  # Second order except at the first and the final step.
  second = (jnp.arange(num) > 0) & (jnp.arange(num) < num - 1)
  correction = jnp.where(second, h / (2.0 * h_prev), 0.0)

  init_key, _ = jax.random.split(key)
  x_T = jax.random.normal(init_key, shape, jnp.result_type(float))

  def body(carry, inputs):
    x, x0_prev = carry
    t, c_x, c_d, c_corr = inputs
    t_batch = jnp.full((shape[0],), t, jnp.int32)
    x0 = predict_x0_from_eps(schedule, x, t_batch, eps_fn(x, t_batch))
    if clip:
      x0 = jnp.clip(x0, -1.0, 1.0)
    d = x0 + c_corr * (x0 - x0_prev)
    return (c_x * x + c_d * d, x0), None

  (x_0, _), _ = jax.lax.scan(
    body, (x_T, jnp.zeros_like(x_T)), (timesteps, coef_x, coef_d, correction)
  )
  return x_0


# ----------------------------------------------------------------------------
# EDM sampler (Karras et al. 2022, Algorithm 2): Heun, optional churn
# ----------------------------------------------------------------------------


def _ve_derivative(eps_fn, schedule, x, t_batch, sigma, clip):
  """dx/dsigma = (x - D(x; sigma)) / sigma = eps at level t, x in the VE
  coordinates x_t / sqrt(ac_t) (batched t, scalar sigma = sigma_t)."""
  eps = eps_fn(x * _at(schedule.sqrt_alphas_cumprod, t_batch, x), t_batch)
  if clip:
    denoised = jnp.clip(x - sigma * eps, -1.0, 1.0)
    eps = (x - denoised) / sigma
  return eps


def heun_sample(
  key,
  eps_fn: EpsFn,
  schedule: Schedule,
  shape,
  num_steps: int = 18,
  rho: float = 7.0,
  s_churn: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = float("inf"),
  s_noise: float = 1.0,
  clip: bool = False,
) -> Array:
  """EDM sampling: Heun's method on the probability-flow ODE over the
  rho = 7 sigma-schedule, with Karras et al.'s optional "churn".

  In VE coordinates (x = x_t / sqrt(ac_t), see `schedule_sigmas`) with
  sigmas sigma_0 > ... > sigma_{N-1} = the levels of `edm_timesteps` and
  sigma_N = 0, x_0 = sigma_0 z (z from split(key)[0]), then for i = 0..N-1:
    gamma_i = min(s_churn / N, sqrt(2) - 1) if s_tmin <= sigma_i <= s_tmax else 0,
    sigma_hat = sigma_i (1 + gamma_i) rounded to the nearest level t_hat,
    x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) s_noise e,  e ~ N(0, I)
            (from fold_in(split(key)[1], i)),
    d = eps_fn(x_hat sqrt(ac_{t_hat}), t_hat)       (= (x_hat - D) / sigma_hat),
    x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d,
    if sigma_{i+1} > 0: d' = eps at (x_{i+1}, t_{i+1}),
       x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2.
  The last step (to sigma = 0) is Euler: 2N - 1 network calls (N = 18: 35),
  in one compiled scan (the Heun correction under lax.cond). s_churn = 0 is
  the deterministic sampler. With `clip`, D = x - sigma eps is clipped to
  [-1, 1] and d re-derived from it.

  Args:
    shape: (B, ...). num_steps: N in [1, T].
    rho: the sigma-schedule's exponent. s_churn, s_tmin, s_tmax, s_noise:
      the stochastic sampler's parameters (Karras et al. 2022, Table 5).

  Returns:
    Samples of `shape` (x at sigma = 0, the data scale).
  """
  shape = tuple(shape)
  timesteps = edm_timesteps(schedule, num_steps, rho)
  all_sigmas = schedule_sigmas(schedule)
  sigmas = all_sigmas[timesteps]
  sigma_next = jnp.append(sigmas[1:], 0.0)
  t_next = jnp.append(timesteps[1:], 0)
  churn = jnp.where(
    (sigmas >= s_tmin) & (sigmas <= s_tmax), min(s_churn / num_steps, math.sqrt(2.0) - 1.0), 0.0
  )
  t_hat = jnp.maximum(sigma_to_timestep(schedule, sigmas * (1.0 + churn)), timesteps)
  sigma_hat = all_sigmas[t_hat]
  init_key, step_key = jax.random.split(key)
  x_init = sigmas[0] * jax.random.normal(init_key, shape, jnp.result_type(float))
  batch = shape[0]

  def body(x, inputs):
    i, _, sig, t_h, sig_h, t_n, sig_n = inputs
    noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, x.dtype)
    x_hat = x + jnp.sqrt(jnp.maximum(sig_h**2 - sig**2, 0.0)) * s_noise * noise
    d = _ve_derivative(eps_fn, schedule, x_hat, jnp.full((batch,), t_h, jnp.int32), sig_h, clip)
    x_euler = x_hat + (sig_n - sig_h) * d

    def heun(_):
      d_next = _ve_derivative(
        eps_fn, schedule, x_euler, jnp.full((batch,), t_n, jnp.int32), sig_n, clip
      )
      return x_hat + (sig_n - sig_h) * 0.5 * (d + d_next)

    return jax.lax.cond(sig_n > 0, heun, lambda _: x_euler, None), None

  steps = (jnp.arange(timesteps.shape[0]), timesteps, sigmas, t_hat, sigma_hat, t_next, sigma_next)
  x_data, _ = jax.lax.scan(body, x_init, steps)
  return x_data


# ----------------------------------------------------------------------------
# Exact likelihood through the probability-flow ODE
# ----------------------------------------------------------------------------


def ode_log_likelihood(
  key, eps_fn: EpsFn, schedule: Schedule, x, num_steps: int = 256, exact_trace: bool = False
) -> Array:
  """log p(x) in nats per example, by the probability-flow ODE and the
  instantaneous change of variables (Chen et al. 2018; Song et al. 2021).

  Which density: in VE coordinates y = x_t / sqrt(ac_t) the forward process
  is y = x0 + sigma_t eps, and the model's ODE dy/dsigma = eps_fn(y sqrt(ac),
  t) carries N(0, sigma_max^2 I) at sigma_max = sigma_{T-1} to a density p
  at sigma_min = sigma_0 = sqrt(beta_0 / (1 - beta_0)) (0.01 for DDPM's
  schedule). The returned value is log p(x) at that smallest noise level, x
  at the data's scale: for a perfect model, the log-density of the data
  convolved with N(0, sigma_min^2 I). (The density of the VP variable x_0 =
  sqrt(ac_0) y is this minus D log sqrt(ac_0), D the data dimension.)

  Integration: in s = log sigma, dy/ds = sigma eps_fn(y sqrt(ac_t), t),
  d(log p)/ds = -div_y(dy/ds), from sigma_0 to sigma_{T-1} over the
  num_steps + 1 levels of `log_sigma_timesteps` (uniform in log-sigma, every
  level at the low end) with Heun's method on the augmented state (y, log
  det): 2 num_steps divergence evaluations, one compiled scan. Then
  log p(x) = log N(y_end; 0, sigma_max^2 I) + integral of div ds.
  The divergence is Hutchinson's estimate v^T (dF/dy) v with one
  Rademacher probe v per example (from `key`, the same at every step, so
  the integral's estimate is unbiased), or, with exact_trace=True, the
  exact trace from D Jacobian-vector products (small D only).

  Accuracy: on a 2-D Gaussian mixture with its exact eps (tests/
  test_ode_likelihood.py) the default 256 steps are within 0.007 nats/dim of
  the closed form on data points. Refining further does not help: eps_fn is
  defined only at the T discrete levels, which are sparse in log-sigma at
  small sigma (DDPM's first two are 0.39 apart), and that sets the floor.

  Args:
    key: PRNG key for the probes (unused with exact_trace).
    eps_fn: batched eps_fn(x_t, t); its Jacobian must not mix examples.
    x: (B, ...) points at the data scale.
    num_steps: in [1, T - 1].

  Returns:
    (B,) log-densities in nats.
  """
  num_timesteps = schedule.num_timesteps
  _check_num_steps(num_steps, 1, num_timesteps - 1)
  timesteps = log_sigma_timesteps(schedule, num_steps + 1)
  log_sigmas = jnp.log(schedule_sigmas(schedule))[timesteps]
  widths = log_sigmas[1:] - log_sigmas[:-1]
  batch = x.shape[0]
  num_dims = math.prod(x.shape[1:])

  def drift(y, t):
    t_batch = jnp.full((batch,), t, jnp.int32)
    sigma = schedule_sigmas(schedule)[t]
    return sigma * eps_fn(y * _at(schedule.sqrt_alphas_cumprod, t_batch, y), t_batch)

  if exact_trace:
    basis = jnp.eye(num_dims, dtype=x.dtype).reshape((num_dims, 1) + x.shape[1:])

    def drift_and_div(y, t):
      f = lambda z: drift(z, t)
      out, jvps = jax.vmap(lambda v: jax.jvp(f, (y,), (jnp.broadcast_to(v, y.shape),)))(basis)
      # trace = sum_i (J e_i)_i: row i of the flattened JVPs, entry i.
      flat = jvps.reshape(num_dims, batch, num_dims)
      return out[0], jnp.trace(flat, axis1=0, axis2=2)
  else:
    probe = jax.random.rademacher(key, x.shape, x.dtype)

    def drift_and_div(y, t):
      out, jvp = jax.jvp(lambda z: drift(z, t), (y,), (probe,))
      return out, _sum_data_dims(probe * jvp, 1)

  def body(carry, inputs):
    y, integral = carry
    t, t_next, width = inputs
    f, div = drift_and_div(y, t)
    y_euler = y + width * f
    f_next, div_next = drift_and_div(y_euler, t_next)
    y = y + 0.5 * width * (f + f_next)
    integral = integral + 0.5 * width * (div + div_next)
    return (y, integral), None

  (y_end, integral), _ = jax.lax.scan(
    body, (x, jnp.zeros((batch,), x.dtype)), (timesteps[:-1], timesteps[1:], widths)
  )
  log_sigma_max = jnp.log(schedule_sigmas(schedule)[-1])
  prior = _sum_data_dims(distributions.normal_log_prob(y_end, 0.0, 2.0 * log_sigma_max), 1)
  return prior + integral


def ode_bits_per_dim(
  key, eps_fn: EpsFn, schedule: Schedule, x, num_steps: int = 256, exact_trace: bool = False
) -> Array:
  """An upper bound on -log2 P(x) / D for 8-bit data, by the ODE likelihood
  of uniformly dequantized data.

  Convention: x is on the 8-bit grid in [-1, 1], x = 2 k / 255 - 1 for
  pixel k in {0..255}, so each value owns the bin [x - 1/255, x + 1/255) of
  width 2/255. Dequantize y = x + (u - 1/2) 2/255, u ~ U[0, 1)^D
  (from split(key)[0]); then log P(k) >= E_u[log p(y)] + D log(2/255)
  (Jensen), and
    bits/dim = -(log p(y) - D log 127.5) / (D ln 2)
  with log p(y) = `ode_log_likelihood` (probes from split(key)[1]), one u
  per example. This differs from the discrete bound (`vlb_bits_per_dim`),
  whose discretized-Gaussian decoder integrates the model's mass over the
  bins directly; score_sde reports data scaled as (k + u) / 256, an offset
  of 7 bits instead of log2(127.5) = 6.994.

  Args:
    x: (B, ...) on the 8-bit grid in [-1, 1].

  Returns:
    (B,) bits per dimension.
  """
  dequant_key, probe_key = jax.random.split(key)
  u = jax.random.uniform(dequant_key, x.shape, x.dtype)
  y = x + (u - 0.5) * (2.0 / 255.0)
  log_p = ode_log_likelihood(probe_key, eps_fn, schedule, y, num_steps, exact_trace)
  num_dims = math.prod(x.shape[1:])
  return -(log_p - num_dims * math.log(127.5)) / (num_dims * math.log(2.0))
