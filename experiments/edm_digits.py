"""EDM (Karras et al. 2022) on the 8x8 digits with ddpm_digits' U-Net, budget and evaluation.

Run:
  python run.py --experiment=edm_digits --workdir=runs/edm_digits
  python run.py --experiment=edm_digits --workdir=runs/edm_digits --mode=sample --num_samples=1000
  python run.py --experiment=edm_digits --workdir=runs/edm_digits --mode=eval

EDM's recipe on the variance-exploding process x = x0 + sigma eps, sigma in [0.002, 80]: the
U-Net inside EDM's preconditioning D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)
(sigma_data 0.5; F sees 250 c_noise = 62.5 ln sigma), trained on ||D - x0||^2 with EDM's weight
(sigma^2 + sigma_data^2) / (sigma sigma_data)^2 at ln sigma ~ N(-1.2, 1.2^2), sampled by EDM's
Heun sampler on its rho = 7 grid (18 steps, 35 network calls). Network, data, optimizer and steps
are ddpm_digits' (a step costs the same). Variants: --config.sample.num_steps=N,
--config.sample.sampler=euler (or dpm++2m, ddim).
"""

import ml_collections

from experiments import ddpm_digits
from gen_jax import models


def get_config() -> ml_collections.ConfigDict:
  config = ddpm_digits.get_config()
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
