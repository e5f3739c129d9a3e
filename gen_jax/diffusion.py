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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import distributions

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]


# ----------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------

def linear_betas(num_timesteps: int, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """The DDPM schedule: betas linear from beta_start to beta_end.

  Returns:
    float64 numpy array of shape (num_timesteps,).
  """
  _check_num_timesteps(num_timesteps)
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008,
                 max_beta: float = 0.999) -> np.ndarray:
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
  alphas: Array                          # 1 - beta_t
  alphas_cumprod: Array                  # prod_{s<=t} alpha_s
  alphas_cumprod_prev: Array             # alphas_cumprod[t-1], 1 at t = 0
  sqrt_alphas_cumprod: Array
  sqrt_one_minus_alphas_cumprod: Array
  posterior_variance: Array              # beta~_t = beta_t (1 - ac_prev) / (1 - ac)
  posterior_log_variance_clipped: Array  # log beta~_t, with beta~_0 := beta~_1
  posterior_mean_coef1: Array            # multiplies x_0
  posterior_mean_coef2: Array            # multiplies x_t

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
  posterior_log_variance_clipped = np.log(
      np.append(clip_from, posterior_variance[1:]))
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
      posterior_mean_coef1=as_array(
          betas * np.sqrt(alphas_cumprod_prev) / (1 - alphas_cumprod)),
      posterior_mean_coef2=as_array(
          (1 - alphas_cumprod_prev) * np.sqrt(alphas) / (1 - alphas_cumprod)),
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
    return (_at(schedule.sqrt_alphas_cumprod, t, x0) * x0
            + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)
  return q_sample


def q_step(schedule: Schedule, x_prev, t, noise) -> Array:
  """One forward step: a draw from q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

  With t = 0, x_prev is the data x_0. Chaining q_step for t = 0..k gives a
  draw from q(x_k | x_0) (`make_q_sample`).

  Args:
    x_prev: (B, ...) or one example; t: (B,) or scalar; noise: like x_prev.
  """
  return (jnp.sqrt(_at(schedule.alphas, t, x_prev)) * x_prev
          + jnp.sqrt(_at(schedule.betas, t, x_prev)) * noise)


def q_posterior(schedule: Schedule, x0, x_t, t) -> tuple[Array, Array, Array]:
  """The forward-process posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7).

  Returns:
    (mean, variance, log_variance_clipped), each of the shape of x_t:
    mean = coef1_t x_0 + coef2_t x_t, variance = beta~_t.
  """
  mean = (_at(schedule.posterior_mean_coef1, t, x_t) * x0
          + _at(schedule.posterior_mean_coef2, t, x_t) * x_t)
  shape = jnp.shape(x_t)
  variance = jnp.broadcast_to(_at(schedule.posterior_variance, t, x_t), shape)
  log_variance = jnp.broadcast_to(
      _at(schedule.posterior_log_variance_clipped, t, x_t), shape)
  return mean, variance, log_variance


def predict_x0_from_eps(schedule: Schedule, x_t, t, eps) -> Array:
  """x_0 implied by x_t and a noise estimate: (x_t - sqrt(1 - ac_t) eps) / sqrt(ac_t)."""
  return (x_t - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _at(
      schedule.sqrt_alphas_cumprod, t, x_t)


def predict_eps_from_x0(schedule: Schedule, x_t, t, x0) -> Array:
  """The inverse of `predict_x0_from_eps`: (x_t - sqrt(ac_t) x_0) / sqrt(1 - ac_t)."""
  return (x_t - _at(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / _at(
      schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


# ----------------------------------------------------------------------------
# Reverse process
# ----------------------------------------------------------------------------

VARIANCES = ("small", "large")


def p_mean_variance(schedule: Schedule, x_t, t, eps, variance: str = "small",
                    clip: bool = False) -> tuple[Array, Array, Array]:
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
    log_large = jnp.log(jnp.concatenate(
        [schedule.posterior_variance[1:2], schedule.betas[1:]]))
    log_variance = jnp.broadcast_to(_at(log_large, t, x_t), jnp.shape(x_t))
  return mean, log_variance, x0_pred


def _check_variance(variance):
  if variance not in VARIANCES:
    raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


# ----------------------------------------------------------------------------
# Losses and the variational bound
# ----------------------------------------------------------------------------

def simple_loss(key, eps_fn: EpsFn, schedule: Schedule, x0) -> Array:
  """L_simple (Ho et al. 2020, eq. 14), per example.

  t ~ Uniform{0, ..., T-1}, noise ~ N(0, I), x_t = q_sample(x0, t, noise);
  loss = mean over data dimensions of (noise - eps_fn(x_t, t))^2.

  Args:
    key: PRNG key for t and the noise.
    x0: data, (B, ...).

  Returns:
    (B,) losses.
  """
  t_key, noise_key = jax.random.split(key)
  batch = x0.shape[0]
  t = jax.random.randint(t_key, (batch,), 0, schedule.num_timesteps)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  x_t = make_q_sample(schedule)(x0, t, noise)
  return _mean_data_dims(jnp.square(noise - eps_fn(x_t, t)), 1)


def vlb_term(schedule: Schedule, x0, x_t, t, eps_pred, variance: str = "small",
             clip: bool = False) -> Array:
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
  model_mean, model_log_var, _ = p_mean_variance(
      schedule, x_t, t, eps_pred, variance, clip)
  kl = _sum_data_dims(distributions.normal_kl(
      true_mean, true_log_var, model_mean, model_log_var), batch_ndim)
  decoder_nll = -_sum_data_dims(distributions.discretized_gaussian_log_prob(
      x0, model_mean, 0.5 * model_log_var), batch_ndim)
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
  terms: Array     # (B, T): terms[:, t] = vlb_term at t (t = 0: the decoder)
  prior: Array     # (B,): KL(q(x_T | x_0) || N(0, I))
  total: Array     # (B,): terms.sum(-1) + prior


def vlb_terms(key, eps_fn: EpsFn, schedule: Schedule, x0,
              variance: str = "small", clip: bool = False) -> VLBTerms:
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
    term = vlb_term(schedule, x0, x_t, t_batch, eps_fn(x_t, t_batch),
                    variance, clip)
    return None, term

  _, terms = jax.lax.scan(body, None, jnp.arange(schedule.num_timesteps))
  terms = terms.T
  prior = prior_kl(schedule, x0)
  return VLBTerms(terms=terms, prior=prior, total=terms.sum(-1) + prior)


def vlb_bits_per_dim(key, eps_fn: EpsFn, schedule: Schedule, x0,
                     variance: str = "small", clip: bool = False) -> Array:
  """The full variational bound in bits per dimension, per example.

  bits/dim = (L_prior + sum_t L_t) / (D ln 2), D the number of data
  dimensions (Ho et al. 2020, Table 2). See `vlb_terms`.

  Returns:
    (B,) upper bounds on -log2 p(x_0) / D.
  """
  num_dims = math.prod(x0.shape[1:])
  return vlb_terms(key, eps_fn, schedule, x0, variance, clip).total / (
      num_dims * math.log(2.0))


# ----------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------

def ddpm_sample(key, eps_fn: EpsFn, schedule: Schedule, shape,
                variance: str = "small", clip: bool = False) -> Array:
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
    mean, log_var, _ = p_mean_variance(
        schedule, x, t_batch, eps_fn(x, t_batch), variance, clip)
    noise = jax.random.normal(jax.random.fold_in(step_key, t), shape, x.dtype)
    x = mean + jnp.where(t > 0, jnp.exp(0.5 * log_var), 0.0) * noise
    return x, None

  timesteps = jnp.arange(schedule.num_timesteps - 1, -1, -1)
  x_0, _ = jax.lax.scan(body, x_T, timesteps)
  return x_0


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """num_steps distinct timesteps from T - 1 down to 0, evenly spaced."""
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
  if num_steps == 1:
    return np.array([num_timesteps - 1], dtype=np.int32)
  return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)


def ddim_sample(key, eps_fn: EpsFn, schedule: Schedule, shape, num_steps: int,
                eta: float = 0.0, clip: bool = False) -> Array:
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
    x = (jnp.sqrt(a_next) * x0
         + jnp.sqrt(jnp.maximum(1 - a_next - sigma**2, 0.0)) * eps
         + sigma * noise)
    return x, None

  steps = (jnp.arange(len(timesteps)), jnp.asarray(timesteps), ac_next)
  x_0, _ = jax.lax.scan(body, x_T, steps)
  return x_0
