"""Training loss and likelihood bound: L_simple for an eps, x0 or v predictor,
and the variational bound (its terms, the prior KL, bits per dimension).

Per-example values of shape (B,), in nats unless the name says bits per
dimension; "data dimensions" are the axes after the batch axis.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import distributions
from gen_jax.diffusion._helpers import mean_data_dims, sum_data_dims
from gen_jax.diffusion.forward import (
  check_prediction,
  check_prediction_for_schedule,
  eps_and_x0,
  make_q_sample,
  q_posterior,
  v_target,
)
from gen_jax.diffusion.reverse import check_variance, p_mean_variance
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
  x_t = make_q_sample(schedule)(x0=x0, t=t, noise=noise)
  if prediction == "eps":
    target = noise
  elif prediction == "x0":
    target = x0
  else:
    target = v_target(schedule, x0=x0, t=t, noise=noise)
  return mean_data_dims(jnp.square(target - model_fn(x_t, t)), 1)


DECODERS = ("discretized", "gaussian")

# How far (in bins) a value may sit from the 8-bit grid and still count as on
# it: float32 values of k / 127.5 - 1 are within ~1e-5 bins.
_GRID_TOLERANCE = 1e-3


def check_decoder(decoder: str) -> None:
  """Raises ValueError unless `decoder` is one of DECODERS."""
  if decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


def _on_grid(x0, batch_ndim: int) -> Array:
  """(B,) True where every value of the example lies on the 8-bit grid in [-1, 1]."""
  k = (jnp.asarray(x0) + 1.0) * 127.5
  ok = (jnp.abs(k - jnp.round(k)) < _GRID_TOLERANCE) & (k > -0.5) & (k < 255.5)
  return jnp.all(ok, axis=tuple(range(batch_ndim, jnp.ndim(ok))))


def _check_grid(x0, name: str, rows=None) -> None:
  """ValueError when a concrete x0 (its examples where `rows`, if given) is off
  the 8-bit grid in [-1, 1]; traced x0 is checked per example by `_on_grid`
  (the example's result becomes NaN)."""
  if isinstance(x0, jax.core.Tracer) or isinstance(rows, jax.core.Tracer):
    return
  x = np.asarray(x0, np.float64)
  if rows is not None:
    x = x[np.broadcast_to(np.asarray(rows), x.shape[: np.ndim(rows)])]
    if x.size == 0:
      return
  k = (x + 1.0) * 127.5
  off = (np.abs(k - np.round(k)) >= _GRID_TOLERANCE) | (k <= -0.5) | (k >= 255.5)
  if np.any(off) or not np.all(np.isfinite(x)):
    raise ValueError(
      f"{name}: x0 must lie on the 8-bit grid in [-1, 1] (x = 2 k / 255 - 1, k in 0..255) for "
      f"the discretized decoder; got values in [{x.min():.4g}, {x.max():.4g}], "
      f"{np.mean(off):.1%} of them off the grid. Images in [0, 1]: pass 2 x - 1; in 0..255: "
      "x / 127.5 - 1; continuous data: decoder='gaussian' (a bound in nats)."
    )


def vlb_term(
  schedule: Schedule,
  *,
  x0,
  x_t,
  t,
  output,
  variance: str = "small",
  clip: bool = False,
  prediction: str = "eps",
  decoder: str = "discretized",
  decoder_std=None,
) -> Array:
  """One term of the variational bound, per example, in nats.

  For t > 0: L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), summed over
  data dimensions. For t = 0: L_0 = -log p(x_0 | x_1), the decoder, with the
  reverse step's mean (Ho et al. 2020, eqs. 5 and 13):
    decoder="discretized": the mass of x0's bin under N(mean, sigma_0^2),
      sigma_0 the reverse step's standard deviation at t = 0 (sqrt(beta~_1));
      x0 must then lie on the 8-bit grid in [-1, 1] (ValueError when
      concrete, NaN for the example when traced);
    decoder="gaussian": the density -log N(x0; mean, decoder_std^2) for
      continuous data (the bound is then on -log p(x0), a density, in nats);
      decoder_std None is sigma_0 as above.

  Args:
    x0, x_t, output: (B, ...); t: (B,) int. output: the model's prediction
      of kind `prediction` ("eps", "x0" or "v") at (x_t, t).
    variance: the reverse process' variance, "small" or "large".
    clip: clip the predicted x_0 to [-1, 1] in the reverse mean.

  Returns:
    (B,) values in nats.
  """
  check_prediction(prediction)
  check_decoder(decoder)
  check_variance(variance)
  if decoder == "discretized":
    _check_grid(x0, "vlb_term", rows=jnp.asarray(t) == 0)  # the decoder's examples
  batch_ndim = jnp.ndim(t)
  true_mean, _, true_log_var = q_posterior(schedule, x0=x0, x_t=x_t, t=t)
  _, x0_pred = eps_and_x0(schedule, x_t=x_t, t=t, output=output, prediction=prediction)
  model_mean, model_log_var, _ = p_mean_variance(
    schedule, x_t=x_t, t=t, x0=x0_pred, variance=variance, clip=clip
  )
  kl = sum_data_dims(
    distributions.normal_kl(true_mean, true_log_var, model_mean, model_log_var), batch_ndim
  )
  if decoder == "discretized":
    decoder_nll = -sum_data_dims(
      distributions.discretized_gaussian_log_prob(x0, mean=model_mean, logvar=model_log_var),
      batch_ndim,
    )
    decoder_nll = jnp.where(_on_grid(x0, batch_ndim), decoder_nll, jnp.nan)
  else:
    log_var = model_log_var if decoder_std is None else 2.0 * jnp.log(decoder_std)
    decoder_nll = -sum_data_dims(distributions.normal_log_prob(x0, model_mean, log_var), batch_ndim)
  return jnp.where(jnp.asarray(t) == 0, decoder_nll, kl)


def prior_kl(schedule: Schedule, x0) -> Array:
  """KL(q(x_T | x_0) || N(0, I)), summed over data dimensions; 0 at zero
  terminal SNR (q(x_T | x_0) = N(0, I) exactly).

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
  key,
  model_fn,
  schedule: Schedule,
  x0,
  variance: str = "small",
  clip: bool = False,
  *,
  prediction: str = "eps",
  decoder: str = "discretized",
  decoder_std=None,
) -> VLBTerms:
  """Every term of the variational bound at one x_t draw per t.

  -log p(x_0) <= L = L_prior + sum_{t>0} L_t + L_0, each L_t estimated with
  one x_t ~ q(x_t | x_0) (noise from fold_in(key, t)); one compiled
  `lax.scan` over t, T network calls of batch B. See `vlb_term` for the
  decoders: "discretized" (8-bit data, a bound on -log P(x0), the default)
  and "gaussian" (continuous data, a bound on -log p(x0), a density).

  Zero terminal SNR: the prior term is 0 and the model output is read
  through `prediction` without dividing by sqrt(ac) (v or x0; eps is refused
  there).

  Args:
    model_fn: batched model_fn(x_t, t) -> output of kind `prediction` (an
      eps_fn with the default prediction="eps").
    x0: (B, ...) data: on the 8-bit grid in [-1, 1] for decoder="discretized"
      (else ValueError when x0 is concrete; when traced inside jit, the
      example's terms are NaN).
    decoder_std: the Gaussian decoder's standard deviation (scalar or
      broadcastable); None: the reverse step's at t = 0, sqrt(beta~_1).

  Returns:
    VLBTerms in nats.
  """
  check_prediction(prediction)
  check_decoder(decoder)
  check_variance(variance)
  if decoder == "discretized":
    _check_grid(x0, "vlb_terms")
  check_prediction_for_schedule(schedule, prediction, schedule.num_timesteps - 1, "vlb_terms")
  q_sample = make_q_sample(schedule)
  batch = x0.shape[0]

  def body(_, t):
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
    t_batch = jnp.full((batch,), t, jnp.int32)
    x_t = q_sample(x0=x0, t=t_batch, noise=noise)
    term = vlb_term(
      schedule,
      x0=x0,
      x_t=x_t,
      t=t_batch,
      output=model_fn(x_t, t_batch),
      variance=variance,
      clip=clip,
      prediction=prediction,
      decoder=decoder,
      decoder_std=decoder_std,
    )
    return None, term

  _, terms = jax.lax.scan(body, None, jnp.arange(schedule.num_timesteps))
  terms = terms.T
  prior = prior_kl(schedule, x0)
  if decoder == "discretized":
    on_grid = _on_grid(x0, 1)
    terms = jnp.where(on_grid[:, None], terms, jnp.nan)
    prior = jnp.where(on_grid, prior, jnp.nan)
  return VLBTerms(terms=terms, prior=prior, total=terms.sum(-1) + prior)


def vlb_bits_per_dim(
  key,
  model_fn,
  schedule: Schedule,
  x0,
  variance: str = "small",
  clip: bool = False,
  *,
  prediction: str = "eps",
) -> Array:
  """The full variational bound for 8-bit data in bits per dimension, per example.

  bits/dim = (L_prior + sum_t L_t) / (D ln 2), D the number of data
  dimensions (Ho et al. 2020, Table 2), with the discretized decoder: x0
  must lie on the 8-bit grid in [-1, 1] (ValueError when concrete, NaN for
  the example when traced). Continuous data: `vlb_nats_per_dim`.

  Returns:
    (B,) upper bounds on -log2 P(x_0) / D.
  """
  _check_grid(x0, "vlb_bits_per_dim")
  num_dims = math.prod(x0.shape[1:])
  total = vlb_terms(key, model_fn, schedule, x0, variance, clip, prediction=prediction).total
  return total / (num_dims * math.log(2.0))


def vlb_nats_per_dim(
  key,
  model_fn,
  schedule: Schedule,
  x0,
  variance: str = "small",
  clip: bool = False,
  *,
  prediction: str = "eps",
  decoder_std=None,
) -> Array:
  """The variational bound for continuous data in nats per dimension, per example.

  (L_prior + sum_{t>0} L_t + L_0) / D with the Gaussian decoder L_0 =
  -log N(x0; mean_0, decoder_std^2) (`vlb_terms` with decoder="gaussian"):
  an upper bound on -log p(x0) / D, p the model's density of x0 (Ho et al.
  2020, eq. 5 with a continuous decoder). decoder_std None: the reverse
  step's standard deviation at t = 0, sqrt(beta~_1) (0.0074 for DDPM's
  schedule), a stated choice: the bound holds for any positive value.

  Returns:
    (B,) upper bounds on -log p(x_0) / D, nats.
  """
  num_dims = math.prod(x0.shape[1:])
  terms = vlb_terms(
    key,
    model_fn,
    schedule,
    x0,
    variance,
    clip,
    prediction=prediction,
    decoder="gaussian",
    decoder_std=decoder_std,
  )
  return terms.total / num_dims
