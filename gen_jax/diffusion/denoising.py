"""The denoising loss family and the continuous-time ELBO, on any `GaussianProcess`.

Every weighted denoising loss is a function of the eps error (Kingma & Gao 2023). At one draw
(x0, eps, t), x_t = alpha x0 + sigma eps, a model's output in any target fixes (x0_hat, eps_hat)
on the line x_t = alpha x0 + sigma eps, so every target's error is a multiple of the eps error:
  x0 - x0_hat             = -(sigma / alpha) (eps - eps_hat)
  v - v_hat               = ((alpha^2 + sigma^2) / alpha) (eps - eps_hat)      (v = alpha eps - sigma x0)
  u - u_hat               = ((alpha sigma' - alpha' sigma) / alpha) (eps - eps_hat)
                          = -(lambda'(t) sigma / 2) (eps - eps_hat)            (u = alpha' x0 + sigma' eps)
so the squared error in a target is c(lambda) ||eps - eps_hat||^2 (`weighting_fn`):
  eps_mse       c = 1                                 L_simple (Ho et al. 2020)
  x0_mse        c = e^{-lambda}                       sigma^2 / alpha^2
  v_mse         c = 1 + e^{-lambda}                   variance preserving ("SNR + 1", Salimans & Ho
                                                      2022); in general (alpha^2 + sigma^2)^2 / alpha^2
  velocity_mse  c = lambda'(t)^2 sigma(t)^2 / 4       flow matching; rectified flow (alpha = 1 - t,
                                                      sigma = t): 1 / (1 - t)^2 = (1 + e^{-lambda/2})^2
  edm           c = 1 + e^{-lambda} / sigma_data^2    EDM's lambda(s) = (s^2 + sd^2) / (s sd)^2 on the
                                                      x0 error, s = sigma / alpha = e^{-lambda/2}
  elbo          c = 1, importance-weighted: 1/2 (-lambda'(t)) / p(t) ||eps - eps_hat||^2
The "_mse" and "edm" losses are the mean over data dimensions of that squared error (times EDM's
lambda(s) for "edm"), as `gen_jax.diffusion.simple_loss` is; "elbo" is a sum in nats, VDM's
continuous-time diffusion loss. Under t ~ p(t) the expected loss is Kingma & Gao's
  L_w(x) = 1/2 E_{t ~ p(t)} [ w(lambda_t) (-lambda'(t)) / p(t) ||eps_hat - eps||^2 ]
(times 1/D for the mean-reduced losses) with w(lambda) = 2 c(lambda) p_lambda(lambda), p_lambda the
density of lambda that p(t) induces, and w = 1 for "elbo" (`implied_weighting`). E.g. flow
matching with uniform t is w = e^{-lambda/2}, EDM's loss and noise distribution
w = 2 N(lambda; 2.4, 2.4^2) (e^{-lambda} + sd^2) / sd^2, eps_mse on the cosine schedule
w = sech(lambda/2) / pi.

Time distributions (`TIME_DISTRIBUTIONS`, `sample_time`, `time_density`), all on [t_min, t_max]:
  uniform          t ~ U[t_min, t_max]; on a discrete process (DDPM) t ~ U{0, ..., T-1}, integers,
                   unless integer=False
  log_normal       EDM's: ln s ~ N(mean=-1.2, std=1.2), s = sigma / alpha = e^{-lambda/2}, so
                   t = t_from_log_snr(-2 ln s) (on `ve`, t = s); truncated to the range
  logit_normal     SD3's: t = t_min + (t_max - t_min) sigmoid(z), z ~ N(mean=0, std=1)
  log_snr_uniform  lambda ~ U[lambda(t_max), lambda(t_min)] (both finite), t = t_from_log_snr(lambda)
  importance       score_sde's likelihood importance sampling (Song et al. 2021, "Maximum
                   likelihood training of score-based diffusion models", sec. 5; score_flow's
                   `importance_weighting`): p(t) proportional to g(t)^2 / sigma(t)^2, g the SDE's
                   diffusion coefficient, so that the likelihood-weighted score loss
                   g^2 ||score - score_hat||^2 = (g^2 / sigma^2) ||eps - eps_hat||^2 has a constant
                   weight. On every Gaussian process g^2 / sigma^2 = -lambda'(t)
                   (g^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha) = -lambda'(t) sigma^2), so its
                   normaliser is lambda(t_min) - lambda(t_max) (score_flow's
                   `likelihood_importance_cum_weight(T)` on VP) and it is the same law as
                   log_snr_uniform, named for score_sde's users: under it the ELBO's diffusion
                   term is (lambda(t_min) - lambda(t_max)) / 2 ||eps - eps_hat||^2 at every draw.
Each is the inverse CDF of a uniform u (`time_from_uniform`), so draws can be antithetic.
The log-normal is truncated to the range rather than clipped: clipping would put point masses
at the ends, where there is no density for the 1/p(t) re-weighting (the truncated mass is
1.6e-5 for EDM's defaults on `ve()`).

The continuous-time ELBO for any model on any process (`elbo_terms`, `elbo_bits_per_dim`):
  -log p(x0) <= KL(q(x_{t_max} | x0) || N(0, prior_std^2)) + E[-log p(x0 | x_{t_min})]
                + 1/2 int_{t_min}^{t_max} -lambda'(t) E||eps - eps_hat||^2 dt,
the last term `weighted_error(..., weighting="elbo")` under any time law (an importance
proposal), the decoder VDM's (`vdm.reconstruction_nll`) at gamma_0 = -lambda(t_min).

Public: TIME_DISTRIBUTIONS, WEIGHTINGS, DATA_KINDS, sample_time, time_from_uniform, time_density,
weighting_fn, implied_weighting, weighted_error, denoising_loss_at, denoising_loss, ELBOTerms,
elbo_prior_kl, elbo_terms, elbo_bits_per_dim. Shapes: x0, noise, x_t (B, ...); t (B,);
per-example results (B,). Data dimensions D are the axes after the batch axis.

Longer than the house's ~400 lines on purpose: the time laws, the weightings and the ELBO are the
one loss family of Kingma & Gao (2023), and each weighting's identity is stated beside the others.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import special

from gen_jax.diffusion import vdm
from gen_jax.diffusion._helpers import concrete_or_none, mean_data_dims, sum_data_dims
from gen_jax.diffusion.losses import _check_grid, _on_grid
from gen_jax.diffusion.process import (
  GaussianProcess,
  _expand,
  check_prediction,
  from_x0_eps,
  q_sample,
)

Array = jax.Array

TIME_DISTRIBUTIONS = ("uniform", "log_normal", "logit_normal", "log_snr_uniform", "importance")
WEIGHTINGS = ("eps_mse", "v_mse", "x0_mse", "velocity_mse", "edm", "elbo")
DATA_KINDS = ("8bit", "continuous")

_TIME_DEFAULTS = {
  "uniform": {"integer": None},
  "log_normal": {"mean": -1.2, "std": 1.2},  # EDM's P_mean, P_std
  "logit_normal": {"mean": 0.0, "std": 1.0},  # SD3's m, s
  "log_snr_uniform": {},
  "importance": {},
}
_WEIGHTING_DEFAULTS = {
  "eps_mse": {},
  "v_mse": {},
  "x0_mse": {},
  "velocity_mse": {},
  "edm": {"sigma_data": 0.5},
  "elbo": {},
}
# The target whose squared error each weighting measures.
_WEIGHTING_TARGET = {
  "eps_mse": "eps",
  "v_mse": "v",
  "x0_mse": "x0",
  "velocity_mse": "velocity",
  "edm": "x0",
  "elbo": "eps",
}


def _float():
  return jnp.result_type(float)


def _log_snr_at(process: GaussianProcess, t: float) -> Array:
  """lambda at one time, a scalar (evaluated on shape (1,): a learned log-SNR net wants a batch)."""
  return process.log_snr(jnp.full((1,), t, _float()))[0]


# ---------------------------------------------------------------------------------------------
# Time distributions.


def _time_params(distribution: str, params) -> dict:
  """The distribution's parameters with defaults; ValueError for an unknown name or parameter."""
  if distribution not in TIME_DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {TIME_DISTRIBUTIONS}, got {distribution!r}")
  params = dict(params or {})
  defaults = _TIME_DEFAULTS[distribution]
  unknown = sorted(set(params) - set(defaults))
  if unknown:
    raise ValueError(
      f"time distribution {distribution!r} takes parameters {sorted(defaults)}, got {unknown}"
    )
  merged = {**defaults, **params}
  if "std" in merged:
    std = concrete_or_none(merged["std"])
    if std is not None and not (std > 0).all():
      raise ValueError(f"time distribution {distribution!r}: std must be > 0, got {std}")
  return merged


def _integer_times(process: GaussianProcess, integer) -> bool:
  if integer is None:
    return process.discrete_levels > 0
  if integer and not process.discrete_levels:
    raise ValueError(f"uniform times: integer=True needs a discrete process, got {process.name!r}")
  return bool(integer)


def _log_snr_ends(process: GaussianProcess, distribution: str) -> tuple[Array, Array]:
  """(lambda(t_min), lambda(t_max)); ValueError when concrete and not finite."""
  lam_hi, lam_lo = _log_snr_at(process, process.t_min), _log_snr_at(process, process.t_max)
  hi, lo = concrete_or_none(lam_hi), concrete_or_none(lam_lo)
  if hi is not None and lo is not None and not (abs(hi) < math.inf and abs(lo) < math.inf):
    raise ValueError(
      f"time distribution {distribution!r} needs a finite log-SNR at both ends of the process; "
      f"{process.name!r} has lambda(t_min={process.t_min}) = {float(hi)}, "
      f"lambda(t_max={process.t_max}) = {float(lo)}: build it with t_min > 0 (and t_max < 1 "
      "for rectified flow)"
    )
  return lam_hi, lam_lo


def _finite_log_snr_ends(process: GaussianProcess) -> bool:
  """lambda finite at both ends (True when traced: then it cannot be checked)."""
  ends = [_log_snr_at(process, t) for t in (process.t_min, process.t_max)]
  values = [concrete_or_none(v) for v in ends]
  return any(v is None for v in values) or all(abs(float(v)) < math.inf for v in values)


def _truncation(process: GaussianProcess, mean, std) -> tuple[Array, Array]:
  """(Phi(a), Phi(b)): the standard normal CDF at the range's ends in z = (ln s - mean) / std,
  ln s = -lambda / 2 (either end may be infinite: lambda(0) = inf on rectified flow)."""
  lam_hi, lam_lo = _log_snr_at(process, process.t_min), _log_snr_at(process, process.t_max)
  return special.ndtr((-lam_hi / 2 - mean) / std), special.ndtr((-lam_lo / 2 - mean) / std)


def time_from_uniform(process: GaussianProcess, u, *, distribution: str = "uniform", **params):
  """t = F^{-1}(u), the inverse CDF of the time distribution at u in (0, 1), elementwise; t
  increases with u. Real t (also on a discrete process). See the module docstring for the laws.
  """
  params = _time_params(distribution, params)
  u = jnp.asarray(u, _float())
  t_min, t_max = process.t_min, process.t_max
  if distribution == "uniform":
    return t_min + u * (t_max - t_min)
  if distribution == "logit_normal":
    z = params["mean"] + params["std"] * special.ndtri(u)
    return t_min + (t_max - t_min) * jax.nn.sigmoid(z)
  if distribution in ("log_snr_uniform", "importance"):
    lam_hi, lam_lo = _log_snr_ends(process, distribution)
    return process.t_from_log_snr(lam_hi - u * (lam_hi - lam_lo))
  # log_normal: ln s = mean + std z, z ~ N(0, 1) truncated to the range (inverse CDF).
  lo, hi = _truncation(process, params["mean"], params["std"])
  z = special.ndtri(lo + u * (hi - lo))
  log_s = params["mean"] + params["std"] * z
  return process.t_from_log_snr(-2.0 * log_s)


def sample_time(process: GaussianProcess, key, shape, *, distribution: str = "uniform", **params):
  """t ~ p(t) of the given shape, in [t_min, t_max].

  distribution "uniform" on a discrete process draws integer levels exactly as
  `gen_jax.diffusion.simple_loss` does (`jax.random.randint(key, shape, 0, T)`); pass
  integer=False for real t on [0, T - 1]. Every other draw is `time_from_uniform` at
  u ~ U[tiny, 1) (never 0: no infinite lambda at t_min = 0).

  Params: uniform: integer (None: integers on a discrete process); log_normal: mean (-1.2),
  std (1.2) of ln(sigma / alpha); logit_normal: mean (0), std (1) of logit(t); log_snr_uniform,
  importance: none. Returns t of `shape` (int for discrete uniform, else float).
  """
  shape = (shape,) if isinstance(shape, int) else tuple(shape)
  checked = _time_params(distribution, params)
  if distribution == "uniform" and _integer_times(process, checked["integer"]):
    return jax.random.randint(key, shape, 0, process.discrete_levels)
  dtype = _float()
  u = jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
  params = {k: v for k, v in params.items() if k != "integer"}
  return time_from_uniform(process, u, distribution=distribution, **params)


def time_density(process: GaussianProcess, t, *, distribution: str, **params) -> Array:
  """p(t), the density of `sample_time`'s law at t (0 outside [t_min, t_max]), elementwise.

  uniform          1 / (t_max - t_min); integer t on a discrete process: the mass 1 / T
  log_normal       N(ln s; mean, std^2) |d ln s / dt| / Z = N(-lambda/2; mean, std^2)
                   (-lambda'(t) / 2) / Z, Z the normal's mass inside the range
  logit_normal     N(logit r; mean, std^2) / (r (1 - r) (t_max - t_min)), r = (t - t_min) /
                   (t_max - t_min)
  log_snr_uniform  -lambda'(t) / (lambda(t_min) - lambda(t_max))
  importance       g(t)^2 / sigma(t)^2 / Z = the same (module docstring)
  """
  params = _time_params(distribution, params)
  t = jnp.asarray(t)
  if distribution == "uniform" and jnp.issubdtype(t.dtype, jnp.integer):
    if not process.discrete_levels:
      raise ValueError(f"time_density: integer t needs a discrete process, got {process.name!r}")
    return jnp.full(t.shape, 1.0 / process.discrete_levels, _float())
  t = t.astype(_float())
  inside = (t >= process.t_min) & (t <= process.t_max)
  if distribution == "uniform":
    density = jnp.full(t.shape, 1.0 / (process.t_max - process.t_min), t.dtype)
  elif distribution == "logit_normal":
    width = process.t_max - process.t_min
    r = (t - process.t_min) / width
    interior = (r > 0) & (r < 1)  # the density tends to 0 at both ends
    r = jnp.where(interior, r, 0.5)
    z = (jnp.log(r) - jnp.log1p(-r) - params["mean"]) / params["std"]
    density = _std_normal_pdf(z) / (params["std"] * r * (1.0 - r) * width)
    density = jnp.where(interior, density, 0.0)
  elif distribution in ("log_snr_uniform", "importance"):
    lam_hi, lam_lo = _log_snr_ends(process, distribution)
    density = -process.d_log_snr(t) / (lam_hi - lam_lo)
  else:  # log_normal
    lo, hi = _truncation(process, params["mean"], params["std"])
    z = (-process.log_snr(t) / 2 - params["mean"]) / params["std"]
    density = _std_normal_pdf(z) / params["std"] * (-process.d_log_snr(t) / 2) / (hi - lo)
    density = jnp.where(jnp.isfinite(z), density, 0.0)  # lambda = +-inf at an end: no mass
  return jnp.where(inside, density, 0.0)


def _std_normal_pdf(z):
  return jnp.exp(-0.5 * jnp.square(z)) / math.sqrt(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# Weightings.


def _weighting_params(weighting: str, params) -> dict:
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
  params = dict(params or {})
  defaults = _WEIGHTING_DEFAULTS[weighting]
  unknown = sorted(set(params) - set(defaults))
  if unknown:
    raise ValueError(f"weighting {weighting!r} takes parameters {sorted(defaults)}, got {unknown}")
  merged = {**defaults, **params}
  if "sigma_data" in merged:
    value = concrete_or_none(merged["sigma_data"])
    if value is not None and not (value > 0).all():
      raise ValueError(f"weighting 'edm': sigma_data must be > 0, got {value}")
  return merged


def weighting_fn(name: str, process: GaussianProcess | None = None, **params):
  """c(lambda): the weighting's squared error at log-SNR lambda is c(lambda) ||eps - eps_hat||^2.

    eps_mse       1
    x0_mse        e^{-lambda}
    v_mse         1 + e^{-lambda} on a variance-preserving process (or process None); else
                  (alpha^2 + sigma^2)^2 / alpha^2 at t = t_from_log_snr(lambda)
    velocity_mse  lambda'(t)^2 sigma(t)^2 / 4 at t = t_from_log_snr(lambda) (process needed);
                  rectified flow: (1 + e^{-lambda/2})^2
    edm           1 + e^{-lambda} / sigma_data^2 (params: sigma_data, default 0.5)
    elbo          1 (Kingma & Gao's w = 1; the loss is importance-weighted by -lambda'/(2 p))
  See the module docstring for the derivations; `implied_weighting` gives Kingma & Gao's w for
  a time distribution. Returns a function lambda -> c(lambda), elementwise.
  """
  params = _weighting_params(name, params)
  if name == "velocity_mse" and process is None:
    raise ValueError("weighting_fn('velocity_mse') needs the process: its factor depends on it")

  def c(lam):
    lam = jnp.asarray(lam, _float())
    if name in ("eps_mse", "elbo"):
      return jnp.ones_like(lam)
    if name == "x0_mse":
      return jnp.exp(-lam)
    if name == "edm":
      return 1.0 + jnp.exp(-lam) / jnp.square(params["sigma_data"])
    if name == "v_mse" and (process is None or process.variance_preserving):
      return 1.0 + jnp.exp(-lam)
    t = process.t_from_log_snr(lam)
    alpha, sigma = process.alpha_sigma(t)
    if name == "v_mse":
      return jnp.square(jnp.square(alpha) + jnp.square(sigma)) / jnp.square(alpha)
    return jnp.square(process.d_log_snr(t) * sigma) / 4.0  # velocity_mse

  return c


def implied_weighting(
  process: GaussianProcess,
  lam,
  *,
  weighting: str,
  time_distribution: str = "uniform",
  time_params=None,
  weighting_params=None,
) -> Array:
  """Kingma & Gao's w(lambda) of a weighting trained under a time distribution:
    w(lambda) = 2 c(lambda) p(t) / (-lambda'(t)),  t = t_from_log_snr(lambda),
  so that D x the mean-reduced loss at t is 1/2 w(lambda) (-lambda'(t)) / p(t) ||eps - eps_hat||^2
  (for "elbo", w = 1 whatever p). lam: any shape; real t (a discrete process's integer uniform
  draw is read as its continuous counterpart). Returns w, lam's shape."""
  time_params = {k: v for k, v in dict(time_params or {}).items() if k != "integer"}
  weighting_params = _weighting_params(weighting, weighting_params)
  lam = jnp.asarray(lam, _float())
  if weighting == "elbo":
    return jnp.ones_like(lam)
  t = process.t_from_log_snr(lam)
  density = time_density(process, t, distribution=time_distribution, **time_params)
  c = weighting_fn(weighting, process, **weighting_params)(lam)
  return 2.0 * c * density / -process.d_log_snr(t)


# ---------------------------------------------------------------------------------------------
# The loss.


def _error_scale(process: GaussianProcess, t, target: str) -> Array:
  """alpha times the factor k_target with target - target_hat = k_target (eps - eps_hat):
  eps alpha, x0 -sigma, v alpha^2 + sigma^2, velocity alpha sigma' - alpha' sigma,
  score -alpha / sigma. (Times alpha, so that none divides by alpha = 0.) (B,)."""
  if target == "velocity":
    alpha, sigma, d_alpha, d_sigma = process.derivatives(t)
    return alpha * d_sigma - d_alpha * sigma
  alpha, sigma = process.alpha_sigma(t)
  return {
    "eps": alpha,
    "x0": -sigma,
    "v": jnp.square(alpha) + jnp.square(sigma),
    "score": -alpha / sigma,
  }[target]


def _check_real_time(t, *, weighting: str, prediction: str) -> None:
  if jnp.issubdtype(jnp.result_type(t), jnp.integer) and (
    weighting in ("velocity_mse", "elbo") or prediction == "velocity"
  ):
    raise ValueError(
      f"weighting {weighting!r} with prediction {prediction!r} needs real t (a derivative in t "
      "or a density): on a discrete process draw t with time_params={'integer': False}"
    )


def weighted_error(
  process: GaussianProcess,
  *,
  x0,
  t,
  noise,
  output,
  prediction: str,
  weighting: str,
  time_distribution: str = "uniform",
  time_params=None,
  weighting_params=None,
) -> Array:
  """The loss at one draw, given the model's output at x_t = q_sample(x0, t, noise).

  The output's error in `prediction` is turned into the error in the weighting's target by the
  exact factor k_target / k_prediction (see `_error_scale`), which is the error of the converted
  output without the cancellation of converting first; for prediction == target the error is
  output - target as is (bit for bit `simple_loss`). Then
    *_mse:  mean_D (target_hat - target)^2
    edm:    lambda_EDM(s) mean_D (x0_hat - x0)^2,  lambda_EDM(s) = 1 / sd^2 + 1 / s^2, s = sigma/alpha
    elbo:   1/2 (-lambda'(t)) / p(t) sum_D (eps_hat - eps)^2   (nats; p = time_density)

  Args: x0, noise, output (B, ...); t (B,). Returns (B,).
  """
  check_prediction(prediction)
  weighting_params = _weighting_params(weighting, weighting_params)
  _check_real_time(t, weighting=weighting, prediction=prediction)
  target = _WEIGHTING_TARGET[weighting]
  truth = from_x0_eps(process, t=t, x0=x0, eps=noise, prediction=prediction)
  error = output - truth
  if {prediction, target} == {"eps", "score"}:  # no alpha in either: exact at alpha = 0 too
    _, sigma = process.alpha_sigma(t)
    ratio = -sigma if target == "eps" else -1.0 / sigma
    error = _expand(ratio, error) * error
  elif prediction != target:
    ratio = _error_scale(process, t, target) / _error_scale(process, t, prediction)
    error = _expand(ratio, error) * error
  squared = jnp.square(error)
  if weighting == "elbo":
    time_params = {k: v for k, v in dict(time_params or {}).items() if k != "integer"}
    density = time_density(process, t, distribution=time_distribution, **time_params)
    return sum_data_dims(squared, 1) * (-process.d_log_snr(t) / (2.0 * density))
  loss = mean_data_dims(squared, 1)
  if weighting == "edm":
    alpha, sigma = process.alpha_sigma(t)
    loss = loss * (1.0 / jnp.square(weighting_params["sigma_data"]) + jnp.square(alpha / sigma))
  return loss


def denoising_loss_at(
  process: GaussianProcess,
  model_fn,
  *,
  x0,
  t,
  noise,
  prediction: str,
  weighting: str,
  time_distribution: str = "uniform",
  time_params=None,
  weighting_params=None,
) -> Array:
  """`weighted_error` of model_fn(x_t, t) at x_t = alpha(t) x0 + sigma(t) noise, given t and the
  noise (`denoising_loss` draws them). x0, noise (B, ...); t (B,). Returns (B,)."""
  x_t = q_sample(process, x0=x0, t=t, noise=noise)
  return weighted_error(
    process,
    x0=x0,
    t=t,
    noise=noise,
    output=model_fn(x_t, t),
    prediction=prediction,
    weighting=weighting,
    time_distribution=time_distribution,
    time_params=time_params,
    weighting_params=weighting_params,
  )


def denoising_loss(
  process: GaussianProcess,
  model_fn,
  *,
  x0,
  key,
  prediction: str,
  weighting: str,
  time_distribution: str = "uniform",
  time_params=None,
  weighting_params=None,
) -> Array:
  """The weighted denoising loss per example, one draw of (t, eps) each.

  t_key, noise_key = split(key); t = sample_time(process, t_key, (B,), time_distribution,
  **time_params); eps = normal(noise_key, x0.shape, x0.dtype); x_t = alpha(t) x0 + sigma(t) eps;
  the loss of model_fn(x_t, t) (an output of kind `prediction`) under `weighting`
  (`weighted_error`): the mean over data dimensions for eps_mse, x0_mse, v_mse, velocity_mse and
  edm, the sum in nats for elbo. On `discrete_process(schedule)` with uniform times, prediction p
  in ("eps", "x0", "v") and weighting f"{p}_mse" it is `simple_loss(key, model_fn, schedule, x0,
  p)` bit for bit. Typical choices: DDPM eps/eps_mse/uniform; EDM x0 (`edm_preconditioning`)/
  edm/log_normal on `ve()`; flow matching velocity/velocity_mse/uniform or logit_normal on
  `rectified_flow()`; VDM eps/elbo/uniform on `log_snr_process`.

  Args:
    model_fn: (x_t (B, ...), t (B,)) -> output (B, ...).
    x0: (B, ...) data.
    time_params: the time distribution's parameters (dict; see `sample_time`).
    weighting_params: the weighting's ({"sigma_data": 0.5} for edm).

  Returns:
    (B,) losses.
  """
  time_params = dict(time_params or {})
  t_key, noise_key = jax.random.split(key)
  t = sample_time(process, t_key, (x0.shape[0],), distribution=time_distribution, **time_params)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  return denoising_loss_at(
    process,
    model_fn,
    x0=x0,
    t=t,
    noise=noise,
    prediction=prediction,
    weighting=weighting,
    time_distribution=time_distribution,
    time_params=time_params,
    weighting_params=weighting_params,
  )


# ---------------------------------------------------------------------------------------------
# The continuous-time ELBO.


class ELBOTerms(NamedTuple):
  """The bound's terms per example, in nats, (B,) each; `total` is their sum."""

  prior: Array  # KL(q(x_{t_max} | x0) || N(0, prior_std^2 I))
  reconstruction: Array  # -log p(x0 | x_{t_min}), one draw
  diffusion: Array  # 1/2 E_t[-lambda'(t) ||eps - eps_hat||^2], Monte Carlo in t

  @property
  def total(self) -> Array:
    return self.prior + self.reconstruction + self.diffusion


def elbo_prior_kl(process: GaussianProcess, *, x0) -> Array:
  """KL(N(alpha x0, sigma^2 I) || N(0, p^2 I)) at t_max, p = prior_std, summed over dimensions:
    1/2 sum_i (alpha^2 x_i^2 / p^2 + r - 1 - ln r),  r = sigma^2 / p^2,
  with r - 1 - ln r = expm1(l) - l, l = 2 (ln sigma - ln p) (no cancellation at r -> 1).
  0 for rectified flow at t_max = 1. x0 (B, ...). Returns (B,), nats."""
  alpha, sigma = (v[0] for v in process.alpha_sigma(jnp.full((1,), process.t_max, _float())))
  # process.prior_std(), evaluated on a (1,) time: a learned log-SNR network wants a batch.
  prior_std = 1.0 if process.variance_preserving else sigma
  log_ratio = 2.0 * (jnp.log(sigma) - jnp.log(prior_std))
  per_dim = jnp.square(alpha * x0 / prior_std) + jnp.expm1(log_ratio) - log_ratio
  return 0.5 * sum_data_dims(per_dim, 1)


def _check_data(data: str) -> None:
  if data not in DATA_KINDS:
    raise ValueError(f"data must be one of {DATA_KINDS}, got {data!r}")


def elbo_terms(
  process: GaussianProcess,
  model_fn,
  *,
  x0,
  key,
  prediction: str,
  data: str = "8bit",
  num_time_samples: int = 1,
  time_distribution: str | None = None,
  time_params=None,
  antithetic: bool = True,
) -> ELBOTerms:
  """The continuous-time variational bound on -log p(x0) for any model on any process:
    -log p(x0) <= KL(q(x_{t_max} | x0) || N(0, prior_std^2)) + E[-log p(x0 | x_{t_min})]
                  + 1/2 int_{t_min}^{t_max} -lambda'(t) E||eps - eps_hat(x_t, t)||^2 dt
  (Kingma et al. 2021, eq. 17 in the process's time; exact for lambda of any shape).

  The decoder at t_min is VDM's (`vdm.reconstruction_nll` with gamma_0 = -lambda(t_min)):
  data "8bit": p(x_i | x_{t_min}) proportional to q(x_{t_min,i} | x_i) over the 256 levels of the
  grid x = k / 127.5 - 1 (off-grid x0: ValueError when concrete, NaN for the example when
  traced), a bound on -log P(x0); "continuous": the density N(x0; x_{t_min} / alpha,
  e^{-lambda(t_min)}), a bound on -log p(x0), a density.

  The diffusion term is `weighted_error(..., weighting="elbo")` averaged over K =
  num_time_samples times per example: u_bk = (u_b + k / K) mod 1 with u from `vdm.sample_times`
  (antithetic over the batch, or iid), t = `time_from_uniform(u)` under `time_distribution`,
  each time with its own eps; one compiled scan over k. The key is used as `vdm.vdm_terms` uses
  it, so on `log_snr_process` with uniform times the terms equal VDM's draw for draw.
  The law is an importance proposal, and the integrand is about D/2 per unit of lambda up to
  lambda(t_min): the default (None) is "log_snr_uniform" when lambda is finite at both ends and
  its inverse is in closed form (the variance of VDM's estimate, on any process: the integrand in
  lambda is the same), else "uniform" (rectified flow to t_max = 1; `log_snr_process`, whose
  inverse is a bisection without gradients: uniform t there is VDM's own estimate, and a learned
  schedule gets its gradients through t). Uniform t is VDM's choice for its own process (lambda
  linear in t there); on processes whose lambda grows like -log t at the data end (vp_linear,
  ve, rectified flow) its weights -lambda'(t) / p(t) reach 1 / t_min and the estimate, unbiased,
  has a heavy tail; logit_normal and log_normal ranges far past their bulk are worse still.

  Args:
    model_fn: (x_t (B, ...), t (B,) real) -> output of kind `prediction`.
    x0: (B, ...).
    num_time_samples: K >= 1.

  Returns:
    ELBOTerms (prior, reconstruction, diffusion), (B,) each, nats.
  """
  check_prediction(prediction)
  _check_data(data)
  if isinstance(num_time_samples, bool) or not isinstance(num_time_samples, int):
    raise ValueError(f"num_time_samples must be a positive integer, got {num_time_samples!r}")
  if num_time_samples < 1:
    raise ValueError(f"num_time_samples must be a positive integer, got {num_time_samples!r}")
  time_params = {k: v for k, v in dict(time_params or {}).items() if k != "integer"}
  if time_distribution is None:
    log_snr = process.t_from_log_snr_fn is not None and _finite_log_snr_ends(process)
    time_distribution = "log_snr_uniform" if log_snr else "uniform"
  _time_params(time_distribution, time_params)
  if data == "8bit":
    _check_grid(x0, "elbo_terms")
  log_snr_min_t = _log_snr_at(process, process.t_min)
  concrete = concrete_or_none(log_snr_min_t)
  if concrete is not None and not abs(float(concrete)) < math.inf:
    raise ValueError(
      f"elbo_terms: the decoder at t_min needs a finite log-SNR there; {process.name!r} has "
      f"lambda(t_min={process.t_min}) = {float(concrete)}: build the process with t_min > 0"
    )
  time_key, noise_key, recon_key = jax.random.split(key, 3)
  batch = x0.shape[0]
  u = vdm.sample_times(time_key, batch, antithetic=antithetic).astype(_float())
  tiny = jnp.finfo(u.dtype).tiny

  def diffusion_at(k):
    u_k = jnp.maximum(jnp.mod(u + k / num_time_samples, 1.0), tiny)
    t = time_from_uniform(process, u_k, distribution=time_distribution, **time_params)
    eps = jax.random.normal(jax.random.fold_in(noise_key, k), x0.shape, x0.dtype)
    return denoising_loss_at(
      process,
      model_fn,
      x0=x0,
      t=t,
      noise=eps,
      prediction=prediction,
      weighting="elbo",
      time_distribution=time_distribution,
      time_params=time_params,
    )

  if num_time_samples == 1:
    diffusion = diffusion_at(0)
  else:
    _, losses = jax.lax.scan(
      lambda carry, k: (carry, diffusion_at(k)), None, jnp.arange(num_time_samples)
    )
    diffusion = losses.mean(0)
  recon_eps = jax.random.normal(recon_key, x0.shape, x0.dtype)
  decoder = "discretized" if data == "8bit" else "gaussian"
  reconstruction = vdm.reconstruction_nll(
    x0, eps=recon_eps, gamma_0=-log_snr_min_t, decoder=decoder
  )
  prior = elbo_prior_kl(process, x0=x0)
  if data == "8bit":
    on_grid = _on_grid(x0, 1)
    reconstruction = jnp.where(on_grid, reconstruction, jnp.nan)
  return ELBOTerms(prior=prior, reconstruction=reconstruction, diffusion=diffusion)


def elbo_bits_per_dim(
  process: GaussianProcess,
  model_fn,
  *,
  x0,
  key,
  prediction: str,
  data: str = "8bit",
  num_time_samples: int = 1,
  time_distribution: str | None = None,
  time_params=None,
  antithetic: bool = True,
) -> Array:
  """`elbo_terms(...).total / (D ln 2)`: an upper bound on -log2 P(x0) / D for 8-bit data (on
  -log2 p(x0) / D, a density, for data="continuous"), per example, (B,)."""
  terms = elbo_terms(
    process,
    model_fn,
    x0=x0,
    key=key,
    prediction=prediction,
    data=data,
    num_time_samples=num_time_samples,
    time_distribution=time_distribution,
    time_params=time_params,
    antithetic=antithetic,
  )
  return terms.total / (math.prod(x0.shape[1:]) * math.log(2.0))
