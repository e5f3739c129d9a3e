"""What the fault-injection tests share: a tiny ddpm_toy2d config, a tiny train state, and reading a
workdir's checkpoints and metrics as a test sees them."""

import contextlib
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import ddpm_toy2d
from gen_jax import train
from gen_jax.train import checkpoint
from tests.support import runs

TIMEOUT = 120  # seconds, for any one subprocess


@contextlib.contextmanager
def launched(env, cwd, *args, stdout="out.txt", stderr="err.txt"):
  """run.py in the background, output to files in cwd (so no pipe fills up); killed if still
  running at the end."""
  with (
    open(os.path.join(cwd, stdout), "w") as out,
    open(os.path.join(cwd, stderr), "w") as err,
  ):
    proc = subprocess.Popen(
      [sys.executable, runs.RUN_PY, *args], cwd=cwd, env=env, stdout=out, stderr=err
    )
    try:
      yield proc
    finally:
      if proc.poll() is None:
        proc.kill()
      proc.wait(timeout=TIMEOUT)


def saved_steps(workdir):
  directory = checkpoint.checkpoint_dir(str(workdir))
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit())


def unfinished_saves(workdir):
  directory = checkpoint.checkpoint_dir(str(workdir))
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return [n for n in names if checkpoint.TMP_SUFFIX in n]


def logged(workdir):
  """The metrics.jsonl records (a last line cut short by a kill is skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          pass
  return records


def small_state(k):
  params = {
    "w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * k,
    "b": jnp.full((3,), -k, jnp.float32),
  }
  return train.TrainState(
    step=jnp.asarray(k, jnp.int32),
    params=params,
    opt_state=optax.adam(1e-3).init(params),
    ema_params=jax.tree.map(lambda x: x + 0.5, params),
  )


def deliver(signum):
  os.kill(os.getpid(), signum)
  time.sleep(0.05)  # Python runs the handler in the main thread at its next instruction


def toy_state_bytes():
  """The bytes of toy_config()'s train state, counted leaf by leaf."""
  config = toy_config()
  model, tx = ddpm_toy2d.build(config, (2,)), train.make_optimizer(config.optim, 6)
  shapes = jax.eval_shape(lambda k: train.init_state(model, tx, k), jax.random.key(0))
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def toy_config(num_steps=6):
  return runs.config(
    "ddpm_toy2d",
    runs.TOY2D,
    {"train.num_steps": num_steps, "train.checkpoint_every": 1000, "train.sample_every": 1000},
    {"sample.sampler": "ddim", "sample.num_steps": 2},
  )
