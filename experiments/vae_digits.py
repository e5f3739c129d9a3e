"""VAE on scikit-learn's 8x8 digits (offline): MLP, 16-d latent, Bernoulli decoder, a minute on a CPU.

Run:
  python run.py --experiment=vae_digits --workdir=runs/vae_digits
  python run.py --experiment=vae_digits --workdir=runs/vae_digits --mode=eval
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "digits"
  config.data.batch_size = 128

  config.model = ml_collections.ConfigDict(
    dict(hidden=(256, 256), latent_dim=16, iwae_samples=5000, iwae_chunk=500)
  )

  config.train.num_steps = 5000
  config.train.sample_every = 1000
  config.train.checkpoint_every = 1000
  config.train.ema_decay = 0.999
  config.optim.learning_rate = 1e-3
  config.optim.grad_clip_norm = 0.0
  config.eval.batch_size = 120
  return config


def build(config, example_shape) -> models.VAEModel:
  return models.make_mlp_vae(config.model, example_shape)
