"""The model's reverse step p(x_{t-1} | x_t), from an eps prediction.

Ancestral samplers draw from it; the variational bound compares it with the
forward posterior q(x_{t-1} | x_t, x_0).
"""

import jax
import jax.numpy as jnp

from gen_jax.diffusion._helpers import at, check_integer_timesteps
from gen_jax.diffusion.forward import q_posterior
from gen_jax.diffusion.schedules import Schedule

Array = jax.Array
VARIANCES = ("small", "large")


def check_variance(variance: str) -> None:
  """Raises ValueError unless `variance` is one of VARIANCES."""
  if variance not in VARIANCES:
    raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


def p_mean_variance(
  schedule: Schedule,
  *,
  x_t,
  t,
  eps=None,
  x0=None,
  variance: str = "small",
  clip: bool = False,
) -> tuple[Array, Array, Array]:
  """The reverse step p(x_{t-1} | x_t) = N(mean, exp(log_variance)) from the
  model's prediction: its x0 (from `eps_and_x0`, any prediction type), or its
  eps, from which x0 = (x_t - sqrt(1 - ac_t) eps) / sqrt(ac_t). Give one of
  the two (x0 wins if both are given).

  mean = posterior mean at the predicted x_0 (Ho et al. 2020, eq. 11);
  variance "small" is beta~_t (the posterior's, log clipped at t = 0),
  "large" is beta_t (with beta~_1 at t = 0, as the DDPM code does, so the
  decoder's scale stays finite).

  Args:
    x_t: (B, ...) or one example. t: int (B,) or scalar. eps, x0: like x_t.

  Returns:
    (mean, log_variance, x0_pred), each of the shape of x_t.
  """
  check_variance(variance)
  check_integer_timesteps(t, "p_mean_variance")
  if x0 is None and eps is None:
    raise ValueError("p_mean_variance: give the model's x0 or its eps")
  if x0 is None:
    x0 = (x_t - at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / at(
      schedule.sqrt_alphas_cumprod, t, x_t
    )
  x0_pred = jnp.clip(x0, -1.0, 1.0) if clip else x0
  mean, _, log_small = q_posterior(schedule, x0=x0_pred, x_t=x_t, t=t)
  if variance == "small":
    log_variance = log_small
  else:
    log_large = jnp.log(jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]]))
    log_variance = jnp.broadcast_to(at(log_large, t, x_t), jnp.shape(x_t))
  return mean, log_variance, x0_pred
