"""Multi-process training for real: 2 JAX processes x 2 CPU devices on localhost (gloo collectives).

The multi-process runs are run.py subprocesses started by tests/support/multiprocess.py (a fresh
coordinator port, a hard timeout); the one-process layouts run either in this process (1 device)
or in a subprocess with 4 simulated devices. All of them are slow tier; the pure helpers below
them are not.
"""

import json
import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from gen_jax import train
from gen_jax.configs import ConfigError
from gen_jax.data import dataset as dataset_lib
from gen_jax.runtime import distributed
from gen_jax.train import run_setup
from tests.support import multiprocess
from tests.support import runs as support

pytestmark = pytest.mark.usefixtures("fast_compile")
env = support.env_fixture()

# A toy2d model wide enough to compare, a batch that 4 devices share, big steps: a constant
# learning rate, since ddpm_toy2d's 100-step warm-up would give 0 to 3e-4 over these 4 steps,
# parameters that hardly move, and an agreement that proves little (issue 26); not its cosine
# decay either, which depends on train.num_steps (a run to step 2 then resumed to 4 differs).
TOY2D = {
  "model.width": 32,
  "model.num_blocks": 2,
  "diffusion.num_timesteps": 20,
  "data.batch_size": 8,
  "optim.learning_rate": 1e-3,
  "optim.warmup_steps": 0,
  "optim.schedule": "constant",
  "train.num_steps": 4,
  "train.log_every": 1,
  "train.checkpoint_every": 2,
  "train.sample_every": 1000,
  "sample.num_samples": 8,
  "sample.sampler": "ddim",
  "sample.num_steps": 5,
}
# float32 sums in another order (4 devices, 2 processes) over 4 Adam steps at lr 1e-3; a
# sharding bug would move parameters by about lr a step, 1000 times ATOL.
RTOL, ATOL = 1e-5, 1e-6


def toy2d_args(**overrides) -> list[str]:
  return support.flags("ddpm_toy2d", TOY2D, {f"train.{k}": v for k, v in overrides.items()})


def build(experiment):
  import importlib

  return importlib.import_module(f"experiments.{experiment}").build


def restored(experiment, overrides, workdir):
  """The newest checkpoint of `workdir`, restored in this process (one device)."""
  config = support.config(experiment, overrides)
  run = run_setup.open_run(config, str(workdir), build(experiment), mode="sample")
  try:
    return run.restore()
  finally:
    run.checkpoints.close()


def max_difference(a, b) -> float:
  """The largest |a - b| over the float leaves of two pytrees."""
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    if np.issubdtype(np.asarray(x).dtype, np.floating)
  )


def assert_trees_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def logged(workdir, name="loss"):
  """(steps, values of `name`) of workdir/metrics.jsonl; ([], []) before it exists. A line
  being written (no newline yet) is left out."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return [], np.array([])
  with open(path) as f:
    records = [json.loads(line) for line in f if line.endswith("\n")]
  return [r["step"] for r in records], np.array([r[name] for r in records])


def copy_without(source, target, *steps):
  """A copy of workdir `source` whose checkpoints lack `steps` (so a resume starts earlier)."""
  shutil.copytree(source, target)
  for step in steps:
    shutil.rmtree(os.path.join(target, "checkpoints", str(step)))


def read_count(output: str) -> int:
  line = next(line for line in output.splitlines() if " examples of " in line and "read" in line)
  return int(line.split(" read ")[1].split()[0])


# ----------------------------------------------------------------------------------------------------------------
# Layouts: 2 processes x 2 devices = 1 process x 4 devices = 1 process x 1 device


@pytest.mark.slow
def test_toy2d_two_processes_match_one_process_and_restore_across_layouts(env, tmp_path):
  """2x2 from scratch; 1x1 (here) then 2x2; 2x2 then 1x4: the same parameters at step 4.

  Also: the start-up line, per-process data reading, process-0-only writes, and
  --mode=sample in 2x2 against this process."""
  two = tmp_path / "two"
  results = multiprocess.launch(env, tmp_path, 2, 2, *toy2d_args(), f"--workdir={two}")
  for r in results:
    assert f"Distributed: process {r.index} of 2, 2 local / 4 global devices (cpu)" in r.stdout
    # Each process fetched its half of every batch: 4 examples a step, plus at most 3
    # prefetched batches; reading whole batches would be 8 a step.
    assert 4 * 4 <= read_count(r.stdout) <= 4 * (4 + 3), r.stdout
  assert "Training on 4 devices (cpu) in 2 processes" in results[0].stdout
  assert "Done: 4 steps" in results[0].stdout
  assert "Training on" not in results[1].stdout and "Done" not in results[1].stdout
  steps, two_losses = logged(two)
  assert steps == [1, 2, 3, 4]  # one record per step: only process 0 writes metrics
  assert (two / "samples" / "step_0000004.png").exists() and (two / "config.json").exists()
  assert sorted(os.listdir(two / "checkpoints")) == ["2", "4"]

  # 1 process x 1 device (this one) to step 2, then 2 processes resume it to step 4.
  one_then_two = tmp_path / "one_then_two"
  config = support.config("ddpm_toy2d", TOY2D, {"train.num_steps": 2})
  train.train(config, str(one_then_two), build("ddpm_toy2d"))
  at_step_2 = restored("ddpm_toy2d", TOY2D, one_then_two)
  resumed = multiprocess.launch(env, tmp_path, 2, 2, *toy2d_args(), f"--workdir={one_then_two}")
  assert f"Resuming {one_then_two} from step 2" in resumed[0].stdout

  # 2 processes' checkpoint at step 2, resumed by 1 process with 4 devices.
  two_then_four = tmp_path / "two_then_four"
  copy_without(two, two_then_four, 4)
  support.run_py(env, tmp_path, *toy2d_args(), f"--workdir={two_then_four}", devices=4)

  reference = restored("ddpm_toy2d", TOY2D, two)
  assert int(reference.step) == 4
  # Steps 3 and 4 move the parameters far beyond the tolerance: the comparison can fail.
  moved = max_difference(at_step_2.params, reference.params)
  print(f"max |params at step 4 - params at step 2| = {moved:.3g}")
  assert moved > 100 * ATOL, moved
  for other in (one_then_two, two_then_four):
    state = restored("ddpm_toy2d", TOY2D, other)
    print(f"{other.name}: max |params - 2x2 params| = {max_difference(state, reference):.3g}")
    assert_trees_close(state.params, reference.params)
    assert_trees_close(state.ema_params, reference.ema_params)
    assert_trees_close(state.opt_state, reference.opt_state)
    np.testing.assert_allclose(logged(other)[1], two_losses, rtol=RTOL)

  # --mode=sample: 2 processes, then this process, from the same checkpoint.
  sampled = multiprocess.launch(
    env, tmp_path, 2, 2, *toy2d_args(), f"--workdir={two}", "--mode=sample", "--num_samples=24"
  )
  assert "Wrote 24 samples" in sampled[0].stdout and "Wrote" not in sampled[1].stdout
  with np.load(two / "samples.npz") as f:
    two_samples = f["points"]
  here = tmp_path / "sampled_here"
  config = support.config("ddpm_toy2d", TOY2D)
  train.sample(config, str(two), build("ddpm_toy2d"), 24, out_dir=str(here))
  with np.load(here / "samples.npz") as f:
    np.testing.assert_allclose(two_samples, f["points"], rtol=1e-5, atol=1e-5)


# ddpm_digits: a 1-level U-Net, 2 steps, and --mode=eval's likelihood (the bound, L_simple). Cut
# for time: the sample-quality part (samples, the evaluation classifier and its features, which
# passed in 2 processes when tried) and the ODE likelihood, each one more set of compiles.
DIGITS = {
  **support.UNET,
  # Dropout on a sharded batch: failed to trace on any multi-device mesh with Explicit axes.
  "model.dropout": 0.1,
  "diffusion.num_timesteps": 10,
  "data.batch_size": 8,
  "train.num_steps": 2,
  "train.log_every": 1,
  "train.checkpoint_every": 2,
  "train.sample_every": 2,
  "sample.num_samples": 8,
  "sample.sampler": "ddim",
  "sample.num_steps": 2,
  "eval.batch_size": 8,
  "eval.num_examples": 16,
  "eval.num_samples": 0,
  "eval.ode_steps": 0,
}


@pytest.mark.slow
def test_digits_two_processes_train_and_eval_as_one_process(env, tmp_path):
  two = tmp_path / "two"
  args = support.flags("ddpm_digits", DIGITS)
  trained = multiprocess.launch(env, tmp_path, 2, 2, *args, f"--workdir={two}")
  for r in trained:  # its 4 rows of each global batch of 8, read by index; at most 3 prefetched
    assert 4 * 2 <= read_count(r.stdout) <= 4 * (2 + 3), r.stdout
  assert (two / "samples" / "step_0000002.png").exists()
  one = tmp_path / "one"
  train.train(support.config("ddpm_digits", DIGITS), str(one), build("ddpm_digits"))
  two_state, one_state = (restored("ddpm_digits", DIGITS, w) for w in (two, one))
  print(f"digits: max |params 2x2 - params 1x1| = {max_difference(two_state, one_state):.3g}")
  assert_trees_close(two_state.params, one_state.params)
  assert_trees_close(two_state.ema_params, one_state.ema_params)

  # --mode=eval of the 2-process checkpoint, in 2 processes and in this one.
  here = tmp_path / "here"
  shutil.copytree(two, here)
  evaluated = multiprocess.launch(env, tmp_path, 2, 2, *args, f"--workdir={two}", "--mode=eval")
  assert "Evaluation of" in evaluated[0].stdout and "Evaluation of" not in evaluated[1].stdout
  with open(two / "eval.json") as f:
    two_eval = json.load(f)
  one_eval = train.evaluate(support.config("ddpm_digits", DIGITS), str(here), build("ddpm_digits"))
  numbers = {k: v for k, v in one_eval["likelihood"].items() if isinstance(v, float)}
  assert len(numbers) >= 2 and two_eval["likelihood"]["num_examples"] == 16, one_eval
  for key, value in numbers.items():
    np.testing.assert_allclose(two_eval["likelihood"][key], value, rtol=1e-5, err_msg=key)


# ----------------------------------------------------------------------------------------------------------------
# Failures across processes

HEARTBEAT = 5  # seconds: --heartbeat_timeout of the fault test
SURVIVOR_LIMIT = 60  # seconds for the survivor to end: the heartbeat, plus a loaded CI machine


def wait_for(condition, processes, timeout=multiprocess.TIMEOUT):
  deadline = time.monotonic() + timeout
  while not condition():
    if any(p.popen.poll() is not None for p in processes) or time.monotonic() > deadline:
      multiprocess.kill(processes)
      shown = "\n".join("".join(p.output())[-3000:] for p in processes)
      raise AssertionError(f"the job ended or stalled before the condition held:\n{shown}")
    time.sleep(0.05)


def checkpoint_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return (
    sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
  )


@pytest.mark.slow
def test_kill_9_ends_the_survivor_relaunch_resumes_exactly_sigterm_saves_one_step(env, tmp_path):
  """kill -9 of process 1: process 0 ends at once in one line naming process 1; both
  relaunched resume from the newest checkpoint and log the very losses the killed job had
  logged; SIGTERM to both then saves one checkpoint, at one step, and both exit 143."""
  workdir = tmp_path / "run"
  args = [*toy2d_args(num_steps=100_000, checkpoint_every=3), f"--workdir={workdir}"]
  job = multiprocess.start(env, tmp_path, 2, 2, *args, heartbeat_timeout=HEARTBEAT)
  # Killed once a checkpoint exists and a step after it is logged (checkpoints: every 3rd step).
  wait_for(lambda: (s := logged(workdir)[0]) and s[-1] >= 4 and s[-1] % 3 == 1, job)
  job[1].popen.kill()
  killed_at = time.monotonic()
  survivor = multiprocess.wait(job, timeout=SURVIVOR_LIMIT + 30)[0]
  survivor_seconds = time.monotonic() - killed_at
  print(f"the survivor ended {survivor_seconds:.1f} s after kill -9 (heartbeat {HEARTBEAT} s)")
  # gen_jax's line, naming the lost process, as soon as its connection closed (before JAX's
  # heartbeat would abort with a C++ stack): tests/runtime/test_distributed_startup.py.
  assert survivor.returncode == 1, survivor.output[-3000:]
  assert "error: process 1 of 2 ended without a word" in survivor.stderr, survivor.stderr[-3000:]
  assert survivor_seconds < SURVIVOR_LIMIT
  before_steps, before_losses = logged(workdir)
  resume_from = checkpoint_steps(workdir)[-1]
  assert before_steps[-1] > resume_from  # some logged steps are redone after the restart

  job = multiprocess.start(env, tmp_path, 2, 2, *args, heartbeat_timeout=HEARTBEAT)
  wait_for(lambda: logged(workdir)[0][-1] >= before_steps[-1] + 2, job)
  multiprocess.kill(job, signal.SIGTERM)
  results = multiprocess.wait(job)
  assert [r.returncode for r in results] == [143, 143], results[0].output[-3000:]
  assert f"Resuming {workdir} from step {resume_from}" in results[0].stdout
  stopped = int(results[0].stdout.split("training stopped by SIGTERM after step ")[1].split(";")[0])
  assert "in every process" in results[0].stdout
  assert f"Process 1 of 2: training stopped by SIGTERM after step {stopped}" in results[1].stdout
  assert checkpoint_steps(workdir)[-1] == stopped  # one checkpoint, at the agreed step
  steps, losses = logged(workdir)
  assert steps == list(range(1, stopped + 1))
  # Bit-identical to the job before the kill, for every step both logged.
  np.testing.assert_array_equal(losses[: len(before_losses)], before_losses)


@pytest.mark.slow
def test_a_process_with_another_config_is_refused_at_start_up(env, tmp_path):
  workdir = tmp_path / "run"
  results = multiprocess.launch(
    env,
    tmp_path,
    2,
    1,
    *toy2d_args(),
    f"--workdir={workdir}",
    per_process=[[], ["--config.optim.learning_rate=0.02"]],
    via_environment=True,  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    check=False,
    timeout=120,
  )
  for r in results:
    assert r.returncode == 1, r.output
    assert f"Distributed: process {r.index} of 2, 1 local / 2 global devices" in r.stdout
    rate = TOY2D["optim.learning_rate"]
    peer, there, here = (1, 0.02, rate) if r.index == 0 else (0, rate, 0.02)
    assert (
      f"error: process {r.index} of 2 was started differently from process {peer}: "
      f"--config.optim.learning_rate is {there} there, {here} here" in r.stderr
    ), r.stderr
    assert "Start every process with the same command" in r.stderr
  assert not (workdir / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------------------------
# The pure helpers


def test_launch_settings_from_arguments_then_environment():
  environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4"}
  assert distributed.launch_settings(process_id=3, environ=environ) == ("10.0.0.1:1234", 4, 3)
  environ["JAX_PROCESS_ID"] = "2"
  assert distributed.launch_settings(environ=environ) == ("10.0.0.1:1234", 4, 2)
  assert distributed.launch_settings("h:1", 2, 0, environ=environ) == ("h:1", 2, 0)
  assert distributed.launch_settings(environ={}) == (None, None, None)  # TPU / SLURM detect them
  with pytest.raises(ConfigError, match=r"process_id=4 must be in \[0, num_processes=4\)"):
    distributed.launch_settings(process_id=4, environ=environ)
  with pytest.raises(ConfigError, match="needs num_processes and process_id"):
    distributed.launch_settings("h:1", environ={})
  with pytest.raises(ConfigError, match="host:port"):
    distributed.launch_settings("localhost", 2, 0, environ={})
  with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two'"):
    distributed.launch_settings(environ={"JAX_NUM_PROCESSES": "two"})


def test_config_differences_name_each_field():
  config = support.config("ddpm_toy2d")
  mine = distributed.config_fingerprint(config, "train")
  config.seed, config.optim.b1 = 7, 0.5
  theirs = distributed.config_fingerprint(config, "train")
  assert distributed.differences(mine, theirs) == [
    "config.optim.b1 is 0.5 there, 0.9 here",
    "config.seed is 7 there, 0 here",
  ]
  assert distributed.differences(mine, distributed.config_fingerprint(config, "eval")) != []
  assert distributed.differences(mine, mine) == []


def test_each_process_fetches_only_its_slice_of_the_global_batch():
  examples = np.arange(20, dtype=np.float32)[:, None]
  whole = dataset_lib.points_dataset("numbers", examples).get_batch(3, 0, 8)["x"]
  parts = []
  for k in range(4):
    ds = dataset_lib.points_dataset("numbers", examples)
    parts.append(ds.get_batch(3, 0, 8, k, 4)["x"])
    assert ds.examples_read == 2  # its 2 rows, not the 8 of the global batch
  np.testing.assert_array_equal(np.concatenate(parts), whole)
