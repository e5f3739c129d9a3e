"""Variational autoencoders: the objectives, as pure functions.

gen_jax.vae           the one-layer VAE: reparameterization, ELBO, importance-weighted bound
                      (defined in gen_jax/vae/elbo.py, re-exported here)
gen_jax.vae.hvae      the hierarchical (top-down) VAE: per-layer KLs, its ELBO and IWAE bound
gen_jax.vae.decoders  how a decoder's raw output becomes p(x | z) (Gaussian, Bernoulli,
                      discretized logistic mixture)
"""

from gen_jax.vae import decoders, hvae
from gen_jax.vae.elbo import (
  ELBO,
  Encoder,
  LogLikelihood,
  elbo,
  iwae_bound,
  log_mean_exp_chunked,
  reparameterize,
)

__all__ = [
  "ELBO",
  "Encoder",
  "LogLikelihood",
  "decoders",
  "elbo",
  "hvae",
  "iwae_bound",
  "log_mean_exp_chunked",
  "reparameterize",
]
