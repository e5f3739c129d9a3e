"""The model's reverse step p(x_{t-1} | x_t), from an eps prediction.

Ancestral samplers draw from it; the variational bound compares it with the
forward posterior q(x_{t-1} | x_t, x_0).
"""

import jax
import jax.numpy as jnp

from gen_jax.diffusion._helpers import at
from gen_jax.diffusion.forward import predict_x0_from_eps, q_posterior
from gen_jax.diffusion.schedules import Schedule

Array = jax.Array
VARIANCES = ("small", "large")


def check_variance(variance: str) -> None:
  """Raises ValueError unless `variance` is one of VARIANCES."""
  if variance not in VARIANCES:
    raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


def p_mean_variance(
  schedule: Schedule, x_t, t, eps, variance: str = "small", clip: bool = False
) -> tuple[Array, Array, Array]:
  """The reverse step p(x_{t-1} | x_t) = N(mean, exp(log_variance)) from eps.

  mean = posterior mean at the predicted x_0 (Ho et al. 2020, eq. 11);
  variance "small" is beta~_t (the posterior's, log clipped at t = 0),
  "large" is beta_t (with beta~_1 at t = 0, as the DDPM code does, so the
  decoder's scale stays finite).

  Returns:
    (mean, log_variance, x0_pred), each of the shape of x_t.
  """
  check_variance(variance)
  x0_pred = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip:
    x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
  mean, _, log_small = q_posterior(schedule, x0_pred, x_t, t)
  if variance == "small":
    log_variance = log_small
  else:
    log_large = jnp.log(jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]]))
    log_variance = jnp.broadcast_to(at(log_large, t, x_t), jnp.shape(x_t))
  return mean, log_variance, x0_pred
