"""gen_jax.diffusion.denoising against independent references: float64 numpy closed forms of the
processes (written here from their definitions, never through gen_jax's process), scipy's
densities, Kingma & Gao (2023)'s weightings in closed form, today's `simple_loss` and VDM's bound
(bit for bit or 1e-12), and the Gaussian oracle.

The Gaussian oracle: data x0 ~ N(mu, diag s^2), x_t = alpha x0 + sigma eps, exact model
  E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2),
  E[x0 | x_t]  = mu + alpha s^2 (x_t - alpha mu) / (alpha^2 s^2 + sigma^2),
whose eps error has E||eps - eps_hat||^2 = sum_d SNR s_d^2 / (1 + SNR s_d^2), so the expected
continuous-time ELBO is, with lambda_0 = lambda(t_min), lambda_1 = lambda(t_max), p = prior_std,
  diffusion       1/2 sum_d [log1p(s_d^2 e^{lambda_0}) - log1p(s_d^2 e^{lambda_1})]
  reconstruction  1/2 sum_d [log 2 pi - lambda_0 + 1]        (continuous data)
  prior           1/2 sum_d [alpha_1^2 (mu_d^2 + s_d^2) / p^2 + r - 1 - log r],  r = sigma_1^2 / p^2
and exceeds the exact NLL 1/2 sum_d [log 2 pi s_d^2 + 1] by 1/2 sum_d [log(1 + e^{-lambda_0} / s_d^2)
+ log1p(s_d^2 e^{lambda_1})] + prior, which goes to 0 as lambda_0 -> inf and lambda_1 -> -inf.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from gen_jax import diffusion
from gen_jax.diffusion import denoising as dn
from gen_jax.diffusion import process as proc
from gen_jax.diffusion import vdm
from gen_jax.diffusion.preconditioning import edm_preconditioning

pytestmark = pytest.mark.usefixtures("fast_compile")

MU = np.array([0.3, -0.2])
STD = np.array([0.5, 0.8])
# vp_cosine(-15, 15)'s angles.
COS_A, COS_B = math.atan(math.exp(-7.5)), math.atan(math.exp(7.5))


def _schedule1000():
  return diffusion.make_schedule(diffusion.linear_betas(1000))


def _schedule20():
  return diffusion.make_schedule(diffusion.linear_betas(20, 1e-3, 0.2))


PROCESSES = {
  "vp_linear": lambda: proc.vp_linear(t_min=1e-3),
  "vp_cosine": proc.vp_cosine,
  "ve": proc.ve,
  "rectified_flow": lambda: proc.rectified_flow(t_min=1e-4),
  "discrete": lambda: proc.discrete_process(_schedule1000()),
}


# ---------------------------------------------------------------------------------------------
# float64 numpy references


def np_process(name):
  """(alpha, sigma, alpha', sigma') as numpy functions of t, from each process's definition."""
  if name == "vp_linear":  # beta_min 0.1, beta_max 20

    def f(t):
      log_alpha = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
      alpha = np.exp(log_alpha)
      d_alpha = alpha * (-0.5 * t * 19.9 - 0.05)
      sigma = np.sqrt(1 - alpha**2)
      return alpha, sigma, d_alpha, -alpha * d_alpha / sigma

  elif name == "vp_cosine":

    def f(t):
      theta = COS_A + t * (COS_B - COS_A)
      return (
        np.cos(theta),
        np.sin(theta),
        -np.sin(theta) * (COS_B - COS_A),
        np.cos(theta) * (COS_B - COS_A),
      )

  elif name == "ve":

    def f(t):
      return np.ones_like(t), t, np.zeros_like(t), np.ones_like(t)

  else:  # rectified_flow

    def f(t):
      return 1 - t, t, -np.ones_like(t), np.ones_like(t)

  return f


def np_target_coefficients(name, alpha, sigma, d_alpha, d_sigma):
  """Each target as p x0 + q eps (the definitions): eps, x0, v = alpha eps - sigma x0,
  velocity = alpha' x0 + sigma' eps, score = -eps / sigma."""
  return {
    "eps": (0 * alpha, 1 + 0 * alpha),
    "x0": (1 + 0 * alpha, 0 * alpha),
    "v": (-sigma, alpha),
    "velocity": (d_alpha, d_sigma),
    "score": (0 * alpha, -1 / sigma),
  }[name]


def np_x0_eps_from_output(prediction, output, x_t, coefficients):
  """Solves [x_t, output] = [[alpha, sigma], [p, q]] [x0, eps] per example (2x2, Cramer)."""
  alpha, sigma, d_alpha, d_sigma = (c[:, None] for c in coefficients)
  p, q = np_target_coefficients(prediction, alpha, sigma, d_alpha, d_sigma)
  det = alpha * q - sigma * p
  return (q * x_t - sigma * output) / det, (alpha * output - p * x_t) / det


def gaussian_model(process, prediction, mu=MU, std=STD):
  """The exact model for data N(mu, diag std^2) on `process`, in target `prediction`."""

  def model_fn(x_t, t):
    alpha, sigma = process.alpha_sigma(t)
    alpha, sigma = alpha[:, None], sigma[:, None]
    var = alpha**2 * std**2 + sigma**2
    eps = sigma * (x_t - alpha * mu) / var
    x0 = mu + alpha * std**2 * (x_t - alpha * mu) / var
    return proc.from_x0_eps(process, t=t, x0=x0, eps=eps, prediction=prediction)

  return model_fn


def np_log_snr_ends(name, process):
  """(lambda(t_min), lambda(t_max)) from the closed forms (discrete: the schedule's table)."""
  if name == "discrete":
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    return np.log(ac[0] / (1 - ac[0])), np.log(ac[-1] / (1 - ac[-1]))
  f = np_process(name)
  ends = []
  for t in (process.t_min, process.t_max):
    alpha, sigma, _, _ = f(np.float64(t))
    ends.append(2 * (np.log(alpha) - np.log(sigma)) if alpha > 0 else -np.inf)
  return tuple(ends)


def expected_elbo(lam_0, lam_1, alpha_1, sigma_1, prior_std, mu=MU, std=STD):
  """(prior, reconstruction, diffusion, exact NLL) in expectation, continuous data (docstring)."""
  r = sigma_1**2 / prior_std**2
  prior = 0.5 * np.sum(alpha_1**2 * (mu**2 + std**2) / prior_std**2 + r - 1 - np.log(r))
  diffusion_term = 0.5 * np.sum(np.log1p(std**2 * np.exp(lam_0)) - np.log1p(std**2 * np.exp(lam_1)))
  reconstruction = 0.5 * mu.size * (np.log(2 * np.pi) - lam_0 + 1)
  nll = 0.5 * np.sum(np.log(2 * np.pi * std**2) + 1)
  return prior, reconstruction, diffusion_term, nll


# ---------------------------------------------------------------------------------------------
# Time distributions


def _grid(process, n):
  """A grid on [t_min, t_max] dense at both ends (log-spaced on ve)."""
  if process.name == "ve":
    return np.geomspace(process.t_min, process.t_max, n)
  s = (1 - np.cos(np.pi * np.linspace(0, 1, n))) / 2
  return process.t_min + (process.t_max - process.t_min) * s


# The fast tier: every process and every law once; the rest of the grid in the slow tier.
FAST_TIME_CASES = {
  ("vp_linear", "log_normal"),
  ("vp_cosine", "log_snr_uniform"),
  ("ve", "log_normal"),
  ("rectified_flow", "logit_normal"),
  ("discrete", "uniform"),
  ("vp_linear", "importance"),
}


def _cases():
  for name in PROCESSES:
    for distribution in dn.TIME_DISTRIBUTIONS:
      if name == "rectified_flow" and distribution in ("log_snr_uniform", "importance"):
        continue  # lambda(t_max = 1) = -inf: refused (test_time_distribution_errors)
      marks = () if (name, distribution) in FAST_TIME_CASES else (pytest.mark.slow,)
      yield pytest.param(name, distribution, marks=marks)


@pytest.mark.parametrize("name, distribution", list(_cases()))
def test_time_density_integrates_to_one_and_matches_sample_time(name, distribution, x64):
  """The trapezoid rule on 400k points of a grid dense at the ends: 1 within 2e-4 (the
  discrete process's piecewise-constant lambda' makes its densities jump at the levels).
  Histogram: 20 bins at the sample's quantiles; each bin's mass under the density (trapezoid)
  within 5 binomial standard errors of the observed 1/20 of 100k draws."""
  process = PROCESSES[name]()
  params = {"integer": False} if distribution == "uniform" else {}
  t = _grid(process, 400_001)
  density = np.asarray(dn.time_density(process, jnp.asarray(t), distribution=distribution))
  assert np.all(density >= 0)
  np.testing.assert_allclose(np.trapezoid(density, t), 1.0, atol=2e-4)

  n = 100_000
  draws = np.asarray(
    dn.sample_time(process, jax.random.key(7), (n,), distribution=distribution, **params)
  )
  assert draws.min() >= process.t_min and draws.max() <= process.t_max
  edges = np.quantile(draws, np.linspace(0, 1, 21))
  observed = np.histogram(draws, edges)[0] / n
  sub = np.concatenate([np.linspace(lo, hi, 2001) for lo, hi in itertools.pairwise(edges)])
  sub_density = np.asarray(dn.time_density(process, jnp.asarray(sub), distribution=distribution))
  mass = np.trapezoid(sub_density.reshape(20, 2001), sub.reshape(20, 2001), axis=1)
  standard_error = np.sqrt(mass * (1 - mass) / n)
  assert np.all(np.abs(mass - observed) < 5 * standard_error + 2e-4), (mass, observed)


def test_discrete_uniform_draws_integer_levels(x64):
  process = PROCESSES["discrete"]()
  draws = dn.sample_time(process, jax.random.key(0), (50_000,))
  assert jnp.issubdtype(draws.dtype, jnp.integer)
  counts = np.bincount(np.asarray(draws), minlength=1000)
  assert counts.size == 1000 and 0 <= draws.min() and draws.max() <= 999
  mass = np.asarray(dn.time_density(process, jnp.arange(1000), distribution="uniform"))
  np.testing.assert_allclose(mass.sum(), 1.0, rtol=1e-12)
  np.testing.assert_allclose(mass, 1e-3)
  # Chi-square of the counts against 1/T: its 1e-6 upper quantile with 999 degrees of freedom.
  chi2 = np.sum((counts - 50.0) ** 2 / 50.0)
  assert chi2 < scipy.stats.chi2.ppf(1 - 1e-6, 999)


@pytest.mark.slow
def test_time_densities_match_scipy_closed_forms(x64):
  """EDM's log-normal on ve (sigma = t) is scipy's lognorm(s=1.2, scale=e^{-1.2}) truncated to
  [0.002, 80]; SD3's logit-normal on rectified flow is N(logit t; 0, 1) / (t (1 - t));
  log-SNR-uniform on vp_cosine is (4 (b - a) / sin 2 theta) / (lambda(0) - lambda(1))."""
  t = np.geomspace(0.002, 80.0, 101)
  law = scipy.stats.lognorm(s=1.2, scale=math.exp(-1.2))
  want = law.pdf(t) / (law.cdf(80.0) - law.cdf(0.002))
  got = dn.time_density(proc.ve(), jnp.asarray(t), distribution="log_normal")
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)

  t = np.linspace(1e-3, 1 - 1e-3, 101)
  want = scipy.stats.norm.pdf(scipy.special.logit(t), 0.3, 0.7) / (t * (1 - t))
  got = dn.time_density(
    proc.rectified_flow(), jnp.asarray(t), distribution="logit_normal", mean=0.3, std=0.7
  )
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)

  theta = COS_A + t * (COS_B - COS_A)
  want = 4 * (COS_B - COS_A) / np.sin(2 * theta) / 30.0
  got = dn.time_density(proc.vp_cosine(), jnp.asarray(t), distribution="log_snr_uniform")
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)

  got = dn.time_density(proc.ve(), jnp.asarray([0.001, 81.0]), distribution="log_normal")
  np.testing.assert_array_equal(np.asarray(got), 0.0)  # outside the range


def test_time_distribution_errors():
  process = proc.vp_cosine()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="distribution must be one of"):
    dn.sample_time(process, key, (3,), distribution="normal")
  with pytest.raises(ValueError, match="takes parameters"):
    dn.sample_time(process, key, (3,), distribution="log_normal", P_mean=-1.2)
  with pytest.raises(ValueError, match="std must be > 0"):
    dn.time_density(process, 0.5, distribution="logit_normal", std=0.0)
  with pytest.raises(ValueError, match="finite log-SNR"):
    dn.sample_time(proc.rectified_flow(t_min=0.01), key, (3,), distribution="log_snr_uniform")
  with pytest.raises(ValueError, match="integer=True needs a discrete process"):
    dn.sample_time(process, key, (3,), integer=True)


# ---------------------------------------------------------------------------------------------
# Weightings and the loss at one draw


def _draw(name, n=6, seed=0):
  process = PROCESSES[name]() if name != "rectified_flow" else proc.rectified_flow(t_min=0.01)
  rng = np.random.default_rng(seed)
  if name == "ve":
    t = np.geomspace(0.01, 50.0, n)
  else:
    t = np.linspace(0.02, 0.98, n) if name != "vp_linear" else np.linspace(0.01, 0.9, n)
  x0 = MU + STD * rng.normal(size=(n, 2))
  noise = rng.normal(size=(n, 2))
  return process, t, x0, noise, rng


C_CLOSED = {  # c(lambda) of the module docstring, for the processes where it is closed in lambda
  "eps_mse": lambda lam, name: np.ones_like(lam),
  "x0_mse": lambda lam, name: np.exp(-lam),
  "v_mse": lambda lam, name: {
    "vp_cosine": 1 + np.exp(-lam),
    "vp_linear": 1 + np.exp(-lam),
    "ve": (1 + np.exp(-lam)) ** 2,  # alpha = 1, sigma^2 = e^{-lambda}
    "rectified_flow": (1 + np.exp(-lam)) ** 2 * scipy.special.expit(lam / 2) ** 2,
  }[name],
  "edm": lambda lam, name: 1 + np.exp(-lam) / 0.25,
}


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "ve", "rectified_flow"])
@pytest.mark.parametrize("weighting", dn.WEIGHTINGS)
@pytest.mark.slow
def test_weighted_error_matches_the_definitions(name, weighting, x64):
  """For every prediction: the output is read through the definitions of the targets (a 2x2
  solve in numpy), the error is taken in the weighting's target, and reduced as documented;
  and the mean-reduced losses are c(lambda) times the eps-MSE with c in closed form."""
  process, t, x0, noise, rng = _draw(name)
  coefficients = np_process(name)(t)
  alpha, sigma, d_alpha, d_sigma = coefficients
  lam = 2 * (np.log(alpha) - np.log(sigma))
  x_t = alpha[:, None] * x0 + sigma[:, None] * noise
  target = dn._WEIGHTING_TARGET[weighting]
  p_t, q_t = np_target_coefficients(target, *(c[:, None] for c in coefficients))
  for prediction in proc.PREDICTIONS:
    p_p, q_p = np_target_coefficients(prediction, *(c[:, None] for c in coefficients))
    truth = p_p * x0 + q_p * noise
    output = truth + 0.3 * rng.normal(size=x0.shape)  # a model with some error
    x0_hat, eps_hat = np_x0_eps_from_output(prediction, output, x_t, coefficients)
    squared = ((p_t * x0_hat + q_t * eps_hat) - (p_t * x0 + q_t * noise)) ** 2
    if weighting == "elbo":
      d_log_snr = 2 * (d_alpha / alpha - d_sigma / sigma)
      want = squared.sum(1) * -d_log_snr / (2 / (process.t_max - process.t_min))
    else:
      want = squared.mean(1)
      if weighting == "edm":
        s = sigma / alpha
        want = want * (s**2 + 0.25) / (0.25 * s**2)
    got = dn.weighted_error(
      process,
      x0=jnp.asarray(x0),
      t=jnp.asarray(t),
      noise=jnp.asarray(noise),
      output=jnp.asarray(output),
      prediction=prediction,
      weighting=weighting,
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, err_msg=prediction)
    eps_mse = ((eps_hat - noise) ** 2).mean(1)
    c = np.asarray(dn.weighting_fn(weighting, process)(jnp.asarray(lam)))
    if weighting in C_CLOSED:
      np.testing.assert_allclose(c, C_CLOSED[weighting](lam, name), rtol=1e-9)
    if weighting == "velocity_mse" and name == "rectified_flow":
      np.testing.assert_allclose(c, (1 + np.exp(-lam / 2)) ** 2, rtol=1e-9)
    if weighting != "elbo":
      np.testing.assert_allclose(np.asarray(got), c * eps_mse, rtol=1e-9, err_msg=prediction)


def test_score_and_eps_convert_at_the_noise_end_of_rectified_flow(x64):
  """At t = 1 on rectified flow alpha = 0: x0 is undefined there but eps = -sigma score is not;
  the error converts without 0/0 (eps error = -sigma times the score error)."""
  t = jnp.asarray([1.0, 0.5])
  x0, noise = jnp.ones((2, 2)), jnp.full((2, 2), 0.5)
  got = dn.weighted_error(
    proc.rectified_flow(),
    x0=x0,
    t=t,
    noise=noise,
    output=-noise / t[:, None] + 0.1,
    prediction="score",
    weighting="eps_mse",
  )
  np.testing.assert_allclose(np.asarray(got), [0.1**2, 0.05**2], rtol=1e-12)


@pytest.mark.slow
def test_implied_weightings_are_kingma_and_gaos(x64):
  """Kingma & Gao (2023), their table of implied weightings (up to their constant factors):
  flow matching (rectified flow, velocity MSE, uniform t): w = e^{-lambda/2};
  EDM (its loss and log-normal sigma): w = 2 N(lambda; 2.4, 2.4^2) (e^{-lambda} + sd^2) / sd^2 / Z
  (Z: the normal's mass inside ve's range); eps-MSE with uniform t on the cosine schedule:
  w = 2 p(lambda) = sech(lambda/2) / (2 (b - a)) (= sech(lambda/2) / pi for b - a = pi/2);
  x0-MSE there: e^{-lambda} times that; the ELBO: w = 1."""
  lam = np.linspace(-8.0, 12.0, 41)
  got = dn.implied_weighting(proc.rectified_flow(), jnp.asarray(lam), weighting="velocity_mse")
  np.testing.assert_allclose(np.asarray(got), np.exp(-lam / 2), rtol=1e-9)

  law = scipy.stats.norm(2.4, 2.4)  # lambda = -2 ln sigma, ln sigma ~ N(-1.2, 1.2^2)
  mass = law.cdf(-2 * math.log(0.002)) - law.cdf(-2 * math.log(80.0))
  lam_ve = np.linspace(-8.5, 12.0, 41)
  want = 2 * law.pdf(lam_ve) * (np.exp(-lam_ve) + 0.25) / 0.25 / mass
  got = dn.implied_weighting(
    proc.ve(), jnp.asarray(lam_ve), weighting="edm", time_distribution="log_normal"
  )
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9)

  cosine = 1 / np.cosh(lam / 2) / (2 * (COS_B - COS_A))
  got = dn.implied_weighting(proc.vp_cosine(), jnp.asarray(lam), weighting="eps_mse")
  np.testing.assert_allclose(np.asarray(got), cosine, rtol=1e-9)
  got = dn.implied_weighting(proc.vp_cosine(), jnp.asarray(lam), weighting="x0_mse")
  np.testing.assert_allclose(np.asarray(got), np.exp(-lam) * cosine, rtol=1e-9)
  got = dn.implied_weighting(proc.vp_linear(), jnp.asarray(lam), weighting="elbo")
  np.testing.assert_array_equal(np.asarray(got), 1.0)


@pytest.mark.parametrize("rf_prediction, vp_prediction", [("velocity", "v"), ("x0", "eps")])
@pytest.mark.slow
def test_rectified_flow_training_is_v_prediction_with_a_lambda_weighting(
  rf_prediction, vp_prediction, x64
):
  """On alpha = 1 - t, sigma = t: u - u_hat = (eps - eps_hat) / (1 - t), and 1 - t = sigmoid(lambda/2),
  so ||u - u_hat||^2 = (1 + e^{-lambda/2})^2 ||eps - eps_hat||^2, while the variance-preserving
  v-loss at the same lambda is (1 + e^{-lambda}) ||eps - eps_hat||^2. One denoiser g(x_t / alpha,
  lambda) in x0-space serves both processes (their x_t / alpha agree at equal lambda), so
    velocity_mse(rectified flow, t) = (1 + e^{-lambda/2})^2 / (1 + e^{-lambda}) v_mse(VP, t'),
  t' = the VP time with the same lambda; and under uniform t Kingma & Gao's w is e^{-lambda/2}
  (test_implied_weightings_are_kingma_and_gaos). Float64: equal to 1e-12."""
  rf, vp = proc.rectified_flow(), proc.vp_cosine(-20.0, 20.0)
  rng = np.random.default_rng(4)
  t = jnp.asarray(np.linspace(0.01, 0.99, 33))
  lam = rf.log_snr(t)
  t_vp = vp.t_from_log_snr(lam)
  np.testing.assert_allclose(np.asarray(vp.log_snr(t_vp)), np.asarray(lam), rtol=1e-12, atol=1e-13)
  x0 = jnp.asarray(MU + STD * rng.normal(size=(33, 2)))
  noise = jnp.asarray(rng.normal(size=(33, 2)))

  def denoiser(process, prediction):
    def model_fn(x_t, t):  # any nonlinear function of (x_t / alpha, lambda), in x0-space
      alpha, _ = process.alpha_sigma(t)
      z, lam = x_t / alpha[:, None], process.log_snr(t)[:, None]
      x0_hat = jnp.tanh(z) * jax.nn.sigmoid(lam) + 0.1 * jnp.sin(lam)
      eps_hat = (x_t - alpha[:, None] * x0_hat) / proc._expand(process.alpha_sigma(t)[1], x_t)
      return proc.from_x0_eps(process, t=t, x0=x0_hat, eps=eps_hat, prediction=prediction)

    return model_fn

  rf_loss = dn.denoising_loss_at(
    rf,
    denoiser(rf, rf_prediction),
    x0=x0,
    t=t,
    noise=noise,
    prediction=rf_prediction,
    weighting="velocity_mse",
  )
  vp_loss = dn.denoising_loss_at(
    vp,
    denoiser(vp, vp_prediction),
    x0=x0,
    t=t_vp,
    noise=noise,
    prediction=vp_prediction,
    weighting="v_mse",
  )
  lam = np.asarray(lam)
  factor = (1 + np.exp(-lam / 2)) ** 2 / (1 + np.exp(-lam))
  np.testing.assert_allclose(np.asarray(rf_loss), factor * np.asarray(vp_loss), rtol=1e-12)
  assert np.ptp(factor) > 0.5  # a real weighting, not a constant


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.slow
def test_discrete_mse_is_simple_loss_bit_for_bit(prediction, dtype, request):
  if dtype == "float64":
    request.getfixturevalue("x64")
  schedule = _schedule20()
  process = proc.discrete_process(schedule)
  x0 = jnp.asarray(np.random.default_rng(5).normal(size=(16, 3, 2)), dtype)
  model_fn = lambda x_t, t: jnp.tanh(x_t) * (1.0 + t[:, None, None] / 20.0)
  for seed in range(3):
    key = jax.random.key(seed)
    ours = dn.denoising_loss(
      process, model_fn, x0=x0, key=key, prediction=prediction, weighting=f"{prediction}_mse"
    )
    theirs = diffusion.simple_loss(key, model_fn, schedule, x0, prediction)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize(
  "kind, prediction",
  [
    ("linear", "eps"),
    ("cosine", "v"),
    ("learned", "x0"),
    *(
      pytest.param(kind, prediction, marks=pytest.mark.slow)
      for kind, prediction in [
        ("linear", "x0"),
        ("linear", "v"),
        ("cosine", "eps"),
        ("cosine", "x0"),
        ("learned", "eps"),
        ("learned", "v"),
      ]
    ),
  ],
)
@pytest.mark.slow
def test_elbo_weighting_is_vdms_diffusion_loss(kind, prediction, x64):
  """On VDM's process (log_snr_process of a LogSNRSchedule) with uniform t on [0, 1], weighting
  "elbo" is 1/2 gamma'(t) ||eps - eps_hat||^2 = vdm.diffusion_loss on the same draws."""
  schedule = vdm.LogSNRSchedule(kind, gamma_min=-10.0, gamma_max=6.0, num_features=16)
  params = jax.tree.map(lambda p: p.astype(jnp.float64), schedule.init(jax.random.key(0)))
  if kind == "learned":  # away from linear
    params = jax.tree.map(lambda p: p * 1.3 if p.ndim else p, params)
  process = proc.log_snr_process(schedule, params)
  rng = np.random.default_rng(6)
  t = jnp.asarray(rng.uniform(size=8))
  x0 = jnp.asarray(rng.normal(size=(8, 2)))
  noise = jnp.asarray(rng.normal(size=(8, 2)))
  eps_fn = lambda z, gamma: jnp.tanh(z) * jax.nn.sigmoid(gamma)[:, None]
  gamma, slope, _ = schedule.gamma_and_slope(params, t)

  def model_fn(x_t, t):
    eps_hat = eps_fn(x_t, schedule(params, t))
    alpha, sigma = vdm.alpha_sigma(schedule(params, t)[:, None])
    x0_hat = (x_t - sigma * eps_hat) / alpha
    return proc.from_x0_eps(process, t=t, x0=x0_hat, eps=eps_hat, prediction=prediction)

  ours = dn.denoising_loss_at(
    process, model_fn, x0=x0, t=t, noise=noise, prediction=prediction, weighting="elbo"
  )
  alpha, sigma = vdm.alpha_sigma(gamma[:, None])
  z = alpha * x0 + sigma * noise
  theirs = vdm.diffusion_loss(eps=noise, eps_hat=eps_fn(z, gamma), slope=slope)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-11)


@pytest.mark.slow
def test_denoising_loss_draws_t_and_noise_from_the_key(x64):
  process = proc.rectified_flow()
  x0 = jnp.asarray(np.random.default_rng(7).normal(size=(5, 2)))
  model_fn = lambda x_t, t: x_t * t[:, None]
  key = jax.random.key(3)
  params = {"mean": 0.2, "std": 0.9}
  got = dn.denoising_loss(
    process,
    model_fn,
    x0=x0,
    key=key,
    prediction="velocity",
    weighting="velocity_mse",
    time_distribution="logit_normal",
    time_params=params,
  )
  t_key, noise_key = jax.random.split(key)
  t = dn.sample_time(process, t_key, (5,), distribution="logit_normal", **params)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  u = noise - x0  # rectified flow's velocity target
  np.testing.assert_allclose(
    np.asarray(got), np.mean((model_fn(x0 * (1 - t[:, None]) + noise * t[:, None], t) - u) ** 2, 1)
  )


@pytest.mark.slow
def test_loss_errors():
  process = proc.vp_cosine()
  x0 = jnp.zeros((2, 3))
  key = jax.random.key(0)
  model_fn = lambda x, t: x
  kwargs = dict(x0=x0, key=key)
  with pytest.raises(ValueError, match="weighting must be one of"):
    dn.denoising_loss(process, model_fn, prediction="eps", weighting="snr", **kwargs)
  with pytest.raises(ValueError, match="prediction must be one of"):
    dn.denoising_loss(process, model_fn, prediction="noise", weighting="eps_mse", **kwargs)
  with pytest.raises(ValueError, match="takes parameters"):
    dn.denoising_loss(
      process,
      model_fn,
      prediction="x0",
      weighting="edm",
      weighting_params={"sd": 0.5},
      **kwargs,
    )
  with pytest.raises(ValueError, match="sigma_data must be > 0"):
    dn.weighting_fn("edm", sigma_data=-0.5)
  with pytest.raises(ValueError, match="needs the process"):
    dn.weighting_fn("velocity_mse")
  discrete = proc.discrete_process(_schedule20())
  with pytest.raises(ValueError, match="needs real t"):
    dn.denoising_loss(discrete, model_fn, prediction="eps", weighting="elbo", **kwargs)
  # ... and with real t on the discrete process it runs.
  loss = dn.denoising_loss(
    discrete,
    model_fn,
    prediction="eps",
    weighting="elbo",
    time_params={"integer": False},
    **kwargs,
  )
  assert loss.shape == (2,) and np.all(np.isfinite(np.asarray(loss)))


@pytest.mark.slow
def test_loss_jit_vmap_grad():
  """jit equals eager; vmap over keys equals one call per key; gradients reach the model's
  parameters and the process's own (vp_linear's betas) and are finite. (Under jit: eager
  op-by-op compilation of the log-normal's inverse CDF costs seconds on these CPUs.)"""
  x0 = jnp.asarray(np.random.default_rng(8).normal(size=(4, 3)), jnp.float32)

  def loss_fn(weight, process, key, distribution="log_normal"):
    model_fn = lambda x_t, t: weight * jnp.tanh(x_t) + t[:, None]
    return dn.denoising_loss(
      process,
      model_fn,
      x0=x0,
      key=key,
      prediction="v",
      weighting="edm",
      time_distribution=distribution,
    )

  process = proc.vp_linear()
  key = jax.random.key(1)
  eager = loss_fn(0.7, process, key, "uniform")
  np.testing.assert_allclose(
    jax.jit(loss_fn, static_argnums=3)(0.7, process, key, "uniform"), eager, rtol=1e-5
  )
  jitted = jax.jit(loss_fn)
  keys = jax.random.split(key, 3)
  batched = jax.jit(jax.vmap(lambda k: loss_fn(0.7, process, k)))(keys)
  for i in range(3):
    np.testing.assert_allclose(batched[i], jitted(0.7, process, keys[i]), rtol=1e-5)
  grad_weight, grad_process = jax.jit(
    jax.grad(lambda w, p: loss_fn(w, p, key).mean(), argnums=(0, 1))
  )(0.7, process)
  assert np.isfinite(float(grad_weight)) and float(grad_weight) != 0
  assert all(np.isfinite(float(g)) for g in jax.tree.leaves(grad_process))


# ---------------------------------------------------------------------------------------------
# The ELBO


@pytest.mark.parametrize(
  "make_process",
  [
    proc.vp_linear,
    proc.vp_cosine,
    lambda: proc.ve(0.01, 3.0),
    lambda: proc.rectified_flow(t_min=1e-3, t_max=0.9),
    lambda: proc.rectified_flow(t_min=1e-3),
  ],
  ids=["vp_linear", "vp_cosine", "ve", "rectified_flow_0.9", "rectified_flow_1"],
)
@pytest.mark.slow
def test_prior_kl_is_the_textbook_kl(make_process, x64):
  """KL(N(a x, s^2) || N(0, p^2)) = log(p / s) + (s^2 + a^2 x^2) / (2 p^2) - 1/2, per dimension;
  alpha, sigma from the numpy closed forms; p = 1 (variance preserving) or sigma(t_max) (ve and
  rectified flow, as process.prior_std); for variance-preserving processes also vdm.prior_kl."""
  process = make_process()
  x0 = np.random.default_rng(9).normal(size=(6, 2)) * 0.7
  alpha, sigma, _, _ = np_process(process.name)(np.float64(process.t_max))
  prior_std = 1.0 if process.variance_preserving else sigma
  want = np.sum(
    np.log(prior_std / sigma) + (sigma**2 + alpha**2 * x0**2) / (2 * prior_std**2) - 0.5, 1
  )
  got = np.asarray(dn.elbo_prior_kl(process, x0=jnp.asarray(x0)))
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
  if process.variance_preserving:
    gamma_1 = -process.log_snr(jnp.asarray(process.t_max))
    np.testing.assert_allclose(got, np.asarray(vdm.prior_kl(jnp.asarray(x0), gamma_1)), rtol=1e-12)


def _eight_bit(n, seed, mu=MU, std=STD):
  x = mu + std * np.random.default_rng(seed).normal(size=(n, mu.size))
  return np.clip(np.round((x + 1) * 127.5), 0, 255) / 127.5 - 1


@pytest.mark.parametrize(
  "kind, num_time_samples",
  [
    ("linear", 1),
    ("learned", 3),
    pytest.param("linear", 3, marks=pytest.mark.slow),
    pytest.param("learned", 1, marks=pytest.mark.slow),
  ],
)
@pytest.mark.slow
def test_elbo_terms_equal_vdm_terms_on_the_same_key(kind, num_time_samples, x64):
  """elbo_terms on log_snr_process(VDM's schedule), uniform t on [0, 1], uses its key as
  vdm.vdm_terms does: the three terms agree draw for draw (to 1e-10; lambda' through
  jvp(alpha, sigma) vs gamma' directly)."""
  schedule = vdm.LogSNRSchedule(kind, gamma_min=-10.0, gamma_max=6.0, num_features=16)
  params = jax.tree.map(lambda p: p.astype(jnp.float64), schedule.init(jax.random.key(1)))
  process = proc.log_snr_process(schedule, params)
  x = jnp.asarray(_eight_bit(32, 10))
  eps_fn = lambda z, gamma: 0.9 * jnp.tanh(z) * jax.nn.sigmoid(gamma)[:, None]
  model_fn = lambda x_t, t: eps_fn(x_t, schedule(params, t))
  key = jax.random.key(11)

  # Both in one compilation: eagerly the learned schedule's jvp dispatches op by op (seconds).
  @jax.jit
  def both(x):
    ours = dn.elbo_terms(
      process,
      model_fn,
      x0=x,
      key=key,
      prediction="eps",
      num_time_samples=num_time_samples,
    )  # the default time law here: uniform t (no closed-form lambda inverse), as VDM
    theirs = vdm.vdm_terms(key, eps_fn, schedule, params, x, time_samples=num_time_samples)
    return ours, theirs

  ours, theirs = both(x)
  np.testing.assert_allclose(np.asarray(ours.prior), np.asarray(theirs.prior), rtol=1e-10)
  np.testing.assert_allclose(
    np.asarray(ours.reconstruction), np.asarray(theirs.reconstruction), rtol=1e-10
  )
  np.testing.assert_allclose(np.asarray(ours.diffusion), np.asarray(theirs.diffusion), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(ours.total), np.asarray(theirs.total), rtol=1e-10)


# (process, its model's prediction, time distribution): every process, every target. The time
# law is an importance proposal for the ELBO's integral, whose integrand in lambda is about D/2
# all the way up to lambda(t_min): a Monte Carlo check within 4 standard errors is only sound for
# laws whose weights -lambda'/p stay bounded, log-SNR-uniform (the default) and, on ranges where
# their weights stay moderate, uniform t on vp_cosine and EDM's log-normal on ve(0.01, 20).
# (Uniform t on vp_linear to t_min = 1e-5 measured -7 "standard errors" at 4096 x 64 draws: a heavy
# tail, not a bias.)
ORACLE_CASES = [
  ("vp_linear", "eps", "log_snr_uniform"),
  ("vp_linear", "score", "log_snr_uniform"),
  ("vp_cosine", "v", "log_snr_uniform"),
  ("vp_cosine", "eps", "uniform"),
  ("ve", "edm", "log_snr_uniform"),
  ("ve_narrow", "x0", "log_normal"),
  ("rectified_flow", "velocity", "log_snr_uniform"),
  ("rectified_flow", "x0", "log_snr_uniform"),
  ("discrete", "eps", "log_snr_uniform"),
  ("discrete", "v", "log_snr_uniform"),
]


def _oracle_elbo(name, prediction, distribution, data, x0):
  # 8 stratified times per example; 64 for the laws far from uniform in lambda (uniform t, EDM's
  # log-normal), whose weights vary more: standard errors 0.07-0.11 and 0.1-0.3 nats.
  num_time_samples = 8 if distribution in ("log_snr_uniform", "importance") else 64
  process = {
    "vp_linear": lambda: proc.vp_linear(t_min=1e-5),
    "rectified_flow": lambda: proc.rectified_flow(t_min=1e-4, t_max=1 - 1e-4),
    "ve_narrow": lambda: proc.ve(0.01, 20.0),
  }.get(name, PROCESSES.get(name))()
  mu, std = (MU, STD) if data == "continuous" else (MU, np.array([0.2, 0.3]))
  if prediction == "edm":  # the exact x0 through EDM's preconditioning
    sd = 0.5

    def net_fn(x_in, c_noise):
      sigma = jnp.exp(4 * c_noise)[:, None]
      x = x_in * jnp.sqrt(sigma**2 + sd**2)
      mean = mu + std**2 / (std**2 + sigma**2) * (x - mu)
      return (mean - sd**2 / (sigma**2 + sd**2) * x) / (sigma * sd / jnp.sqrt(sigma**2 + sd**2))

    model_fn, prediction = edm_preconditioning(net_fn, sigma_data=sd, process=process), "x0"
  else:
    model_fn = gaussian_model(process, prediction, mu, std)
  terms = dn.elbo_terms(
    process,
    model_fn,
    x0=jnp.asarray(x0),
    key=jax.random.key(12),
    prediction=prediction,
    data=data,
    num_time_samples=num_time_samples,
    time_distribution=distribution,
  )
  return process, terms


def _check_continuous_oracle(name, prediction, distribution):
  x0 = MU + STD * np.random.default_rng(13).normal(size=(4096, 2))
  process, terms = _oracle_elbo(name, prediction, distribution, "continuous", x0)
  lam_0, lam_1 = np_log_snr_ends(process.name, process)
  alpha_1, sigma_1 = (float(v) for v in process.alpha_sigma(process.t_max))
  prior, reconstruction, diffusion_term, nll = expected_elbo(
    lam_0, lam_1, alpha_1, sigma_1, float(process.prior_std())
  )
  for got, want in [
    (terms.diffusion, diffusion_term),
    (terms.reconstruction, reconstruction),
    (terms.prior, prior),
    (terms.total, prior + reconstruction + diffusion_term),
  ]:
    got = np.asarray(got)
    standard_error = got.std() / math.sqrt(got.size)
    assert abs(got.mean() - want) < 4 * standard_error + 1e-9, (got.mean(), want, standard_error)
  gap = prior + reconstruction + diffusion_term - nll
  assert 0 <= gap < 2e-3  # the figures in test_elbo_converges_to_the_exact_nll
  return terms


def test_elbo_gaussian_oracle_fast(x64):
  """The Monte Carlo terms are unbiased: each within 4 standard errors of its expectation for
  Gaussian data and the exact model (vp_cosine, v-prediction, log-SNR-uniform t, 4096 x 8
  draws; standard error of the total about 0.08 nats)."""
  _check_continuous_oracle("vp_cosine", "v", "log_snr_uniform")


def _score_flow_cum_weight(t, eps, beta_0, beta_1):
  """score_flow's VPSDE.likelihood_importance_cum_weight(t, eps) (yang-song/score_flow,
  sde_lib.py), transcribed: int_eps^t g(s)^2 / sigma(s)^2 ds for the VP SDE, g^2 = beta(s),
  sigma^2 = 1 - exp(-int_0^s beta); its small-exponent branch is a first-order expansion."""
  exponent1 = 0.5 * eps * (eps - 2) * beta_0 - 0.5 * eps**2 * beta_1
  exponent2 = 0.5 * t * (t - 2) * beta_0 - 0.5 * t**2 * beta_1
  term1 = np.where(np.abs(exponent1) <= 1e-3, -exponent1, 1.0 - np.exp(exponent1))
  term2 = np.where(np.abs(exponent2) <= 1e-3, -exponent2, 1.0 - np.exp(exponent2))
  return 0.5 * (
    -2 * np.log(term1)
    + 2 * np.log(term2)
    + beta_0 * (-2 * eps + eps**2 - (t - 2) * t)
    + beta_1 * (-(eps**2) + t**2)
  )


@pytest.mark.slow
def test_importance_is_score_sdes_likelihood_importance_sampling(x64):
  """On vp_linear (score_sde's VP SDE, beta in [0.1, 20], t in [1e-3, 1]): the density is
  g^2 / sigma^2 / Z with score_sde's own g^2 = beta(t), sigma^2 = 1 - exp(-int beta) and
  Z = score_flow's cumulative weight at T; the draws are score_flow's sampler (bisection of the
  cumulative weight at u Z) at the same u. Tolerances: score_flow's first-order branch where
  int beta < 1e-3 (t < 1e-2) is off by int beta / 2 relative in sigma^2: 5e-5 in Z (of ~17),
  and up to 3e-4 relative in the draws below t = 2e-2."""
  beta_0, beta_1, t_min = 0.1, 20.0, 1e-3
  process = proc.vp_linear(beta_0, beta_1, t_min=t_min)
  t = np.linspace(t_min, 1.0, 1001)
  integral = beta_0 * t + (beta_1 - beta_0) * t**2 / 2
  z = _score_flow_cum_weight(1.0, t_min, beta_0, beta_1)
  want = (beta_0 + t * (beta_1 - beta_0)) / -np.expm1(-integral) / z
  got = np.asarray(dn.time_density(process, jnp.asarray(t), distribution="importance"))
  np.testing.assert_allclose(got, want, rtol=1e-5)

  u = np.random.default_rng(3).uniform(size=4000)
  lo, hi = np.full_like(u, t_min), np.ones_like(u)
  for _ in range(100):  # score_flow's bisection on the cumulative weight
    mid = (lo + hi) / 2
    below = _score_flow_cum_weight(mid, t_min, beta_0, beta_1) < u * z
    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
  ours = np.asarray(dn.time_from_uniform(process, jnp.asarray(u), distribution="importance"))
  theirs = (lo + hi) / 2
  # Below t = 2e-2 score_flow's first-order branch moves its draws by up to 3e-4 (measured).
  late = theirs > 2e-2
  np.testing.assert_allclose(ours[late], theirs[late], rtol=1e-4)
  np.testing.assert_allclose(ours[~late], theirs[~late], rtol=1e-3)


@pytest.mark.slow
def test_importance_elbo_is_unbiased_with_less_variance_than_uniform_t(x64):
  """The ELBO under "importance" times on vp_linear to t_min = 1e-5 (Gaussian data, exact
  eps-model): every term within 4 standard errors of the closed form (4096 x 8 draws). One
  time per example, the diffusion term's variance over examples, measured 4096 examples:
  importance 410, uniform t 5507 (13x; t_min = 1e-3: 195 against 2320, 12x); asserted 5x."""
  _check_continuous_oracle("vp_linear", "eps", "importance")
  process = proc.vp_linear(t_min=1e-5)
  x0 = jnp.asarray(MU + STD * np.random.default_rng(13).normal(size=(4096, 2)))
  variances = {}
  for distribution in ("importance", "uniform"):
    terms = dn.elbo_terms(
      process,
      gaussian_model(process, "eps"),
      x0=x0,
      key=jax.random.key(12),
      prediction="eps",
      data="continuous",
      num_time_samples=1,
      time_distribution=distribution,
      antithetic=False,
    )
    variances[distribution] = float(np.var(np.asarray(terms.diffusion)))
  assert variances["importance"] < variances["uniform"] / 5, variances


@pytest.mark.slow
@pytest.mark.parametrize("name, prediction, distribution", ORACLE_CASES)
def test_elbo_gaussian_oracle_every_process(name, prediction, distribution, x64):
  _check_continuous_oracle(name, prediction, distribution)


def test_elbo_converges_to_the_exact_nll(x64):
  """The expected ELBO (module docstring) minus the exact NLL, nats for D = 2, as the ends widen;
  it is >= 0 and falls to 0 on every process (figures below, asserted to 1%):
    vp_cosine(lambda in [-l, l])   l = 5: 1.90e-2      l = 10: 1.29e-4       l = 15: 8.7e-7   (*)
    ve(sigma_min, sigma_max)       (0.1, 3): 3.60e-2   (0.01, 20): 4.41e-4   (0.002, 80): 2.13e-5
    rectified_flow(t_min)          1e-2: 2.84e-4       1e-3: 2.79e-6         1e-4: 2.78e-8
    vp_linear(t_min)               1e-3: 3.09e-4       1e-5: 5.59e-6
    discrete (DDPM, T = 1000)      2.81e-4 (its ends are fixed: lambda in [-10.1, 9.2])
  (*) The processes' own lambda ends (gen_jax) enter the closed form; the Monte Carlo tests
  check that elbo_terms estimates it without bias."""
  figures = {
    "vp_cosine": [((-5.0, 5.0), 1.90e-2), ((-10.0, 10.0), 1.29e-4), ((-15.0, 15.0), 8.7e-7)],
    "ve": [((0.1, 3.0), 3.60e-2), ((0.01, 20.0), 4.41e-4), ((0.002, 80.0), 2.13e-5)],
    "rectified_flow": [(1e-2, 2.84e-4), (1e-3, 2.79e-6), (1e-4, 2.78e-8)],
    "vp_linear": [(1e-3, 3.09e-4), (1e-5, 5.59e-6)],
    "discrete": [(None, 2.81e-4)],
  }
  build = {
    "vp_cosine": lambda ends: proc.vp_cosine(*ends),
    "ve": lambda ends: proc.ve(*ends),
    "rectified_flow": lambda t_min: proc.rectified_flow(t_min=t_min),
    "vp_linear": lambda t_min: proc.vp_linear(t_min=t_min),
    "discrete": lambda _: PROCESSES["discrete"](),
  }
  for name, rows in figures.items():
    gaps = []
    for setting, figure in rows:
      process = build[name](setting)
      lam_0 = float(process.log_snr(process.t_min))
      lam_1 = float(process.log_snr(process.t_max))
      alpha_1, sigma_1 = (float(v) for v in process.alpha_sigma(process.t_max))
      prior_std = 1.0 if process.variance_preserving else sigma_1
      terms = expected_elbo(lam_0, lam_1, alpha_1, sigma_1, prior_std)
      gaps.append(sum(terms[:3]) - terms[3])
      assert gaps[-1] >= 0
      np.testing.assert_allclose(gaps[-1], figure, rtol=0.01, err_msg=f"{name} {setting}")
    assert all(a > b for a, b in itertools.pairwise(gaps)), (name, gaps)


def _check_eight_bit(name, prediction, distribution):
  """8-bit data: the ELBO bounds -log P(x0) of the model, whose mean over the data is at least
  the data's entropy (Gibbs): the mean ELBO must not fall below the entropy by more than 4
  standard errors. Returns (mean ELBO - entropy, its standard error), nats."""
  std = np.array([0.2, 0.3])
  x0 = _eight_bit(4096, 14, MU, std)
  _, terms = _oracle_elbo(name, prediction, distribution, "8bit", x0)
  levels = np.arange(256) / 127.5 - 1
  lo = np.where(levels <= -1, -np.inf, levels - 1 / 255)
  hi = np.where(levels >= 1, np.inf, levels + 1 / 255)
  entropy = 0.0
  for d in range(2):
    mass = scipy.stats.norm.cdf(hi, MU[d], std[d]) - scipy.stats.norm.cdf(lo, MU[d], std[d])
    entropy -= np.sum(mass[mass > 0] * np.log(mass[mass > 0]))
  total = np.asarray(terms.total)
  standard_error = total.std() / math.sqrt(total.size)
  assert total.mean() > entropy - 4 * standard_error, (total.mean(), entropy, standard_error)
  return total.mean() - entropy, standard_error


@pytest.mark.slow
def test_elbo_eight_bit_bounds_the_entropy_fast(x64):
  """On DDPM's discrete process the mean bound is 0.036 nats (0.026 bits/dim) above the data's
  entropy of 9.706 nats (D = 2; standard error 0.060)."""
  gap, standard_error = _check_eight_bit("discrete", "eps", "log_snr_uniform")
  assert gap < 0.1 + 4 * standard_error


@pytest.mark.slow
@pytest.mark.parametrize("name, prediction, distribution", ORACLE_CASES)
def test_elbo_eight_bit_bounds_the_entropy_every_process(name, prediction, distribution, x64):
  """Measured gaps (nats, D = 2): the exact model of the continuous Gaussian is not the best
  model of grid data, so with lambda(t_min) large the decoder's q(x_{t_min} | x0) is far
  narrower than a bin and the bound stays above -log P by about log(bin / (sqrt(2 pi e)
  sigma_min)) per dimension. Measured (mean bound - entropy, nats, standard errors 0.05-0.24):
  vp_linear to t_min = 1e-5 (lambda 13.8): 1.39; vp_cosine to lambda 15: 2.6; ve from sigma
  0.002: 0.24; rectified flow to t_min = 1e-4 (lambda 18.4): 6.06; DDPM's discrete process and
  ve(0.01, 20), whose sigma_min = 0.01 is wider than a bin: 0.04 and -0.02 (0 within error)."""
  _check_eight_bit(name, prediction, distribution)


@pytest.mark.slow
def test_elbo_bits_per_dim_and_jit(x64):
  process = proc.vp_cosine()
  model_fn = gaussian_model(process, "eps", MU, np.array([0.2, 0.3]))
  x0 = jnp.asarray(_eight_bit(64, 15, MU, np.array([0.2, 0.3])))
  key = jax.random.key(16)
  terms = dn.elbo_terms(process, model_fn, x0=x0, key=key, prediction="eps")
  bpd = dn.elbo_bits_per_dim(process, model_fn, x0=x0, key=key, prediction="eps")
  np.testing.assert_allclose(np.asarray(bpd), np.asarray(terms.total) / (2 * math.log(2)))
  jitted = jax.jit(lambda x0: dn.elbo_terms(process, model_fn, x0=x0, key=key, prediction="eps"))
  np.testing.assert_allclose(
    np.asarray(jitted(x0).total), np.asarray(terms.total), rtol=1e-11, atol=1e-12
  )
  # Off the grid inside jit: NaN for that example only.
  traced = jitted(x0.at[0, 0].add(1e-3))
  assert np.isnan(float(traced.total[0])) and np.all(np.isfinite(np.asarray(traced.total[1:])))


def test_elbo_errors():
  process = proc.vp_cosine()
  model_fn = lambda x, t: x
  key = jax.random.key(0)
  grid = jnp.full((2, 3), -1.0)
  with pytest.raises(ValueError, match="8-bit grid"):
    dn.elbo_terms(process, model_fn, x0=grid + 0.001, key=key, prediction="eps")
  with pytest.raises(ValueError, match="data must be one of"):
    dn.elbo_terms(process, model_fn, x0=grid, key=key, prediction="eps", data="float")
  with pytest.raises(ValueError, match="num_time_samples"):
    dn.elbo_terms(process, model_fn, x0=grid, key=key, prediction="eps", num_time_samples=0)
  with pytest.raises(ValueError, match="t_min > 0"):
    dn.elbo_terms(proc.rectified_flow(), model_fn, x0=grid, key=key, prediction="velocity")
  with pytest.raises(ValueError, match="distribution must be one of"):
    dn.elbo_terms(process, model_fn, x0=grid, key=key, prediction="eps", time_distribution="x")
