"""Tests of gen_jax.vae, with a linear-Gaussian VAE as an exact oracle.

Model: p(z) = N(0, I_d), p(x|z) = N(W z + b, sigma^2 I_D). Then
  log p(x) = log N(x; b, W W^T + sigma^2 I)                 (exact)
  p(z|x)   = N(m, S), S = (I + W^T W / sigma^2)^-1, m = S W^T (x - b) / sigma^2
and W = Q diag(s) with orthonormal columns Q makes S diagonal, so the exact
posterior is a diagonal Gaussian encoder. All references are numpy float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gen_jax import vae

LOG_2PI = math.log(2 * math.pi)
D_LAT, D_OBS, SIGMA = 2, 5, 0.5


def _model():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(D_OBS, D_LAT)))
  w = q * np.array([1.5, 0.8])
  b = rng.normal(size=D_OBS) * 0.5
  return w, b


W, B = _model()
COV_X = W @ W.T + SIGMA**2 * np.eye(D_OBS)
S_FULL = np.linalg.inv(np.eye(D_LAT) + W.T @ W / SIGMA**2)
A_POST = S_FULL @ W.T / SIGMA**2  # m = A_POST (x - b)
S_DIAG = np.diag(S_FULL).copy()


def exact_log_px(x):
  return stats.multivariate_normal(B, COV_X).logpdf(np.asarray(x, np.float64))


def exact_params():
  """Encoder parameters (A, c, logvar): mean = A x + c, logvar constant."""
  return (A_POST, -A_POST @ B, np.log(S_DIAG))


def wrong_params(shift=0.5, var_factor=2.0):
  a, c, lv = exact_params()
  return (a, c + shift * np.sqrt(S_DIAG) * np.array([1.0, -1.0]), lv + math.log(var_factor))


def analytic_elbo(x, params):
  """E_q[log p(x|z)] - KL(q || N(0, I)) for q = N(A x + c, diag(exp(lv)))."""
  a, c, lv = (np.asarray(p, np.float64) for p in params)
  x = np.asarray(x, np.float64)
  mu = x @ a.T + c
  v = np.exp(lv)
  resid = x - mu @ W.T - B
  exp_ll = (
    -0.5 * D_OBS * (LOG_2PI + 2 * math.log(SIGMA))
    - 0.5 * (np.sum(resid**2, -1) + np.sum(W**2 @ v)) / SIGMA**2
  )
  kl = 0.5 * np.sum(mu**2 + v - 1 - lv, -1)
  return exp_ll - kl


def make_encoder(params):
  a, c, lv = (jnp.asarray(p, jnp.float32) for p in params)

  def encode(x):
    mean = x @ a.T + c
    return mean, jnp.broadcast_to(lv, mean.shape)

  return encode


W32, B32 = jnp.asarray(W, jnp.float32), jnp.asarray(B, jnp.float32)


def log_likelihood(x, z):
  """log N(x; W z + b, sigma^2 I), summed over the D_OBS axis (written out)."""
  mu = z @ W32.T + B32
  return jnp.sum(
    -0.5 * (LOG_2PI + 2 * math.log(SIGMA)) - 0.5 * jnp.square(x - mu) / SIGMA**2, axis=-1
  )


def sample_x(n, seed):
  rng = np.random.default_rng(seed)
  return rng.multivariate_normal(B, COV_X, size=n).astype(np.float32)


@jax.jit
def elbo_fn(key, x, params):
  return vae.elbo(key, x, make_encoder(params), log_likelihood)


def _iwae(key, x, params, num_samples, chunk_size=None):
  return vae.iwae_bound(key, x, make_encoder(params), log_likelihood, num_samples, chunk_size)


iwae_fn = jax.jit(_iwae, static_argnames=("num_samples", "chunk_size"))

# Over a leading axis of keys; compiled once per shape / num_samples / chunk.
elbo_keys = jax.jit(jax.vmap(elbo_fn, in_axes=(0, None, None)))
iwae_keys = jax.jit(jax.vmap(_iwae, in_axes=(0, None, None, None, None)), static_argnums=(3, 4))


def keys(seed, num_keys):
  return jax.random.split(jax.random.key(seed), num_keys)


def to64(a):
  return np.asarray(a, np.float64)


# ---------------------------------------------------------------------------
# Sanity of the oracle itself.
# ---------------------------------------------------------------------------


def test_oracle_is_consistent():
  # orthogonal columns: the exact posterior covariance is diagonal
  assert np.max(np.abs(S_FULL - np.diag(S_DIAG))) < 1e-12
  x = sample_x(7, 1).astype(np.float64)
  # ELBO at the exact posterior is log p(x); with the wrong one it is lower
  np.testing.assert_allclose(analytic_elbo(x, exact_params()), exact_log_px(x), rtol=1e-12)
  assert np.all(analytic_elbo(x, wrong_params()) < exact_log_px(x) - 0.1)
  # Bayes: log p(x) = log p(x|z) + log p(z) - log p(z|x) at any z
  z = np.array([0.3, -1.2])
  m = x @ A_POST.T - A_POST @ B
  lhs = (
    stats.multivariate_normal(W @ z + B, SIGMA**2 * np.eye(D_OBS)).logpdf(x)
    + stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(z)
    - np.array([stats.multivariate_normal(mi, S_FULL).logpdf(z) for mi in m])
  )
  np.testing.assert_allclose(lhs, exact_log_px(x), rtol=1e-12)


# ---------------------------------------------------------------------------
# reparameterize
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_reparameterize_moments():
  mean = jnp.array([0.5, -2.0, 3.0], jnp.float32)
  logvar = jnp.array([0.0, -3.0, 1.5], jnp.float32)
  n = 100_000
  z = to64(jax.jit(jax.vmap(vae.reparameterize, in_axes=(0, None, None)))(keys(2, n), mean, logvar))
  assert z.shape == (n, 3)
  var = np.exp(to64(logvar))
  se_mean = np.sqrt(var / n)
  assert np.all(np.abs(z.mean(0) - to64(mean)) < 5 * se_mean)
  se_var = var * math.sqrt(2 / n)
  assert np.all(np.abs(z.var(0) - var) < 5 * se_var)
  # independent coordinates
  assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 5 / math.sqrt(n)
  # same key -> same draw; different keys -> different draws
  k = jax.random.key(3)
  np.testing.assert_array_equal(
    vae.reparameterize(k, mean, logvar), vae.reparameterize(k, mean, logvar)
  )
  assert not np.allclose(z[0], z[1])


@pytest.mark.slow
def test_reparameterize_batch_shape_and_dtype():
  mean = jnp.zeros((4, 6), jnp.float32)
  z = vae.reparameterize(jax.random.key(0), mean, jnp.zeros((4, 6)))
  assert z.shape == (4, 6) and z.dtype == jnp.float32
  assert len(np.unique(to64(z))) == 24


@pytest.mark.slow
def test_reparameterize_gradients():
  mean = jnp.array([0.5, -2.0, 3.0], jnp.float32)
  logvar = jnp.array([0.0, -3.0, 1.5], jnp.float32)
  key = jax.random.key(4)
  z = vae.reparameterize(key, mean, logvar)
  eps = (to64(z) - to64(mean)) / np.exp(0.5 * to64(logvar))
  assert np.all(np.abs(eps) > 1e-3)  # a non-degenerate check
  jac_mean = jax.jacobian(vae.reparameterize, argnums=1)(key, mean, logvar)
  np.testing.assert_allclose(to64(jac_mean), np.eye(3), atol=1e-7)
  jac_lv = jax.jacobian(vae.reparameterize, argnums=2)(key, mean, logvar)
  np.testing.assert_allclose(
    to64(jac_lv), np.diag(0.5 * np.exp(0.5 * to64(logvar)) * eps), rtol=1e-5, atol=1e-6
  )


# ---------------------------------------------------------------------------
# elbo
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_elbo_fields():
  x = sample_x(8, 5)
  params = wrong_params()
  out = elbo_fn(jax.random.key(6), x, params)
  assert isinstance(out, vae.ELBO)
  assert set(out._fields) == {"elbo", "log_likelihood", "kl"}
  for f in out:
    assert f.shape == (8,) and f.dtype == jnp.float32
  np.testing.assert_allclose(
    to64(out.elbo), to64(out.log_likelihood) - to64(out.kl), rtol=1e-6, atol=1e-5
  )
  # analytic KL(N(mu, diag v) || N(0, I))
  a, c, lv = params
  mu = x.astype(np.float64) @ a.T + c
  kl = 0.5 * np.sum(mu**2 + np.exp(lv) - 1 - lv, -1)
  np.testing.assert_allclose(to64(out.kl), kl, rtol=1e-5, atol=1e-6)
  # the reconstruction term is log p(x|z) at the reparameterized draw
  z = vae.reparameterize(jax.random.key(6), *make_encoder(params)(x))
  np.testing.assert_allclose(
    to64(out.log_likelihood), to64(log_likelihood(x, z)), rtol=1e-5, atol=1e-4
  )


@pytest.mark.parametrize("which", ["exact", "wrong"])
@pytest.mark.slow
def test_elbo_mean_is_analytic_elbo(which):
  params = exact_params() if which == "exact" else wrong_params()
  x = sample_x(64, 7)
  vals = to64(elbo_keys(keys(8, 2000), x, params).elbo)
  target = analytic_elbo(x, params)  # (64,)
  mc = vals.mean(0)
  se = vals.std(0) / math.sqrt(vals.shape[0])
  assert np.all(se > 1e-3)  # the estimator is random (analytic KL, one draw)
  assert np.all(np.abs(mc - target) < 5 * se + 1e-4), (mc - target) / se
  if which == "exact":
    np.testing.assert_allclose(target, exact_log_px(x), rtol=1e-10)
  else:
    assert np.all(target < exact_log_px(x) - 0.1)


@pytest.mark.slow
def test_elbo_per_draw_identity_at_exact_posterior():
  """With q = p(z|x): elbo = log p(x) + log q(z|x) - log p(z) - KL(q||p)."""
  x = sample_x(16, 9)
  params = exact_params()
  for seed in range(3):
    key = jax.random.key(100 + seed)
    out = elbo_fn(key, x, params)
    mean, logvar = make_encoder(params)(x)
    z = to64(vae.reparameterize(key, mean, logvar))
    mu = to64(mean)
    log_q = np.sum(stats.norm.logpdf(z, mu, np.sqrt(S_DIAG)), -1)
    log_p = np.sum(stats.norm.logpdf(z), -1)
    expected = exact_log_px(x) + log_q - log_p - to64(out.kl)
    np.testing.assert_allclose(to64(out.elbo), expected, rtol=1e-5, atol=2e-4)


# ---------------------------------------------------------------------------
# iwae_bound
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples,chunk_size", [(1, None), (10, None), (10, 2), (1000, 100)])
@pytest.mark.slow
def test_iwae_exact_posterior_is_log_px(num_samples, chunk_size):
  """With the exact posterior the importance weight is the constant p(x)."""
  x = sample_x(64, 10)
  num_keys = 16 if num_samples == 1000 else 64  # shapes shared with others
  vals = iwae_keys(keys(11, num_keys), x, exact_params(), num_samples, chunk_size)
  assert vals.shape == (num_keys, 64) and vals.dtype == jnp.float32
  np.testing.assert_allclose(
    to64(vals), np.broadcast_to(exact_log_px(x), vals.shape), rtol=1e-5, atol=1e-4
  )


@pytest.mark.slow
def test_iwae_ordering_with_wrong_encoder():
  """E[elbo] < E[L_10] < E[L_1000] <= log p(x), L_1000 within 0.05 nats."""
  x = sample_x(64, 12)
  params = wrong_params(shift=1.2, var_factor=1.5)
  elbo = to64(elbo_keys(keys(13, 2000), x, params).elbo)
  l1 = to64(iwae_keys(keys(14, 64), x, params, 1, None))
  l10 = to64(iwae_keys(keys(15, 64), x, params, 10, None))
  l1000 = to64(iwae_keys(keys(16, 16), x, params, 1000, None))
  log_px = exact_log_px(x)
  true_elbo = analytic_elbo(x, params)

  def mean_se(v):  # mean over examples and keys, relative to log p(x)
    d = v - log_px
    return d.mean(), d.std() / math.sqrt(d.size)

  gap_elbo, se_elbo = mean_se(elbo)
  gap1, se1 = mean_se(l1)
  gap10, se10 = mean_se(l10)
  gap1000, se1000 = mean_se(l1000)
  true_gap = np.mean(true_elbo - log_px)
  assert true_gap < -1.0
  # E[L_1] = E[elbo] = the analytic ELBO
  assert abs(gap1 - true_gap) < 5 * se1
  assert abs(gap_elbo - true_gap) < 5 * se_elbo
  # strict ordering, each step well beyond the Monte Carlo error
  assert gap10 - gap_elbo > 5 * math.hypot(se10, se_elbo)
  assert gap1000 - gap10 > 5 * math.hypot(se1000, se10)
  assert gap1000 < 5 * se1000
  assert abs(gap1000) < 0.05
  # K = 10 is still visibly short of log p(x)
  assert gap10 < -0.1


@pytest.mark.slow
def test_iwae_chunked_matches_unchunked_in_distribution():
  x = sample_x(64, 17)
  params = wrong_params(shift=1.0, var_factor=0.5)  # a poor proposal
  full = to64(iwae_keys(keys(18, 64), x, params, 10, None))
  chunked = to64(iwae_keys(keys(19, 64), x, params, 10, 2))
  log_px = exact_log_px(x)
  d_full, d_chunk = full - log_px, chunked - log_px
  se = math.hypot(d_full.std(), d_chunk.std()) / math.sqrt(d_full.size)
  assert d_full.mean() < -10 * se  # the bound is not tight here
  assert abs(d_full.mean() - d_chunk.mean()) < 4 * se
  # per example too (looser: 64 keys each)
  se_ex = np.hypot(d_full.std(0), d_chunk.std(0)) / math.sqrt(64)
  assert np.mean(np.abs(d_full.mean(0) - d_chunk.mean(0)) < 4 * se_ex) > 0.95
  # chunk_size = num_samples is the unchunked computation
  np.testing.assert_allclose(
    to64(iwae_keys(keys(20, 64), x, params, 10, 10)),
    to64(iwae_keys(keys(20, 64), x, params, 10, None)),
    rtol=1e-6,
  )


@pytest.mark.slow
def test_iwae_chunked_gradient_finite():
  x = sample_x(4, 21)

  def loss(shift, chunk):
    a, c, lv = wrong_params()
    params = (a, c + shift, lv)
    return -jnp.mean(_iwae(jax.random.key(22), x, params, 12, chunk))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g = grad(jnp.zeros(D_LAT), 3)  # the scan starts from logsumexp = -inf
  assert g.shape == (D_LAT,) and np.all(np.isfinite(to64(g)))
  assert np.all(np.abs(to64(g)) > 1e-4)
  # ... and it is the derivative of the value: central differences of the same draws (the same key).
  # h = 1e-2: the float32 rounding of a value ~5 over 2h and the h^2 term both stay below ~1e-4.
  value, h = jax.jit(loss, static_argnums=1), 1e-2
  numeric = [
    (value(h * e, 3) - value(-h * e, 3)) / (2 * h) for e in np.eye(D_LAT, dtype=np.float32)
  ]
  np.testing.assert_allclose(to64(g), to64(numeric), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
  "num_samples,chunk_size", [(0, None), (-3, None), (10, 3), (10, 0), (10, -2), (10, 20), (10, -10)]
)
def test_iwae_bad_arguments_raise(num_samples, chunk_size):
  x = sample_x(2, 23)
  with pytest.raises(ValueError):
    _iwae(jax.random.key(0), x, exact_params(), num_samples, chunk_size)


# ---------------------------------------------------------------------------
# jit and vmap
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_jit_equals_eager():
  x = sample_x(8, 24)
  params = wrong_params()
  key = jax.random.key(25)
  eager = vae.elbo(key, x, make_encoder(params), log_likelihood)
  jitted = elbo_fn(key, x, params)
  for e, j in zip(eager, jitted):
    np.testing.assert_allclose(to64(j), to64(e), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    to64(iwae_fn(key, x, params, 10, 2)), to64(_iwae(key, x, params, 10, 2)), rtol=1e-5, atol=1e-5
  )


def _nearly_deterministic_params():
  """Posterior std 1e-15: z = mean to float32 precision, so batching and
  vmapping must agree even though they draw different eps."""
  a, c, _ = wrong_params()
  return (a, c, np.full(D_LAT, -70.0))


@jax.jit
def _both_batched(key, x, params):
  return elbo_fn(key, x, params), iwae_fn(key, x, params, 8, 2)


@jax.jit
def _both_vmapped(key, x, params):
  one = lambda xi: _both_batched(key, xi, params)
  return jax.vmap(jax.vmap(one))(x)


@pytest.mark.slow
def test_vmap_equals_batched():
  x = sample_x(6, 26).reshape(2, 3, D_OBS)  # batch shape (2, 3)
  key = jax.random.key(27)
  params = _nearly_deterministic_params()
  (elbo_b, iwae_b), (elbo_v, iwae_v) = (
    _both_batched(key, x, params),
    _both_vmapped(key, x, params),
  )
  for f_b, f_v in zip(elbo_b + (iwae_b,), elbo_v + (iwae_v,)):
    assert f_b.shape == f_v.shape == (2, 3)
    np.testing.assert_allclose(to64(f_v), to64(f_b), rtol=1e-5, atol=1e-3)
  # the reference value: log p(x|mean) - KL at z = mean
  a, c, lv = params
  mu = x.astype(np.float64) @ a.T + c
  rec = np.sum(stats.norm.logpdf(x, mu @ W.T + B, SIGMA), -1)
  kl = 0.5 * np.sum(mu**2 + np.exp(lv) - 1 - lv, -1)
  np.testing.assert_allclose(to64(elbo_b.elbo), rec - kl, rtol=1e-5, atol=1e-4)
  # exact posterior: both routes give log p(x) (elbo only in expectation)
  (_, iwae_b), (_, iwae_v) = (
    _both_batched(key, x, exact_params()),
    _both_vmapped(key, x, exact_params()),
  )
  np.testing.assert_allclose(to64(iwae_b), exact_log_px(x), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(to64(iwae_v), exact_log_px(x), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# gen_jax.vae.decoders: a decoder's raw outputs read as a pixel likelihood
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["discretized_gaussian", "logistic_mixture"])
@pytest.mark.slow
def test_decoder_likelihoods_are_distributions_on_the_8bit_grid(likelihood):
  """For any raw outputs, the 256 values of a pixel have probabilities summing to 1; the raw numbers are read in
  the documented order (mixture: K logits, K means, K log-scales) with the soft floor on log-scales."""
  from gen_jax import distributions
  from gen_jax.vae import decoders

  k = 3
  p = decoders.num_outputs(likelihood, k)
  raw = jnp.asarray(np.random.default_rng(0).normal(size=(4, p)) * 2, jnp.float32)
  raw = raw.at[0, -1].set(-30.0)  # a log-scale far below the floor
  grid = jnp.linspace(-1.0, 1.0, 256)[:, None]  # (256, 1): every value for each of the 4 pixels
  lp = np.asarray(
    jax.jit(decoders.log_prob, static_argnums=0)(likelihood, grid, raw[None]), np.float64
  )
  assert lp.shape == (256, 4)
  np.testing.assert_allclose(np.exp(lp).sum(0), 1.0, atol=2e-5)
  if likelihood == "logistic_mixture":
    logits, means, log_scales = raw[:, :k], raw[:, k : 2 * k], raw[:, 2 * k :]
    want = distributions.discretized_logistic_mixture_log_prob(
      grid, logits=logits, means=means, log_scales=decoders.bounded_log_scale(log_scales)
    )
  else:
    want = distributions.discretized_gaussian_log_prob(
      grid, mean=raw[:, 0], logvar=2 * decoders.bounded_log_scale(raw[:, 1])
    )
  np.testing.assert_allclose(lp, np.asarray(want, np.float64), rtol=1e-6)
  floor = np.asarray(decoders.bounded_log_scale(jnp.array([-30.0, -7.0, 0.0, 5.0])), np.float64)
  np.testing.assert_allclose(floor, [-7.0, -7.0 + math.log(2), 0.0, 5.0], atol=1e-3)
  # softplus, not a hard clamp: a log-scale below the floor still gets a gradient
  assert float(jax.grad(decoders.bounded_log_scale)(-8.0)) > 0.2


@pytest.mark.slow
def test_vae_model_reports_bits_per_dim_of_its_iwae_nll_on_8bit_data():
  from experiments import vae_digits
  from tests.support import runs

  config = runs.config("vae_digits", runs.MLP_VAE)
  model = vae_digits.build(config, (8, 8, 1))
  assert model.likelihood == "logistic_mixture" and model.num_mixtures == 5
  params = model.init(jax.random.key(0))
  x = jnp.round(jax.random.uniform(jax.random.key(1), (3, 8, 8, 1)) * 255) / 127.5 - 1
  out = jax.jit(model.evaluate)(params, {"x": x}, jax.random.key(2))
  np.testing.assert_allclose(out["bits_per_dim"], out["nll_iwae"] / (64 * math.log(2)), rtol=1e-6)
  assert np.all(np.asarray(out["nll_iwae"]) > 0)
  samples = model.sample(params, jax.random.key(3), 5)
  assert samples.shape == (5, 8, 8, 1) and float(jnp.max(jnp.abs(samples))) <= 1.0
  with pytest.raises(ValueError, match="config.model.likelihood"):
    vae_digits.build(runs.config("vae_digits", {"model.likelihood": "poisson"}), (8, 8, 1))


@pytest.mark.slow
def test_reparameterize_and_elbo_take_a_given_noise(x64):
  """Issue 26: the one-layer VAE's reparameterize / elbo drew eps from the key only; with
  noise= (keyword-only) z = mean + sigma noise exactly, and the ELBO at noise = 0 is the
  likelihood at the posterior mean minus the analytic KL (common random numbers)."""
  mean, logvar = jnp.array([[0.3, -0.2]]), jnp.array([[-0.5, 0.1]])
  noise = jnp.array([[0.7, -1.2]])
  z = vae.reparameterize(None, mean, logvar, noise=noise)
  np.testing.assert_allclose(z, mean + jnp.exp(0.5 * logvar) * noise, rtol=1e-15)
  key = jax.random.key(2)
  np.testing.assert_array_equal(
    vae.reparameterize(key, mean, logvar),
    vae.reparameterize(None, mean, logvar, noise=jax.random.normal(key, mean.shape)),
  )
  encode = lambda x: (mean, logvar)
  log_lik = lambda x, z: -jnp.sum((x - z) ** 2, axis=-1)
  x = jnp.array([[1.0, 0.5]])
  at_mean = vae.elbo(None, x, encode, log_lik, noise=jnp.zeros_like(mean))
  np.testing.assert_allclose(at_mean.log_likelihood, log_lik(x, mean), rtol=1e-15)
  with pytest.raises(ValueError, match="reparameterize: noise must have the latent's shape"):
    vae.reparameterize(None, mean, logvar, noise=noise[:, :1])
