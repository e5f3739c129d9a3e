"""Analytic oracles for testing diffusion models: a Gaussian mixture's exact eps,
its densities and 8-bit bin masses, the exact output law of the DDPM / DDIM
samplers on one Gaussian, and a two-sample distance.

Public so that tests, benchmarks and users' own models can check themselves
against closed forms. It does not depend on the rest of gen_jax (numpy, scipy
and jax only), so it can be an independent reference for gen_jax.diffusion.

Gaussian-mixture oracle. Data x0 ~ sum_k w_k N(mu_k, s_k^2 I) in D dimensions.
Under q(x_t | x_0) = N(sqrt(a) x_0, (1 - a) I), a = alphas_cumprod[t], x_t is a
mixture with components N(sqrt(a) mu_k, (a s_k^2 + 1 - a) I), so the exact
posterior-mean noise is

  E[eps | x_t] = -sqrt(1 - a) grad log p_t(x_t)
               = sum_k r_k(x_t) sqrt(1 - a) (x_t - sqrt(a) mu_k) / (a s_k^2 + 1 - a),

r_k(x_t) the responsibilities of the components of p_t. This is the minimiser
of L_simple, i.e. a perfectly trained epsilon-network.

Provided:
  * gmm_eps_fn(schedule, weights, means, stds) -> eps_fn(x_t, t): JAX, jit-able,
    batched (x_t of shape (B, ...) with prod(...) = D, t int of shape (B,)).
    `schedule` is anything with an `alphas_cumprod` array of shape (T,).
  * gmm_eps_np(x_t, alpha_bar, ...): the same in float64 numpy.
  * gmm_sample(rng, n, ...): numpy sampler, returns (x (n, D), labels (n,)).
  * gmm_log_density(x, ...): float64 numpy log-density; with means scaled by
    sqrt(a) and stds sqrt(a s^2 + 1 - a) it is the log-density of p_t.
  * quantize(x): round to the 8-bit grid {-1, -1 + 2/255, ..., 1}.
  * gmm_discrete_log_prob(x, ...): exact log probability mass of the 8-bit bin
    of each (quantized) x; isotropic components factorise over dimensions, so
    each component's bin mass is a product of 1-D Gaussian interval masses (end
    bins extend to -inf / +inf, as in the DDPM decoder).
  * log_normal_interval(lo, hi): float64 log(Phi(hi) - Phi(lo)).
  * gaussian_sampler_law(...): the exact output mean and std of the DDPM /
    DDIM samplers on one-Gaussian data driven by its exact eps (the chain is
    then linear-Gaussian), computed from the papers' formulas in float64.
  * sliced_wasserstein(x, y, ...): sliced 1-Wasserstein distance (numpy).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special, stats


def _as_params(weights, means, stds):
  weights = np.asarray(weights, np.float64)
  means = np.asarray(means, np.float64)
  stds = np.asarray(stds, np.float64)
  if means.ndim != 2:
    raise ValueError(f"means must be (K, D), got {means.shape}")
  k = means.shape[0]
  if weights.shape != (k,) or stds.shape != (k,):
    raise ValueError("weights and stds must have shape (K,)")
  if not np.isclose(weights.sum(), 1.0):
    raise ValueError("weights must sum to 1")
  return weights, means, stds


# ----------------------------------------------------------------------------
# Exact epsilon predictor
# ----------------------------------------------------------------------------


def gmm_eps_fn(schedule, weights, means, stds):
  """The exact E[eps | x_t] of a Gaussian mixture, as a batched JAX eps_fn."""
  weights, means, stds = _as_params(weights, means, stds)
  log_w = np.log(weights)
  var0 = stds**2
  num_dims = means.shape[1]

  def eps_fn(x_t, t):
    dtype = x_t.dtype
    shape = x_t.shape
    x = x_t.reshape(shape[0], -1)  # (B, D)
    a = jnp.asarray(schedule.alphas_cumprod)[t].astype(dtype)  # (B,)
    a = a[:, None]  # (B, 1)
    var = a * jnp.asarray(var0, dtype) + (1.0 - a)  # (B, K)
    diff = x[:, None, :] - jnp.sqrt(a)[:, :, None] * jnp.asarray(means, dtype)
    sq = jnp.sum(jnp.square(diff), axis=-1)  # (B, K)
    logits = jnp.asarray(log_w, dtype) - 0.5 * num_dims * jnp.log(var) - 0.5 * sq / var
    resp = jax.nn.softmax(logits, axis=-1)  # (B, K)
    eps = jnp.sqrt(1.0 - a) * jnp.sum((resp / var)[:, :, None] * diff, axis=1)  # (B, D)
    return eps.reshape(shape)

  return eps_fn


def gmm_eps_np(x_t, alpha_bar, weights, means, stds):
  """float64 numpy E[eps | x_t]; x_t (B, D), alpha_bar scalar or (B,)."""
  weights, means, stds = _as_params(weights, means, stds)
  x = np.asarray(x_t, np.float64)
  a = np.broadcast_to(np.asarray(alpha_bar, np.float64), x.shape[:1])[:, None]
  var = a * stds**2 + (1.0 - a)  # (B, K)
  diff = x[:, None, :] - np.sqrt(a)[:, :, None] * means  # (B, K, D)
  logits = np.log(weights) - 0.5 * x.shape[1] * np.log(var) - 0.5 * np.sum(diff**2, -1) / var
  resp = special.softmax(logits, axis=-1)
  return np.sqrt(1.0 - a) * np.sum((resp / var)[:, :, None] * diff, axis=1)


# ----------------------------------------------------------------------------
# Data: sampler, densities
# ----------------------------------------------------------------------------


def gmm_sample(rng, n, weights, means, stds):
  """n draws of the mixture: (x (n, D) float64, labels (n,) int)."""
  weights, means, stds = _as_params(weights, means, stds)
  labels = rng.choice(len(weights), size=n, p=weights)
  x = means[labels] + stds[labels, None] * rng.standard_normal((n, means.shape[1]))
  return x, labels


def gmm_log_density(x, weights, means, stds):
  """float64 log of sum_k w_k N(x; mu_k, s_k^2 I), x (n, D)."""
  weights, means, stds = _as_params(weights, means, stds)
  x = np.asarray(x, np.float64)
  d = means.shape[1]
  sq = np.sum((x[:, None, :] - means) ** 2, -1)  # (n, K)
  log_comp = -0.5 * d * np.log(2 * np.pi * stds**2) - 0.5 * sq / stds**2
  return special.logsumexp(np.log(weights) + log_comp, axis=-1)


def gmm_noised_score_fd(x, alpha_bar, weights, means, stds, h=1e-5):
  """float64 grad_x log p_t(x) for one point x (D,) by central finite
  differences of gmm_log_density, p_t the mixture noised to alpha_bar:
  components N(sqrt(ab) mu_k, (ab s_k^2 + 1 - ab) I)."""
  weights, means, stds = _as_params(weights, means, stds)
  x = np.asarray(x, np.float64)[None]
  params = (weights, math.sqrt(alpha_bar) * means, np.sqrt(alpha_bar * stds**2 + 1 - alpha_bar))
  return np.array(
    [
      (gmm_log_density(x + h * e, *params) - gmm_log_density(x - h * e, *params))[0] / (2 * h)
      for e in np.eye(x.shape[1])
    ]
  )


def quantize(x, num_bins=256):
  """Rounds to the grid {-1, ..., 1} of num_bins levels (clipping first)."""
  levels = num_bins - 1
  k = np.round((np.clip(np.asarray(x, np.float64), -1, 1) + 1) * levels / 2)
  return k * 2.0 / levels - 1.0


def log_normal_interval(lo, hi):
  """log(Phi(hi) - Phi(lo)) in float64 (lo < hi, may be -inf / +inf),
  mirrored into the lower tail for precision."""
  flip = lo > 0
  a = np.where(flip, -hi, lo)
  b = np.where(flip, -lo, hi)
  log_b = stats.norm.logcdf(b)
  log_a = stats.norm.logcdf(a)
  with np.errstate(divide="ignore"):
    return log_b + np.log1p(-np.exp(log_a - log_b))


def gmm_discrete_log_prob(x, weights, means, stds, num_bins=256):
  """Exact log P(bin of x) under the mixture, x on the grid, (n, D) -> (n,)."""
  weights, means, stds = _as_params(weights, means, stds)
  x = np.asarray(x, np.float64)
  half = 1.0 / (num_bins - 1)
  lo = np.where(x < -1 + half, -np.inf, x - half)[:, None, :]  # (n, 1, D)
  hi = np.where(x > 1 - half, np.inf, x + half)[:, None, :]
  s = stds[None, :, None]
  log_mass = log_normal_interval((lo - means) / s, (hi - means) / s)
  return special.logsumexp(np.log(weights) + log_mass.sum(-1), axis=-1)


# ----------------------------------------------------------------------------
# Two-sample distance
# ----------------------------------------------------------------------------


def sliced_wasserstein(x, y, num_projections=128, seed=0):
  """Sliced 1-Wasserstein distance between equal-size samples (n, D)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.shape != y.shape:
    raise ValueError("samples must have the same shape")
  dirs = np.random.default_rng(seed).standard_normal((x.shape[1], num_projections))
  dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
  px = np.sort(x @ dirs, axis=0)
  py = np.sort(y @ dirs, axis=0)
  return float(np.mean(np.abs(px - py)))


def bits(nats):
  return np.asarray(nats) / math.log(2.0)


# ----------------------------------------------------------------------------
# Exact sampler law on one-Gaussian data
# ----------------------------------------------------------------------------


def gaussian_sampler_law(betas, mu, s, sampler="ddpm", variance="small", timesteps=None, eta=0.0):
  """Exact (mean, std) per dimension of a sampler's output, for data N(mu, s^2)
  and the exact eps, x_T ~ N(0, 1). float64, from the papers' formulas:

  eps(x_t) = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a) is linear in x_t,
  x0_pred = (x_t - sqrt(1 - a) eps) / sqrt(a), so each step is
  x_next = A x_t + B + sigma z and the output is Gaussian.
    ddpm (Ho et al. 2020, Alg. 2, 0-based t): x_{t-1} = posterior mean of
      q(x_{t-1} | x_t, x0_pred) (Bayes' rule) + sigma_t z, sigma_t^2 =
      beta~_t ("small") or beta_t ("large"); no noise at t = 0.
    ddim (Song et al. 2021, eq. 12): from t to s (a_s = 1 after the last),
      x_s = sqrt(a_s) x0_pred + sqrt(1 - a_s - sigma^2) eps + sigma z,
      sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s).
  """
  betas = np.asarray(betas, np.float64)
  num = len(betas)
  abar = np.cumprod(1.0 - betas)
  mean, var = 0.0, 1.0

  def linear_parts(t):
    a = abar[t]
    g = math.sqrt(1 - a) / (a * s * s + 1 - a)  # eps = g x - g sqrt(a) mu
    # x0_pred = (x - sqrt(1 - a) eps) / sqrt(a) = p x + q, written without the
    # division so that it holds at a zero-terminal-SNR level (a = 0) too.
    p = math.sqrt(a) * s * s / (a * s * s + 1 - a)
    q = (1 - a) * mu / (a * s * s + 1 - a)
    return a, g, p, q

  if sampler == "ddpm":
    for t in range(num - 1, -1, -1):
      a, g, p, q = linear_parts(t)
      if t > 0:
        a_prev = abar[t - 1]
        v_post = 1.0 / (1.0 / (1 - a_prev) + (1 - betas[t]) / betas[t])
        c1 = v_post * math.sqrt(a_prev) / (1 - a_prev)
        c2 = v_post * math.sqrt(1 - betas[t]) / betas[t]
        sig2 = v_post if variance == "small" else betas[t]
      else:
        c1, c2, sig2 = 1.0, 0.0, 0.0
      mean = (c1 * p + c2) * mean + c1 * q
      var = (c1 * p + c2) ** 2 * var + sig2
  elif sampler == "ddim":
    ts = list(timesteps)
    for i, t in enumerate(ts):
      a, g, p, q = linear_parts(t)
      a_next = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
      sig2 = eta**2 * (1 - a_next) / (1 - a) * (1 - a / a_next)
      c = math.sqrt(max(1 - a_next - sig2, 0.0))
      big_a = math.sqrt(a_next) * p + c * g
      big_b = math.sqrt(a_next) * q - c * g * math.sqrt(a) * mu
      mean = big_a * mean + big_b
      var = big_a**2 * var + sig2
  else:
    raise ValueError(sampler)
  return mean, math.sqrt(var)
