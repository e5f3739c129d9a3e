"""DDPM on MNIST 28x28 (TFDS mnist): a mid-sized U-Net, hours on a GPU.

Run (needs TFDS's mnist):
  python run.py --experiment=ddpm_mnist --workdir=runs/mnist
  python run.py --experiment=ddpm_mnist --workdir=runs/mnist --mode=sample --sampler=ddim --sampling_steps=50
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "tfds"
  config.data.name = "mnist"
  config.data.batch_size = 128

  # 28 -> 14 -> 7: attention at 7x7.
  config.model = configs.unet_config(
    ch=64,
    ch_mult=(1, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(7,),
    dropout=0.1,
    num_groups=32,
  )
  config.diffusion = models.diffusion_config(num_timesteps=1000)

  config.train.num_steps = 100_000
  config.train.sample_every = 5000
  config.train.checkpoint_every = 5000
  config.train.ema_decay = 0.9999
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 1000
  config.sample.sampler = "ddim"
  config.sample.num_steps = 100
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_unet_diffusion
