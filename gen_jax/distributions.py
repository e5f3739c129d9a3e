"""Log-likelihoods and KL divergences: the probabilistic losses of gen_jax.

Every function here is elementwise: it broadcasts its arguments against each
other and returns an array of the broadcast shape, with no reduction. Sum over
data dimensions (or average over a batch) at the call site, where the reader
can see it. All functions work under `jax.jit` and `jax.vmap`, in float32 and,
with `jax_enable_x64`, in float64.

Correspondences with the familiar losses (checked in tests/test_distributions.py):
  * mean squared error:  -normal_log_prob(x, m, 0) = 0.5 (x - m)^2 + 0.5 log(2 pi),
    so MSE is a Gaussian negative log-likelihood with unit variance, scaled by 2,
    minus the constant log(2 pi).
  * binary cross-entropy with logits = -bernoulli_log_prob(x, logits).
  * categorical cross-entropy with logits = -categorical_log_prob(label, logits).
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

Array = jax.Array

LOG_2PI = math.log(2.0 * math.pi)


def normal_log_prob(x, mean, logvar) -> Array:
  """log N(x; mean, exp(logvar)), elementwise.

  Formula: -0.5 * (log(2 pi) + logvar + (x - mean)^2 / exp(logvar)).

  Args:
    x, mean, logvar: broadcastable arrays (logvar is the log of the variance).

  Returns:
    Array of the broadcast shape, in nats.
  """
  x, mean, logvar = _promote(x, mean, logvar)
  return -0.5 * (LOG_2PI + logvar + jnp.square(x - mean) * jnp.exp(-logvar))


def bernoulli_log_prob(x, logits) -> Array:
  """log Bernoulli(x; sigmoid(logits)), elementwise.

  Formula: x * logits - softplus(logits), which equals
  x log sigmoid(l) + (1 - x) log sigmoid(-l) and stays finite for any finite
  logit (unlike log(sigmoid) or log(-expm1(log_sigmoid)), which reach
  log(0) in float32 once |logits| is large). Also valid for x in [0, 1]
  (the cross-entropy against a soft target).

  Args:
    x: targets in [0, 1], broadcastable with `logits`.
    logits: log-odds of x = 1.

  Returns:
    Array of the broadcast shape, in nats.
  """
  x, logits = _promote(x, logits)
  return x * logits - jax.nn.softplus(logits)


def categorical_log_prob(x, logits, axis: int = -1) -> Array:
  """log Categorical(x; softmax(logits)).

  Formula: logits[x] - logsumexp(logits), i.e. log_softmax picked at the label.

  Args:
    x: integer labels of shape logits.shape without `axis`, or one-hot (or any
      probability vector, giving the cross-entropy) of the shape of `logits`.
    logits: unnormalised log-probabilities; the class axis is `axis`.
    axis: the class axis of `logits`.

  Returns:
    Array of logits.shape without the class axis, in nats.
  """
  logits = jnp.asarray(logits)
  log_probs = jax.nn.log_softmax(logits, axis=axis)
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.integer):
    picked = jnp.take_along_axis(log_probs, jnp.expand_dims(x, axis), axis=axis)
    return jnp.squeeze(picked, axis=axis)
  return jnp.sum(x * log_probs, axis=axis)


def _exp_minus_one_minus(d) -> Array:
  """exp(d) - 1 - d without cancellation for small |d|.

  expm1(d) - d loses relative precision like eps/|d| as d -> 0 (the result is
  d^2/2), so near zero use the Taylor series to d^10/10!, accurate to float64
  for |d| < 0.1 (the first term left out, d^11/11!, is below 1e-16 of d^2/2).
  """
  small = jnp.abs(d) < 0.1
  ds = jnp.where(small, d, 0.0)
  series = ds * ds * (1 / 2 + ds * (1 / 6 + ds * (1 / 24 + ds * (
      1 / 120 + ds * (1 / 720 + ds * (1 / 5040 + ds * (1 / 40320 + ds * (
          1 / 362880 + ds * (1 / 3628800)))))))))
  dl = jnp.where(small, 1.0, d)
  return jnp.where(small, series, jnp.expm1(dl) - dl)


def normal_kl(mean1, logvar1, mean2, logvar2) -> Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise.

  Formula: 0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2)
                  + (mean1 - mean2)^2 / exp(logvar2) - 1),
  computed as 0.5 * (f(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))
  with f(d) = exp(d) - 1 - d evaluated without cancellation, so nearly equal
  Gaussians give their tiny true KL rather than 0 or a negative number.

  Returns:
    Array of the broadcast shape, in nats (>= 0).
  """
  mean1, logvar1, mean2, logvar2 = _promote(mean1, logvar1, mean2, logvar2)
  return 0.5 * (_exp_minus_one_minus(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def standard_normal_kl(mean, logvar) -> Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)), elementwise.

  Formula: 0.5 * (mean^2 + exp(logvar) - 1 - logvar), the VAE's KL term per
  latent dimension (sum over the latent axis at the call site).
  """
  mean, logvar = _promote(mean, logvar)
  return 0.5 * (jnp.square(mean) + _exp_minus_one_minus(logvar))


def _log_sub_exp(log_a, log_b) -> Array:
  """log(exp(log_a) - exp(log_b)) for log_a >= log_b."""
  diff = jnp.minimum(log_b - log_a, 0.0)
  # log(1 - exp(diff)), the two-branch form of Maechler (2012).
  log1mexp = jnp.where(diff > -math.log(2.0),
                       jnp.log(-jnp.expm1(diff)), jnp.log1p(-jnp.exp(diff)))
  return log_a + log1mexp


def _log_normal_interval(mid, half) -> Array:
  """log(Phi(mid + half) - Phi(mid - half)) for half > 0, accurate in both tails.

  An interval in the upper tail is mirrored into the lower tail, where
  log_ndtr keeps its relative precision. A narrow interval, where the CDF
  difference cancels, uses the midpoint rule with its second-order correction,
  2 half phi(mid) (1 + (mid^2 - 1) half^2 / 6), whose relative error is of
  order (half (1 + |mid|))^4: it is used when half (1 + |mid|) is below 5e-3
  in float32 (error ~1e-9) or 1e-4 in float64 (error ~1e-16).
  """
  threshold = 5e-3 if jnp.finfo(mid.dtype).bits <= 32 else 1e-4
  is_narrow = half * (1.0 + jnp.abs(mid)) < threshold
  # Each branch gets inputs that are valid for it, so that the branch not
  # taken produces no NaN (which jnp.where would pass into the gradient).
  half_wide = jnp.where(is_narrow, 1.0, half)
  lo, hi = mid - half_wide, mid + half_wide
  flip = lo > 0  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi).
  a = jnp.where(flip, -hi, lo)
  b = jnp.where(flip, -lo, hi)
  wide = _log_sub_exp(log_ndtr(b), log_ndtr(a))

  half_narrow = jnp.where(is_narrow, half, threshold)
  narrow = (-0.5 * LOG_2PI - 0.5 * jnp.square(mid) + jnp.log(2.0 * half_narrow)
            + jnp.log1p((jnp.square(mid) - 1.0) * jnp.square(half_narrow) / 6.0))
  return jnp.where(is_narrow, narrow, wide)


def discretized_gaussian_log_prob(x, mean, log_scale, num_bins: int = 256
                                  ) -> Array:
  """Log-probability of 8-bit data under a Gaussian discretized to its bins.

  The DDPM decoder p(x_0 | x_1) (Ho et al. 2020, eq. 13): data lie on
  `num_bins` levels in [-1, 1], spaced 2 / (num_bins - 1) apart; each level
  owns the bin [x - 1/(num_bins-1), x + 1/(num_bins-1)] and the two end bins
  extend to -inf and +inf. The probability of a bin is
  Phi((upper - mean) / scale) - Phi((lower - mean) / scale),
  computed in log space so that it stays finite (and accurate) far in the
  tails, where the reference implementation clamps at log(1e-12).

  Args:
    x: data on the grid {-1, -1 + 2/(num_bins-1), ..., 1}, broadcastable.
    mean: the Gaussian's mean.
    log_scale: log of its standard deviation (half the log-variance).
    num_bins: number of levels (256 for 8-bit images).

  Returns:
    Array of the broadcast shape: log-probabilities in nats (<= 0).
  """
  x, mean, log_scale = _promote(x, mean, log_scale)
  half_bin = 1.0 / (num_bins - 1)
  inv_scale = jnp.exp(-log_scale)
  # Standardised bin centre and half-width, formed directly (not as a
  # difference of its edges) so that narrow bins keep their precision.
  centered = (x - mean) * inv_scale
  half_width = half_bin * inv_scale
  # End bins: half-open. Compare with a margin of half a bin, as data may
  # arrive as float32 values of k / 127.5 - 1.
  is_first = x < -1.0 + half_bin
  is_last = x > 1.0 - half_bin
  log_cdf_upper = log_ndtr(centered + half_width)   # first bin: Phi(upper)
  log_sf_lower = log_ndtr(half_width - centered)    # last bin: 1 - Phi(lower)
  log_interior = _log_normal_interval(centered, half_width)
  return jnp.where(is_first, log_cdf_upper,
                   jnp.where(is_last, log_sf_lower, log_interior))


def _promote(*args):
  """Converts to arrays of one inexact dtype (float32, or float64 under x64)."""
  dtype = jnp.result_type(*args, float)
  return tuple(jnp.asarray(a, dtype) for a in args)
