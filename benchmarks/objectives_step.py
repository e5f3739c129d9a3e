"""One training step of every diffusion objective on the same U-Net, timed side by side.

  python benchmarks/objectives_step.py [--rounds=3] [--steps=30] [--experiments=ddpm_digits,...]

ddpm_digits (DDPM, L_simple), edm_digits (EDM: VE, preconditioning, log-normal sigma, EDM
weighting), fm_digits (rectified flow, velocity MSE) and vdm_digits (VDM's continuous ELBO with its
learned schedule) share the U-Net of ddpm_digits and its batch of 64: the objective is the only
difference. Each experiment's jitted step (the trainer's own: gen_jax.train.step) is compiled
first, then timed over --steps steps, in --rounds interleaved rounds (after one uncounted round) so that a change in the
machine's load touches every objective alike. Prints steps/s per round and the median ratio to
DDPM's. Not part of the test suite.
"""

import argparse
import importlib
import os
import statistics
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gen_jax.train import rng, sharding
from gen_jax.train import step as step_lib

DEFAULT = "ddpm_digits,edm_digits,fm_digits,vdm_digits"


def compiled_step(name: str):
  """(jitted step, state, batch, key) for experiment `name` at its shipped config."""
  module = importlib.import_module(f"experiments.{name}")
  config = module.get_config()
  example_shape = (8, 8, 1)
  model = module.build(config, example_shape)
  tx, train_step = step_lib.train_step_for(config, model)
  mesh = sharding.make_mesh()
  state = jax.jit(lambda key: step_lib.init_state(model, tx, key))(rng.stream(0, "init"))
  train_step = step_lib.jit_train_step(train_step, mesh)
  batch_size = config.data.batch_size
  x = np.random.default_rng(0).integers(0, 256, (batch_size, *example_shape)) / 127.5 - 1.0
  batch = {"x": np.asarray(x, np.float32)}
  key = rng.stream(0, "train")
  state, _ = train_step(state, batch, key)  # compile
  jax.block_until_ready(state)
  return train_step, state, batch, key


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiments", default=DEFAULT)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=30)
  args = parser.parse_args()
  names = args.experiments.split(",")
  steps = {name: compiled_step(name) for name in names}
  rates = {name: [] for name in names}
  for round_ in range(args.rounds + 1):  # round 0 warms up (allocations, caches) and is not counted
    for name in names:
      train_step, state, batch, key = steps[name]
      start = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = train_step(state, batch, key)
      jax.block_until_ready(metrics)
      if round_:
        rates[name].append(args.steps / (time.perf_counter() - start))
      steps[name] = (train_step, state, batch, key)
  base = names[0]
  print(f"| experiment | steps/s per round | median ratio to {base} |")
  print("|---|---|---|")
  for name in names:
    ratio = statistics.median(r / b for r, b in zip(rates[name], rates[base]))
    shown = ", ".join(f"{r:.1f}" for r in rates[name])
    print(f"| `{name}` | {shown} | {ratio:.2f} |")


if __name__ == "__main__":
  main()
