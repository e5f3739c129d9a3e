"""Flow matching (rectified flow) on 2-D toy data with ddpm_toy2d's MLP: seconds on a CPU.

Run:
  python run.py --experiment=fm_toy2d --workdir=runs/fm_toy2d
  python run.py --experiment=fm_toy2d --config.data.name=two_moons
  python run.py --experiment=fm_toy2d --workdir=runs/fm_toy2d --mode=sample --num_samples=2000

The linear interpolant x_t = (1 - t) x0 + t eps (Lipman et al. 2023, Liu et al. 2023), the
network predicting the velocity eps - x0 at t ~ U[0, 1] (seen as 1000 t), sampled by Euler
steps from t = 1 to 0. Everything else is ddpm_toy2d's (network, data, optimizer, steps).
Variants: --config.diffusion.time_distribution=logit_normal (SD3's t), --config.sample.sampler=heun.
"""

import ml_collections

from experiments import ddpm_toy2d
from gen_jax import models


def get_config() -> ml_collections.ConfigDict:
  config = ddpm_toy2d.get_config()
  config.diffusion = models.process_config(
    "rectified_flow", prediction="velocity", weighting="velocity_mse", clip=False
  )
  config.sample.sampler = "euler"
  config.sample.num_steps = 100
  return config


# The library's builder: a continuous config.diffusion.process makes a ProcessDiffusionModel.
build = models.make_mlp_diffusion
