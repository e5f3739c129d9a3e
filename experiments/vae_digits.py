"""VAE on scikit-learn's 8x8 digits (offline): MLP, 16-d latent, discretized logistic-mixture decoder on 8-bit data.

The likelihood is that of the 8-bit digits themselves, in bits/dim, comparable with ddpm_digits' bound:
--mode=eval reports the IWAE bound with K = 5000 on the 360 test digits. The binarized variant of the
original VAE papers: --config.model.likelihood=bernoulli (dynamic binarization; nats per image).

Run:
  python run.py --experiment=vae_digits --workdir=runs/vae_digits
  python run.py --experiment=vae_digits --workdir=runs/vae_digits --mode=eval
  python run.py --experiment=vae_digits --workdir=runs/vae_digits_gauss --config.model.likelihood=discretized_gaussian
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "digits"
  config.data.batch_size = 128

  config.model = ml_collections.ConfigDict(
    dict(
      hidden=(256, 256),
      latent_dim=16,
      likelihood="logistic_mixture",  # | discretized_gaussian (8-bit) | bernoulli (binarized)
      num_mixtures=5,  # K logistics per pixel (logistic_mixture)
      binarize=True,  # bernoulli: a fresh Bernoulli draw of each image per batch
      iwae_samples=5000,
      iwae_chunk=500,
    )
  )

  config.train.num_steps = 5000
  config.train.sample_every = 1000
  config.train.checkpoint_every = 1000
  config.train.ema_decay = 0.999
  config.optim.learning_rate = 1e-3
  config.optim.grad_clip_norm = 0.0
  config.eval.batch_size = 120
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_mlp_vae
