"""DDPM on scikit-learn's 8x8 digits (offline, the default): a small U-Net, minutes on a CPU.

Run (the default experiment):
  python run.py
  python run.py --experiment=ddpm_digits --workdir=runs/digits
  python run.py --experiment=ddpm_digits --workdir=runs/digits --mode=sample --num_samples=1000
  python run.py --experiment=ddpm_digits --workdir=runs/digits --mode=eval
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "digits"
  config.data.batch_size = 64

  # Sized for the five-minute budget of a 2-core CPU: 8x8 -> 4x4 at 32
  # channels (0.28M parameters, 2.6 GFLOP per step at batch 64, about 15
  # steps/s); twice the channels cost 4x and look about the same at this budget.
  config.model = configs.unet_config(
    ch=32,
    ch_mult=(1, 1),
    num_res_blocks=1,
    attn_resolutions=(4,),
    dropout=0.0,
    num_groups=8,
  )
  config.diffusion = models.diffusion_config(num_timesteps=1000)

  config.train.num_steps = 2500
  config.train.log_every = 100
  config.train.sample_every = 1250
  config.train.checkpoint_every = 1250
  config.train.ema_decay = 0.999
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"

  # 100 deterministic DDIM steps: a grid in seconds, close to 1000-step DDPM.
  config.sample.sampler = "ddim"
  config.sample.num_steps = 100

  # --mode=eval: the bound over all 360 test digits (T=1000 network calls per
  # batch, about 2 minutes here), then 1000 samples against the test split.
  config.eval.batch_size = 120
  config.eval.num_samples = 1000
  config.eval.classifier_steps = 1000
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_unet_diffusion
