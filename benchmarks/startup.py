"""Start-up time: `python run.py` to the end of its first training step, with an empty and a warm compilation cache.

  python benchmarks/startup.py                                  # ddpm_digits and ddpm_cifar, 2 runs each
  python benchmarks/startup.py --experiments=ddpm_digits --min_compile_seconds=1.0

For each experiment, a fresh compilation cache folder and two `python run.py` processes of the same
configuration, each in a fresh workdir (as two launches without --workdir are): the first compiles every program
and writes the cache, the second loads them. A run's time is from starting the process to the first line of
its metrics.jsonl (`--config.train.log_every=1`: written once step 1 has run and its loss is on the host); the
process is then killed. Prints a table; the README's performance section has the measured one.

ddpm_cifar reads a CIFAR-shaped TFDS ArrayRecord data set written without TensorFlow
(benchmarks/input_pipeline.py; 1,000 random images are enough to start) through its usual tfds source; its
batch is --cifar_batch_size (default 8: on a CPU a batch-128 step alone takes half a minute, and start-up is
what is timed here; the compiled programs are the same but for the batch dimension).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from input_pipeline import cifar_shaped, write_tfds_images

RUN_PY = os.path.join(REPO, "run.py")
TIMEOUT = 900  # seconds, for one run


def time_to_first_step(args: list[str], workdir: str, env: dict) -> float:
  """Seconds from starting `python run.py *args --workdir=workdir` to its first metrics.jsonl line."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  start = time.perf_counter()
  process = subprocess.Popen(
    [sys.executable, RUN_PY, *args, f"--workdir={workdir}"],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    while time.perf_counter() - start < TIMEOUT:
      if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        return time.perf_counter() - start
      if process.poll() is not None:
        raise SystemExit(
          f"run.py {' '.join(args)} exited before its first step:\n{process.stderr.read()}"
        )
      time.sleep(0.02)
    raise SystemExit(f"run.py {' '.join(args)}: no first step within {TIMEOUT} s")
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)  # its own session: the process and anything it started
    process.wait()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiments", default="ddpm_digits,ddpm_cifar")
  parser.add_argument("--cifar_batch_size", type=int, default=8)
  parser.add_argument(
    "--min_compile_seconds",
    type=float,
    default=None,
    help="JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS for the runs (default: gen_jax's)",
  )
  args = parser.parse_args()

  scratch = tempfile.mkdtemp(prefix="gen_jax_startup-")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TFDS_"))}
  env.update(PYTHONUNBUFFERED="1")
  if args.min_compile_seconds is not None:
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(args.min_compile_seconds)
  common = ["--config.train.log_every=1", "--config.train.num_steps=100000"]
  experiments = {
    "ddpm_digits": [],
    "ddpm_cifar": [
      f"--config.data.tfds_data_dir={os.path.join(scratch, 'tfds')}",
      f"--config.data.batch_size={args.cifar_batch_size}",
    ],
  }
  try:
    rows = []
    for name in args.experiments.split(","):
      if name not in experiments:
        raise SystemExit(f"--experiments: {name!r} is not one of {', '.join(experiments)}")
      if name == "ddpm_cifar" and not os.path.isdir(os.path.join(scratch, "tfds")):
        write_tfds_images(os.path.join(scratch, "tfds"), "cifar10", cifar_shaped(1000, 200))
      cache = os.path.join(scratch, f"cache-{name}")
      flags = [
        f"--experiment={name}",
        f"--compilation_cache_dir={cache}",
        *common,
        *experiments[name],
      ]
      times = []
      for launch in ("first", "second"):
        workdir = os.path.join(scratch, f"{name}-{launch}")
        times.append(time_to_first_step(flags, workdir, env))
        print(f"{name}, {launch} run: {times[-1]:.1f} s to the first step", flush=True)
      entries = os.listdir(cache)
      size = sum(os.path.getsize(os.path.join(cache, f)) for f in entries)
      rows.append((name, *times, len(entries), size / 2**20))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  print(
    f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPU(s)"
  )
  print("| experiment | first run (empty cache) | second run (warm cache) | cache |")
  print("|---|---:|---:|---:|")
  for name, first, second, count, mib in rows:
    print(f"| `{name}` | {first:.1f} s | {second:.1f} s | {count} programs, {mib:.1f} MiB |")


if __name__ == "__main__":
  main()
