"""Noise schedules: the betas, everything derived from them, and their noise levels sigma_t.

A schedule is built once on the host (float64 numpy, then cast to the default
float dtype: float32, or float64 under `jax_enable_x64`) and passed to jitted
functions as an ordinary pytree argument.

The continuous-time view: dividing x_t by sqrt(ac_t) turns the discrete VP
process into the variance-exploding one of Karras et al. (2022): x_t /
sqrt(ac_t) = x0 + sigma_t eps with sigma_t = sqrt((1 - ac_t) / ac_t); the
log-SNR is lambda_t = log(sqrt(ac_t) / sqrt(1 - ac_t)) = -log sigma_t. In
these coordinates the probability-flow ODE is dx/dsigma = eps(x / sqrt(1 +
sigma^2), t(sigma)) (Karras et al. 2022, eq. 4 with D = x - sigma eps). A
discrete eps_fn is only defined at the T levels sigma_t, so every continuous
grid (gen_jax.diffusion.timesteps) is rounded to the nearest level in
log-sigma (`sigma_to_timestep`, as k-diffusion's DiscreteEpsDDPMDenoiser
quantizes) and the solvers then use the rounded levels, so that each network
call sees exactly its noise level.
"""

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import checks

Array = jax.Array


# The cap on linear_betas' scaled default betas (the cosine schedule's max_beta).
MAX_SCALED_BETA = 0.999


def linear_betas(
  num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None
) -> np.ndarray:
  """The DDPM schedule: betas linear from beta_start to beta_end.

  None (the default) takes improved-diffusion's scaling (Nichol & Dhariwal
  2021, `get_named_beta_schedule("linear", T)`): beta_start = 1e-4 * 1000 / T,
  beta_end = 0.02 * 1000 / T, which is DDPM's (1e-4, 0.02) at T = 1000 and
  keeps alphas_cumprod[T-1] near DDPM's 4e-5 for every T (sum of betas
  ~ 10): with the unscaled values, T = 100 ends at alphas_cumprod = 0.364 and
  sampling from N(0, I) is wrong. The scaled beta_end reaches 1 at T = 20
  (and exceeds it below, where improved-diffusion's betas are invalid), so a
  default beta_end is capped at MAX_SCALED_BETA = 0.999, as the cosine
  schedule clips its betas; this only changes T <= 20. Explicit values are
  used as given.

  Returns:
    float64 numpy array of shape (num_timesteps,).
  """
  checks.check_integer(num_timesteps, "num_timesteps", 1)
  scale = 1000.0 / num_timesteps
  if beta_start is None:
    beta_start = min(1e-4 * scale, MAX_SCALED_BETA)
  if beta_end is None:
    beta_end = min(0.02 * scale, MAX_SCALED_BETA)
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def rescale_zero_terminal_snr(betas) -> np.ndarray:
  """Betas rescaled to zero terminal SNR (Lin et al. 2024, "Common Diffusion
  Noise Schedules and Sample Steps are Flawed", Algorithm 1; diffusers'
  `rescale_zero_terminal_snr`, the same operations in float64).

  sqrt(ac'_t) = (sqrt(ac_t) - sqrt(ac_{T-1})) sqrt(ac_0) / (sqrt(ac_0) - sqrt(ac_{T-1})):
  shifted so that ac'_{T-1} = 0 (the last level is pure noise, SNR 0, and
  N(0, I) is its exact law) and scaled so that ac'_0 = ac_0 (to rounding);
  beta'_t = 1 - ac'_t / ac'_{t-1}, beta'_0 = 1 - ac'_0, so beta'_{T-1} = 1.
  An eps-predictor is undefined at the last level (x0 = (x_t - eps) / 0):
  train v- or x0-prediction.

  Args:
    betas: (T,) with T >= 2, in (0, 1].

  Returns:
    float64 numpy array of shape (T,), last value exactly 1.
  """
  betas = _check_betas(betas, "rescale_zero_terminal_snr")
  if betas.size < 2:
    raise ValueError("rescale_zero_terminal_snr: betas needs at least 2 steps")
  sqrt_ac = np.sqrt(np.cumprod(1.0 - betas))
  first, last = sqrt_ac[0].copy(), sqrt_ac[-1].copy()
  sqrt_ac -= last
  sqrt_ac *= first / (first - last)
  ac = sqrt_ac**2
  alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
  return 1.0 - alphas


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """The cosine schedule of Nichol & Dhariwal (2021), eq. 17.

  alphas_cumprod(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2),
  beta_t = min(1 - alphas_cumprod(t + 1) / alphas_cumprod(t), max_beta).

  Returns:
    float64 numpy array of shape (num_timesteps,).
  """
  checks.check_integer(num_timesteps, "num_timesteps", 1)
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
  alphas_cumprod = f / f[0]
  betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
  return np.minimum(betas, max_beta)


class Schedule(NamedTuple):
  """Everything derived from the betas, each of shape (T,). A pytree."""

  betas: Array
  alphas: Array  # 1 - beta_t
  alphas_cumprod: Array  # prod_{s<=t} alpha_s
  alphas_cumprod_prev: Array  # alphas_cumprod[t-1], 1 at t = 0
  sqrt_alphas_cumprod: Array
  sqrt_one_minus_alphas_cumprod: Array
  posterior_variance: Array  # beta~_t = beta_t (1 - ac_prev) / (1 - ac)
  posterior_log_variance_clipped: Array  # log beta~_t, with beta~_0 := beta~_1
  posterior_mean_coef1: Array  # multiplies x_0
  posterior_mean_coef2: Array  # multiplies x_t

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


# The per-dimension prior mismatch above which make_schedule warns, nats.
PRIOR_KL_WARNING = 1e-3


def prior_kl_per_dim(alphas_cumprod_last: float) -> float:
  """The expected KL(q(x_{T-1} | x_0) || N(0, 1)) per dimension for data of
  unit second moment (E[x_0^2] = 1, e.g. standardized data), in nats.

  q(x_{T-1} | x_0) = N(sqrt(ac) x_0, 1 - ac) with ac = alphas_cumprod[T-1], so
    KL = 0.5 (ac x_0^2 + (1 - ac) - 1 - log(1 - ac)),
    E[KL] = 0.5 (ac E[x_0^2] - ac) - 0.5 log(1 - ac) = -0.5 log(1 - ac)
  (about ac / 2 for small ac; 0 at zero terminal SNR). It is the prior
  term of the variational bound (`prior_kl`) for such data, and what a
  sampler that starts from N(0, I) gets wrong.
  """
  return float(-0.5 * np.log1p(-alphas_cumprod_last))


def make_schedule(betas) -> Schedule:
  """Precomputes the schedule's quantities (Ho et al. 2020, eqs. 4, 6, 7).

  posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t I) with
    beta~_t = beta_t (1 - ac_{t-1}) / (1 - ac_t),
    coef1 = beta_t sqrt(ac_{t-1}) / (1 - ac_t),
    coef2 = (1 - ac_{t-1}) sqrt(alpha_t) / (1 - ac_t),
  where ac = alphas_cumprod. beta~_0 = 0 (x_0 is known given the paper's x_1),
  so its log is clipped to log beta~_1, as in the DDPM code.

  Zero terminal SNR: a last beta of 1 (`rescale_zero_terminal_snr`) gives
  alphas_cumprod[T-1] = 0 exactly; every field stays finite (sqrt_alphas_cumprod
  and coef2 are 0 there), while the derived sigma_{T-1} = `schedule_sigmas`[-1]
  is inf and log-SNR -inf. A beta of 1 anywhere else is refused.

  Prior mismatch: warns (UserWarning) when `prior_kl_per_dim`(ac_{T-1}) =
  -0.5 log(1 - ac_{T-1}) exceeds PRIOR_KL_WARNING = 1e-3 nats per dimension
  (ac_{T-1} > 0.002): the samplers start from N(0, I) while the data's x_{T-1}
  is not. DDPM's T = 1000 schedule has 2e-5; unscaled linear betas at T = 100
  have 0.23.

  Args:
    betas: (T,) values in (0, 1), the last may be 1. Computed in float64 on
      the host, then cast to the default float dtype.

  Returns:
    A Schedule (an immutable pytree, usable as a jit argument).
  """
  betas = _check_betas(betas, "make_schedule")
  return _schedule(betas, np.cumprod(1.0 - betas), "make_schedule")


def schedule_from_alphas_cumprod(alphas_cumprod) -> Schedule:
  """A Schedule from a user-given alphas_cumprod (e.g. a schedule defined by
  its log-SNR), keeping those values exactly (as float64, then cast).

  beta_t = 1 - ac_t / ac_{t-1}, beta_0 = 1 - ac_0; the rest as `make_schedule`
  (including its prior-mismatch warning).

  Args:
    alphas_cumprod: (T,) strictly decreasing values in (0, 1); the last may
      be 0 (zero terminal SNR).
  """
  ac = np.asarray(alphas_cumprod, dtype=np.float64)
  if ac.ndim != 1 or ac.size < 1:
    raise ValueError(
      f"schedule_from_alphas_cumprod: alphas_cumprod must be a non-empty vector, got shape "
      f"{ac.shape}"
    )
  if not (np.all(np.isfinite(ac)) and 0 < ac[0] < 1 and np.all(np.diff(ac) < 0) and ac[-1] >= 0):
    raise ValueError(
      "schedule_from_alphas_cumprod: alphas_cumprod must be strictly decreasing in (0, 1) "
      f"(the last value may be 0), got values from {ac.min()} to {ac.max()}"
    )
  betas = 1.0 - np.concatenate([ac[:1], ac[1:] / ac[:-1]])
  return _schedule(betas, ac, "schedule_from_alphas_cumprod")


def _check_betas(betas, name: str) -> np.ndarray:
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size < 1:
    raise ValueError(f"{name}: betas must be a non-empty vector, got shape {betas.shape}")
  if not (np.all(betas > 0) and np.all(betas[:-1] < 1) and betas[-1] <= 1):
    raise ValueError(
      f"{name}: betas must lie in (0, 1), the last in (0, 1] (1: zero terminal SNR); "
      f"got values from {np.min(betas)} to {np.max(betas)}"
    )
  return betas


def _schedule(betas: np.ndarray, alphas_cumprod: np.ndarray, name: str) -> Schedule:
  """The Schedule of float64 betas and their alphas_cumprod."""
  kl = prior_kl_per_dim(alphas_cumprod[-1])
  if kl > PRIOR_KL_WARNING:
    warnings.warn(
      f"{name}: alphas_cumprod[T-1] = {alphas_cumprod[-1]:.3g}, so x_(T-1) is not N(0, I): the "
      f"prior mismatch is {kl:.3g} nats per dimension for unit-variance data (above "
      f"{PRIOR_KL_WARNING:g}), and samplers that start from N(0, I) are biased. Use larger "
      "betas (linear_betas(T) scales them with T), more steps, or rescale_zero_terminal_snr.",
      UserWarning,
      stacklevel=3,
    )
  alphas = 1.0 - betas
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
  clip_from = posterior_variance[1] if betas.size > 1 else betas[0]
  posterior_log_variance_clipped = np.log(np.append(clip_from, posterior_variance[1:]))
  dtype = jnp.result_type(float)
  as_array = lambda a: jnp.asarray(a, dtype=dtype)
  return Schedule(
    betas=as_array(betas),
    alphas=as_array(alphas),
    alphas_cumprod=as_array(alphas_cumprod),
    alphas_cumprod_prev=as_array(alphas_cumprod_prev),
    sqrt_alphas_cumprod=as_array(np.sqrt(alphas_cumprod)),
    sqrt_one_minus_alphas_cumprod=as_array(np.sqrt(1 - alphas_cumprod)),
    posterior_variance=as_array(posterior_variance),
    posterior_log_variance_clipped=as_array(posterior_log_variance_clipped),
    posterior_mean_coef1=as_array(betas * np.sqrt(alphas_cumprod_prev) / (1 - alphas_cumprod)),
    posterior_mean_coef2=as_array(
      (1 - alphas_cumprod_prev) * np.sqrt(alphas) / (1 - alphas_cumprod)
    ),
  )


def respace_schedule(schedule: Schedule, timesteps) -> Schedule:
  """The schedule of a sub-sequence of timesteps, as improved-diffusion respaces.

  For kept timesteps t_0 < t_1 < ... < t_{K-1} (original indices), the new
  schedule has K steps with the same noise levels, alphas_cumprod'[i] =
  ac[t_i], so beta'_i = 1 - ac[t_i] / ac[t_{i-1}] (beta'_0 = 1 - ac[t_0]).
  beta'_i is computed in float64 on the host as -expm1(sum of
  log1p(-beta_s) over t_{i-1} < s <= t_i), which keeps every digit when the
  kept steps are consecutive (then beta'_i = beta_{t_i} exactly).

  The schedule must be concrete (built by `make_schedule`, closed over
  rather than passed as a traced jit argument): respacing is host work.

  Args:
    schedule: the original schedule (T steps).
    timesteps: K distinct original timesteps in [0, T), any order.

  Returns:
    A Schedule of K steps; new index i stands for original timestep
    sorted(timesteps)[i].
  """
  try:
    betas = np.asarray(schedule.betas, dtype=np.float64)
  except jax.errors.TracerArrayConversionError as e:
    raise ValueError(
      "respace_schedule needs a concrete schedule: close over "
      "it instead of passing it as a jit argument"
    ) from e
  kept = np.unique(np.asarray(timesteps))
  if (
    kept.size < 1
    or kept.size != np.asarray(timesteps).size
    or not np.issubdtype(kept.dtype, np.integer)
    or kept[0] < 0
    or kept[-1] >= betas.size
  ):
    raise ValueError(f"timesteps must be distinct integers in [0, {betas.size}), got {timesteps!r}")
  log_alphas = np.log1p(-betas)
  starts = np.append(0, kept[:-1] + 1)
  log_alpha_segments = np.array([log_alphas[a : b + 1].sum() for a, b in zip(starts, kept)])
  return make_schedule(-np.expm1(log_alpha_segments))


def schedule_sigmas(schedule: Schedule) -> Array:
  """sigma_t = sqrt((1 - ac_t) / ac_t), shape (T,), increasing in t; inf at
  a zero-terminal-SNR end (ac_{T-1} = 0)."""
  return schedule.sqrt_one_minus_alphas_cumprod / schedule.sqrt_alphas_cumprod


def sigma_to_timestep(schedule: Schedule, sigma) -> Array:
  """The discrete timestep whose sigma_t is nearest to sigma in log-sigma.

  Args:
    sigma: positive array of any shape.

  Returns:
    int32 array of sigma's shape, values in [0, T).
  """
  log_sigmas = jnp.log(schedule_sigmas(schedule))
  distance = jnp.abs(jnp.log(jnp.asarray(sigma))[..., None] - log_sigmas)
  return jnp.argmin(distance, axis=-1).astype(jnp.int32)
