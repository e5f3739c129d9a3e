"""Gaussian noising processes in continuous time: the one abstraction every diffusion model uses.

A process is a pair of functions of time,
  x_t = alpha(t) x0 + sigma(t) eps,    eps ~ N(0, I),    t in [t_min, t_max],
with the log signal-to-noise ratio lambda(t) = log(alpha(t)^2 / sigma(t)^2) strictly decreasing
in t: t_min is the data end (nearly clean), t_max the noise end. The processes:

  discrete_process(schedule)  DDPM's T levels (any betas: linear, cosine, zero terminal SNR, your
                              own): at integer t exactly the Schedule's sqrt(alphas_cumprod[t]) and
                              sqrt(1 - alphas_cumprod[t]); between levels lambda is linear in t
                              (k-diffusion's interpolation in log sigma), t in [0, T - 1]
  vp_linear(beta_min, beta_max)    score_sde's VP SDE: alpha^2 = exp(-beta_min t - (beta_max -
                              beta_min) t^2 / 2), alpha^2 + sigma^2 = 1, t in [t_min, 1]
  vp_cosine(log_snr_min, log_snr_max)  the cosine schedule (Nichol & Dhariwal 2021) in continuous
                              time, truncated to the given log-SNR range (VDM's "cosine"):
                              lambda(t) = -2 log tan(a + t (b - a)), alpha^2 + sigma^2 = 1
  ve(sigma_min, sigma_max)    variance exploding / EDM (Karras et al. 2022): alpha = 1, sigma = t
  rectified_flow()            the linear interpolant of flow matching and rectified flow (Lipman
                              et al. 2023, Liu et al. 2023, SD3): alpha = 1 - t, sigma = t
  log_snr_process(gamma_fn, params)  any log-SNR function as a VP process, e.g. VDM's learned
                              schedule (gen_jax.diffusion.vdm): alpha^2 = sigmoid(-gamma(t))

A process is a pytree (its parameters are leaves; its functions and range are static), so it is
passed to jitted functions as an ordinary argument, and a learned schedule's parameters get
gradients through it. Derivatives in t (alpha', sigma', lambda') are exact, by forward-mode
autodiff of the same functions.

Prediction targets (`PREDICTIONS`), for every process:
  eps       the noise;    x0  the data;    score  grad log p_t(x_t) = -eps / sigma;
  v         alpha eps - sigma x0 (Salimans & Ho 2022; for alpha^2 + sigma^2 != 1 the same
            linear combination, still invertible);
  velocity  dx_t/dt = alpha' x0 + sigma' eps, flow matching's target (rectified flow:
            eps - x0).
`to_x0_eps` and `from_x0_eps` convert any of them to the pair (x0, eps) and back; `convert` goes
from one target to another. Every argument that a swap would silently break is keyword-only.

Longer than the house's ~400 lines on purpose: the abstraction, its constructors and the target
conversions are one idea, and the constructors' formulas read best side by side.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.diffusion.schedules import Schedule

Array = jax.Array

PREDICTIONS = ("eps", "x0", "v", "velocity", "score")

# alpha_sigma_fn(params, t) -> (alpha, sigma), elementwise in t.
AlphaSigmaFn = Callable[[Any, Array], tuple[Array, Array]]
# t_from_log_snr_fn(params, log_snr) -> t, elementwise; the exact inverse of lambda(t).
InverseFn = Callable[[Any, Array], Array]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class GaussianProcess:
  """x_t = alpha(t) x0 + sigma(t) eps on t in [t_min, t_max]; build one with the constructors.

  Attributes:
    name: what it is ("discrete", "vp_linear", "vp_cosine", "ve", "rectified_flow", ...).
    params: the arrays its functions read (a pytree; gradients flow through them).
    alpha_sigma_fn: (params, t) -> (alpha(t), sigma(t)), elementwise.
    t_min, t_max: the time range; the data end and the noise end.
    variance_preserving: alpha^2 + sigma^2 = 1 for every t (the prior is then N(0, I)).
    discrete_levels: T for a discrete DDPM schedule (its network takes t in {0, ..., T - 1}),
      else 0.
    t_from_log_snr_fn: the inverse of lambda(t) in closed form, or None (then bisection).
  """

  name: str
  params: Any
  alpha_sigma_fn: AlphaSigmaFn
  t_min: float
  t_max: float
  variance_preserving: bool
  discrete_levels: int = 0
  t_from_log_snr_fn: InverseFn | None = None

  def tree_flatten(self):
    static = (
      self.name,
      self.alpha_sigma_fn,
      self.t_min,
      self.t_max,
      self.variance_preserving,
      self.discrete_levels,
      self.t_from_log_snr_fn,
    )
    return (self.params,), static

  @classmethod
  def tree_unflatten(cls, static, children):
    name, fn, t_min, t_max, vp, levels, inverse = static
    return cls(name, children[0], fn, t_min, t_max, vp, levels, inverse)

  # The process's functions of time; t is any array, the results have its shape.
  def alpha_sigma(self, t) -> tuple[Array, Array]:
    """(alpha(t), sigma(t))."""
    return self.alpha_sigma_fn(self.params, _as_time(t))

  def log_snr(self, t) -> Array:
    """lambda(t) = log(alpha^2 / sigma^2) = 2 (log alpha - log sigma)."""
    alpha, sigma = self.alpha_sigma(t)
    return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

  def derivatives(self, t) -> tuple[Array, Array, Array, Array]:
    """(alpha, sigma, alpha', sigma') at t, the derivatives in t by forward-mode autodiff."""
    t = _as_time(t)
    (alpha, sigma), (d_alpha, d_sigma) = jax.jvp(
      lambda s: self.alpha_sigma_fn(self.params, s), (t,), (jnp.ones_like(t),)
    )
    return alpha, sigma, d_alpha, d_sigma

  def d_log_snr(self, t) -> Array:
    """lambda'(t) = 2 (alpha'/alpha - sigma'/sigma) (negative: lambda decreases in t)."""
    alpha, sigma, d_alpha, d_sigma = self.derivatives(t)
    return 2.0 * (d_alpha / alpha - d_sigma / sigma)

  def t_from_log_snr(self, log_snr) -> Array:
    """The time at which lambda(t) = log_snr (clipped to [t_min, t_max])."""
    log_snr = jnp.asarray(log_snr, dtype=_float())
    if self.t_from_log_snr_fn is not None:
      t = self.t_from_log_snr_fn(self.params, log_snr)
    else:
      t = _bisect_log_snr(self, log_snr)
    return jnp.clip(t, self.t_min, self.t_max)

  def prior_std(self) -> Array:
    """The std of x at t_max that samplers start from: 1 for variance-preserving processes and
    rectified flow, sigma_max for variance exploding ones (EDM's convention: alpha x0 is
    neglected beside sigma_max)."""
    _, sigma = self.alpha_sigma(self.t_max)
    if self.variance_preserving:
      return jnp.ones_like(sigma)
    return sigma


def _float():
  return jnp.result_type(float)


def _as_time(t) -> Array:
  t = jnp.asarray(t)
  if jnp.issubdtype(t.dtype, jnp.integer):
    return t  # discrete levels keep their integer dtype: exact table lookups
  return t.astype(_float())


def _bisect_log_snr(process: GaussianProcess, log_snr, iterations: int = 60) -> Array:
  """lambda^{-1} by bisection on [t_min, t_max] (lambda is decreasing)."""
  lo = jnp.full(log_snr.shape, process.t_min, _float())
  hi = jnp.full(log_snr.shape, process.t_max, _float())

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = process.log_snr(mid) > log_snr  # still too clean: go later
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, body, (lo, hi))
  return 0.5 * (lo + hi)


def vp_alpha_sigma(log_snr) -> tuple[Array, Array]:
  """(alpha, sigma) of a variance-preserving process at log-SNR lambda, stable in both tails:
  exp(log_sigmoid(+-lambda) / 2), whose derivative alpha (1 - alpha^2) lambda' / 2 is 0 where
  alpha underflows (sqrt(sigmoid) differentiates to 0 / 0 = nan there: a zero-terminal-SNR
  schedule's last segment)."""
  return jnp.exp(0.5 * jax.nn.log_sigmoid(log_snr)), jnp.exp(0.5 * jax.nn.log_sigmoid(-log_snr))


# ---------------------------------------------------------------------------------------------
# The processes.


# The processes' functions live at module level: a process's functions are static parts of its
# pytree, compared by identity, so closures made per constructor call would make every new
# process (vp_linear() twice) a new jit cache entry, recompiling whatever takes it as argument.


def _discrete_alpha_sigma(p, t):
  if jnp.issubdtype(t.dtype, jnp.integer):
    return p["sqrt_alphas_cumprod"][t], p["sqrt_one_minus_alphas_cumprod"][t]
  num_timesteps = p["neg_log_snr"].shape[0]
  grid = jnp.arange(num_timesteps, dtype=t.dtype)
  neg = p["neg_log_snr"].astype(t.dtype)
  # Linear in t between levels; the slope is finite even next to a -inf last level (capped at
  # 1e4) and real t stays below T - 1 there (t_max).
  lower = jnp.clip(jnp.floor(t), 0, num_timesteps - 2).astype(jnp.int32)
  frac = t - grid[lower]
  return vp_alpha_sigma(-(neg[lower] + frac * (neg[lower + 1] - neg[lower])))


def _discrete_inverse(p, log_snr):
  neg = p["neg_log_snr"].astype(log_snr.dtype)
  grid = jnp.arange(neg.shape[0], dtype=log_snr.dtype)
  return jnp.interp(-log_snr, neg, grid)


def discrete_process(schedule: Schedule) -> GaussianProcess:
  """DDPM's discrete schedule as a process on t in [0, T - 1].

  At integer t (an integer array) alpha and sigma are the schedule's own
  sqrt_alphas_cumprod[t] and sqrt_one_minus_alphas_cumprod[t], bit for bit, so every
  discrete sampler and bound reads the same numbers through the process. At real t, lambda is
  interpolated linearly between the levels (k-diffusion's DiscreteSchedule interpolates log
  sigma = -lambda / 2 the same way) and alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).
  A zero-terminal-SNR schedule's last level has lambda = -inf; real t is then kept below it.
  """
  alphas_cumprod = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
  # lambda from the two square-root tables, each rounded once from float64: 1 - ac from the
  # float32 ac loses digits near t = 0 (2.6e-4 relative in sigma at the cosine schedule's first
  # level), and real t at a level must give that level's alpha and sigma.
  with np.errstate(divide="ignore"):
    log_snr = 2.0 * (
      np.log(np.asarray(schedule.sqrt_alphas_cumprod, np.float64))
      - np.log(np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64))
    )
  params = {
    "sqrt_alphas_cumprod": schedule.sqrt_alphas_cumprod,
    "sqrt_one_minus_alphas_cumprod": schedule.sqrt_one_minus_alphas_cumprod,
    # -lambda, increasing in t (np.interp and searchsorted want increasing abscissae), capped
    # at 1e4 where lambda = -inf (zero terminal SNR) so that lambda^{-1} interpolates the same
    # last interval as alpha_sigma (with inf there it returned T - 2 for every lambda below
    # the last finite level).
    "neg_log_snr": jnp.asarray(np.minimum(-log_snr, 1e4), dtype=_float()),
  }
  num_timesteps = int(alphas_cumprod.shape[0])
  t_max = float(num_timesteps - 1)
  if not np.isfinite(log_snr[-1]):
    t_max = float(num_timesteps - 1) - 1e-3

  return GaussianProcess(
    name="discrete",
    params=params,
    alpha_sigma_fn=_discrete_alpha_sigma,
    t_min=0.0,
    t_max=t_max,
    variance_preserving=True,
    discrete_levels=num_timesteps,
    t_from_log_snr_fn=_discrete_inverse,
  )


def vp_linear(
  beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3, t_max: float = 1.0
) -> GaussianProcess:
  """score_sde's VP SDE (Song et al. 2021): dx = -beta(t)/2 x dt + sqrt(beta(t)) dW with
  beta(t) = beta_min + t (beta_max - beta_min), so
    log alpha(t)^2 = -(beta_min t + (beta_max - beta_min) t^2 / 2),  sigma^2 = 1 - alpha^2.
  DDPM's linear betas (1e-4 .. 0.02, T = 1000) are its discretisation with t = (i + 1) / T.
  t_min = 1e-3 is score_sde's sampling end (1e-5 for likelihoods)."""
  _check_range("vp_linear", t_min, t_max, 0.0, 1.0)
  if not 0 <= beta_min < beta_max:
    raise ValueError(f"vp_linear: need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
  params = {
    "beta_min": jnp.asarray(beta_min, _float()),
    "beta_max": jnp.asarray(beta_max, _float()),
  }

  return GaussianProcess(
    "vp_linear", params, _vp_linear_alpha_sigma, t_min, t_max, True, 0, _vp_linear_inverse
  )


def _vp_linear_alpha_sigma(p, t):
  log_alpha = -0.25 * t**2 * (p["beta_max"] - p["beta_min"]) - 0.5 * t * p["beta_min"]
  # sigma^2 = 1 - alpha^2 = -expm1(2 log alpha): no cancellation near t = 0.
  return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))


def _vp_linear_inverse(p, log_snr):
  # beta_min t + (beta_max - beta_min) t^2 / 2 = -log alpha^2 = softplus(-lambda).
  delta = p["beta_max"] - p["beta_min"]
  c = jax.nn.softplus(-log_snr)
  return 2.0 * c / (p["beta_min"] + jnp.sqrt(p["beta_min"] ** 2 + 2.0 * delta * c))


def vp_cosine(
  log_snr_min: float = -15.0, log_snr_max: float = 15.0, *, t_min: float = 0.0, t_max: float = 1.0
) -> GaussianProcess:
  """The cosine schedule in continuous time (Nichol & Dhariwal 2021, without its offset s),
  truncated to log-SNRs [log_snr_min, log_snr_max] (VDM's and Kingma & Gao's "cosine"):
    lambda(t) = -2 log tan(a + t (b - a)),  a = atan(exp(-log_snr_max / 2)),
                                            b = atan(exp(-log_snr_min / 2)),
  alpha^2 = sigmoid(lambda): with a = 0, b = pi/2 it is alpha = cos(pi t / 2)."""
  _check_range("vp_cosine", t_min, t_max, 0.0, 1.0)
  if not log_snr_min < log_snr_max:
    raise ValueError(f"vp_cosine: need log_snr_min < log_snr_max, got {log_snr_min}, {log_snr_max}")
  params = {
    "a": jnp.asarray(math.atan(math.exp(-log_snr_max / 2)), _float()),
    "b": jnp.asarray(math.atan(math.exp(-log_snr_min / 2)), _float()),
  }

  return GaussianProcess(
    "vp_cosine", params, _vp_cosine_alpha_sigma, t_min, t_max, True, 0, _vp_cosine_inverse
  )


def _vp_cosine_alpha_sigma(p, t):
  angle = p["a"] + t * (p["b"] - p["a"])
  return jnp.cos(angle), jnp.sin(angle)


def _vp_cosine_inverse(p, log_snr):
  return (jnp.arctan(jnp.exp(-log_snr / 2)) - p["a"]) / (p["b"] - p["a"])


def ve(sigma_min: float = 0.002, sigma_max: float = 80.0) -> GaussianProcess:
  """Variance exploding, in EDM's time (Karras et al. 2022): alpha = 1, sigma = t, t in
  [sigma_min, sigma_max]; lambda = -2 log t. The defaults are EDM's."""
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f"ve: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")

  return GaussianProcess(
    "ve", {}, _ve_alpha_sigma, float(sigma_min), float(sigma_max), False, 0, _ve_inverse
  )


def _ve_alpha_sigma(p, t):
  return jnp.ones_like(t), t


def _ve_inverse(p, log_snr):
  return jnp.exp(-log_snr / 2)


def rectified_flow(*, t_min: float = 0.0, t_max: float = 1.0) -> GaussianProcess:
  """The linear interpolant of flow matching / rectified flow: alpha = 1 - t, sigma = t, so
  lambda = 2 log((1 - t) / t) and the velocity target is dx_t/dt = eps - x0.
  t_max = 1 is pure noise, N(0, I); likelihoods need t_min > 0 (e.g. 1e-5)."""
  _check_range("rectified_flow", t_min, t_max, 0.0, 1.0)

  return GaussianProcess("rectified_flow", {}, _rf_alpha_sigma, t_min, t_max, False, 0, _rf_inverse)


def _rf_alpha_sigma(p, t):
  return 1.0 - t, t


def _rf_inverse(p, log_snr):
  return jax.nn.sigmoid(-log_snr / 2)


def log_snr_process(gamma_fn, params, *, name: str = "log_snr") -> GaussianProcess:
  """A variance-preserving process given by gamma(t) = -lambda(t) on t in [0, 1], increasing:
  alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma) (VDM's convention). `gamma_fn(params, t)`
  is elementwise in t, e.g. `gen_jax.diffusion.vdm.LogSNRSchedule(...)` (its `__call__`) with its
  parameters, learned or fixed; lambda^{-1} is found by bisection."""

  return GaussianProcess(name, params, _GammaAlphaSigma(gamma_fn), 0.0, 1.0, True, 0, None)


@dataclasses.dataclass(frozen=True)
class _GammaAlphaSigma:
  """(alpha, sigma) of gamma_fn; equal for equal gamma_fn (a LogSNRSchedule compares by value),
  so two processes of one schedule share jit cache entries."""

  gamma_fn: Callable

  def __call__(self, p, t):
    return vp_alpha_sigma(-self.gamma_fn(p, t))


def _check_range(name, t_min, t_max, lo, hi):
  if not lo <= t_min < t_max <= hi:
    raise ValueError(
      f"{name}: need {lo} <= t_min < t_max <= {hi}, got t_min={t_min}, t_max={t_max}"
    )


PROCESSES = {
  "vp_linear": vp_linear,
  "vp_cosine": vp_cosine,
  "ve": ve,
  "edm": ve,
  "rectified_flow": rectified_flow,
}


# ---------------------------------------------------------------------------------------------
# The forward process and the prediction targets.


def _expand(value, x) -> Array:
  """(B,) or scalar per-example values broadcast against x (B, ...)."""
  value = jnp.asarray(value)
  return value.reshape(value.shape + (1,) * (jnp.ndim(x) - value.ndim))


def q_sample(process: GaussianProcess, *, x0, t, noise) -> Array:
  """x_t = alpha(t) x0 + sigma(t) eps. x0, noise (B, ...); t (B,) or scalar."""
  alpha, sigma = process.alpha_sigma(t)
  return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise


def check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def to_x0_eps(process: GaussianProcess, *, x_t, t, output, prediction: str) -> tuple[Array, Array]:
  """(x0, eps) from a model output in any target, at (x_t, t).

    eps:      x0 = (x_t - sigma eps) / alpha
    x0:       eps = (x_t - alpha x0) / sigma
    score:    eps = -sigma score
    v:        x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2), eps = (sigma x_t + alpha v) / (...)
    velocity: solves [x_t, u] = [[alpha, sigma], [alpha', sigma']] [x0, eps]:
              x0 = (sigma' x_t - sigma u) / (alpha sigma' - sigma alpha'),
              eps = (alpha u - alpha' x_t) / (alpha sigma' - sigma alpha')
  Divisions by alpha (eps at the noise end of rectified flow) or sigma (x0 at the data end) are
  the caller's to avoid: convert where the quantity is defined.
  """
  check_prediction(prediction)
  if prediction == "velocity":
    alpha, sigma, d_alpha, d_sigma = (_expand(v, x_t) for v in process.derivatives(t))
    det = alpha * d_sigma - sigma * d_alpha
    return (d_sigma * x_t - sigma * output) / det, (alpha * output - d_alpha * x_t) / det
  alpha, sigma = (_expand(v, x_t) for v in process.alpha_sigma(t))
  if prediction == "eps":
    return (x_t - sigma * output) / alpha, output
  if prediction == "x0":
    return output, (x_t - alpha * output) / sigma
  if prediction == "score":
    eps = -sigma * output
    return (x_t - sigma * eps) / alpha, eps
  norm = alpha**2 + sigma**2  # "v"
  return (alpha * x_t - sigma * output) / norm, (sigma * x_t + alpha * output) / norm


def from_x0_eps(process: GaussianProcess, *, t, x0, eps, prediction: str) -> Array:
  """The target `prediction` from (x0, eps) at t: eps, x0, v = alpha eps - sigma x0,
  velocity = alpha' x0 + sigma' eps, score = -eps / sigma."""
  check_prediction(prediction)
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  if prediction == "velocity":
    _, _, d_alpha, d_sigma = process.derivatives(t)
    return _expand(d_alpha, x0) * x0 + _expand(d_sigma, x0) * eps
  alpha, sigma = (_expand(v, x0) for v in process.alpha_sigma(t))
  if prediction == "v":
    return alpha * eps - sigma * x0
  return -eps / sigma  # score


def convert(process: GaussianProcess, *, x_t, t, output, source: str, target: str) -> Array:
  """A model output in target `source` expressed in target `target`, at (x_t, t)."""
  if source == target:
    check_prediction(source)
    return output
  x0, eps = to_x0_eps(process, x_t=x_t, t=t, output=output, prediction=source)
  return from_x0_eps(process, t=t, x0=x0, eps=eps, prediction=target)


def ode_velocity(process: GaussianProcess, *, x_t, t, x0, eps) -> Array:
  """The probability-flow ODE's drift dx/dt = alpha' x0_hat + sigma' eps_hat: the velocity of
  the deterministic path through x_t given the model's (x0, eps) (Karras et al. 2022, eq. 4,
  in the process's own time). For a perfect model it is E[dx_t/dt | x_t]."""
  del x_t  # the drift is linear in (x0, eps); x_t enters through them
  _, _, d_alpha, d_sigma = process.derivatives(t)
  return _expand(d_alpha, x0) * x0 + _expand(d_sigma, x0) * eps
