"""Tests of gen_jax.distributions against independent float64 references.

The references are written here from the formulas, in numpy/scipy float64
(never by calling the code under test), and the float32 results are compared
with the reference evaluated at the float32-rounded inputs, so that the
tolerance measures the computation, not the rounding of the inputs.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

from gen_jax import distributions as D

LOG_2PI = math.log(2 * math.pi)


def disc_log_scale(x, mean, log_scale, num_bins=256):
  """The discretized Gaussian by its log standard deviation, as the float64
  references below are written (the function takes logvar = 2 log_scale)."""
  return D.discretized_gaussian_log_prob(x, mean=mean, logvar=2.0 * log_scale, num_bins=num_bins)


# Jitted once at module level (eager dispatch of the many small ops is slow).
disc = jax.jit(disc_log_scale, static_argnames="num_bins")
disc_grad = jax.jit(jax.vmap(jax.grad(disc_log_scale, argnums=(1, 2))))


def f64(a):
  return np.asarray(a, np.float64)


def f32(a):
  return np.asarray(a, np.float32)


# ---------------------------------------------------------------------------
# Independent float64 references.
# ---------------------------------------------------------------------------


def ref_expm1_minus(d):
  """exp(d) - 1 - d in float64: a 30-term Taylor series near 0, else expm1."""
  d = f64(d)
  k = np.arange(2, 32, dtype=np.float64)
  series = np.sum(d[..., None] ** k / special.factorial(k), axis=-1)
  return np.where(np.abs(d) < 0.5, series, np.expm1(d) - d)


def ref_normal_kl(m1, lv1, m2, lv2):
  """The textbook closed form, with exp(d) - 1 - d kept accurate near d = 0."""
  m1, lv1, m2, lv2 = np.broadcast_arrays(f64(m1), f64(lv1), f64(m2), f64(lv2))
  return 0.5 * (ref_expm1_minus(lv1 - lv2) + (m1 - m2) ** 2 / np.exp(lv2))


def ref_normal_kl_textbook(m1, lv1, m2, lv2):
  s1, s2 = np.exp(0.5 * f64(lv1)), np.exp(0.5 * f64(lv2))
  return np.log(s2 / s1) + (s1**2 + (f64(m1) - f64(m2)) ** 2) / (2 * s2**2) - 0.5


_GL_X, _GL_W = np.polynomial.legendre.leggauss(64)


def ref_log_normal_interval(a, b):
  """log(Phi(b) - Phi(a)) in float64 for a < b, elementwise.

  Intervals up to one standard deviation wide: 64-point Gauss-Legendre
  quadrature of the density, summed in log space (no cancellation, no
  underflow). Wider ones: mirrored into the lower tail and computed from
  scipy's log_ndtr, where log(1 - Phi(a)/Phi(b)) loses nothing for wide b - a.
  """
  a, b = np.broadcast_arrays(f64(a), f64(b))
  h, c = 0.5 * (b - a), 0.5 * (a + b)
  t = c[..., None] + h[..., None] * _GL_X
  quad = special.logsumexp(stats.norm.logpdf(t), b=_GL_W * h[..., None], axis=-1)
  flip = a > 0
  aa, bb = np.where(flip, -b, a), np.where(flip, -a, b)
  la, lb = special.log_ndtr(aa), special.log_ndtr(bb)
  with np.errstate(divide="ignore", invalid="ignore"):
    wide = lb + np.log(-np.expm1(la - lb))
  return np.where(b - a <= 1.0, quad, wide)


def ref_discretized(x, mean, log_scale, num_bins=256):
  x, mean, log_scale = np.broadcast_arrays(f64(x), f64(mean), f64(log_scale))
  hb = 1.0 / (num_bins - 1)
  s = np.exp(log_scale)
  up, lo = (x - mean + hb) / s, (x - mean - hb) / s
  first, last = x < -1 + hb, x > 1 - hb
  interior = ref_log_normal_interval(
    np.where(first | last, -1.0, lo), np.where(first | last, 1.0, up)
  )
  return np.where(first, stats.norm.logcdf(up), np.where(last, stats.norm.logsf(lo), interior))


def ref_discretized_grad(x, mean, log_scale, num_bins=256):
  """Analytic (d/dmean, d/dlog_scale) of log P, from the float64 reference."""
  x, mean, log_scale = np.broadcast_arrays(f64(x), f64(mean), f64(log_scale))
  lp = ref_discretized(x, mean, log_scale, num_bins)
  hb = 1.0 / (num_bins - 1)
  s = np.exp(log_scale)
  up, lo = (x - mean + hb) / s, (x - mean - hb) / s
  first, last = x < -1 + hb, x > 1 - hb
  # phi(bound) / P, with the missing bound of an end bin contributing 0.
  r_up = np.where(last, 0.0, np.exp(stats.norm.logpdf(up) - lp))
  r_lo = np.where(first, 0.0, np.exp(stats.norm.logpdf(lo) - lp))
  d_mean = -(r_up - r_lo) / s
  d_log_scale = -(np.where(last, 0.0, up * r_up) - np.where(first, 0.0, lo * r_lo))
  return d_mean, d_log_scale


def grid(num_bins=256):
  return np.arange(num_bins) / ((num_bins - 1) / 2) - 1.0


# Sanity of the reference itself (so that a broken reference cannot pass).
def test_reference_discretized_is_a_distribution():
  x = grid()
  for mean, log_scale in [(0.1, -3.0), (0.0, 3.0), (-0.999, -6.0), (0.7, -9.0)]:
    lp = ref_discretized(x, mean, log_scale)
    assert abs(special.logsumexp(lp)) < 1e-13
  # quadrature and log_ndtr branches agree where both are valid
  a = np.array([-30.0, -3.0, -0.2, 2.0])
  np.testing.assert_allclose(ref_log_normal_interval(a, a + 0.9), _ref_wide(a, a + 0.9), rtol=1e-13)
  np.testing.assert_allclose(
    ref_log_normal_interval(-0.2, 0.7),
    math.log(stats.norm.cdf(0.7) - stats.norm.cdf(-0.2)),
    rtol=1e-14,
  )


def _ref_wide(a, b):
  flip = a > 0
  aa, bb = np.where(flip, -b, a), np.where(flip, -a, b)
  la, lb = special.log_ndtr(aa), special.log_ndtr(bb)
  return lb + np.log(-np.expm1(la - lb))


# ---------------------------------------------------------------------------
# normal / bernoulli / categorical log-probabilities.
# ---------------------------------------------------------------------------


def test_normal_log_prob_vs_scipy():
  rng = np.random.default_rng(0)
  x, m = f32(rng.normal(size=(50,)) * 3), f32(rng.normal(size=(50,)))
  lv = f32(rng.uniform(-6, 4, size=(50,)))
  out = D.normal_log_prob(x, m, lv)
  assert out.dtype == jnp.float32 and out.shape == (50,)
  ref = stats.norm.logpdf(f64(x), f64(m), np.exp(0.5 * f64(lv)))
  np.testing.assert_allclose(f64(out), ref, rtol=1e-5, atol=1e-5)


def test_bernoulli_log_prob_vs_float64_formula():
  rng = np.random.default_rng(1)
  logits = f32(rng.normal(size=(200,)) * 6)
  x = f32(np.concatenate([rng.integers(0, 2, 100), rng.uniform(0, 1, 100)]))
  p = 1 / (1 + np.exp(-f64(logits)))
  ref = f64(x) * np.log(p) + (1 - f64(x)) * np.log1p(-p)
  np.testing.assert_allclose(f64(D.bernoulli_log_prob(x, logits=logits)), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("logit", [1000.0, -1000.0, 90.0, -90.0])
@pytest.mark.parametrize("x", [0.0, 1.0, 0.3])
def test_bernoulli_extreme_logits_finite(logit, x):
  val = D.bernoulli_log_prob(jnp.float32(x), logits=jnp.float32(logit))
  # exact: x*l - softplus(l) = x*l - max(l, 0) - log1p(exp(-|l|))
  exact = x * logit - max(logit, 0.0) - math.log1p(math.exp(-abs(logit)))
  assert val.dtype == jnp.float32
  np.testing.assert_allclose(float(val), exact, rtol=1e-6, atol=1e-30)
  g_logit, g_x = jax.grad(lambda x, l: D.bernoulli_log_prob(x, logits=l), argnums=(1, 0))(
    jnp.float32(x), jnp.float32(logit)
  )
  # d/dl = x - sigmoid(l); d/dx = l
  np.testing.assert_allclose(float(g_logit), x - special.expit(logit), atol=1e-6)
  np.testing.assert_allclose(float(g_x), logit, rtol=1e-6)


def _ref_log_softmax(logits, axis=-1):
  logits = f64(logits)
  return logits - special.logsumexp(logits, axis=axis, keepdims=True)


@pytest.mark.slow
def test_categorical_integer_and_one_hot():
  rng = np.random.default_rng(2)
  logits = f32(rng.normal(size=(4, 6, 10)) * 3)
  labels = rng.integers(0, 10, size=(4, 6))
  ls = _ref_log_softmax(logits)
  ref = np.take_along_axis(ls, labels[..., None], axis=-1)[..., 0]
  out_int = D.categorical_log_prob(jnp.asarray(labels, jnp.int32), logits)
  assert out_int.shape == (4, 6)
  np.testing.assert_allclose(f64(out_int), ref, rtol=1e-5, atol=1e-5)
  one_hot = np.eye(10, dtype=np.float32)[labels]
  np.testing.assert_allclose(
    f64(D.categorical_log_prob(one_hot, logits)), ref, rtol=1e-5, atol=1e-5
  )
  # soft targets: the cross-entropy sum_k p_k log softmax_k
  soft = f32(special.softmax(rng.normal(size=(4, 6, 10)), axis=-1))
  np.testing.assert_allclose(
    f64(D.categorical_log_prob(soft, logits)), np.sum(f64(soft) * ls, axis=-1), rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow
def test_categorical_other_axis():
  rng = np.random.default_rng(3)
  logits = f32(rng.normal(size=(7, 3, 5)))  # class axis 0
  labels = rng.integers(0, 7, size=(3, 5))
  ls = _ref_log_softmax(logits, axis=0)
  ref = np.take_along_axis(ls, labels[None], axis=0)[0]
  np.testing.assert_allclose(
    f64(D.categorical_log_prob(jnp.asarray(labels), logits, axis=0)), ref, rtol=1e-5, atol=1e-5
  )
  one_hot = np.moveaxis(np.eye(7, dtype=np.float32)[labels], -1, 0)
  np.testing.assert_allclose(
    f64(D.categorical_log_prob(one_hot, logits, axis=0)), ref, rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow
def test_categorical_extreme_logits_finite():
  logits = jnp.array([[1000.0, -1000.0, 0.0]], jnp.float32)
  out = D.categorical_log_prob(jnp.array([1]), logits)
  np.testing.assert_allclose(f64(out), [-2000.0], rtol=1e-6)
  g = jax.grad(lambda l: D.categorical_log_prob(jnp.array([1]), l).sum())(logits)
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(f64(g), [[-1.0, 1.0, 0.0]], atol=1e-6)


# Correspondences documented at the top of distributions.py: each loss against
# its float64 formula written here and against optax's own loss.


@pytest.mark.parametrize("variance", [0.5, 1.0, 0.01, 7.0])
def test_squared_error_is_gaussian_nll_with_fixed_variance(variance):
  rng = np.random.default_rng(4)
  x, m = f32(rng.normal(size=(2, 8, 20)) * 2)
  logvar = np.float32(math.log(variance))
  nll = f64(-D.normal_log_prob(x, m, logvar))
  s2 = f64(np.exp(logvar))  # the float32 variance actually used
  sq = (f64(x) - f64(m)) ** 2
  np.testing.assert_allclose(
    nll, sq / (2 * s2) + 0.5 * np.log(2 * np.pi * s2), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    nll, -stats.norm.logpdf(f64(x), f64(m), np.sqrt(s2)), rtol=1e-5, atol=1e-5
  )


def test_mse_is_gaussian_nll_at_variance_half():
  rng = np.random.default_rng(4)
  x, m = f32(rng.normal(size=(2, 8, 20)))
  sq = (f64(x) - f64(m)) ** 2
  # s^2 = 1/2: (x - m)^2 = -log N(x; m, 1/2) - 0.5 log(pi), per dimension
  nll_half = f64(-D.normal_log_prob(x, m, -math.log(2.0)))
  np.testing.assert_allclose(nll_half - 0.5 * math.log(math.pi), sq, atol=2e-5)
  np.testing.assert_allclose(
    nll_half - 0.5 * math.log(math.pi), f64(optax.squared_error(m, x)), atol=2e-5
  )
  # the mean squared error of a batch is the mean per-dimension NLL minus the constant
  np.testing.assert_allclose(nll_half.mean() - 0.5 * math.log(math.pi), sq.mean(), rtol=1e-5)
  # unit variance: optax.l2_loss = 0.5 (x - m)^2 = NLL - 0.5 log(2 pi)
  nll_unit = f64(-D.normal_log_prob(x, m, 0.0))
  np.testing.assert_allclose(nll_unit - 0.5 * LOG_2PI, f64(optax.l2_loss(m, x)), atol=2e-5)
  np.testing.assert_allclose(2 * nll_unit - LOG_2PI, sq, atol=2e-5)


def test_bce_is_bernoulli_nll():
  rng = np.random.default_rng(5)
  logits = f32(rng.normal(size=(300,)) * 20)
  labels = f32(rng.uniform(size=(300,)))
  labels[:100] = np.round(labels[:100])
  nll = f64(-D.bernoulli_log_prob(labels, logits=logits))
  # float64: -(x log sigmoid(l) + (1 - x) log sigmoid(-l))
  ref = -(
    f64(labels) * special.log_expit(f64(logits))
    + (1 - f64(labels)) * special.log_expit(-f64(logits))
  )
  np.testing.assert_allclose(nll, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    nll, f64(optax.sigmoid_binary_cross_entropy(logits, labels)), rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow
def test_categorical_ce_is_categorical_nll():
  rng = np.random.default_rng(6)
  logits = f32(rng.normal(size=(16, 12)) * 4)
  labels = rng.integers(0, 12, size=(16,))
  # float64: -(l_k - log sum_j exp l_j)
  ref = -(f64(logits)[np.arange(16), labels] - special.logsumexp(f64(logits), -1))
  nll = f64(-D.categorical_log_prob(jnp.asarray(labels), logits))
  np.testing.assert_allclose(nll, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    nll, f64(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), rtol=1e-5, atol=1e-5
  )
  one_hot = jax.nn.one_hot(labels, 12)
  nll_one_hot = f64(-D.categorical_log_prob(one_hot, logits))
  np.testing.assert_allclose(nll_one_hot, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    nll_one_hot, f64(optax.softmax_cross_entropy(logits, one_hot)), rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow
def test_categorical_masked_classes_and_bad_labels():
  # a class with logit -inf has probability 0: one-hot targets that do not
  # use it give the finite answer (0 * -inf must not become NaN) ...
  logits = jnp.array([[0.0, 1.0, -jnp.inf], [2.0, -jnp.inf, 0.5]], jnp.float32)
  labels = np.array([1, 0])
  ref = np.array([1.0 - np.logaddexp(0.0, 1.0), 2.0 - np.logaddexp(2.0, 0.5)])
  for x in (jnp.asarray(labels), jax.nn.one_hot(labels, 3)):
    out = D.categorical_log_prob(x, logits)
    np.testing.assert_allclose(f64(out), ref, rtol=1e-6)
  g = jax.grad(lambda l: D.categorical_log_prob(jax.nn.one_hot(labels, 3), l).sum())(logits)
  # d/dl log softmax(l)[y] = onehot(y) - softmax(l); the masked class has probability 0
  probs = np.exp(f64(logits) - special.logsumexp(f64(logits), axis=1, keepdims=True))
  np.testing.assert_allclose(f64(g), np.eye(3)[labels] - probs, atol=1e-6)
  # ... and a label on a masked class is impossible: -inf
  assert f64(D.categorical_log_prob(jnp.array([2, 1]), logits)).tolist() == [-np.inf] * 2
  # labels outside [0, K) have no class: NaN, never a wrapped-around class
  out = f64(jax.jit(D.categorical_log_prob)(jnp.array([3, -1]), logits))
  assert np.all(np.isnan(out))


@pytest.mark.parametrize(
  "x,logits,match",
  [
    (np.zeros((4,), np.float32), np.zeros((4, 4)), "one-hot or soft targets"),
    (np.zeros((4, 3)), np.zeros((4, 4)), "class axis -1|class axis 1"),
    (np.zeros((4, 1), np.int32), np.zeros((4, 4)), "integer labels"),
    (np.zeros((), np.int32), np.zeros(()), "class axis, got a scalar"),
  ],
)
def test_categorical_bad_shapes_raise(x, logits, match):
  with pytest.raises(ValueError, match=match):
    D.categorical_log_prob(x, logits)
  with pytest.raises(ValueError, match="axis=2 is out of range"):
    D.categorical_log_prob(np.zeros((4,), np.int32), np.zeros((4, 4)), axis=2)


# ---------------------------------------------------------------------------
# Gaussian mixtures and Monte Carlo KL.
# ---------------------------------------------------------------------------


def ref_mixture_log_prob(x, weights, means, stds):
  """float64 log sum_k w_k N(x; mu_k, s_k^2) for 1-D x, via scipy."""
  x = f64(x)[..., None]
  return special.logsumexp(
    np.log(f64(weights)) + stats.norm.logpdf(x, f64(means), f64(stds)), axis=-1
  )


MIX = dict(
  weights=np.array([0.2, 0.5, 0.3]),
  means=np.array([-3.0, 0.5, 4.0]),
  stds=np.array([0.4, 1.3, 0.7]),
)


def _mix_params(weights, means, stds):
  """(logits, means, logvars) in float32; the logits are shifted on purpose
  (softmax is invariant to it)."""
  return (f32(np.log(weights) + 1.7), f32(means), f32(2 * np.log(stds)))


@pytest.mark.slow
def test_gaussian_mixture_log_prob_vs_scipy():
  rng = np.random.default_rng(20)
  # the bulk and far tails, where every component's density underflows float32
  x = f32(np.concatenate([rng.normal(size=500) * 4, [-60.0, 45.0, 200.0]]))
  out = D.gaussian_mixture_log_prob(x, *_mix_params(**MIX))
  assert out.shape == x.shape and out.dtype == jnp.float32
  ref = ref_mixture_log_prob(
    x, MIX["weights"], f32(MIX["means"]), np.exp(0.5 * f64(f32(2 * np.log(MIX["stds"]))))
  )
  assert np.all(np.isfinite(f64(out))) and ref.min() < -1e4
  np.testing.assert_allclose(f64(out), ref, rtol=1e-5, atol=1e-5)
  # a density: integrates to 1 (float64 trapezoid on a fine grid)
  grid_x = np.linspace(-12, 14, 20001)
  density = np.exp(f64(D.gaussian_mixture_log_prob(f32(grid_x), *_mix_params(**MIX))))
  np.testing.assert_allclose(np.trapezoid(density, grid_x), 1.0, rtol=1e-5)
  # one component is the Gaussian
  np.testing.assert_allclose(
    f64(D.gaussian_mixture_log_prob(x, f32([0.3]), f32([0.5]), f32([0.2]))),
    f64(D.normal_log_prob(x, 0.5, 0.2)),
    rtol=1e-6,
    atol=1e-6,
  )


@pytest.mark.slow
def test_gaussian_mixture_log_prob_broadcasts_and_jits():
  rng = np.random.default_rng(21)
  x = f32(rng.normal(size=(5, 3)))
  logits, means, logvars = (f32(rng.normal(size=(3, 4))) for _ in range(3))
  out = jax.jit(D.gaussian_mixture_log_prob)(x, logits, means, logvars)
  assert out.shape == (5, 3)
  w = special.softmax(f64(logits), -1)
  ref = special.logsumexp(
    np.log(w) + stats.norm.logpdf(f64(x)[..., None], f64(means), np.exp(0.5 * f64(logvars))),
    axis=-1,
  )
  np.testing.assert_allclose(f64(out), ref, rtol=1e-5, atol=1e-5)
  vmapped = jax.vmap(D.gaussian_mixture_log_prob, in_axes=(0, None, None, None))(
    x[:, 0], logits[0], means[0], logvars[0]
  )
  np.testing.assert_allclose(f64(vmapped), f64(out[:, 0]), rtol=1e-6)


def test_gaussian_mixture_sample_law():
  params = _mix_params(**MIX)
  n = 200_000
  x = f64(jax.jit(D.gaussian_mixture_sample, static_argnums=4)(jax.random.key(22), *params, (n,)))
  assert x.shape == (n,)
  w, mu, s = MIX["weights"], MIX["means"], MIX["stds"]
  mean = np.sum(w * mu)
  var = np.sum(w * (s**2 + mu**2)) - mean**2
  assert abs(x.mean() - mean) < 5 * math.sqrt(var / n)
  assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / n) * 2  # (kurtosis > 3)
  # the whole law: Kolmogorov-Smirnov against the mixture's float64 CDF
  cdf = lambda v: np.sum(w * stats.norm.cdf(np.asarray(v)[..., None], mu, s), -1)
  assert stats.kstest(x[:20_000], cdf).pvalue > 1e-3
  # and a wrong law is rejected by the same test (the test has power)
  assert stats.kstest(x[:20_000] + 0.1, cdf).pvalue < 1e-6
  with pytest.raises(ValueError, match="vectors of one length K"):
    D.gaussian_mixture_sample(jax.random.key(0), params[0], params[1][:2], params[2], (3,))


def test_monte_carlo_kl_terms_gaussians_vs_closed_form():
  rng = np.random.default_rng(23)
  n = 100_000
  for m1, lv1, m2, lv2 in [(0.3, 0.5, -0.4, -0.3), (-1.0, -1.0, 0.5, 1.0)]:
    x = f32(rng.normal(m1, math.exp(lv1 / 2), size=n))
    terms = f64(
      D.monte_carlo_kl_terms(
        lambda v: D.normal_log_prob(v, m1, lv1), lambda v: D.normal_log_prob(v, m2, lv2), x
      )
    )
    assert terms.shape == (n,)
    se = terms.std() / math.sqrt(n)
    assert abs(terms.mean() - ref_normal_kl(m1, lv1, m2, lv2)) < 5 * se


@pytest.mark.slow
def test_monte_carlo_kl_terms_mixtures_vs_quadrature():
  """KL(p || q) between mixtures, both directions, against float64 quadrature."""
  p = MIX
  q = dict(weights=np.array([0.6, 0.4]), means=np.array([-1.0, 2.0]), stds=np.array([1.5, 2.0]))
  grid_x = np.linspace(-20, 25, 200_001)
  log_p_ref, log_q_ref = (ref_mixture_log_prob(grid_x, **d) for d in (p, q))
  log_p = lambda v: D.gaussian_mixture_log_prob(v, *_mix_params(**p))
  log_q = lambda v: D.gaussian_mixture_log_prob(v, *_mix_params(**q))
  for a, b, log_a, log_b, params_a in [
    (log_p_ref, log_q_ref, log_p, log_q, p),
    (log_q_ref, log_p_ref, log_q, log_p, q),
  ]:
    kl_ref = np.trapezoid(np.exp(a) * (a - b), grid_x)
    x = D.gaussian_mixture_sample(jax.random.key(24), *_mix_params(**params_a), (200_000,))
    terms = f64(D.monte_carlo_kl_terms(log_a, log_b, x))
    se = terms.std() / math.sqrt(terms.size)
    assert kl_ref > 20 * se
    assert abs(terms.mean() - kl_ref) < 5 * se, (terms.mean(), kl_ref, se)


# ---------------------------------------------------------------------------
# KL divergences.
# ---------------------------------------------------------------------------


def test_normal_kl_vs_closed_form():
  rng = np.random.default_rng(7)
  m1, m2 = f32(rng.normal(size=(2, 500)) * 2)
  lv1, lv2 = f32(rng.uniform(-5, 5, size=(2, 500)))
  out = D.normal_kl(m1, lv1, m2, lv2)
  ref = ref_normal_kl(m1, lv1, m2, lv2)
  # the two float64 references agree (away from near-equal pairs)
  np.testing.assert_allclose(ref, ref_normal_kl_textbook(m1, lv1, m2, lv2), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(f64(out), ref, rtol=2e-5, atol=1e-6)
  assert np.all(f64(out) >= 0)


def test_normal_kl_monte_carlo():
  rng = np.random.default_rng(8)
  params = [(0.3, 0.5, -0.4, -0.3), (-1.0, -1.0, 0.5, 1.0), (2.0, 0.0, 0.0, 0.0)]
  for m1, lv1, m2, lv2 in params:
    s1, s2 = math.exp(lv1 / 2), math.exp(lv2 / 2)
    z = rng.normal(m1, s1, size=200_000)
    terms = stats.norm.logpdf(z, m1, s1) - stats.norm.logpdf(z, m2, s2)
    se = terms.std() / math.sqrt(z.size)
    kl = float(D.normal_kl(m1, lv1, m2, lv2))
    assert abs(kl - terms.mean()) < 5 * se + 1e-4, (kl, terms.mean(), se)


@pytest.mark.slow
def test_normal_kl_nonnegative_and_zero_on_equal():
  rng = np.random.default_rng(9)
  m1, m2 = f32(rng.normal(size=(2, 2000)) * 10)
  lv1, lv2 = f32(rng.uniform(-20, 20, size=(2, 2000)))
  # include near-equal pairs, where a cancelling formula goes negative
  lv2[:500] = lv1[:500] * f32(1 + 1e-6)
  m2[:500] = m1[:500]
  assert np.all(f64(D.normal_kl(m1, lv1, m2, lv2)) >= 0)
  np.testing.assert_array_equal(f64(D.normal_kl(m1, lv1, m1, lv1)), 0.0)


@pytest.mark.parametrize("ratio", [1.0001, 1.00001])
@pytest.mark.parametrize("base_lv", [-3.0, 0.0, 2.5])
def test_normal_kl_near_equal(base_lv, ratio):
  # std ratio 1.0001: KL ~ (2 log 1.0001)^2 / 4 ~ 1e-8 (1e-10 for 1.00001).
  # lv1 - lv2 is exact in float32 (Sterbenz), so the reference at the
  # float32 inputs is the exact answer; a cancelling expm1(d) - d is off by
  # ~6e-4 (1.0001) and ~6e-3 (1.00001) relative.
  lv1 = np.float32(base_lv)
  lv2 = np.float32(base_lv - 2 * math.log(ratio))
  ref = ref_normal_kl(0.0, lv1, 0.0, lv2)
  assert 0.2 < ref / math.log(ratio) ** 2 < 5
  kl = float(D.normal_kl(jnp.float32(0.0), lv1, jnp.float32(0.0), lv2))
  np.testing.assert_allclose(kl, ref, rtol=1e-4)
  # nearly equal means too: KL = dm^2 / (2 var2)
  dm = np.float32(1e-4)
  ref_m = ref_normal_kl(dm, lv1, 0.0, lv1)
  np.testing.assert_allclose(float(D.normal_kl(dm, lv1, 0.0, lv1)), ref_m, rtol=1e-5)


@pytest.mark.slow
def test_standard_normal_kl():
  rng = np.random.default_rng(10)
  m = f32(rng.normal(size=(300,)) * 2)
  lv = f32(np.concatenate([rng.uniform(-8, 5, 290), [1e-5, -1e-5, 0.0] * 3, [2e-4]]))
  out = D.standard_normal_kl(m, lv)
  np.testing.assert_allclose(f64(out), f64(D.normal_kl(m, lv, 0.0, 0.0)), rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(
    f64(out), 0.5 * (f64(m) ** 2 + ref_expm1_minus(f64(lv))), rtol=2e-5, atol=1e-12
  )


# ---------------------------------------------------------------------------
# Discretized Gaussian.
# ---------------------------------------------------------------------------


def test_discretized_random_realistic():
  rng = np.random.default_rng(11)
  n = 4000
  k = rng.integers(0, 256, size=n)
  k[:20] = 0
  k[20:40] = 255
  x = f32(k / 127.5 - 1)
  mean = f32(np.clip(x + rng.normal(size=n) * 0.3, -1.3, 1.3))
  log_scale = f32(rng.uniform(-7.0, 0.5, size=n))
  out = disc(x, mean, log_scale)
  ref = ref_discretized(x, mean, log_scale)
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(f64(out))) and np.all(f64(out) <= 0)
  np.testing.assert_allclose(f64(out), ref, rtol=1e-5, atol=1e-5)


def test_discretized_end_bins():
  x = f32([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
  mean = f32([-1.0, 0.0, -3.0, 1.0, 0.0, 3.0])
  log_scale = f32([-3.0, -1.0, 0.0, -3.0, -1.0, 0.0])
  out = f64(disc(x, mean, log_scale))
  hb = 1 / 255
  s = np.exp(f64(log_scale))
  ref = np.where(
    x < 0, stats.norm.logcdf((f64(x) - mean + hb) / s), stats.norm.logsf((f64(x) - mean - hb) / s)
  )
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  # an end bin at the mean holds more than half the mass (half-open bin)
  assert out[0] > math.log(0.5) and out[3] > math.log(0.5)
  # the end bin is strictly more likely than the interior bin next to it
  # when the mean is far outside
  nxt = float(disc(f32(-1 + 2 / 255), -3.0, 0.0))
  assert out[2] > nxt


@pytest.mark.parametrize(
  "mean,log_scale",
  [
    (0.0, -8.0),
    (0.3, -6.0),
    (-1.0, -5.0),
    (0.999, -4.6),
    (0.2, -3.0),
    (-0.5, -1.0),
    (0.0, 0.0),
    (0.7, 2.0),
    (0.0, 2.1),
    (-0.4, 4.0),
    (0.1, 6.0),
    (-0.3, 8.0),
    (0.2, 14.0),
    (1.5, -2.0),
    (-4.0, 0.5),
  ],
)
@pytest.mark.slow
def test_discretized_sums_to_one(mean, log_scale):
  # bins much narrower and much wider than the scale (bin width 2/255 ~ 7.8e-3)
  x = f32(grid())
  lp = disc(x, f32(mean), f32(log_scale))
  assert np.all(np.isfinite(f64(lp)))
  assert abs(special.logsumexp(f64(lp))) < 1e-5
  # float32: ~1e-4 nats near scale 7 (the wide-interval branch just above
  # its 1e-3-scale switch), else less; relative ~1e-6 for the huge values
  np.testing.assert_allclose(
    f64(lp), ref_discretized(x, f32(mean), f32(log_scale)), rtol=2e-6, atol=3e-4
  )
  # gradients: finite (no NaN leaking from the branch not taken) and right.
  # Known float32 limits, hence the masks/atol: jax's log_ndtr gradient loses
  # accuracy beyond ~300 scales (0.4% at 3000); and when the bin is much
  # narrower than the scale, d/dmean is formed as d/dhi + d/dlo = +-1/width
  # cancelling, leaving an absolute error ~ eps / bin_width ~ 1e-5.
  n = x.size
  g_mean, g_ls = (
    f64(g) for g in disc_grad(x, np.full(n, mean, np.float32), np.full(n, log_scale, np.float32))
  )
  assert np.all(np.isfinite(g_mean)) and np.all(np.isfinite(g_ls))
  r_mean, r_ls = ref_discretized_grad(x, f32(mean), f32(log_scale))
  ok = (np.abs(x - mean) + 1 / 255) / math.exp(log_scale) < 300
  np.testing.assert_allclose(g_mean[ok], r_mean[ok], rtol=2e-3, atol=3e-5)
  np.testing.assert_allclose(g_ls[ok], r_ls[ok], rtol=2e-3, atol=1e-4)


@pytest.mark.slow
def test_discretized_tails_float32():
  """x - mean = +-k scales for every bin (end bins included), many k, scales."""
  xs, means, lss = [], [], []
  for log_scale in [-7.0, -4.6, -2.0, 0.0, 1.0]:
    for k in [3.0, 10.0, 25.0, 40.0, 100.0]:
      x = f32(np.tile(grid(), 2))
      sign = np.repeat([1.0, -1.0], 256)
      xs.append(x)
      means.append(f32(x - sign * k * np.exp(np.float32(log_scale))))
      lss.append(np.full_like(x, log_scale))
  x, mean, ls = (np.concatenate(a) for a in (xs, means, lss))
  out = f64(disc(x, mean, ls))
  ref = ref_discretized(x, mean, ls)
  assert np.all(np.isfinite(out)), np.flatnonzero(~np.isfinite(out))
  assert ref.min() < -4000  # the tails are really reached
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)

  g_mean, g_ls = (f64(g) for g in disc_grad(x, mean, ls))
  assert np.all(np.isfinite(g_mean)) and np.all(np.isfinite(g_ls))
  r_mean, r_ls = ref_discretized_grad(x, mean, ls)
  s = np.exp(f64(ls))
  np.testing.assert_allclose(g_mean * s, r_mean * s, rtol=2e-3, atol=1e-3)
  np.testing.assert_allclose(g_ls, r_ls, rtol=2e-3, atol=1e-3)


@pytest.mark.slow
def test_discretized_gradient_vs_reference_realistic():
  rng = np.random.default_rng(12)
  n = 1000
  x = f32(rng.integers(0, 256, size=n) / 127.5 - 1)
  mean = f32(x + rng.normal(size=n) * 0.05)
  ls = f32(rng.uniform(-6, 0, size=n))
  g_mean, g_ls = (f64(g) for g in disc_grad(x, mean, ls))
  r_mean, r_ls = ref_discretized_grad(x, mean, ls)
  s = np.exp(f64(ls))
  np.testing.assert_allclose(g_mean * s, r_mean * s, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(g_ls, r_ls, rtol=1e-3, atol=1e-4)


def test_discretized_other_num_bins():
  # 5 levels: {-1, -0.5, 0, 0.5, 1}
  x = f32(grid(5))
  lp = f64(disc(x, 0.2, -1.0, num_bins=5))
  np.testing.assert_allclose(lp, ref_discretized(x, f32(0.2), -1.0, 5), rtol=1e-5, atol=1e-6)
  assert abs(special.logsumexp(lp)) < 1e-6


# ---------------------------------------------------------------------------
# jit, broadcasting, float64.
# ---------------------------------------------------------------------------


def _all_calls(rng, dtype):
  x = rng.normal(size=(3, 4)).astype(dtype)
  m = rng.normal(size=(3, 4)).astype(dtype)
  lv = rng.normal(size=(3, 4)).astype(dtype)
  xb = (rng.integers(0, 256, size=(3, 4)) / 127.5 - 1).astype(dtype)
  labels = rng.integers(0, 4, size=(3,))
  return [
    (D.normal_log_prob, (x, m, lv)),
    (lambda x, l: D.bernoulli_log_prob(x, logits=l), ((x > 0).astype(dtype), m)),
    (D.categorical_log_prob, (labels, m)),
    (D.gaussian_mixture_log_prob, (x[:, 0], m, x, lv)),
    (D.normal_kl, (x, m, lv, x * 0.5)),
    (D.standard_normal_kl, (m, lv)),
    (disc_log_scale, (xb, m * 0.5, lv - 3)),
  ]


@pytest.mark.slow
def test_jit_equals_eager():
  for fn, args in _all_calls(np.random.default_rng(13), np.float32):
    eager, jitted = fn(*args), jax.jit(fn)(*args)
    assert eager.shape == jitted.shape and jitted.dtype == jnp.float32
    np.testing.assert_allclose(f64(jitted), f64(eager), rtol=1e-6, atol=1e-6, err_msg=str(fn))


@pytest.mark.slow
def test_broadcasting():
  rng = np.random.default_rng(14)
  m = f32(rng.normal(size=(3, 1)) * 0.3)
  x = f32(rng.integers(0, 256, size=(1, 4)) / 127.5 - 1)
  lv = f32(rng.uniform(-4, 0, size=(3, 1)))
  scalar_lv = np.float32(-1.0)
  mb, xb, lvb = np.broadcast_arrays(m, x, lv)
  cases = [
    (D.normal_log_prob(x, m, lv), stats.norm.logpdf(xb, mb, np.exp(lvb / 2))),
    (D.normal_log_prob(x, m, scalar_lv), stats.norm.logpdf(xb, mb, math.exp(scalar_lv / 2))),
    (
      D.bernoulli_log_prob(x > 0, logits=m),
      np.where(xb > 0, special.log_expit(mb), special.log_expit(-mb)),
    ),
    (D.normal_kl(m, lv, x, 0.0), ref_normal_kl(mb, lvb, xb, 0.0)),
    (D.standard_normal_kl(m, x), ref_normal_kl(mb, xb, 0.0, 0.0)),
    (disc_log_scale(x, m, lv), ref_discretized(xb, mb, lvb)),
  ]
  for out, ref in cases:
    assert out.shape == (3, 4)
    np.testing.assert_allclose(f64(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_float64_matches_reference(x64):
  rng = np.random.default_rng(15)
  n = 2000
  x = rng.normal(size=n) * 2
  m = rng.normal(size=n)
  lv = rng.uniform(-6, 4, size=n)
  lv2 = np.concatenate([rng.uniform(-6, 4, n - 400), lv[:400] + rng.normal(size=400) * 1e-3])
  jfn = {
    f: jax.jit(getattr(D, f))
    for f in ["normal_log_prob", "categorical_log_prob", "normal_kl", "standard_normal_kl"]
  }
  jfn["bernoulli_log_prob"] = jax.jit(lambda x, l: D.bernoulli_log_prob(x, logits=l))
  jfn["discretized_gaussian_log_prob"] = jax.jit(disc_log_scale)
  checks = [
    (jfn["normal_log_prob"](x, m, lv), stats.norm.logpdf(x, m, np.exp(lv / 2))),
    (
      jfn["bernoulli_log_prob"](x > 0, m * 5),
      np.where(x > 0, special.log_expit(m * 5), special.log_expit(-m * 5)),
    ),
    (jfn["normal_kl"](m, lv, x, lv2), ref_normal_kl(m, lv, x, lv2)),
    (jfn["standard_normal_kl"](m, lv), ref_normal_kl(m, lv, 0.0, 0.0)),
  ]
  # nearly equal Gaussians: KL ~ 1e-15 .. 1e-9, relative accuracy required
  lv_near = lv + np.geomspace(1e-7, 1e-4, n) * np.sign(rng.normal(size=n))
  kl_near = jfn["normal_kl"](m, lv, m, lv_near)
  assert kl_near.dtype == jnp.float64
  np.testing.assert_allclose(f64(kl_near), ref_normal_kl(m, lv, m, lv_near), rtol=1e-12, atol=0)
  kl_near = jfn["standard_normal_kl"](0.0, lv_near - lv)
  np.testing.assert_allclose(
    f64(kl_near), ref_normal_kl(0.0, lv_near - lv, 0.0, 0.0), rtol=1e-12, atol=0
  )
  logits = rng.normal(size=(50, 7))
  labels = rng.integers(0, 7, size=50)
  checks.append(
    (
      jfn["categorical_log_prob"](labels, logits),
      np.take_along_axis(_ref_log_softmax(logits), labels[:, None], -1)[:, 0],
    )
  )
  # discretized, realistic range (bins narrower and wider than the scale)
  xb = rng.integers(0, 256, size=n) / 127.5 - 1
  mb = np.clip(xb + rng.normal(size=n) * 0.3, -1.3, 1.3)
  lsb = rng.uniform(-7, 3, size=n)
  # jax's float64 log_ndtr is only ~2e-11 accurate (relative) just past its
  # asymptotic-series switch at -20, so bins beyond 19 scales are checked
  # separately in test_float64_discretized_tails.
  z = (np.abs(xb - mb) + 1 / 255) / np.exp(lsb)
  near = z < 19
  assert near.sum() > 1500
  checks.append(
    (
      jfn["discretized_gaussian_log_prob"](xb[near], mb[near], lsb[near]),
      ref_discretized(xb[near], mb[near], lsb[near]),
    )
  )
  for i, (out, ref) in enumerate(checks):
    assert out.dtype == jnp.float64, i
    np.testing.assert_allclose(f64(out), ref, rtol=1e-12, atol=1e-13, err_msg=str(i))


def test_float64_discretized_tails(x64):
  # jax's float64 log_ndtr is only ~2e-11 accurate (relative) just past its
  # asymptotic-series switch at -20; hence the looser rtol here.
  x = np.tile(grid(), 18)
  sign = np.tile(np.repeat([1.0, -1.0], 256), 9)
  ls = np.repeat([-6.0, -2.0, 0.0], 512 * 3)
  k = np.tile(np.repeat([5.0, 22.0, 40.0], 512), 3)
  mean = x - sign * k * np.exp(ls)
  out = disc(x, mean, ls)
  assert out.dtype == jnp.float64
  np.testing.assert_allclose(f64(out), ref_discretized(x, mean, ls), rtol=5e-11, atol=1e-12)
  lp = disc(grid(), 0.1, -3.0)
  assert abs(special.logsumexp(f64(lp))) < 1e-13


@pytest.mark.slow
def test_swappable_arguments_are_keyword_only():
  """bernoulli_log_prob(x, logits) swapped (optax's order) ran silently and
  returned a positive "log-probability"; discretized_gaussian_log_prob's
  mean and scale likewise: both are keyword-only now, and the scale is a
  log-variance like every other function here."""
  x, logits = jnp.array([0.0, 1.0]), jnp.array([3.0, -2.0])
  with pytest.raises(TypeError):
    D.bernoulli_log_prob(x, logits)
  with pytest.raises(TypeError):
    D.discretized_gaussian_log_prob(x, 0.1, -3.0)
  with pytest.raises(TypeError):
    D.discretized_gaussian_log_prob(x, mean=0.1, log_scale=-3.0)
  assert np.all(f64(D.bernoulli_log_prob(x, logits=logits)) < 0)
  # logvar = 2 log sigma: the same bin masses as N(mean, sigma^2).
  got = D.discretized_gaussian_log_prob(x, mean=0.1, logvar=2 * math.log(0.05))
  np.testing.assert_allclose(f64(got), ref_discretized(f64(x), 0.1, math.log(0.05)), rtol=1e-5)


# ---------------------------------------------------------------------------
# Discretized logistic and its mixture (PixelCNN++ / VDVAE decoder), against
# a 50-digit mpmath reference of log(sigmoid(b) - sigmoid(a)).
# ---------------------------------------------------------------------------


def ref_discretized_logistic(x, mean, log_scale):
  """log P(bin of x) for the logistic(mean, exp(log_scale)) on the 8-bit grid, to 50 digits."""
  import mpmath

  mpmath.mp.dps = 50
  out = []
  for xi, mi, li in np.broadcast(np.asarray(x, np.float64), mean, log_scale):
    s, m = mpmath.exp(mpmath.mpf(float(li))), mpmath.mpf(float(mi))
    sigmoid = lambda v: 1 / (1 + mpmath.exp(-v))
    a = (mpmath.mpf(float(xi)) - mpmath.mpf(1) / 255 - m) / s
    b = (mpmath.mpf(float(xi)) + mpmath.mpf(1) / 255 - m) / s
    a = -mpmath.inf if xi < -1 + 1 / 255 else a
    b = mpmath.inf if xi > 1 - 1 / 255 else b
    # In the upper tail as 1 - cdf, so that 50 digits suffice thousands of scales out.
    p = sigmoid(-a) - sigmoid(-b) if a > 0 else sigmoid(b) - sigmoid(a)
    out.append(float(mpmath.log(p)))
  return np.asarray(out).reshape(np.broadcast(x, mean, log_scale).shape)


logistic = jax.jit(lambda x, m, s: D.discretized_logistic_log_prob(x, mean=m, log_scale=s))


@pytest.mark.parametrize(
  "mean, log_scale",
  [(0.1, -3.0), (-0.97, -7.0), (0.5, -9.0), (0.3, 2.0), (-0.2, 9.0), (2.5, -3.0), (-1.6, -5.0)],
)
def test_discretized_logistic_sums_to_one_and_matches_mpmath(mean, log_scale):
  """Every one of the 256 bins (end bins to +-inf) against 50 digits, and their masses sum to 1; bins much
  narrower than the scale (log_scale 9: w ~ 1e-6, where PixelCNN++'s CDF difference cancels) and much wider."""
  x = f32(grid())
  lp = f64(logistic(x, f32(mean), f32(log_scale)))
  assert np.all(np.isfinite(lp)) and np.all(lp <= 0)
  assert abs(special.logsumexp(lp)) < 2e-6
  ref = ref_discretized_logistic(x, f32(mean), f32(log_scale))
  np.testing.assert_allclose(lp, ref, rtol=2e-6, atol=2e-6)


@pytest.mark.slow
def test_discretized_logistic_float32_far_tails_and_gradients():
  """100 and 3000 scales from the mean, on both sides: float32 keeps the relative precision (no clamp at
  log(1e-12)), and the gradients are finite and match float64 autodiff of the same formula."""
  x = f32([-1.0, -0.6, 0.0, 0.4, 1.0, 0.6, -0.2])
  mean = f32([0.8, 0.9, -0.95, -0.5, -0.9, 0.0, 0.2])
  log_scale = f32([-5.5, -8.0, -3.0, -7.0, -4.0, -10.0, -6.0])
  lp = f64(logistic(x, mean, log_scale))
  ref = ref_discretized_logistic(x, mean, log_scale)
  np.testing.assert_allclose(lp, ref, rtol=1e-5)

  grad = jax.jit(
    jax.grad(lambda m, s: jnp.sum(D.discretized_logistic_log_prob(x, mean=m, log_scale=s)), (0, 1))
  )
  g32 = [f64(g) for g in grad(mean, log_scale)]
  with jax.enable_x64(True):
    g64 = jax.grad(
      lambda m, s: jnp.sum(D.discretized_logistic_log_prob(f64(x), mean=m, log_scale=s)), (0, 1)
    )(f64(mean), f64(log_scale))
    g64 = [f64(g) for g in g64]
  for a, b in zip(g32, g64):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=1e-4)


@pytest.mark.slow
def test_discretized_logistic_mixture_vs_direct_sum():
  """The mixture equals log sum_k w_k P_k from the mpmath components, and sums to 1 over all 256 bins for every
  element; parameters broadcast over a batch and a component axis."""
  rng = np.random.default_rng(3)
  k = 4
  logits = f32(rng.normal(size=(2, 1, k)) * 2)
  means = f32(rng.uniform(-1.2, 1.2, size=(2, 1, k)))
  log_scales = f32(rng.uniform(-6.0, -1.0, size=(2, 1, k)))
  x = f32(grid())[None, :]  # (1, 256): every bin for both elements
  lp = f64(
    jax.jit(D.discretized_logistic_mixture_log_prob)(
      x, logits=logits, means=means, log_scales=log_scales
    )
  )
  assert lp.shape == (2, 256)
  np.testing.assert_allclose(special.logsumexp(lp, axis=-1), 0.0, atol=3e-6)
  log_w = f64(logits) - special.logsumexp(f64(logits), axis=-1, keepdims=True)
  comps = ref_discretized_logistic(x[..., None], means, log_scales)  # (2, 256, k)
  ref = special.logsumexp(log_w + comps, axis=-1)
  np.testing.assert_allclose(lp, ref, rtol=2e-6, atol=2e-6)
  # one component with all the weight: the plain discretized logistic
  one_hot = f32([[-1e4, 0.0, -1e4, -1e4]])
  got = D.discretized_logistic_mixture_log_prob(
    x[0], logits=one_hot, means=means[0], log_scales=log_scales[0]
  )
  np.testing.assert_allclose(
    f64(got), f64(logistic(x[0], means[0, 0, 1], log_scales[0, 0, 1])), rtol=1e-6
  )
  mean = D.discretized_logistic_mixture_mean(logits=logits, means=means)
  np.testing.assert_allclose(
    f64(mean), np.clip(np.sum(special.softmax(f64(logits), -1) * f64(means), -1), -1, 1), rtol=1e-6
  )


def test_discretized_logistic_arguments_are_keyword_only():
  x = jnp.array([0.0, 1.0])
  with pytest.raises(TypeError):
    D.discretized_logistic_log_prob(x, 0.1, -3.0)
  with pytest.raises(TypeError):
    D.discretized_logistic_mixture_log_prob(x, jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
