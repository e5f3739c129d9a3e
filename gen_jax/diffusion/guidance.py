"""Classifier-free guidance: one eps_fn from a conditional and an unconditional one."""

from gen_jax.diffusion.forward import EpsFn


def guided_eps_fn(cond_eps_fn: EpsFn, uncond_eps_fn: EpsFn, guidance_scale) -> EpsFn:
  """Classifier-free guidance (Ho & Salimans 2022, eq. 6) as an eps_fn.

  eps(x_t, t) = (1 + w) cond_eps_fn(x_t, t) - w uncond_eps_fn(x_t, t),
  w = guidance_scale (a float or a scalar array; w = 0 is the conditional
  model, w > 0 sharpens towards the condition). Both functions are batched
  eps_fns of the same x_t and t (for a class-conditional network: the same
  network with the class label and with the null label bound).
  """

  def eps_fn(x_t, t):
    cond = cond_eps_fn(x_t, t)
    return cond + guidance_scale * (cond - uncond_eps_fn(x_t, t))

  return eps_fn
