"""Data parallelism: 8 simulated CPU devices give what 1 device gives.

Each run is a subprocess of run.py with XLA_FLAGS=--xla_force_host_platform_device_count=N,
so the rest of the suite keeps its single device.
"""

import functools
import importlib
import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from experiments import ddpm_toy2d
from gen_jax import train
from gen_jax.configs import ConfigError
from gen_jax.train import checkpoint, run_setup, sharding
from tests.support import runs as support  # `runs` is a fixture here

# Wider than support.TOY2D and a batch that 8 devices share, so the comparisons see a real model.
TOY2D_MODEL = {"model.width": 32, "model.num_blocks": 2, "diffusion.num_timesteps": 20}
TOY2D = support.flags(
  "ddpm_toy2d",
  TOY2D_MODEL,
  {"data.batch_size": 16, "sample.num_samples": 8, "train.sample_every": 1000},
  {"train.checkpoint_every": 3, "train.log_every": 1, "optim.learning_rate": 1e-2},
)

env = support.env_fixture(fast_compile=False, cache=False)


def run(env, cwd, devices, *args):
  return support.run_py(env, cwd, *args, devices=devices, check=False)


def ok(result):
  assert result.returncode == 0, result.stdout + result.stderr
  return result


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return np.array([json.loads(line)["loss"] for line in f])


def restored_params(workdir):
  """Restores a checkpoint written on any number of devices onto this process' one device."""
  from experiments import ddpm_toy2d

  config = support.config("ddpm_toy2d", TOY2D_MODEL)
  model = ddpm_toy2d.build(config, (2,))
  tx = train.make_optimizer(config.optim, 6)
  abstract = jax.eval_shape(lambda k: train.init_state(model, tx, k), jax.random.key(0))
  replicated = sharding.replicated(sharding.make_mesh())
  abstract = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract
  )
  mngr = checkpoint.manager(workdir, create=False)
  state = checkpoint.restore(mngr, abstract)
  mngr.close()
  return state


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
  """Six steps on 1 and on 8 devices. (Restoring across device counts, 1 -> 4 and 4 -> 1 devices
  in 1 and 2 processes, is tests/runtime/test_distributed.py's.)"""
  root = tmp_path_factory.mktemp("sharding")
  out = {}
  for name, devices in (("one", 1), ("eight", 8)):
    workdir = str(root / name)
    result = ok(
      run(env, root, devices, *TOY2D, f"--workdir={workdir}", "--config.train.num_steps=6")
    )
    out[name], out[f"{name}_stdout"] = workdir, result.stdout
  out["root"] = root
  return out


@pytest.mark.slow
def test_eight_devices_match_one_device(runs):
  np.testing.assert_allclose(losses(runs["eight"]), losses(runs["one"]), rtol=1e-5)
  one = restored_params(runs["one"])
  assert int(one.step) == 6
  assert_trees_close(restored_params(runs["eight"]).params, one.params)
  assert_trees_close(restored_params(runs["eight"]).ema_params, one.ema_params)


@pytest.mark.slow
def test_log_reports_devices(runs):
  """The 8-device training of the fixture said so (its log; no second run needed)."""
  assert "8 devices" in runs["eight_stdout"]


@pytest.mark.slow
def test_sampling_is_independent_of_device_count(runs, env, tmp_path):
  samples = {}
  for devices in (1, 8):  # Each run rewrites the workdir's samples.npz.
    ok(
      run(
        env,
        tmp_path,
        devices,
        *TOY2D,
        f"--workdir={runs['one']}",
        "--mode=sample",
        "--num_samples=24",
      )
    )
    with np.load(os.path.join(runs["one"], "samples.npz")) as f:
      samples[devices] = f["points"]
  assert samples[1].shape == (24, 2)
  np.testing.assert_allclose(samples[8], samples[1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_eval_is_independent_of_device_count(env, tmp_path):
  """--mode=eval on 8 devices (bound, sampling, classifier training, features) gives what 1 device gives."""
  digits = support.flags(
    "ddpm_digits",
    support.UNET,
    {"diffusion.num_timesteps": 10, "data.batch_size": 8, "sample.num_samples": 8},
    {"sample.num_steps": 2, "eval.batch_size": 16, "eval.num_examples": 32},
    {"eval.num_samples": 24, "eval.classifier_steps": 10},
  )
  fast = dict(env, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  ok(run(fast, tmp_path, 1, *digits, f"--workdir={tmp_path / 'wd'}", "--config.train.num_steps=1"))
  results = {}
  for devices in (1, 8):  # Each run trains its own evaluation classifier.
    workdir = tmp_path / f"wd{devices}"
    subprocess.run(["cp", "-r", str(tmp_path / "wd"), str(workdir)], check=True)
    ok(run(fast, tmp_path, devices, *digits, f"--workdir={workdir}", "--mode=eval"))
    with open(workdir / "eval.json") as f:
      results[devices] = json.load(f)
  for section in ("likelihood", "sample_quality"):
    numbers = {k: v for k, v in results[1][section].items() if isinstance(v, float)}
    assert len(numbers) >= 2, numbers
    for key, value in numbers.items():
      np.testing.assert_allclose(results[8][section][key], value, rtol=1e-4, err_msg=key)


@pytest.mark.slow
def test_batch_not_divisible_by_devices_fails_clearly(env, tmp_path):
  result = run(
    env,
    tmp_path,
    8,
    *TOY2D,
    "--config.data.batch_size=12",
    f"--workdir={tmp_path / 'wd'}",
    "--config.train.num_steps=2",
  )
  assert result.returncode != 0
  assert "--config.data.batch_size=12" in result.stderr and "(8)" in result.stderr
  assert not (tmp_path / "wd").exists()


def test_check_batch_size_names_the_flag():
  mesh = sharding.make_mesh()
  sharding.check_batch_size(jax.device_count() * 3, mesh)
  with pytest.raises(ValueError, match="eval.batch_size"):
    sharding.check_batch_size(0, mesh, "eval.batch_size")


# ----------------------------------------------------------------------------------------------------------------
# FSDP: the train state sharded over the mesh's 'fsdp' axis

# Wide enough that the hidden layers' (128, 128) kernels and their Adam moments are sharded.
FSDP_MODEL = {"model.width": 128, "model.num_blocks": 2, "diffusion.num_timesteps": 20}
FSDP_RUN = support.flags(
  "ddpm_toy2d",
  FSDP_MODEL,
  {"data.batch_size": 16, "sample.num_samples": 8, "train.sample_every": 1000},
  {"train.checkpoint_every": 2, "train.log_every": 1, "optim.learning_rate": 1e-2},
  {"train.num_steps": 4},
)


@pytest.mark.slow
def test_fsdp_resumes_data_parallel_checkpoint_with_the_same_losses(env, tmp_path):
  """8 devices: data 8 x fsdp 1, then its step-2 checkpoint resumed as data 2 x fsdp 4, against
  data 8 x fsdp 1 throughout (same losses and parameters); both restored here on one device."""
  fast = dict(env, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  dp, switched = str(tmp_path / "dp"), str(tmp_path / "dp_then_fsdp")
  ok(run(fast, tmp_path, 8, *FSDP_RUN, f"--workdir={dp}"))
  shutil.copytree(dp, switched)
  shutil.rmtree(os.path.join(switched, "checkpoints", "4"))
  resumed = ok(run(fast, tmp_path, 8, *FSDP_RUN, f"--workdir={switched}", "--config.mesh.fsdp=4"))
  assert "train state sharded 4 ways (FSDP)" in resumed.stdout and "from step 2" in resumed.stdout
  np.testing.assert_allclose(losses(switched), losses(dp), rtol=1e-5)

  def restore_here(workdir):  # onto this process' one device, whatever layout wrote it
    config = support.config("ddpm_toy2d", FSDP_MODEL)
    run_ = run_setup.open_run(config, workdir, ddpm_toy2d.build, mode="sample")
    try:
      return run_.restore()
    finally:
      run_.checkpoints.close()

  reference = restore_here(dp)
  assert int(reference.step) == 4
  state = restore_here(switched)  # written by the fsdp = 4 layout
  assert_trees_close(state.params, reference.params)
  assert_trees_close(state.opt_state, reference.opt_state)
  assert_trees_close(state.ema_params, reference.ema_params)


def test_fsdp_spec_shards_the_largest_divisible_axis_and_replicates_small_arrays():
  P = jax.sharding.PartitionSpec
  assert sharding.fsdp_spec((128, 128), 4) == P("fsdp")  # a tie: the first axis
  assert sharding.fsdp_spec((3, 3, 128, 256), 8) == P(None, None, None, "fsdp")
  assert sharding.fsdp_spec((256, 96), 64) == P("fsdp")  # 64 divides 256, not 96
  assert sharding.fsdp_spec((96, 256), 64) == P(None, "fsdp")
  assert sharding.fsdp_spec((128, 128), 1) == P()
  assert sharding.fsdp_spec((256,), 4) == P()  # below MIN_SHARDED_SIZE: replicated
  assert sharding.fsdp_spec((), 4) == P()
  assert sharding.fsdp_spec((129, 127), 4) == P()  # no axis divides
  assert sharding.fsdp_spec((256,), 4, min_size=1) == P("fsdp")


def test_mesh_fsdp_must_divide_the_devices():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("data", "fsdp") and mesh.shape["fsdp"] == 1
  for bad in (0, jax.device_count() + 1, 1.5):
    with pytest.raises(ConfigError, match=r"config\.mesh\.fsdp=.* must be a positive divisor"):
      sharding.make_mesh(bad)


@pytest.mark.slow  # builds and traces a U-Net: 0.7 s
def test_the_mesh_step_traces_a_unet_with_dropout():
  """ddpm_cifar's U-Net has dropout 0.1. On a mesh of Explicit axes (jax.make_mesh's default), Flax's
  unsharded dropout mask beside the batch-sharded activations failed to trace, so run.py could not train it."""
  config = support.config("ddpm_cifar", support.UNET, {"model.dropout": 0.1})
  model = importlib.import_module("experiments.ddpm_cifar").build(config, (8, 8, 3))
  tx, step = train.train_step_for(config, model)
  mesh = sharding.make_mesh()
  state = jax.eval_shape(functools.partial(train.init_state, model, tx), jax.random.key(0))
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), np.float32, sharding=sharding.data_sharded(mesh))
  _, metrics = jax.eval_shape(train.jit_train_step(step, mesh), state, {"x": x}, jax.random.key(1))
  assert metrics["loss"].shape == ()  # traced: no compilation needed to see the failure
