"""Hierarchical (top-down) VAE on scikit-learn's 8x8 digits (offline): 5 stochastic layers at 1x1, 4x4, 8x8, logistic mixtures.

A ladder VAE in the style of VDVAE / NVAE (gen_jax.vae.hvae, gen_jax.nets.hvae), scaled for 8x8 images:
a bottom-up encoder, a top-down decoder with stochastic layers at resolutions 1, 4 and 8, the
ELBO as the reconstruction minus the analytic Gaussian KL of every layer, KL warm-up, optional free
bits, softplus-bounded scales and skipped updates on gradient-norm spikes. --mode=eval reports the
IWAE bound (K = 5000) in bits/dim on the 360 8-bit test digits, as vae_digits and ddpm_digits.

Run:
  python run.py --experiment=hvae_digits --workdir=runs/hvae_digits
  python run.py --experiment=hvae_digits --workdir=runs/hvae_digits --mode=eval
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "digits"
  config.data.batch_size = 64

  config.model = ml_collections.ConfigDict(
    dict(
      # Sized for a CPU: many small convolutions on 8x8 images cost more in XLA's per-op overhead (and
      # compile time) than in FLOPs, so few layers, 32 channels.
      width=32,  # channels of the residual stream (blocks' middle: width / 4)
      latent_channels=4,  # channels of each z_l
      resolutions=(1, 4, 8),  # top-down order
      layers_per_resolution=(1, 2, 2),  # stochastic layers at each resolution
      encoder_blocks=1,  # bottom-up residual blocks per resolution
      min_scale=0.01,  # sigma = min_scale + softplus(.) for priors and posteriors
      likelihood="logistic_mixture",  # | discretized_gaussian | bernoulli (binarized)
      num_mixtures=5,
      binarize=True,  # bernoulli only
      kl_warmup_steps=500,  # the KL's weight rises 0 -> 1 over these steps; 0: off
      free_bits=0.0,  # nats per layer (batch mean) below which a KL is not pushed down; 0: off
      temperature=1.0,  # prior scale when sampling
      iwae_samples=5000,
      iwae_chunk=50,
    )
  )

  config.train.num_steps = 5000
  config.train.sample_every = 1000
  config.train.checkpoint_every = 1000
  config.optim.name = "adamw"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"
  config.optim.weight_decay = 0.01
  config.optim.grad_clip_norm = 200.0
  config.optim.skip_grad_norm = 3000.0
  config.eval.batch_size = 120
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_hvae
