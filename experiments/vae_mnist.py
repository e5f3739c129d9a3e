"""VAE on dynamically binarized MNIST (Kingma & Welling; Burda et al.): MLP, 50-d latent, Bernoulli decoder.

Run (needs TFDS's mnist):
  python run.py --experiment=vae_mnist --workdir=runs/vae_mnist
  python run.py --experiment=vae_mnist --workdir=runs/vae_mnist --mode=eval   # test NLL (IWAE)
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "tfds"
  config.data.name = "mnist"
  config.data.batch_size = 100

  config.model = ml_collections.ConfigDict(
    dict(hidden=(500, 500), latent_dim=50, iwae_samples=5000, iwae_chunk=500)
  )

  config.train.num_steps = 300_000
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 10_000
  config.train.ema_decay = 0.999
  config.optim.learning_rate = 1e-3
  config.optim.grad_clip_norm = 0.0
  config.eval.batch_size = 100
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_mlp_vae
