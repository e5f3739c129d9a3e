"""Log-likelihoods and KL divergences: the probabilistic losses of gen_jax.

Every function here is elementwise: it broadcasts its arguments against each
other and returns an array of the broadcast shape, with no reduction (the
categorical and the mixture reduce only their class / component axis). Sum
over data dimensions (or average over a batch) at the call site, where the
reader can see it. All functions work under `jax.jit` and `jax.vmap`, in
float32 and, with `jax_enable_x64`, in float64.

The familiar losses are negative log-likelihoods (checked against float64
numpy and against optax in tests/test_distributions.py):

  * Squared error = Gaussian NLL with a fixed variance, up to a constant.
    For variance s^2 (logvar = log s^2) in one dimension,
        -normal_log_prob(x, m, log s^2) = (x - m)^2 / (2 s^2) + 0.5 log(2 pi s^2).
    With s^2 = 1/2 (logvar = -log 2) the scale is exactly 1:
        (x - m)^2 = -normal_log_prob(x, m, -log 2) - 0.5 log(pi),
    so the mean squared error over D dimensions is the per-dimension Gaussian
    NLL at variance 1/2 minus the constant 0.5 log(pi) = 0.5724 nats. With unit
    variance, (x - m)^2 = 2 (-normal_log_prob(x, m, 0)) - log(2 pi), and
    optax.l2_loss = 0.5 (x - m)^2 = -normal_log_prob(x, m, 0) - 0.5 log(2 pi).
    Either way the minimiser over m is the same: least squares is maximum
    likelihood of the mean under any fixed variance.
  * Binary cross-entropy with logits = Bernoulli NLL:
        optax.sigmoid_binary_cross_entropy(l, x) = -bernoulli_log_prob(x, logits=l),
    also for soft targets x in [0, 1].
  * Categorical (softmax) cross-entropy = categorical NLL:
        optax.softmax_cross_entropy_with_integer_labels(l, k)
          = -categorical_log_prob(k, l),
        optax.softmax_cross_entropy(l, one_hot) = -categorical_log_prob(one_hot, l).
  * Cross-entropy = KL + entropy: E_p[-log q] = KL(p || q) + H(p), so
    maximising the average log-likelihood of samples of p over q minimises
    KL(p || q) (see `monte_carlo_kl_terms` and experiments/mle_toy.py).

Longer than the house's ~400 lines on purpose: every likelihood and KL gen_jax uses sits in this one
module, each a few lines under its formula, so the table of probabilistic losses reads in one place.
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


def bernoulli_log_prob(x, *, logits) -> Array:
  """log Bernoulli(x; sigmoid(logits)), elementwise.

  `logits` is keyword-only: optax's sigmoid_binary_cross_entropy takes
  (logits, labels), the reverse order, and a swapped call would run silently
  (returning a positive "log-probability").

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
  """log Categorical(x; softmax(logits)), elementwise over the class axis.

  Formula: for an integer label k, log_softmax(logits)[k] =
  logits[k] - logsumexp(logits); for a one-hot (or any probability) vector
  x, sum_k x_k log_softmax(logits)_k, which is the same number for a one-hot
  x and the negative cross-entropy for a soft one. Classes with logit -inf
  (masked out) and target 0 contribute 0, not NaN.

  Args:
    x: integer labels in [0, K), of logits.shape without `axis` (labels
      outside that range give NaN, as they have no class); or one-hot / soft
      targets (float or bool) of the shape of `logits`. Other axes broadcast.
    logits: unnormalised log-probabilities with K classes on `axis`.
    axis: the class axis of `logits`.

  Returns:
    Array of logits.shape without the class axis, in nats.
  """
  logits = jnp.asarray(logits)
  x = jnp.asarray(x)
  if logits.ndim == 0:
    raise ValueError("categorical_log_prob: logits needs a class axis, got a scalar")
  axis = _normalize_axis(axis, logits.ndim, "categorical_log_prob")
  if not jnp.issubdtype(logits.dtype, jnp.inexact):
    logits = logits.astype(jnp.result_type(float))
  log_probs = jax.nn.log_softmax(logits, axis=axis)
  if jnp.issubdtype(x.dtype, jnp.integer):
    if x.ndim != logits.ndim - 1:
      raise ValueError(
        "categorical_log_prob: integer labels x must have the shape of logits "
        f"without the class axis {axis}; got x {x.shape}, logits {logits.shape}"
      )
    picked = jnp.take_along_axis(
      log_probs,
      jnp.expand_dims(x, axis),
      axis=axis,
      mode="fill",
      fill_value=jnp.nan,
      wrap_negative_indices=False,
    )
    return jnp.squeeze(picked, axis=axis)
  if x.ndim != logits.ndim or x.shape[axis] != logits.shape[axis]:
    raise ValueError(
      "categorical_log_prob: one-hot or soft targets x must have the shape of "
      f"logits (class axis {axis} of size {logits.shape[axis]}); got x "
      f"{x.shape} ({x.dtype}), logits {logits.shape}. Integer labels must "
      "have an integer dtype."
    )
  x = x.astype(log_probs.dtype)
  # 0 * (-inf) would be NaN: a class the target does not use contributes 0.
  return jnp.sum(x * jnp.where(x == 0, 0.0, log_probs), axis=axis)


def _normalize_axis(axis: int, ndim: int, name: str) -> int:
  if not -ndim <= axis < ndim:
    raise ValueError(f"{name}: axis={axis} is out of range for {ndim} dimensions")
  return axis % ndim


def gaussian_mixture_log_prob(x, logits, means, logvars) -> Array:
  """log of a mixture of univariate Gaussians, elementwise in x.

  Formula: log sum_k softmax(logits)_k N(x; means_k, exp(logvars_k)),
  computed with logsumexp over the components (finite far in the tails).

  Args:
    x: points, any shape (...).
    logits, means, logvars: the K components on the last axis, (K,) or
      broadcastable against x as (..., K); softmax(logits) are the weights.

  Returns:
    Array of the broadcast shape of x and the parameters' leading axes, nats.
  """
  x, logits, means, logvars = _promote(x, logits, means, logvars)
  log_weights = jax.nn.log_softmax(logits, axis=-1)
  return jax.nn.logsumexp(log_weights + normal_log_prob(x[..., None], means, logvars), axis=-1)


def gaussian_mixture_sample(key, logits, means, logvars, shape) -> Array:
  """Draws x ~ sum_k softmax(logits)_k N(means_k, exp(logvars_k)).

  The component k ~ Categorical(softmax(logits)), then
  x = means_k + exp(logvars_k / 2) eps with eps ~ N(0, 1). Not differentiable
  in the weights (the component choice is discrete).

  Args:
    key: a PRNG key.
    logits, means, logvars: (K,) each.
    shape: the shape of the draw.

  Returns:
    Array of `shape`, in the default float dtype.
  """
  logits, means, logvars = _promote(logits, means, logvars)
  if not logits.ndim == means.ndim == logvars.ndim == 1 or not (
    logits.shape == means.shape == logvars.shape
  ):
    raise ValueError(
      "gaussian_mixture_sample: logits, means, logvars must be vectors of one "
      f"length K; got {logits.shape}, {means.shape}, {logvars.shape}"
    )
  component_key, noise_key = jax.random.split(key)
  component = jax.random.categorical(component_key, logits, shape=tuple(shape))
  eps = jax.random.normal(noise_key, tuple(shape), means.dtype)
  return means[component] + jnp.exp(0.5 * logvars[component]) * eps


def monte_carlo_kl_terms(log_p, log_q, samples) -> Array:
  """Per-sample terms of KL(p || q) at samples of p: log p(x) - log q(x).

  KL(p || q) = E_{x~p}[log p(x) - log q(x)], so the mean of the terms over
  x_1..x_N ~ p is an unbiased estimate, with standard error
  std(terms) / sqrt(N). The lecture's identity, exact for the estimates on
  the same samples too:
      E_p[-log q(x)]  =  KL(p || q)  +  H(p),    H(p) = E_p[-log p(x)],
  i.e. the cross-entropy (the average negative log-likelihood of data from p)
  and the KL differ by a constant that does not depend on q: maximum
  likelihood = minimum KL(p || q), with the same gradients in q's parameters.

  With samples drawn from q by reparameterization (x = m + s eps, a function
  of q's parameters) and the roles swapped, monte_carlo_kl_terms(log_q,
  log_p, x) estimates the reverse KL(q || p) with pathwise gradients.

  Args:
    log_p, log_q: callables mapping samples (...,) to log-densities (...,).
    samples: x ~ p, any shape (...,).

  Returns:
    (...,) array of log p(x) - log q(x), in nats; average at the call site.
  """
  return log_p(samples) - log_q(samples)


def _exp_minus_one_minus(d) -> Array:
  """exp(d) - 1 - d without cancellation for small |d|.

  expm1(d) - d loses relative precision like eps/|d| as d -> 0 (the result is
  d^2/2), so near zero use the Taylor series to d^10/10!, accurate to float64
  for |d| < 0.1 (the first term left out, d^11/11!, is below 1e-16 of d^2/2).
  """
  small = jnp.abs(d) < 0.1
  ds = jnp.where(small, d, 0.0)
  series = (
    ds
    * ds
    * (
      1 / 2
      + ds
      * (
        1 / 6
        + ds
        * (
          1 / 24
          + ds
          * (
            1 / 120
            + ds
            * (
              1 / 720 + ds * (1 / 5040 + ds * (1 / 40320 + ds * (1 / 362880 + ds * (1 / 3628800))))
            )
          )
        )
      )
    )
  )
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
  return 0.5 * (
    _exp_minus_one_minus(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
  )


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
  log1mexp = jnp.where(diff > -math.log(2.0), jnp.log(-jnp.expm1(diff)), jnp.log1p(-jnp.exp(diff)))
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
  narrow = (
    -0.5 * LOG_2PI
    - 0.5 * jnp.square(mid)
    + jnp.log(2.0 * half_narrow)
    + jnp.log1p((jnp.square(mid) - 1.0) * jnp.square(half_narrow) / 6.0)
  )
  return jnp.where(is_narrow, narrow, wide)


def discretized_gaussian_log_prob(x, *, mean, logvar, num_bins: int = 256) -> Array:
  """Log-probability of 8-bit data under a Gaussian discretized to its bins.

  The DDPM decoder p(x_0 | x_1) (Ho et al. 2020, eq. 13): data lie on
  `num_bins` levels in [-1, 1], spaced 2 / (num_bins - 1) apart; each level
  owns the bin [x - 1/(num_bins-1), x + 1/(num_bins-1)] and the two end bins
  extend to -inf and +inf. The probability of a bin is
  Phi((upper - mean) / scale) - Phi((lower - mean) / scale), scale =
  exp(logvar / 2), computed in log space so that it stays finite (and
  accurate) far in the tails, where the reference implementation clamps at
  log(1e-12).

  The Gaussian is given by its log-variance, as everywhere in this module
  (normal_log_prob, normal_kl: one scale convention); the DDPM code's
  log_scales is logvar / 2. mean and logvar are keyword-only.

  Args:
    x: data on the grid {-1, -1 + 2/(num_bins-1), ..., 1}, broadcastable.
    mean: the Gaussian's mean.
    logvar: log of its variance.
    num_bins: number of levels (256 for 8-bit images).

  Returns:
    Array of the broadcast shape: log-probabilities in nats (<= 0).
  """
  x, mean, logvar = _promote(x, mean, logvar)
  half_bin = 1.0 / (num_bins - 1)
  inv_scale = jnp.exp(-0.5 * logvar)
  # Standardised bin centre and half-width, formed directly (not as a
  # difference of its edges) so that narrow bins keep their precision.
  centered = (x - mean) * inv_scale
  half_width = half_bin * inv_scale
  # End bins: half-open. Compare with a margin of half a bin, as data may
  # arrive as float32 values of k / 127.5 - 1.
  is_first = x < -1.0 + half_bin
  is_last = x > 1.0 - half_bin
  log_cdf_upper = log_ndtr(centered + half_width)  # first bin: Phi(upper)
  log_sf_lower = log_ndtr(half_width - centered)  # last bin: 1 - Phi(lower)
  log_interior = _log_normal_interval(centered, half_width)
  return jnp.where(is_first, log_cdf_upper, jnp.where(is_last, log_sf_lower, log_interior))


def discretized_logistic_log_prob(x, *, mean, log_scale, num_bins: int = 256) -> Array:
  """Log-probability of 8-bit data under a logistic discretized to its bins.

  The bins are those of `discretized_gaussian_log_prob` (levels 2/(num_bins-1)
  apart in [-1, 1], end bins to -inf and +inf); the logistic has CDF
  sigmoid((x - mean) / s) with s = exp(log_scale) (its standard deviation is
  s pi / sqrt(3)). With a = (lower - mean) / s and b = (upper - mean) / s,

    sigmoid(b) - sigmoid(a) = sigmoid(b) sigmoid(-a) (1 - exp(-(b - a))),

  so log P = log_sigmoid(b) + log_sigmoid(-a) + log(-expm1(-w)), w = b - a =
  2 half_bin / s formed directly. No term cancels: this is accurate in both
  tails and for bins far narrower than the scale (where the CDF difference
  that PixelCNN++ and VDVAE compute cancels, and they switch to the density
  at the bin centre below 1e-5). First bin: log_sigmoid(b); last bin:
  log_sigmoid(-a).

  Args:
    x: data on the grid {-1, -1 + 2/(num_bins-1), ..., 1}, broadcastable.
    mean: the logistic's location (keyword-only).
    log_scale: log of its scale s (keyword-only; PixelCNN++'s log_scales).
    num_bins: number of levels (256 for 8-bit images).

  Returns:
    Array of the broadcast shape: log-probabilities in nats (<= 0).
  """
  x, mean, log_scale = _promote(x, mean, log_scale)
  half_bin = 1.0 / (num_bins - 1)
  inv_scale = jnp.exp(-log_scale)
  centered = (x - mean) * inv_scale
  half_width = half_bin * inv_scale
  upper = centered + half_width  # b
  lower = centered - half_width  # a
  log_cdf_upper = jax.nn.log_sigmoid(upper)
  log_sf_lower = jax.nn.log_sigmoid(-lower)
  log_interior = log_cdf_upper + log_sf_lower + _log1mexp(2.0 * half_width)
  is_first = x < -1.0 + half_bin
  is_last = x > 1.0 - half_bin
  return jnp.where(is_first, log_cdf_upper, jnp.where(is_last, log_sf_lower, log_interior))


def discretized_logistic_mixture_log_prob(
  x, *, logits, means, log_scales, num_bins: int = 256
) -> Array:
  """Log-probability of 8-bit data under a mixture of K discretized logistics.

  Formula: log sum_k softmax(logits)_k P_k(x), P_k the bin probability of
  `discretized_logistic_log_prob` with (means_k, log_scales_k), by logsumexp
  over the components. Each element of x (each channel of each pixel) has its
  own mixture: PixelCNN++'s coupling of a pixel's RGB means and its mixture
  weights shared by the three channels are not built in (a caller that wants
  them shifts `means` by the observed channels and sums
  `discretized_logistic_log_prob` over channels before the logsumexp).

  Args:
    x: data on the grid, shape (...).
    logits, means, log_scales: keyword-only, the K components on the last
      axis, (..., K), broadcastable against x[..., None].
    num_bins: number of levels.

  Returns:
    Array of the broadcast shape without the component axis, in nats (<= 0).
  """
  x, logits, means, log_scales = _promote(x, logits, means, log_scales)
  log_weights = jax.nn.log_softmax(logits, axis=-1)
  component = discretized_logistic_log_prob(
    x[..., None], mean=means, log_scale=log_scales, num_bins=num_bins
  )
  return jax.nn.logsumexp(log_weights + component, axis=-1)


def discretized_logistic_mixture_mean(*, logits, means) -> Array:
  """The mixture's mean before discretization, sum_k softmax(logits)_k means_k, clipped to
  [-1, 1] (the discretized distribution's mean up to the edge bins' mass): (...,)."""
  logits, means = _promote(logits, means)
  return jnp.clip(jnp.sum(jax.nn.softmax(logits, axis=-1) * means, axis=-1), -1.0, 1.0)


def _log1mexp(w) -> Array:
  """log(1 - exp(-w)) for w > 0 (Maechler 2012's two branches)."""
  small = w < math.log(2.0)
  # Each branch sees only inputs valid for it, so the one not taken puts no NaN in the gradient.
  return jnp.where(
    small,
    jnp.log(-jnp.expm1(-jnp.where(small, w, 1.0))),
    jnp.log1p(-jnp.exp(-jnp.where(small, 1.0, w))),
  )


def _promote(*args):
  """Converts to arrays of one inexact dtype (float32, or float64 under x64)."""
  dtype = jnp.result_type(*args, float)
  return tuple(jnp.asarray(a, dtype) for a in args)
