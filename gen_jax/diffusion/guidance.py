"""Classifier-free guidance: one model from a conditional and an unconditional one."""

from gen_jax.diffusion.forward import ModelFn


def guided_eps_fn(*, cond_fn: ModelFn, uncond_fn: ModelFn, guidance_scale) -> ModelFn:
  """Classifier-free guidance (Ho & Salimans 2022, eq. 6) as one model function.

  out(x_t, t) = (1 + w) cond_fn(x_t, t) - w uncond_fn(x_t, t),
  w = guidance_scale (a float or a scalar array; w = 0 is the conditional
  model, w > 0 sharpens towards the condition). diffusers writes the same
  combination as uncond + s (cond - uncond) with s = 1 + w.

  Both functions are batched models of the same x_t and t predicting the
  same target (eps, x0 or v: for fixed x_t and t each of eps_and_x0's
  conversions is affine in the output with coefficients summing to one, so
  guiding any of them guides eps and x0 alike). Keyword-only: diffusers
  passes (uncond, cond), gen_jax used to take (cond, uncond).
  """

  def guided(x_t, t):
    cond = cond_fn(x_t, t)
    return cond + guidance_scale * (cond - uncond_fn(x_t, t))

  return guided
