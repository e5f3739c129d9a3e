"""gen_jax: generative models (VAEs, diffusion) in JAX, from losses up.

The math core lives in three modules, imported as needed:
  gen_jax.distributions  log-likelihoods and KL divergences
  gen_jax.vae            reparameterization, ELBO, importance-weighted bound
  gen_jax.diffusion      schedules, forward/reverse process, bounds, samplers
"""

__version__ = "0.1.0"
