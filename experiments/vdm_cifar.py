"""VDM on CIFAR-10 (Kingma et al. 2021): the continuous-time bound, learned log-SNR schedule (TFDS cifar10).

Run (needs TFDS's cifar10 and an accelerator; see the README for preparing it):
  python run.py --experiment=vdm_cifar --workdir=runs/vdm_cifar
  python run.py --experiment=vdm_cifar --workdir=runs/vdm_cifar --mode=eval

The paper's objective and schedule (gamma in [-13.3, 5], learned endpoints, interior trained on
the estimate's variance, antithetic times, AdamW lr 2e-4 with b2 = 0.99 and weight decay 0.01,
batch 128, EMA 0.9999, its 2.65 bits/dim after 10M steps) on the DDPM U-Net of ddpm_cifar
(35.7M parameters). The paper's own network differs: 32 residual blocks at full 32x32
resolution without downsampling, 128 channels, Fourier features of the input; this U-Net is the
one the rest of gen_jax's CIFAR column uses, so the bound is the one thing that changes.
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "tfds"
  config.data.name = "cifar10"
  config.data.batch_size = 128
  config.data.random_flip = False  # vdm's likelihood runs: no augmentation

  config.model = configs.unet_config(
    ch=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    dropout=0.1,
    num_groups=32,
    num_classes=None,  # the VDM's U-Net takes no labels
  )
  config.vdm = models.vdm_config(schedule="learned", interior="variance")

  config.train.num_steps = 10_000_000
  config.train.log_every = 1000
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 10_000
  config.train.ema_decay = 0.9999
  config.train.ema_warmup = False
  config.optim.name = "adamw"
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 100
  config.optim.schedule = "constant"
  config.optim.b2 = 0.99
  config.optim.weight_decay = 0.01
  config.optim.grad_clip_norm = 0.0  # vdm clips no gradients

  config.sample.sampler = "ddpm"
  config.sample.num_steps = 1000
  config.sample.batch_size = 256
  config.eval.batch_size = 128
  config.eval.num_samples = 50_000
  config.eval.classifier_steps = 10_000
  config.eval.ode_steps = 0
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_unet_vdm
