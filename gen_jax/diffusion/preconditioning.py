"""EDM's preconditioning (Karras et al. 2022, Table 1) as a wrapper any backbone can use.

The denoiser at noise level s (EDM's sigma) is
  D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)),
  c_skip = sd^2 / (s^2 + sd^2),   c_out = s sd / sqrt(s^2 + sd^2),
  c_in = 1 / sqrt(s^2 + sd^2),    c_noise = ln(s) / 4,
sd = sigma_data, so that the network's input and its training target (x0 - c_skip x) / c_out
have unit variance for data of std sd, and the x0 error is c_out times F's error (EDM's loss
weight lambda(s) = 1 / c_out^2 makes F's error the loss, as k-diffusion's `Denoiser.loss`).

On EDM's process (`ve()`: alpha = 1, sigma = t = s) D is the x0 prediction at x_t. On any other
process x_t = alpha x0 + sigma eps is the VE state x = x_t / alpha at s = sigma / alpha = e^{-lambda/2},
so the same D predicts x0 there: one network serves every process with the same log-SNR.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gen_jax.diffusion._helpers import concrete_or_none
from gen_jax.diffusion.process import GaussianProcess, _expand

Array = jax.Array


def edm_scalings(sigma, *, sigma_data=0.5) -> tuple[Array, Array, Array, Array]:
  """(c_skip, c_out, c_in, c_noise) at EDM noise level sigma (any shape), Table 1 of Karras et
  al. 2022: sd^2 / (sigma^2 + sd^2), sigma sd / sqrt(sigma^2 + sd^2), 1 / sqrt(sigma^2 + sd^2),
  ln(sigma) / 4."""
  sigma = jnp.asarray(sigma)
  total = jnp.square(sigma) + jnp.square(sigma_data)
  c_skip = jnp.square(sigma_data) / total
  c_out = sigma * sigma_data * jax.lax.rsqrt(total)
  c_in = jax.lax.rsqrt(total)
  c_noise = jnp.log(sigma) / 4.0
  return c_skip, c_out, c_in, c_noise


def edm_preconditioning(net_fn, *, sigma_data=0.5, process: GaussianProcess | None = None):
  """model_fn(x_t, t) -> x0_hat: EDM's D(x; s) around a raw network F = net_fn(x_in, c_noise).

  process None (or `ve()`): t is EDM's sigma, x = x_t. Any other process: alpha, sigma =
  process.alpha_sigma(t), x = x_t / alpha, s = sigma / alpha. Then
    x0_hat = c_skip(s) x + c_out(s) net_fn(c_in(s) x, c_noise(s))       (`edm_scalings`).
  Use the output with prediction="x0" (e.g. `denoising_loss(..., prediction="x0",
  weighting="edm")`).

  Args:
    net_fn: (x_in (B, ...), c_noise (B,)) -> F (B, ...), the backbone.
    sigma_data: the data's standard deviation (0.5, EDM's, for images in [-1, 1]); a scalar.
    process: the process whose (x_t, t) the model takes; None for EDM's own (t = sigma).

  Returns:
    model_fn(x_t (B, ...), t (B,)) -> x0_hat (B, ...); pure, jit- and vmap-compatible.
  """
  value = concrete_or_none(sigma_data)
  if value is not None and not (value.ndim == 0 and value > 0):
    raise ValueError(f"edm_preconditioning: sigma_data must be a positive scalar, got {value}")

  def model_fn(x_t, t):
    if process is None:
      x, sigma = x_t, jnp.asarray(t, x_t.dtype)
    else:
      alpha, sigma_t = process.alpha_sigma(t)
      x, sigma = x_t / _expand(alpha, x_t), sigma_t / alpha
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sigma_data=sigma_data)
    features = net_fn(_expand(c_in, x) * x, c_noise)
    return _expand(c_skip, x) * x + _expand(c_out, x) * features

  return model_fn
