"""Flow matching (rectified flow) on the 8x8 digits with ddpm_digits' U-Net, budget and evaluation.

Run:
  python run.py --experiment=fm_digits --workdir=runs/fm_digits
  python run.py --experiment=fm_digits --workdir=runs/fm_digits --mode=sample --num_samples=1000
  python run.py --experiment=fm_digits --workdir=runs/fm_digits --mode=eval

x_t = (1 - t) x0 + t eps, t ~ U[0, 1] (the network sees 1000 t); the U-Net predicts the velocity
eps - x0 with the plain flow-matching loss ||v - v_hat||^2 (Lipman et al. 2023, Liu et al. 2023),
and samples by 50 Euler steps of the ODE from t = 1 to 0. Network, data, optimizer and steps are
ddpm_digits' (a step costs the same), so the two compare at equal budgets; --mode=eval gives the
continuous ELBO and the ODE likelihood in bits/dim on the 8-bit test digits beside DDPM's.
Variants: --config.diffusion.time_distribution=logit_normal (SD3), --config.sample.sampler=heun.
"""

import ml_collections

from experiments import ddpm_digits
from gen_jax import models


def get_config() -> ml_collections.ConfigDict:
  config = ddpm_digits.get_config()
  config.diffusion = models.process_config(
    "rectified_flow", prediction="velocity", weighting="velocity_mse"
  )
  config.sample.sampler = "euler"
  config.sample.num_steps = 50
  return config


# The library's builder: a continuous config.diffusion.process makes a ProcessDiffusionModel.
build = models.make_unet_diffusion
