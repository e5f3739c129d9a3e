"""EDM (Karras et al. 2022) on CIFAR-10 with ddpm_cifar's 35.7M-parameter U-Net (TFDS cifar10).

Run (needs TFDS's cifar10 and an accelerator; see the README for preparing it):
  python run.py --experiment=edm_cifar --workdir=runs/edm_cifar
  python run.py --experiment=edm_cifar --workdir=runs/edm_cifar --mode=sample --num_samples=64
  python run.py --experiment=edm_cifar --workdir=runs/edm_cifar --mode=eval --inception_weights=pt_inception-2015-12-05.npz

ddpm_cifar's network, data, optimizer and schedule of steps with EDM's objective: the VE process
sigma in [0.002, 80], the U-Net inside EDM's preconditioning (sigma_data 0.5, the network sees
250 c_noise = 62.5 ln sigma), EDM's loss weight at ln sigma ~ N(-1.2, 1.2^2), Heun's sampler on
the rho = 7 grid with 18 steps (35 network calls). EDM's own CIFAR network (DDPM++, 56M) and
augmentation differ; this U-Net is the one the rest of gen_jax's CIFAR column uses.
"""

import ml_collections

from experiments import ddpm_cifar
from gen_jax import models


def get_config() -> ml_collections.ConfigDict:
  config = ddpm_cifar.get_config()
  config.diffusion = models.process_config(
    "edm",
    prediction="x0",
    weighting="edm",
    preconditioning="edm",
    sigma_data=0.5,
    time_distribution="log_normal",
    time_params=ml_collections.ConfigDict(dict(mean=-1.2, std=1.2)),
  )
  config.sample.sampler = "heun"
  config.sample.num_steps = 18
  return config


# The library's builder: a continuous config.diffusion.process makes a ProcessDiffusionModel.
build = models.make_unet_diffusion
