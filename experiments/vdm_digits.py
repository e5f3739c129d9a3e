"""VDM on scikit-learn's 8x8 digits: the continuous-time variational bound, learned log-SNR schedule.

Run:
  python run.py --experiment=vdm_digits --workdir=runs/vdm_digits
  python run.py --experiment=vdm_digits --workdir=runs/vdm_digits --mode=sample --num_samples=1000
  python run.py --experiment=vdm_digits --workdir=runs/vdm_digits --mode=eval

The network, batch, steps and learning rate are ddpm_digits' (a step costs the same), so the
two bounds in bits/dim on the 8-bit test digits compare at equal budgets. What differs is the
objective (Kingma et al. 2021): the bound itself, L_inf + prior + reconstruction, with a learned
gamma(t) = -log SNR(t) whose endpoints are trained on the bound and whose interior on the
variance of its estimate. Variants: --config.vdm.schedule=linear|cosine (fixed, gamma in
[-13.3, 5]), --config.vdm.num_timesteps=1000 (the discrete T-step bound; with
--config.vdm.interior=bound for the learned schedule).
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "digits"
  config.data.batch_size = 64

  # ddpm_digits' U-Net (0.28M parameters, about 15 steps/s here).
  config.model = configs.unet_config(
    ch=32,
    ch_mult=(1, 1),
    num_res_blocks=1,
    attn_resolutions=(4,),
    dropout=0.0,
    num_groups=8,
    num_classes=None,  # the VDM's U-Net takes no labels
  )
  config.vdm = models.vdm_config(schedule="learned", interior="variance")

  config.train.num_steps = 2500
  config.train.log_every = 100
  config.train.sample_every = 1250
  config.train.checkpoint_every = 1250
  config.train.ema_decay = 0.999
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"

  # Ancestral sampling on the learned schedule, 200 steps for the grids and the evaluation.
  config.sample.sampler = "ddpm"
  config.sample.num_steps = 200

  # --mode=eval: the bound over all 360 test digits, 100 stratified times per example (100
  # network calls per batch), then 1000 samples against the test split.
  config.eval.batch_size = 120
  config.eval.num_samples = 1000
  config.eval.classifier_steps = 1000
  config.eval.ode_steps = 0  # the probability-flow likelihood is DDPM's
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_unet_vdm
