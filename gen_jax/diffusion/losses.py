"""Training loss and likelihood bound: L_simple for an eps, x0 or v predictor,
and the variational bound (its terms, the prior KL, bits per dimension).

Per-example values of shape (B,), in nats unless the name says bits per
dimension; "data dimensions" are the axes after the batch axis.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gen_jax import distributions
from gen_jax.diffusion._helpers import mean_data_dims, sum_data_dims
from gen_jax.diffusion.forward import EpsFn, check_prediction, make_q_sample, q_posterior, v_target
from gen_jax.diffusion.reverse import p_mean_variance
from gen_jax.diffusion.schedules import Schedule

Array = jax.Array


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
  check_prediction(prediction)
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
  return mean_data_dims(jnp.square(target - model_fn(x_t, t)), 1)


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
  true_mean, _, true_log_var = q_posterior(schedule, x0=x0, x_t=x_t, t=t)
  model_mean, model_log_var, _ = p_mean_variance(
    schedule, x_t=x_t, t=t, eps=eps_pred, variance=variance, clip=clip
  )
  kl = sum_data_dims(
    distributions.normal_kl(true_mean, true_log_var, model_mean, model_log_var), batch_ndim
  )
  decoder_nll = -sum_data_dims(
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
  return sum_data_dims(distributions.standard_normal_kl(mean, log_var), 1)


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
