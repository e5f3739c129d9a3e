"""Sample quality against network calls for every sampler, on a trained ddpm_digits model.

  python run.py --workdir=runs/digits                       # train (the default experiment)
  python benchmarks/sampler_digits.py --workdir=runs/digits [--num_samples=500] [--calls=10,20,50,100]

For each sampler and budget of network calls (Heun: N = (calls + 1) // 2 sigmas,
2N - 1 calls), draws --num_samples samples from the run's EMA parameters and
measures the Fréchet distance to the test split in the feature space of the
run's evaluation classifier (the one `--mode=eval` trains and caches in the
workdir), plus the same distance for as many real train digits (what a perfect
model would score at that sample size). Ancestral DDPM with all T = 1000 steps
is the reference row. Wall time: one jitted call for all samples, compiled
beforehand (compile time in its own column). Prints a markdown table.
Not part of the test suite.
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import ddpm_digits
from gen_jax import data, evaluation
from gen_jax.train import classifier, sharding
from gen_jax.train.eval_checkpoint import read_images
from gen_jax.train.run_setup import open_run
from gen_jax.train.workdir import with_saved_config

SAMPLERS = ("respaced", "ddim", "dpm++2m", "heun")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a trained ddpm_digits workdir")
  parser.add_argument("--num_samples", type=int, default=500)
  parser.add_argument("--calls", default="10,20,50,100")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  calls = [int(c) for c in args.calls.split(",")]

  config = with_saved_config(ddpm_digits.get_config(), args.workdir)
  run = open_run(config, args.workdir, ddpm_digits.build, mode="eval")
  state = run.restore()
  train_dataset = data.load_dataset(config.data, "train")
  net, params, info = classifier.load_or_train_classifier(
    args.workdir,
    train_dataset,
    run.dataset,
    config.eval.classifier_steps,
    config.seed,
    run.mesh,
    config.eval.batch_size,
  )
  features = sharding.jit_for_mesh(classifier.classifier_outputs(net), run.mesh)
  stats = lambda images: evaluation.feature_statistics(
    sharding.map_batches(features, params, images, config.eval.batch_size, run.mesh)[
      "features"
    ].astype(np.float64)
  )
  test_stats = stats(read_images(run.dataset))
  real = read_images(train_dataset, args.num_samples)
  floor = float(evaluation.frechet_distance(*stats(real), *test_stats))
  print(
    f"checkpoint step {int(state.step)}, {args.num_samples} samples, classifier test accuracy "
    f"{100 * info['test_accuracy']:.1f}%; real train digits vs test: FD {floor:.2f}",
    flush=True,
  )

  rows = [("ddpm (ancestral, all T)", 1000, "ddpm", None)]
  for sampler in SAMPLERS:
    for c in calls:
      rows.append((sampler, c, sampler, (c + 1) // 2 if sampler == "heun" else c))
  key = jax.random.key(args.seed)
  print("| sampler | network calls | FD to test | wall time (s) | compile (s) |")
  print("|---|---:|---:|---:|---:|")
  for name, num_calls, sampler, steps in rows:
    draw = jax.jit(
      lambda p, k, s=sampler, n=steps: run.model.sample(
        p, k, args.num_samples, sampler=s, num_steps=n
      )
    )
    start = time.perf_counter()
    compiled = draw.lower(state.ema_params, key).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = np.asarray(jax.device_get(compiled(state.ema_params, key)))
    seconds = time.perf_counter() - start
    fd = float(evaluation.frechet_distance(*stats(evaluation.to_8bit_grid(samples)), *test_stats))
    print(f"| {name} | {num_calls} | {fd:.2f} | {seconds:.1f} | {compile_s:.1f} |", flush=True)


if __name__ == "__main__":
  main()
