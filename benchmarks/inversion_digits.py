"""DDIM inversion round trip (data -> x_T -> data) on a trained ddpm_digits model.

  python run.py --workdir=runs/digits                           # train (the default experiment)
  python benchmarks/inversion_digits.py --workdir=runs/digits [--steps=50,200]

For each step count, maps the test digits to x_T with `diffusion.ddim_invert`
(deterministic DDIM run backwards, the run's EMA parameters) and back with
`diffusion.ddim_sample(eta=0, x_init=x_T)` on the same grid, and prints the
RMS and max round-trip error in [-1, 1] pixel units (a pixel's 8-bit bin is
2/255 = 0.0078 wide), and the std of x_T (N(0, I) would be 1). Not part of
the test suite.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import ddpm_digits
from gen_jax import diffusion
from gen_jax.train.eval_checkpoint import read_images
from gen_jax.train.run_setup import open_run
from gen_jax.train.workdir import with_saved_config


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a trained ddpm_digits workdir")
  parser.add_argument("--steps", default="50,200")
  args = parser.parse_args()

  config = with_saved_config(ddpm_digits.get_config(), args.workdir)
  run = open_run(config, args.workdir, ddpm_digits.build, mode="eval")
  state = run.restore()
  model = run.model
  images = jnp.asarray(read_images(run.dataset))
  model_fn = model.model_fn(state.ema_params)
  schedule = model.schedule
  print(
    f"checkpoint step {int(state.step)}, {len(images)} test digits, {model.prediction}-prediction"
  )
  print("| DDIM steps | RMS error | max error | std of x_T |")
  print("|---:|---:|---:|---:|")
  for steps in (int(s) for s in args.steps.split(",")):
    grid = diffusion.spaced_timesteps(schedule.num_timesteps, steps)

    @jax.jit
    def round_trip(x0, grid=grid):
      x_top = diffusion.ddim_invert(
        model_fn, schedule, x0, timesteps=grid, prediction=model.prediction
      )
      back = diffusion.ddim_sample(
        jax.random.key(0),
        model_fn,
        schedule,
        timesteps=grid,
        eta=0.0,
        prediction=model.prediction,
        x_init=x_top,
      )
      return x_top, back

    with jax.default_matmul_precision("highest"):
      x_top, back = jax.device_get(round_trip(images))
    error = np.asarray(back) - np.asarray(images)
    print(
      f"| {steps} | {np.sqrt(np.mean(error**2)):.4f} | {np.abs(error).max():.4f} | "
      f"{np.std(x_top):.3f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
