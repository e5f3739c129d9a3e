"""DDPM on 2-D toy data (eight Gaussians, two moons, swiss roll) with an MLP: seconds on a CPU.

Run:
  python run.py --experiment=ddpm_toy2d --workdir=runs/toy2d
  python run.py --experiment=ddpm_toy2d --config.data.name=two_moons
  python run.py --experiment=ddpm_toy2d --workdir=runs/toy2d --mode=sample --num_samples=2000
"""

import ml_collections

from gen_jax import configs, models


def get_config() -> ml_collections.ConfigDict:
  config = configs.base_config()
  config.data.source = "toy2d"
  config.data.name = "eight_gaussians"  # | two_moons | swiss_roll
  config.data.batch_size = 256

  config.model = ml_collections.ConfigDict(dict(width=256, num_blocks=3))
  config.diffusion = models.diffusion_config(num_timesteps=1000, clip=False)

  config.train.num_steps = 4000
  config.train.log_every = 100
  config.train.sample_every = 2000
  config.train.checkpoint_every = 2000
  config.sample.num_samples = 1000  # points in the scatter plot
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"
  config.sample.sampler = "ddpm"
  config.sample.batch_size = 2000
  config.eval.batch_size = 1000
  return config


# The model: a gen_jax.models builder; training records its name for gen_jax.train.load_trained.
build = models.make_mlp_diffusion
