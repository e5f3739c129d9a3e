"""Property tests (hypothesis) of the public math: distributions, vae, diffusion's schedules and q.

Over random shapes, float32 and float64 (jax.enable_x64), and extreme values (logits of +-1e4,
variances from e^-40 to e^40), each function must be finite wherever the math is, agree with a
float64 numpy reference within an error bound that grows with the size of the terms it adds, keep
the signs and normalisations the math guarantees, and refuse arguments of mismatched shapes with a
ValueError/TypeError rather than broadcast them into a wrong answer.

Examples are derandomized (the same every run) and few, to keep the suite fast.
"""

import contextlib
import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from gen_jax import diffusion, distributions, vae

SETTINGS = hypothesis.settings(
  max_examples=15,
  deadline=None,
  derandomize=True,
  suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
DTYPES = ["float32", "float64"]
LOG_2PI = math.log(2 * math.pi)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3)

# The functions under test, jitted (as they run in training): one compile per shape and dtype.
normal_log_prob = jax.jit(distributions.normal_log_prob)
bernoulli_log_prob = jax.jit(lambda x, logits: distributions.bernoulli_log_prob(x, logits=logits))
categorical_log_prob = jax.jit(distributions.categorical_log_prob)
normal_kl = jax.jit(distributions.normal_kl)
standard_normal_kl = jax.jit(distributions.standard_normal_kl)
# By log sigma, as the test below draws it (the function takes logvar = 2 log sigma).
discretized_gaussian_log_prob = jax.jit(
  lambda x, mean, log_scale: distributions.discretized_gaussian_log_prob(
    x, mean=mean, logvar=2 * log_scale
  )
)


@contextlib.contextmanager
def precision(dtype):
  """jax_enable_x64 on for float64 (off otherwise); yields the numpy dtype and its epsilon."""
  with jax.enable_x64(dtype == "float64"):
    yield np.dtype(dtype), float(np.finfo(dtype).eps)


def floats(low, high):
  return st.floats(low, high, allow_nan=False, allow_infinity=False)


def arrays(shape, low, high):
  return hnp.arrays(np.float64, shape, elements=floats(low, high))


def as_dtype(dtype, *values):
  """The inputs rounded to `dtype` (what the function sees) and the same in float64."""
  rounded = [np.asarray(v).astype(dtype) for v in values]
  return rounded, [r.astype(np.float64) for r in rounded]


def check_close(actual, expected, tolerance, dtype):
  actual = np.asarray(actual)
  assert actual.dtype == dtype, actual.dtype
  assert actual.shape == np.shape(expected)
  assert np.all(np.isfinite(actual)), actual
  # + the smallest normal number: XLA on CPU flushes subnormal results to 0.
  np.testing.assert_array_less(
    np.abs(actual.astype(np.float64) - expected),
    np.broadcast_to(tolerance + np.finfo(dtype).tiny, actual.shape),
  )


# --------------------------------------------------------------------------------------------------
# distributions


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(data=st.data(), shape=SHAPES, scalar_logvar=st.booleans())
@pytest.mark.slow
def test_normal_log_prob(dtype, data, shape, scalar_logvar):
  x = data.draw(arrays(shape, -1e3, 1e3))
  mean = data.draw(arrays(shape, -1e3, 1e3))
  logvar = data.draw(arrays(() if scalar_logvar else shape, -40, 40))  # variances e^-40 .. e^40
  with precision(dtype) as (dt, eps):
    (x, mean, logvar), (x64, mean64, logvar64) = as_dtype(dt, x, mean, logvar)
    quadratic = (x64 - mean64) ** 2 * np.exp(-logvar64)
    expected = -0.5 * (LOG_2PI + logvar64 + quadratic)
    # Each of the three terms carries a few roundings (exp's error grows with |logvar|).
    tolerance = 8 * eps * (LOG_2PI + np.abs(logvar64) + quadratic * (2 + np.abs(logvar64)))
    check_close(normal_log_prob(x, mean, logvar), expected, tolerance, dt)


@jax.jit
def bernoulli_grad(x, logits):
  return jax.grad(lambda l: distributions.bernoulli_log_prob(x, logits=l).sum())(logits)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(data=st.data(), shape=SHAPES, soft=st.booleans())
@pytest.mark.slow
def test_bernoulli_log_prob_value_and_gradient_at_huge_logits(dtype, data, shape, soft):
  anchors = hnp.arrays(np.float64, shape, elements=st.sampled_from([-90.0, 89.5, 90.0, 1e4]))
  logits = data.draw(arrays(shape, -1e4, 1e4) | anchors)
  labels = hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0]))
  targets = data.draw(arrays(shape, 0, 1) if soft else labels)
  with precision(dtype) as (dt, eps):
    (x, logits), (x64, l64) = as_dtype(dt, targets, logits)
    softplus = np.logaddexp(0.0, l64)
    expected = x64 * l64 - softplus  # = -(x softplus(-l) + (1 - x) softplus(l)) <= 0
    value = bernoulli_log_prob(x, logits)
    check_close(value, expected, 8 * eps * (np.abs(x64 * l64) + softplus), dt)
    assert np.all(np.asarray(value) <= 0)
    # d/dl = x - sigmoid(l): the gradient log(-expm1(log_sigmoid)) turns into NaN at large logits.
    grad = bernoulli_grad(x, logits)
    check_close(grad, x64 - special.expit(l64), 8 * eps, dt)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(
  data=st.data(),
  batch=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
  classes=st.integers(2, 6),
)
@pytest.mark.slow
def test_categorical_log_prob_is_normalised_at_huge_logits(dtype, data, batch, classes):
  logits = data.draw(arrays(batch + (classes,), -1e4, 1e4))
  labels = data.draw(hnp.arrays(np.int32, batch, elements=st.integers(0, classes - 1)))
  with precision(dtype) as (dt, eps):
    (logits,), (l64,) = as_dtype(dt, logits)
    expected = l64 - special.logsumexp(l64, axis=-1, keepdims=True)  # (..., K)
    # log_softmax subtracts numbers as big as the largest logit.
    scale = 8 * eps * (1 + np.abs(l64).max(axis=-1, keepdims=True))
    every_label = np.stack(
      [np.asarray(categorical_log_prob(np.full(batch, k), logits)) for k in range(classes)], axis=-1
    )
    check_close(every_label, expected, scale, dt)
    assert np.all(every_label <= 0)
    total = special.logsumexp(every_label.astype(np.float64), axis=-1)
    np.testing.assert_array_less(np.abs(total), scale[..., 0] * classes)
    one_hot = np.eye(classes, dtype=dt)[labels]
    check_close(
      categorical_log_prob(one_hot, logits),
      np.asarray(categorical_log_prob(labels, logits), np.float64),
      scale[..., 0],
      dt,
    )


@pytest.mark.slow
def test_categorical_log_prob_refuses_labels_of_another_batch_shape():
  logits = jnp.zeros((4, 5))
  int_one_hot = jnp.eye(5, dtype=jnp.int32)[:4]
  for labels in (jnp.zeros((3,), jnp.int32), jnp.zeros((2, 4), jnp.int32), int_one_hot):
    with pytest.raises((ValueError, TypeError)):
      distributions.categorical_log_prob(labels, logits)
  with pytest.raises((ValueError, TypeError)):  # probabilities over 3 classes, not 5
    distributions.categorical_log_prob(jnp.ones((4, 3)) / 3, logits)


@np.vectorize
def exp_minus_one_minus(d):
  """e^d - 1 - d without cancellation: for |d| < 1 the exactly rounded sum (math.fsum) of the
  series d^k / k!, k = 2..40; beyond, expm1(d) - d, which then loses nothing. (In float64,
  expm1(d) - d itself loses digits like 1e-16 / |d| for small d: what the library must avoid.)"""
  d = float(d)
  if abs(d) >= 1:
    return math.expm1(d) - d
  return math.fsum(d**k / math.factorial(k) for k in range(2, 41))


def _kl_tolerance(eps, d, sq, logvar2):
  """Error bound of 0.5 (f(d) + sq), f(d) = e^d - 1 - d; exp's relative error grows with |d|."""
  return 8 * eps * ((1 + np.abs(d)) * exp_minus_one_minus(d) + (2 + np.abs(logvar2)) * sq)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(data=st.data(), shape=SHAPES, near=st.booleans())
@pytest.mark.slow
def test_normal_kl_nonnegative_and_accurate_for_tiny_and_huge_variances(dtype, data, shape, near):
  mean1, mean2 = data.draw(arrays(shape, -1e3, 1e3)), data.draw(arrays(shape, -1e3, 1e3))
  logvar1 = data.draw(arrays(shape, -20, 20))  # variances 2e-9 .. 5e8
  if near:  # nearly equal Gaussians: the textbook formula cancels to 0 or below
    logvar2, mean2 = logvar1 + data.draw(arrays(shape, -1e-3, 1e-3)), mean1
  else:
    logvar2 = data.draw(arrays(shape, -20, 20))
  with precision(dtype) as (dt, eps):
    rounded, (m1_, lv1_, m2_, lv2_) = as_dtype(dt, mean1, logvar1, mean2, logvar2)
    m1, lv1, m2, lv2 = rounded
    d = lv1_ - lv2_
    sq = (m1_ - m2_) ** 2 * np.exp(-lv2_)
    expected = 0.5 * (exp_minus_one_minus(d) + sq)
    kl = normal_kl(m1, lv1, m2, lv2)
    check_close(kl, expected, _kl_tolerance(eps, d, sq, lv2_), dt)
    assert np.all(np.asarray(kl) >= 0)
    standard = standard_normal_kl(m1, lv1)
    check_close(
      standard,
      0.5 * (m1_**2 + exp_minus_one_minus(lv1_)),
      _kl_tolerance(eps, lv1_, m1_**2, 0.0),
      dt,
    )
    assert np.all(np.asarray(standard) >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(mean=floats(-3, 3), log_scale=floats(-12, 4))
def test_discretized_gaussian_is_a_distribution_over_the_256_bins(dtype, mean, log_scale):
  with precision(dtype) as (dt, eps):
    x = (np.arange(256) / 127.5 - 1).astype(dt)
    logp = np.asarray(discretized_gaussian_log_prob(x, dt.type(mean), dt.type(log_scale)))
    # Finite even 1e6 standard deviations away.
    assert logp.dtype == dt and np.all(np.isfinite(logp)), logp
    assert np.all(logp <= 16 * eps)
    # The bins partition the real line: their probabilities sum to 1, up to the rounding of the
    # grid values to `dtype`, which moves bin edges by ~eps, i.e. eps / scale standard deviations.
    total = special.logsumexp(logp.astype(np.float64))
    assert abs(total) < 64 * eps * (1 + math.exp(-log_scale))


# --------------------------------------------------------------------------------------------------
# vae

LATENT, OBS = 3, 4


def gaussian_log_likelihood(x, z):
  """log N(x; first OBS coordinates of [z, z], 1), summed over the data axis: (...,)."""
  mean = jnp.concatenate([z, z], axis=-1)[..., :OBS]
  return distributions.normal_log_prob(x, mean, 0.0).sum(-1)


@jax.jit
def vae_bounds(x, mean, logvar):
  """vae.elbo and vae.iwae_bound (K = 4, chunks of 2) of an encoder returning (mean, logvar)."""
  encode = lambda _: (mean, logvar)
  terms = vae.elbo(jax.random.key(0), x, encode, gaussian_log_likelihood)
  iwae = vae.iwae_bound(
    jax.random.key(1), x, encode, gaussian_log_likelihood, num_samples=4, chunk_size=2
  )
  return terms, iwae


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(data=st.data(), batch=st.sampled_from([(), (2,), (2, 3)]))
@pytest.mark.slow
def test_elbo_and_iwae_are_finite_for_extreme_encoder_outputs(dtype, data, batch):
  mean = data.draw(arrays(batch + (LATENT,), -100, 100))
  logvar = data.draw(arrays(batch + (LATENT,), -30, 10))  # posterior std 3e-7 .. 150
  x = data.draw(arrays(batch + (OBS,), -10, 10))
  with precision(dtype) as (dt, _):
    (mean, logvar, x), (mean64, logvar64, _) = as_dtype(dt, mean, logvar, x)
    terms, iwae = vae_bounds(x, mean, logvar)
    for value in (*terms, iwae):
      assert value.shape == batch and value.dtype == dt and np.all(np.isfinite(value))
    kl = 0.5 * np.sum(mean64**2 + exp_minus_one_minus(logvar64), -1)
    np.testing.assert_allclose(terms.kl, kl, rtol=1e-5 if dt == np.float32 else 1e-12)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.slow
def test_vae_refuses_mismatched_shapes(jit):
  """The checks run while tracing: eagerly and under jax.jit alike."""
  key, x = jax.random.key(0), jnp.zeros((4, OBS))
  maybe_jit = jax.jit if jit else (lambda f: f)
  run_elbo = lambda encode, ll: maybe_jit(lambda x: vae.elbo(key, x, encode, ll))(x)
  run_iwae = lambda encode, ll: maybe_jit(lambda x: vae.iwae_bound(key, x, encode, ll, 4))(x)
  good = lambda x: (jnp.zeros((4, LATENT)), jnp.zeros((4, LATENT)))
  # One variance for all latents: standard_normal_kl would broadcast it.
  one_variance = lambda x: (jnp.zeros((4, LATENT)), jnp.zeros((4, 1)))
  no_latent_axis = lambda x: (jnp.zeros(()), jnp.zeros(()))
  # (4, OBS) not summed over the data axis; with OBS == 4 it broadcasts against the KL's (4,).
  not_summed = lambda x, z: distributions.normal_log_prob(x, 0.0, 0.0)
  for run in (run_elbo, run_iwae):
    if jit:
      run(good, gaussian_log_likelihood)
    for encode in (one_variance, no_latent_axis):
      with pytest.raises(ValueError, match=r"encode\(x\) returned mean of shape .* logvar of"):
        run(encode, gaussian_log_likelihood)
    with pytest.raises(
      ValueError, match=r"log_likelihood\(x, z\) returned shape \(4, 4\).*shape \(4,\)"
    ):
      run(good, not_summed)
  with pytest.raises(ValueError, match=r"logvar of shape \(2, 3\) does not fit mean of shape \(3,"):
    vae.reparameterize(key, jnp.zeros(3), jnp.zeros((2, 3)))
  # A scalar logvar shared by all coordinates is fine.
  assert vae.reparameterize(key, jnp.zeros((2, 3)), 0.0).shape == (2, 3)


# --------------------------------------------------------------------------------------------------
# diffusion: schedules, q(x_t | x_0), q(x_{t-1} | x_t, x_0)


def check_schedule(schedule, betas, dt):
  for name, values in schedule._asdict().items():
    values = np.asarray(values)
    assert values.dtype == dt and values.shape == betas.shape, name
    assert np.all(np.isfinite(values)), name
  ac = np.asarray(schedule.alphas_cumprod, np.float64)
  assert np.all((ac >= 0) & (ac <= 1)) and np.all(np.diff(ac) <= 0)
  posterior_variance = np.asarray(schedule.posterior_variance, np.float64)
  # beta~_t = beta_t (1 - ac_{t-1}) / (1 - ac_t) lies in [0, beta_t]
  assert np.all(posterior_variance >= 0)
  assert np.all(posterior_variance <= np.asarray(schedule.betas, np.float64) * (1 + 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(
  num_timesteps=st.integers(1, 2000), beta_start=floats(1e-8, 0.5), spread=floats(0, 1)
)
def test_schedules_are_finite_and_ordered(dtype, num_timesteps, beta_start, spread):
  beta_end = beta_start + spread * (0.999 - beta_start)
  with precision(dtype) as (dt, _):
    betas = diffusion.linear_betas(num_timesteps, beta_start, beta_end)
    check_schedule(diffusion.make_schedule(betas), betas, dt)
    cosine = diffusion.cosine_betas(num_timesteps)
    assert np.all((cosine > 0) & (cosine <= 0.999))
    check_schedule(diffusion.make_schedule(cosine), cosine, dt)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@hypothesis.given(
  data=st.data(),
  batch=st.integers(1, 3),
  example=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
)
@pytest.mark.slow
def test_q_sample_and_q_posterior_match_float64(dtype, data, batch, example):
  num_timesteps = 50
  t = data.draw(hnp.arrays(np.int32, (batch,), elements=st.integers(0, num_timesteps - 1)))
  x0 = data.draw(arrays((batch,) + example, -1e3, 1e3))
  noise = data.draw(arrays((batch,) + example, -10, 10))
  betas = diffusion.linear_betas(num_timesteps, 1e-4, 0.2)
  ac = np.cumprod(1 - betas)
  ac_prev = np.append(1.0, ac[:-1])
  expand = lambda v: v[t].reshape((batch,) + (1,) * len(example))
  with precision(dtype) as (dt, eps):
    schedule = diffusion.make_schedule(betas)
    (x0, noise), (x0_64, noise64) = as_dtype(dt, x0, noise)
    x_t = diffusion.make_q_sample(schedule)(x0=x0, t=t, noise=noise)
    expected = np.sqrt(expand(ac)) * x0_64 + np.sqrt(1 - expand(ac)) * noise64
    check_close(x_t, expected, 8 * eps * (np.abs(x0_64) + np.abs(noise64)), dt)

    x_t64 = np.asarray(x_t, np.float64)
    mean, variance, log_variance = diffusion.q_posterior(schedule, x0=x0, x_t=x_t, t=t)
    coef1 = expand(betas * np.sqrt(ac_prev) / (1 - ac))
    coef2 = expand((1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac))
    check_close(
      mean,
      coef1 * x0_64 + coef2 * x_t64,
      16 * eps * (coef1 * np.abs(x0_64) + coef2 * np.abs(x_t64)),
      dt,
    )
    posterior_variance = betas * (1 - ac_prev) / (1 - ac)
    np.testing.assert_allclose(
      variance, np.broadcast_to(expand(posterior_variance), x_t.shape), rtol=4 * eps
    )
    clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    np.testing.assert_allclose(
      log_variance, np.broadcast_to(expand(clipped), x_t.shape), rtol=4 * eps
    )


def test_q_sample_refuses_a_time_batch_of_another_size():
  schedule = diffusion.make_schedule(diffusion.linear_betas(10))
  x, t = jnp.zeros((4, 2)), jnp.zeros((3,), jnp.int32)
  with pytest.raises((ValueError, TypeError)):
    diffusion.make_q_sample(schedule)(x0=x, t=t, noise=x)
  with pytest.raises((ValueError, TypeError)):
    diffusion.q_posterior(schedule, x0=x, x_t=x, t=t)
