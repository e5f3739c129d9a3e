"""Flow matching (rectified flow) on CIFAR-10 with ddpm_cifar's 35.7M-parameter U-Net (TFDS cifar10).

Run (needs TFDS's cifar10 and an accelerator; see the README for preparing it):
  python run.py --experiment=fm_cifar --workdir=runs/fm_cifar
  python run.py --experiment=fm_cifar --workdir=runs/fm_cifar --mode=sample --num_samples=64
  python run.py --experiment=fm_cifar --workdir=runs/fm_cifar --mode=eval --inception_weights=pt_inception-2015-12-05.npz

ddpm_cifar's network, data, optimizer and schedule of steps with the flow-matching objective
instead of L_simple: x_t = (1 - t) x0 + t eps, t ~ U[0, 1] (seen as 1000 t), the velocity
eps - x0 predicted and regressed, 100 Euler steps from t = 1 to 0 for samples.
"""

import ml_collections

from experiments import ddpm_cifar
from gen_jax import models


def get_config() -> ml_collections.ConfigDict:
  config = ddpm_cifar.get_config()
  config.diffusion = models.process_config(
    "rectified_flow", prediction="velocity", weighting="velocity_mse"
  )
  config.sample.sampler = "euler"
  config.sample.num_steps = 100
  return config


# The library's builder: a continuous config.diffusion.process makes a ProcessDiffusionModel.
build = models.make_unet_diffusion
