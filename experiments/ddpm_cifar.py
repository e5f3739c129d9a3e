"""DDPM on CIFAR-10 exactly as in Ho et al. (2020): 35.7M-parameter U-Net, 800k steps (TFDS cifar10).

Run (needs TFDS's cifar10; see the README for preparing it):
  python run.py --experiment=ddpm_cifar --workdir=runs/cifar
  python run.py --experiment=ddpm_cifar --workdir=runs/cifar --mode=sample --num_samples=64
  python run.py --experiment=ddpm_cifar --workdir=runs/cifar --mode=eval --inception_weights=pt_inception-2015-12-05.npz

The paper's setup: U-Net ch=128, ch_mult=(1, 2, 2, 2), 2 residual blocks per
resolution, self-attention at 16x16, dropout 0.1, GroupNorm(32), swish,
sinusoidal time embedding; T=1000 linear betas 1e-4..0.02; L_simple; Adam
lr 2e-4 with 5000 warm-up steps, batch 128, gradient clipping at norm 1,
EMA 0.9999, random horizontal flips, 800k steps.
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "tfds"
  config.data.name = "cifar10"
  config.data.batch_size = 128
  config.data.random_flip = True

  config.model = configs.unet_config(
    ch=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    dropout=0.1,
    num_groups=32,
  )
  config.diffusion = models.diffusion_config(
    num_timesteps=1000, beta_start=1e-4, beta_end=0.02, variance="small"
  )

  config.train.num_steps = 800_000
  config.train.log_every = 100
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 10_000
  config.train.ema_decay = 0.9999
  config.train.ema_warmup = False  # The paper's plain EMA.
  config.optim.name = "adam"
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.schedule = "constant"
  config.optim.grad_clip_norm = 1.0

  config.sample.sampler = "ddpm"
  config.sample.batch_size = 256
  config.eval.batch_size = 256
  # The paper's FID: 50k samples against the 50k training images (Inception
  # features, --inception_weights); 1000-step DDPM makes that hours on one GPU.
  config.eval.num_samples = 50_000
  config.eval.classifier_steps = 10_000
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_unet_diffusion
