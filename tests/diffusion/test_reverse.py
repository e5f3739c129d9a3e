"""Tests for the reverse step of gen_jax/diffusion/reverse.py, `p_mean_variance`,
against the Bayes posterior at the predicted x0 (float64 numpy), and the checks of
the variance names.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion
from tests.support.diffusion import BETAS20, np_abar, np_posterior, np_tilde_beta, posterior_inputs

F32 = jnp.float32


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("clip", [False, True])
def test_p_mean_variance(sched20, variance, clip):
  x0, x_t, t = posterior_inputs((20, 3), seed=1)
  eps = np.random.default_rng(2).standard_normal(x0.shape)
  mean, log_var, x0_pred = jax.jit(diffusion.p_mean_variance, static_argnames=("variance", "clip"))(
    sched20,
    x_t=jnp.asarray(x_t, F32),
    t=jnp.asarray(t),
    eps=jnp.asarray(eps, F32),
    variance=variance,
    clip=clip,
  )
  abar = np_abar(BETAS20)[t][:, None]
  ref_x0 = (x_t - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
  if clip:
    ref_x0 = np.clip(ref_x0, -1, 1)
  ref_mean, _ = np_posterior(BETAS20, ref_x0, x_t, t)
  tilde = np.array([np_tilde_beta(BETAS20, max(ti, 1)) for ti in t])
  large = np.where(t == 0, np_tilde_beta(BETAS20, 1), BETAS20[t])
  ref_var = (tilde if variance == "small" else large)[:, None]
  np.testing.assert_allclose(x0_pred, ref_x0, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(mean, ref_mean, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(log_var, np.broadcast_to(np.log(ref_var), x0.shape), rtol=1e-5)


def test_bad_variance_raises(sched20):
  x = jnp.zeros((2, 3))
  t = jnp.array([1, 2])
  eps_fn = lambda x, t: jnp.zeros_like(x)
  with pytest.raises(ValueError):
    diffusion.p_mean_variance(sched20, x_t=x, t=t, eps=x, variance="medium")
  with pytest.raises(ValueError):
    diffusion.vlb_term(sched20, x0=x, x_t=x, t=t, output=x, variance="fixed")
  # x0 and x_t swapped would run silently: they are keyword-only.
  with pytest.raises(TypeError, match="positional"):
    diffusion.vlb_term(sched20, x, x, t, x)
  with pytest.raises(ValueError):
    diffusion.ddpm_sample(jax.random.key(0), eps_fn, sched20, (2, 3), variance="learned")
  for steps in (0, 21):
    with pytest.raises(ValueError):
      diffusion.ddim_sample(jax.random.key(0), eps_fn, sched20, (2, 3), num_steps=steps)
