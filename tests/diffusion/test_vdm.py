"""gen_jax.diffusion.vdm against independent references: float64 numpy and scipy quadrature, closed
forms for Gaussian data with its exact denoiser, and jax.grad of the quantities the gradient
trick claims to differentiate.

The Gaussian oracle: data x ~ N(mu, diag s^2), z_t = alpha_t x + sigma_t eps, exact denoiser
eps_hat = sigma (z - alpha mu) / (alpha^2 s^2 + sigma^2), whose error has expectation
E||eps - eps_hat||^2 = sum_d SNR s_d^2 / (SNR s_d^2 + 1) at every t, so
  E[L_inf] = 1/2 int_0^1 gamma'(t) sum_d SNR s_d^2 / (1 + SNR s_d^2) dt
           = 1/2 sum_d log((1 + s_d^2 SNR_0) / (1 + s_d^2 SNR_1))     (SNR = exp(-gamma)),
the second form by substituting u = s^2 SNR: the endpoints alone (the paper's invariance).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

from gen_jax.configs import ConfigError
from gen_jax.diffusion import vdm

# XLA's optimisation passes cost more than they save on these small programs.
pytestmark = pytest.mark.usefixtures("fast_compile")

MU = np.array([0.3, -0.2])
STD = np.array([0.5, 0.8])
GAMMA_MIN, GAMMA_MAX = -10.0, 6.0


def exact_eps_fn(mu=MU, std=STD):
  """E[eps | z_t] for data N(mu, diag std^2)."""

  def eps_fn(z, gamma):
    alpha, sigma = vdm.alpha_sigma(gamma[:, None])
    return sigma * (z - alpha * mu) / (alpha**2 * std**2 + sigma**2)

  return eps_fn


def expected_mse(gamma, std=STD):
  """sum_d E||eps - eps_hat||^2 under the exact denoiser, float64."""
  snr_s2 = np.exp(-gamma) * std**2
  return np.sum(snr_s2 / (1 + snr_s2))


def closed_form_diffusion(gamma_0, gamma_1, std=STD):
  return 0.5 * np.sum(np.log1p(std**2 * np.exp(-gamma_0)) - np.log1p(std**2 * np.exp(-gamma_1)))


def quad_diffusion(gamma_of_t):
  """1/2 int_0^1 gamma'(t) E||eps - eps_hat||^2 dt by scipy quadrature (float64; the slope by
  a central difference of the numpy schedule)."""

  def integrand(t):
    h = 1e-6
    slope = (gamma_of_t(min(t + h, 1.0)) - gamma_of_t(max(t - h, 0.0))) / (
      min(t + h, 1.0) - max(t - h, 0.0)
    )
    return 0.5 * slope * expected_mse(gamma_of_t(t))

  value, _ = scipy.integrate.quad(integrand, 0.0, 1.0, limit=200, epsabs=1e-11, epsrel=1e-11)
  return value


def expected_prior(gamma_1, mu=MU, std=STD):
  alpha_sq, sigma_sq = scipy.special.expit(-gamma_1), scipy.special.expit(gamma_1)
  return 0.5 * np.sum(alpha_sq * (mu**2 + std**2) + sigma_sq - np.log(sigma_sq) - 1)


def expected_gaussian_reconstruction(gamma_0, num_dims=2):
  return 0.5 * num_dims * (math.log(2 * math.pi) + gamma_0 + 1.0)


def gaussian_data(n, seed=0):
  return jnp.asarray(MU + STD * np.random.default_rng(seed).normal(size=(n, 2)))


def learned_params(seed=0, gamma_0=GAMMA_MIN, gamma_1=GAMMA_MAX):
  """A visibly non-linear learned schedule: raw kernels of both signs, a large interior."""
  schedule = vdm.LogSNRSchedule("learned", GAMMA_MIN, GAMMA_MAX, num_features=16)
  params = schedule.init(jax.random.key(seed))
  rng = np.random.default_rng(seed)
  params["net"]["l1"]["kernel"] = jnp.full((1, 1), -0.2)  # enters as |w1|
  params["net"]["l2"]["kernel"] = jnp.asarray(6 * rng.normal(size=(1, 16)))
  params["net"]["l2"]["bias"] = jnp.asarray(3 * rng.normal(size=16))
  params["net"]["l3"]["kernel"] = jnp.asarray(16 * rng.normal(size=(16, 1)))
  params["gamma_0"], params["gamma_1"] = jnp.asarray(gamma_0), jnp.asarray(gamma_1)
  return schedule, params


def numpy_schedule(schedule, params):
  """gamma(t) in float64 numpy, written from the definitions (not by calling the code)."""
  low, high = schedule.gamma_min, schedule.gamma_max
  if schedule.kind == "linear":
    return lambda t: low + (high - low) * t
  if schedule.kind == "cosine":  # -log SNR = -log cot^2(theta)
    a, b = np.arctan(np.exp(low / 2)), np.arctan(np.exp(high / 2))
    return lambda t: -np.log(1 / np.tan(a + (b - a) * t) ** 2)
  net = jax.tree.map(np.asarray, params["net"])
  features = net["l2"]["kernel"].shape[1]

  def f(t):  # vdm's NoiseSchedule_NNet with |kernels|
    hidden = np.tanh((np.abs(net["l2"]["kernel"][0]) * (2 * t - 1) + net["l2"]["bias"]) / 2)
    linear = np.abs(net["l1"]["kernel"][0, 0]) * t + net["l1"]["bias"][0]
    return linear + np.abs(net["l3"]["kernel"][:, 0]) @ hidden / features

  g0, g1 = float(params["gamma_0"]), float(params["gamma_1"])
  return lambda t: g0 + (g1 - g0) * (f(t) - f(0.0)) / (f(1.0) - f(0.0))


# ----------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_learned_schedule_is_monotone_with_exact_endpoints(x64):
  schedule, params = learned_params()
  t = jnp.linspace(0.0, 1.0, 2001)
  gamma, slope, _ = jax.jit(schedule.gamma_and_slope)(params, t)
  gamma, slope = np.asarray(gamma), np.asarray(slope)
  assert np.all(np.diff(gamma) > 0) and np.all(slope > 0)
  assert abs(gamma[0] - GAMMA_MIN) < 1e-12 and abs(gamma[-1] - GAMMA_MAX) < 1e-12
  # vdm's network, written again in numpy, and visibly not linear
  reference = numpy_schedule(schedule, params)
  np.testing.assert_allclose(gamma[::100], [reference(v) for v in t[::100]], rtol=1e-10)
  assert np.max(np.abs(gamma - np.linspace(GAMMA_MIN, GAMMA_MAX, 2001))) > 1.0
  # the slope is gamma's derivative (central differences)
  np.testing.assert_allclose(slope[1:-1], (gamma[2:] - gamma[:-2]) / 1e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_fixed_schedules_endpoints_and_slope(kind, x64):
  schedule = vdm.LogSNRSchedule(kind, GAMMA_MIN, GAMMA_MAX)
  assert schedule.init(jax.random.key(0)) == {}
  t = np.linspace(0.0, 1.0, 1001)
  gamma, slope, tap = schedule.gamma_and_slope({}, jnp.asarray(t))
  assert tap is None
  np.testing.assert_allclose([gamma[0], gamma[-1]], [GAMMA_MIN, GAMMA_MAX], atol=1e-12)
  if kind == "cosine":  # alpha = cos(theta), sigma = sin(theta), theta linear in t
    a, b = np.arctan(np.exp(GAMMA_MIN / 2)), np.arctan(np.exp(GAMMA_MAX / 2))
    theta = a + (b - a) * t
    np.testing.assert_allclose(gamma, np.log(np.tan(theta) ** 2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(slope, 2 * (b - a) / (np.sin(theta) * np.cos(theta)), rtol=1e-10)
    alpha, sigma = vdm.alpha_sigma(gamma)
    np.testing.assert_allclose(alpha, np.cos(theta), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.sin(theta), rtol=1e-12)
  else:
    np.testing.assert_allclose(slope, GAMMA_MAX - GAMMA_MIN, rtol=1e-12)


def test_schedule_refuses_bad_kind_and_endpoints():
  with pytest.raises(ValueError, match="kind"):
    vdm.LogSNRSchedule("sigmoid")
  with pytest.raises(ValueError, match="gamma_min < gamma_max"):
    vdm.LogSNRSchedule("linear", 5.0, -5.0)


# ----------------------------------------------------------------------------
# Terms
# ----------------------------------------------------------------------------


def test_prior_kl_vs_textbook_formula(x64):
  x = np.random.default_rng(0).uniform(-1, 1, size=(5, 3, 2))
  for gamma_1 in (-2.0, 5.0, 12.0):
    a2, s2 = scipy.special.expit(-gamma_1), scipy.special.expit(gamma_1)
    reference = 0.5 * np.sum(a2 * x**2 + s2 - np.log(s2) - 1, axis=(1, 2))
    np.testing.assert_allclose(vdm.prior_kl(jnp.asarray(x), gamma_1), reference, rtol=1e-9)


@pytest.mark.parametrize("gamma_0", [-13.3, -7.0, -3.0])
@pytest.mark.slow
def test_discretized_reconstruction_vs_direct_sum(gamma_0, x64):
  """-log p(x | z_0) against a float64 sum over the 256 levels of q(z_0 | level)."""
  rng = np.random.default_rng(1)
  k = rng.integers(0, 256, size=(4, 6))
  x = k / 127.5 - 1
  eps = rng.normal(size=x.shape)
  levels = np.arange(256) / 127.5 - 1
  z = x + np.exp(gamma_0 / 2) * eps  # z_0 / alpha_0
  log_q = scipy.stats.norm.logpdf(z[..., None], levels, np.exp(gamma_0 / 2))
  log_p = log_q - scipy.special.logsumexp(log_q, axis=-1, keepdims=True)
  assert np.allclose(scipy.special.logsumexp(log_p, axis=-1), 0.0)  # a distribution over levels
  reference = -np.take_along_axis(log_p, k[..., None], -1)[..., 0].sum(1)
  got = vdm.reconstruction_nll(jnp.asarray(x), eps=jnp.asarray(eps), gamma_0=gamma_0)
  np.testing.assert_allclose(got, reference, rtol=1e-10, atol=1e-12)
  gaussian = vdm.reconstruction_nll(
    jnp.asarray(x), eps=jnp.asarray(eps), gamma_0=gamma_0, decoder="gaussian"
  )
  density = -scipy.stats.norm.logpdf(x, z, np.exp(gamma_0 / 2)).sum(1)
  np.testing.assert_allclose(gaussian, density, rtol=1e-10)


@pytest.mark.slow
def test_ancestral_step_is_the_posterior_at_x_hat(x64):
  """z_s = E[z_s | z_t, x_hat] + sd * noise, with q(z_s | z_t, x) from Bayes in float64."""
  gamma_t, gamma_s = 1.5, -2.0
  a_t, s_t = math.sqrt(scipy.special.expit(-gamma_t)), math.sqrt(scipy.special.expit(gamma_t))
  a_s, s_s = math.sqrt(scipy.special.expit(-gamma_s)), math.sqrt(scipy.special.expit(gamma_s))
  z_t, eps_hat = np.array([[0.4, -1.1]]), np.array([[0.3, 0.8]])
  x_hat = (z_t - s_t * eps_hat) / a_t
  a_ts = a_t / a_s  # q(z_t | z_s) = N(a_ts z_s, s_ts^2)
  s_ts_sq = s_t**2 - a_ts**2 * s_s**2
  mean = a_ts * s_s**2 / s_t**2 * z_t + a_s * s_ts_sq / s_t**2 * x_hat
  std = math.sqrt(s_ts_sq * s_s**2 / s_t**2)
  step = lambda noise: vdm.ancestral_step(
    eps_hat=jnp.asarray(eps_hat),
    z_t=jnp.asarray(z_t),
    noise=noise,
    gamma_t=gamma_t,
    gamma_s=gamma_s,
  )
  np.testing.assert_allclose(step(jnp.zeros((1, 2))), mean, rtol=1e-12)
  np.testing.assert_allclose(step(jnp.ones((1, 2))) - step(jnp.zeros((1, 2))), std, rtol=1e-10)


def test_off_grid_data_is_refused_for_the_discretized_decoder():
  schedule = vdm.LogSNRSchedule("linear")
  x = jnp.full((2, 3), 0.123)
  with pytest.raises(ValueError, match="8-bit grid"):
    vdm.vdm_terms(jax.random.key(0), exact_eps_fn(), schedule, {}, x)
  with pytest.raises(ValueError, match="time_samples"):
    vdm.vdm_terms(jax.random.key(0), exact_eps_fn(), schedule, {}, x, time_samples=0)
  with pytest.raises(ValueError, match="variance_tap needs num_steps=0"):
    vdm.vdm_terms(
      jax.random.key(0), exact_eps_fn(), schedule, {}, x, num_steps=10, variance_tap=True
    )


@pytest.mark.slow
def test_vdm_terms_jit_and_vmap():
  schedule = vdm.LogSNRSchedule("cosine", GAMMA_MIN, GAMMA_MAX)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(4, 2)) / 127.5 - 1, jnp.float32)
  run = lambda key: vdm.vdm_terms(key, exact_eps_fn(), schedule, {}, x, time_samples=3)
  keys = jax.random.split(jax.random.key(1), 3)
  batched = jax.jit(jax.vmap(run))(keys)
  assert batched.total.shape == (3, 4)
  one = run(keys[1])  # eager, one key: the vmapped row
  for a, b in zip(one[:4], batched[:4], strict=True):
    np.testing.assert_allclose(a, b[1], rtol=1e-5)
  np.testing.assert_allclose(one.total, one.prior + one.reconstruction + one.diffusion, rtol=1e-6)


# ----------------------------------------------------------------------------
# The Gaussian oracle: the bound against quadrature and closed forms
# ----------------------------------------------------------------------------


def _oracle_schedules():
  learned, learned_params_ = learned_params()
  return [
    (vdm.LogSNRSchedule("linear", GAMMA_MIN, GAMMA_MAX), {}),
    (vdm.LogSNRSchedule("cosine", GAMMA_MIN, GAMMA_MAX), {}),
    (learned, learned_params_),
  ]


def test_invariance_quadrature_equals_the_endpoint_closed_form(x64):
  """Three schedules with the same endpoints: the same expected continuous loss (quad, float64)."""
  exact = closed_form_diffusion(GAMMA_MIN, GAMMA_MAX)
  for schedule, params in _oracle_schedules():
    assert abs(quad_diffusion(numpy_schedule(schedule, params)) - exact) < 1e-7, schedule.kind


@pytest.mark.slow
def test_gaussian_bound_equals_quadrature_every_schedule(x64):
  """The code's Monte Carlo bound (4096 examples, 8 stratified times each) against the float64
  quadrature of the same integral plus the analytic prior and reconstruction, within 5 standard
  errors, for each schedule; and the three estimates agree (invariance)."""
  x = gaussian_data(4096)
  exact_total = (
    closed_form_diffusion(GAMMA_MIN, GAMMA_MAX)
    + expected_prior(GAMMA_MAX)
    + expected_gaussian_reconstruction(GAMMA_MIN)
  )
  for schedule, params in _oracle_schedules():
    quad_total = (
      quad_diffusion(numpy_schedule(schedule, params))
      + expected_prior(GAMMA_MAX)
      + expected_gaussian_reconstruction(GAMMA_MIN)
    )
    terms = jax.jit(
      lambda key, s=schedule, p=params: vdm.vdm_terms(
        key, exact_eps_fn(), s, p, x, time_samples=8, decoder="gaussian"
      )
    )(jax.random.key(3))
    error = abs(float(terms.total.mean()) - quad_total)
    standard_error = float(terms.total.std()) / math.sqrt(len(x))
    assert error < 5 * standard_error, (schedule.kind, error, standard_error)
    assert abs(quad_total - exact_total) < 1e-7


@pytest.mark.slow
def test_bound_approaches_the_exact_nll_as_the_endpoints_widen(x64):
  """Expected bound - exact NLL (closed forms) falls to 0 as [gamma_0, gamma_1] widens, and the
  code's estimate follows it within 5 standard errors at every width."""
  exact_nll = 0.5 * np.sum(np.log(2 * math.pi * math.e * STD**2))
  x = gaussian_data(4096, seed=1)
  gaps = []
  for gamma_0, gamma_1 in [(-3.0, 1.0), (-6.0, 3.0), (-10.0, 6.0), (-16.0, 12.0)]:
    expected = (
      closed_form_diffusion(gamma_0, gamma_1)
      + expected_prior(gamma_1)
      + expected_gaussian_reconstruction(gamma_0)
    )
    gaps.append(expected - exact_nll)
    schedule = vdm.LogSNRSchedule("linear", gamma_0, gamma_1)
    terms = vdm.vdm_terms(
      jax.random.key(4), exact_eps_fn(), schedule, {}, x, time_samples=8, decoder="gaussian"
    )
    error = abs(float(terms.total.mean()) - expected)
    assert error < 5 * float(terms.total.std()) / math.sqrt(len(x)), (gamma_0, gamma_1, error)
  assert all(g > 0 for g in gaps) and all(a > b for a, b in itertools.pairwise(gaps))
  assert gaps[-1] < 1e-4 and gaps[0] > 0.1


def expected_discrete_diffusion(num_steps, gamma_of_t):
  """E[L_T] = sum_i 1/2 expm1(gamma(t_i) - gamma(t_i - 1/T)) E||eps - eps_hat(t_i)||^2."""
  t = np.arange(1, num_steps + 1) / num_steps
  gamma_t, gamma_s = gamma_of_t(t), gamma_of_t(t - 1 / num_steps)
  snr_s2 = np.exp(-gamma_t)[:, None] * STD**2
  mse = np.sum(snr_s2 / (1 + snr_s2), axis=1)
  return np.sum(0.5 * np.expm1(gamma_t - gamma_s) * mse)


def test_discrete_loss_converges_to_the_continuous_one():
  """E[L_T] (float64 sums) decreases towards E[L_inf] as T grows, at first order: the gap
  falls tenfold per tenfold T."""
  gamma_of_t = numpy_schedule(vdm.LogSNRSchedule("linear", GAMMA_MIN, GAMMA_MAX), {})
  continuous = closed_form_diffusion(GAMMA_MIN, GAMMA_MAX)
  gaps = [expected_discrete_diffusion(T, gamma_of_t) - continuous for T in (10, 100, 1000, 10_000)]
  assert all(g > 0 for g in gaps) and all(a > b for a, b in itertools.pairwise(gaps))
  assert 0.09 < gaps[2] / gaps[1] < 0.11 and 0.09 < gaps[3] / gaps[2] < 0.11
  assert gaps[-1] < 1e-3 * continuous


@pytest.mark.slow
def test_discrete_loss_estimate_matches_its_sum(x64):
  """The code's T = 10 estimate, every step visited once per example (time_samples = T),
  against the float64 sum E[L_10], within 5 standard errors."""
  schedule = vdm.LogSNRSchedule("linear", GAMMA_MIN, GAMMA_MAX)
  expected = expected_discrete_diffusion(10, numpy_schedule(schedule, {}))
  x = gaussian_data(1024, seed=2)
  terms = vdm.vdm_terms(
    jax.random.key(5),
    exact_eps_fn(),
    schedule,
    {},
    x,
    num_steps=10,
    time_samples=10,
    decoder="gaussian",
  )
  standard_error = float(terms.diffusion.std()) / math.sqrt(len(x))
  assert abs(float(terms.diffusion.mean()) - expected) < 5 * standard_error


# ----------------------------------------------------------------------------
# The learned schedule's gradients
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_variance_tap_gives_the_interior_the_second_moments_gradient(x64):
  """With `objective`: the network and the endpoints get d mean(L), the interior d mean(L_diff^2)
  (each against jax.grad of that quantity directly); the endpoints' gradient is not zero."""
  schedule, schedule_params = learned_params(seed=2, gamma_0=-8.0, gamma_1=4.0)
  x = gaussian_data(64, seed=3)
  key = jax.random.key(6)

  def terms(theta, gamma_params, tap):
    eps_fn = lambda z, gamma: theta * exact_eps_fn()(z, gamma)  # a model with a parameter
    return vdm.vdm_terms(
      key, eps_fn, schedule, gamma_params, x, decoder="gaussian", variance_tap=tap
    )

  theta = jnp.asarray(0.9)

  # One compilation for the four gradients (they share the forward pass), not op-by-op dispatch.
  @jax.jit
  def gradients(theta, params):
    grads = jax.grad(lambda th, p: vdm.objective(terms(th, p, True)), argnums=(0, 1))(theta, params)
    bound = jax.grad(lambda th, p: terms(th, p, False).total.mean(), argnums=(0, 1))(theta, params)
    second_moment = jax.grad(lambda p: jnp.mean(terms(theta, p, False).diffusion ** 2))(params)
    # and without the tap (interior on the bound)
    plain = jax.grad(lambda p: vdm.objective(terms(theta, p, False)))(params)
    return grads, bound, second_moment, plain

  grads, bound, second_moment, plain = gradients(theta, schedule_params)
  np.testing.assert_allclose(grads[0], bound[0], rtol=1e-10)
  for end in ("gamma_0", "gamma_1"):
    np.testing.assert_allclose(grads[1][end], bound[1][end], rtol=1e-10)
    assert abs(float(grads[1][end])) > 1e-3
  for got, want in zip(
    jax.tree.leaves(grads[1]["net"]), jax.tree.leaves(second_moment["net"]), strict=True
  ):
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
  # and without the tap (interior on the bound) the interior gets the bound's gradient
  for got, want in zip(jax.tree.leaves(plain), jax.tree.leaves(bound[1]), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ancestral_sampler_draws_the_gaussian_data_law(x64):
  """Exact denoiser of N(mu, s^2): 200 ancestral steps on the cosine schedule reproduce its mean
  and standard deviation (20,000 draws; tolerances 5 standard errors plus 1%)."""
  schedule = vdm.LogSNRSchedule("cosine", GAMMA_MIN, GAMMA_MAX)
  n = 20_000
  samples = jax.jit(
    lambda key: vdm.sample(
      key, exact_eps_fn(), schedule, {}, (n, 2), num_steps=200, decoder="gaussian"
    )
  )(jax.random.key(7))
  samples = np.asarray(samples)
  assert np.all(np.abs(samples.mean(0) - MU) < 5 * STD / math.sqrt(n))
  assert np.all(np.abs(samples.std(0) / STD - 1) < 5 / math.sqrt(2 * n) + 0.01)
  on_grid = vdm.sample(jax.random.key(8), exact_eps_fn(), schedule, {}, (16, 2), num_steps=20)
  k = (np.asarray(on_grid) + 1) * 127.5
  assert np.allclose(k, np.round(k), atol=1e-6) and k.min() >= 0 and k.max() <= 255


# ----------------------------------------------------------------------------
# The config section
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("schedule", "sigmoid", "config.vdm.schedule"),
    ("gamma_max", -20.0, "config.vdm.gamma_max"),
    ("num_timesteps", -1, "config.vdm.num_timesteps"),
    ("num_timesteps", 100, "config.vdm.interior"),  # learned + variance needs continuous time
    ("decoder", "logistic", "config.vdm.decoder"),
    ("eval_time_samples", 0, "config.vdm.eval_time_samples"),
  ],
)
def test_config_errors_name_the_field(field, value, message):
  from experiments import vdm_digits
  from gen_jax import configs

  config = vdm_digits.get_config()
  configs.validate(config)
  config.vdm[field] = value
  with pytest.raises(ConfigError, match=message):
    configs.validate(config)


# ----------------------------------------------------------------------------
# The model kind (gen_jax.models.VDMModel), on a one-parameter network
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_vdm_model_loss_sample_evaluate():
  import flax.linen as nn

  from gen_jax import models

  class Scaled(nn.Module):  # eps_hat = w z
    @nn.compact
    def __call__(self, z, t, train=False):
      assert t.shape == z.shape[:1]  # the noise level, one per example
      return self.param("w", nn.initializers.constant(0.5), ()) * z

  schedule = vdm.LogSNRSchedule("learned", num_features=4)
  model = models.VDMModel(Scaled(), schedule, (2, 2, 1), eval_time_samples=2, sample_steps=3)
  params = model.init(jax.random.key(0))
  assert set(params) == {"net", "gamma"}
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 2, 2, 1)) / 127.5 - 1, jnp.float32)
  # Jitted, as the trainer and the evaluator call them (eager dispatch costs seconds here).
  loss, metrics = jax.jit(lambda p, b, k: model.loss(p, b, k, train=False))(
    params, {"x": x}, jax.random.key(1)
  )
  parts = metrics["diffusion"] + metrics["prior"] + metrics["reconstruction"]
  np.testing.assert_allclose(loss, parts, rtol=1e-5)  # the bound in bits/dim, term by term
  np.testing.assert_allclose([metrics["gamma_0"], metrics["gamma_1"]], [-13.3, 5.0], rtol=1e-6)
  out = jax.jit(model.evaluate)(params, {"x": x}, jax.random.key(2))
  assert set(out) == {"bits_per_dim", "diffusion", "prior", "reconstruction"}
  assert out["bits_per_dim"].shape == (3,)
  samples = jax.jit(lambda p, k: model.sample(p, k, 5))(params, jax.random.key(3))
  k = (np.asarray(samples) + 1) * 127.5
  assert samples.shape == (5, 2, 2, 1) and np.allclose(k, np.round(k), atol=1e-4)


def test_vdm_model_refuses_other_samplers_and_labels():
  from gen_jax import models

  model = models.VDMModel(None, vdm.LogSNRSchedule(), (2, 2, 1))
  # Its own ancestral sampler and the process samplers (tests/models/test_vdm_model.py); DDPM's
  # discrete-schedule samplers do not apply to a continuous log-SNR schedule.
  with pytest.raises(ValueError, match="sampler must be one of .*'ddpm'.*got 'respaced'"):
    model.sample(None, jax.random.key(3), 5, sampler="respaced")
  with pytest.raises(ValueError, match="unconditional"):
    model.sample(None, jax.random.key(3), 5, labels=np.zeros(5, int))


def test_vdm_refuses_a_pretrained_folder():
  from experiments import vdm_digits

  config = vdm_digits.get_config()
  config.pretrained = "some/diffusers/folder"
  with pytest.raises(ConfigError, match="config.pretrained"):
    vdm_digits.build(config, (8, 8, 1))


@pytest.mark.slow
def test_learned_schedule_init_follows_the_default_dtype(x64):
  """Issue 26: under jax_enable_x64 the learned schedule's endpoints were float32
  (-13.3 became -13.300000190734863, a float64 finite-difference check off by 2.7e-2),
  while the fixed schedules follow the default dtype."""
  params = vdm.LogSNRSchedule("learned", -13.3, 5.0, num_features=8).init(jax.random.key(0))
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}
  assert float(params["gamma_0"]) == -13.3 and float(params["gamma_1"]) == 5.0
  gamma_0, _ = vdm.LogSNRSchedule("learned", -13.3, 5.0).endpoints(params)
  fixed_0, _ = vdm.LogSNRSchedule("linear", -13.3, 5.0).endpoints({})
  assert gamma_0.dtype == fixed_0.dtype and float(gamma_0) == float(fixed_0)
