"""Oracles for the process samplers (gen_jax/diffusion/solvers.py): the exact model of a
Gaussian mixture for any process x_t = alpha(t) x0 + sigma(t) eps, in every target, written
from the closed forms (never through gen_jax's conversions), and the processes under test.

For data x0 ~ sum_k w_k N(mu_k, s_k^2 I), x_t is a mixture of N(alpha mu_k, var_k I) with
var_k = alpha^2 s_k^2 + sigma^2, so with d_k = x_t - alpha mu_k and r_k the responsibilities,
  E[eps | x_t] = sigma sum_k r_k d_k / var_k,   E[x0 | x_t] = sum_k r_k (mu_k + alpha s_k^2 d_k / var_k),
finite at alpha = 0 (zero SNR) and at sigma = 0 only for x0.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import diffusion
from gen_jax.diffusion import process as proc
from gen_jax.diffusion import solvers


def mixture_eps_x0(xp, x, alpha, sigma, weights, means, stds):
  """(E[eps | x], E[x0 | x]) in namespace xp; x (B, D), alpha and sigma (B,)."""
  log_w = xp.log(xp.asarray(weights, x.dtype))
  means = xp.asarray(means, x.dtype)
  var0 = xp.asarray(stds, x.dtype) ** 2
  a, s = alpha[:, None], sigma[:, None]  # (B, 1)
  var = a * a * var0 + s * s  # (B, K)
  diff = x[:, None, :] - a[:, :, None] * means  # (B, K, D)
  logits = log_w - 0.5 * x.shape[1] * xp.log(var) - 0.5 * xp.sum(diff**2, axis=-1) / var
  logits = logits - xp.max(logits, axis=-1, keepdims=True)
  resp = xp.exp(logits) / xp.sum(xp.exp(logits), axis=-1, keepdims=True)
  eps = s * xp.sum((resp / var)[:, :, None] * diff, axis=1)
  x0 = xp.sum(resp[:, :, None] * (means + (a * var0)[:, :, None] * diff / var[:, :, None]), axis=1)
  return eps, x0


def mixture_model_fn(process, params, prediction="eps"):
  """The exact model of the mixture `params` (weights, means, stds) on `process`, in
  `prediction`: eps, x0, v = alpha eps - sigma x0, velocity = alpha' x0 + sigma' eps,
  score = -eps / sigma. x_t (B, ...) with prod(...) = D; t (B,)."""

  def model_fn(x_t, t):
    alpha, sigma = process.alpha_sigma(t)
    alpha, sigma = alpha.astype(x_t.dtype), sigma.astype(x_t.dtype)
    eps, x0 = mixture_eps_x0(jnp, x_t.reshape(x_t.shape[0], -1), alpha, sigma, **params)
    a, s = alpha[:, None], sigma[:, None]
    if prediction == "eps":
      out = eps
    elif prediction == "x0":
      out = x0
    elif prediction == "v":
      out = a * eps - s * x0
    elif prediction == "score":
      out = -eps / s
    else:
      _, _, d_alpha, d_sigma = process.derivatives(jnp.asarray(t, x_t.dtype))
      out = d_alpha[:, None].astype(x_t.dtype) * x0 + d_sigma[:, None].astype(x_t.dtype) * eps
    return out.reshape(x_t.shape)

  return model_fn


def gaussian(mu, std, dims):
  """One Gaussian N(mu, std^2 I) in `dims` dimensions as mixture parameters."""
  return dict(weights=[1.0], means=np.full((1, dims), mu), stds=[std])


def processes():
  """The processes every sampler is tested on, by name."""
  return {
    "discrete": proc.discrete_process(diffusion.make_schedule(diffusion.linear_betas(1000))),
    "vp_linear": proc.vp_linear(),
    "vp_cosine": proc.vp_cosine(),
    "ve": proc.ve(),
    "rectified_flow": proc.rectified_flow(),
  }


def _as_arrays(params):
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


@functools.partial(
  jax.jit, static_argnames=("name", "shape", "num_steps", "spacing", "prediction", "options")
)
def _jit_sample(
  name, process, params, key, x_init, t, shape, num_steps, spacing, prediction, options
):
  model_fn = mixture_model_fn(process, params, prediction)
  fn = solvers.PROCESS_SAMPLERS[name].fn
  return fn(
    model_fn, process, key, shape=shape, x_init=x_init, t=t, num_steps=num_steps,
    spacing=spacing, prediction=prediction, **dict(options),
  )  # fmt: skip


def jit_sample(
  name, process, params, key=None, *, x_init=None, t=None, shape=None, num_steps=None,
  spacing=None, prediction="eps", **options,
):  # fmt: skip
  """PROCESS_SAMPLERS[name] with the exact model of the mixture `params`, under one jit whose
  traced arguments are the process, the mixture's parameters, the key, x_init and the grid t:
  one compilation serves every process of the same kind, mixture size and grid length (a
  closure per case would compile its scan anew each time)."""
  if x_init is not None:
    x_init = jnp.asarray(x_init)
  if t is not None:
    t = jnp.asarray(t)
  return _jit_sample(
    name, process, _as_arrays(params), key, x_init, t, None if shape is None else tuple(shape),
    num_steps, spacing, prediction, tuple(sorted(options.items())),
  )  # fmt: skip
