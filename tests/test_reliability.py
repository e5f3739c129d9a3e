"""Faults injected into training, and what each may cost.

End to end (run.py in subprocesses, a tiny ddpm_toy2d, 30 steps):
  * SIGKILL at random moments, twice in the middle of writing a checkpoint, then the same command
    until it finishes: the final train state equals an uninterrupted run's bit for bit, and each
    kill lost at most the step whose checkpoint it interrupted;
  * SIGTERM: exit status 143, a checkpoint at the step in progress, a printed command that resumes
    to the uninterrupted run's state;
  * a NaN from the data: an error naming the step, the last good checkpoint stays the newest; with
    train.skip_nonfinite the same data trains through, counting the skipped steps;
  * resuming with another model: refused at start-up, listing the keys, nothing written.
In process: damaged checkpoints, the signal handler, interrupted train(), the data-shape, disk-space
and workdir checks.
"""

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ddpm_toy2d
from gen_jax import data, train
from gen_jax.train import checkpoint, faults, resume, sharding, summary
from tests.support import runs
from tests.support.faults import (
  TIMEOUT,
  deliver,
  launched,
  logged,
  saved_steps,
  small_state,
  toy_config,
  toy_state_bytes,
  unfinished_saves,
)

NUM_STEPS = 30
TOY2D = runs.flags(
  "ddpm_toy2d", runs.TOY2D, {"train.sample_every": 1000000, "train.num_steps": NUM_STEPS}
)

# The runs share compiled programs, so a restarted run is training within a few seconds.
env = runs.env_fixture()
run = functools.partial(runs.run_py, timeout=TIMEOUT)

pytestmark = pytest.mark.usefixtures("fast_compile")


def read(cwd, name):
  with open(os.path.join(cwd, name)) as f:
    return f.read()


def wait_for(condition, proc, timeout=TIMEOUT) -> bool:
  """Polls condition() every 2 ms; False if the process ended first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      return False
    if condition():
      return True
    time.sleep(0.002)
  raise AssertionError("timed out waiting for the training subprocess")


def final_state(workdir):
  """The newest checkpoint of a TOY2D run, restored onto this process' device."""
  config = runs.config("ddpm_toy2d", runs.TOY2D)
  model = ddpm_toy2d.build(config, (2,))
  tx = train.make_optimizer(config.optim, NUM_STEPS)
  replicated = sharding.replicated(sharding.make_mesh())
  shapes = jax.eval_shape(lambda k: train.init_state(model, tx, k), jax.random.key(0))
  abstract = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
  )
  mngr = checkpoint.manager(str(workdir), create=False)
  try:
    return checkpoint.restore(mngr, abstract)
  finally:
    mngr.close()


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_same_run(workdir, reference):
  """Same final state (params, EMA, optimizer, step) and the same loss at every step, once each."""
  state = final_state(workdir)
  assert int(state.step) == NUM_STEPS
  assert_trees_equal(state, reference["state"])
  records = logged(workdir)
  assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
  assert [(r["loss"], r["grad_norm"]) for r in records] == reference["losses"]


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
  """NUM_STEPS uninterrupted, one checkpoint at the end."""
  cwd = tmp_path_factory.mktemp("reference")
  workdir = cwd / "wd"
  run(env, cwd, *TOY2D, "--config.train.checkpoint_every=1000", f"--workdir={workdir}")
  return dict(
    state=final_state(workdir), losses=[(r["loss"], r["grad_norm"]) for r in logged(workdir)]
  )


# --------------------------------------------------------------------------------------------------
# SIGKILL, SIGTERM, NaN, mismatch: end to end


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_only_the_steps_since_the_last_checkpoint(
  env, tmp_path, reference
):
  workdir = tmp_path / "wd"
  args = [
    *TOY2D,
    "--config.train.checkpoint_every=1",
    "--config.train.keep_checkpoints=2",
    f"--workdir={workdir}",
  ]
  rng = np.random.default_rng(7)
  faults = []
  outputs = []
  for plan in ("mid_save", "after_a_save", "mid_save", "at_start_up"):
    newest_before = (saved_steps(workdir) or [0])[-1]
    left_over = unfinished_saves(workdir)
    with launched(env, tmp_path, *args) as proc:
      if plan == "mid_save":  # while orbax writes <step>.orbax-checkpoint-tmp, after what we left
        if left_over:  # the restarted run deletes what the last kill left, then trains and saves
          wait_for(lambda: not unfinished_saves(workdir), proc)
        wait_for(lambda: unfinished_saves(workdir), proc)
      elif plan == "after_a_save":
        wait_for(lambda: (saved_steps(workdir) or [0])[-1] > newest_before + 2, proc)
        time.sleep(rng.uniform(0, 0.3))
      else:  # while importing, restoring or compiling
        time.sleep(rng.uniform(0.2, 2.0))
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
        done = max([r["step"] for r in logged(workdir)] + [0])
        newest = (saved_steps(workdir) or [0])[-1]
        faults.append(
          dict(
            plan=plan,
            steps_done=done,
            newest_checkpoint=newest,
            lost=done - newest,
            unfinished_save_left=unfinished_saves(workdir),
          )
        )
        # Logging comes before the save of a step: a kill loses at most that one step.
        assert done - newest <= 1, faults
    outputs.append(read(tmp_path, "out.txt"))
  result = run(env, tmp_path, *args)
  outputs.append(result.stdout)
  print("\nSIGKILL faults:", *faults, sep="\n  ")

  assert len(faults) >= 3 and any(f["unfinished_save_left"] for f in faults), faults
  assert any("a save interrupted before it finished; deleting it" in out for out in outputs), (
    outputs
  )
  assert not unfinished_saves(workdir) and saved_steps(workdir) == [NUM_STEPS - 1, NUM_STEPS]
  assert_same_run(workdir, reference)

  # The finished workdir, resumed with another model: refused before anything is written.
  config_before, steps_before = read(workdir, "config.json"), saved_steps(workdir)
  result = run(
    env, tmp_path, *args, "--config.model.width=32", "--config.train.num_steps=40", check=False
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  message = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(message) == 1 and "model.width: 16 -> 32" in message[0], result.stderr
  assert "num_steps" not in message[0].split("(a resumed run may change only")[0]  # harmless
  assert read(workdir, "config.json") == config_before and saved_steps(workdir) == steps_before


@pytest.mark.slow
def test_sigterm_saves_the_step_in_progress_and_the_printed_command_resumes(
  env, tmp_path, reference
):
  workdir = tmp_path / "wd"
  # A sample picture at every step slows the loop to tens of steps a second; no periodic checkpoint.
  args = [
    *TOY2D,
    "--config.train.checkpoint_every=1000",
    "--config.train.sample_every=1",
    f"--workdir={workdir}",
  ]
  with launched(env, tmp_path, *args) as proc:
    assert wait_for(lambda: len(logged(workdir)) >= 3, proc)
    steps_done = len(logged(workdir))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM
  out = read(tmp_path, "out.txt")
  assert "SIGTERM received: finishing this step and saving a checkpoint" in out, out
  stopped = int(re.search(r"training stopped by SIGTERM after step (\d+)", out).group(1))
  # The step in progress when the signal came (the loop may have started one more), and no further.
  assert steps_done <= stopped <= steps_done + 2 and stopped < NUM_STEPS
  assert saved_steps(workdir) == [stopped] and logged(workdir)[-1]["step"] == stopped
  command = out.split("To resume, run the same command:\n", 1)[1].strip().splitlines()[0]
  argv = shlex.split(command)
  assert argv[:2] == ["python", runs.RUN_PY] and f"--workdir={workdir}" in argv

  result = subprocess.run(
    [sys.executable, *argv[1:]],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert f"from step {stopped}" in result.stdout
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_nan_from_the_data_stops_naming_the_step_then_skip_nonfinite_trains_through(env, tmp_path):
  points = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
  path = tmp_path / "points.npz"
  np.savez(path, points=points)
  # 64 examples, batches of 8: each example once in steps 1..8. One of step 6's becomes 1e30,
  # whose square overflows float32.
  in_step_6 = dataset_with(path).get_batch(5, seed=0, batch_size=8)["x"][0]
  points[np.flatnonzero(np.all(points == in_step_6, axis=1))[0]] = 1e30
  np.savez(path, points=points)
  bad_steps = [
    s + 1
    for s in range(16)
    if np.any(dataset_with(path).get_batch(s, seed=0, batch_size=8)["x"] > 1e29)
  ]
  assert bad_steps[0] == 6 and len(bad_steps) == 2  # and once in the second epoch, steps 9..16

  args = [
    *TOY2D[:-1],
    "--config.train.num_steps=16",
    "--config.train.checkpoint_every=2",
    "--config.train.log_every=4",
    "--config.data.source=npz",
    f"--config.data.path={path}",
    f"--workdir={tmp_path / 'wd'}",
  ]
  result = run(env, tmp_path, *args, check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert "error: non-finite loss or gradient at step 6 (loss nan" in result.stderr, result.stderr
  assert "the newest checkpoint is step 4" in result.stderr
  assert saved_steps(tmp_path / "wd") == [2, 4]  # nothing of the bad state
  assert [r["step"] for r in logged(tmp_path / "wd")] == [4]

  # The switch may change on resume (the optimizer state has the same structure either way).
  result = run(env, tmp_path, *args, "--config.train.skip_nonfinite=True")
  assert "Resuming" in result.stdout and saved_steps(tmp_path / "wd")[-1] == 16
  records = logged(tmp_path / "wd")
  assert [r["step"] for r in records] == [4, 8, 12, 16]
  assert records[-1]["skipped_nonfinite_steps"] == len(bad_steps)
  assert all(np.isfinite(r["loss"]) for r in records)


def _npz_config(path):
  config = ddpm_toy2d.get_config().data
  config.source, config.path = "npz", str(path)
  return config


def dataset_with(path):
  return data.load_dataset(_npz_config(path), "train")


# --------------------------------------------------------------------------------------------------
# Damaged checkpoints (orbax itself, no model)


def _truncate_data_files(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      if os.path.basename(root) == "d":  # tensorstore's data files
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(10)


DAMAGE = {
  "data files cut short": _truncate_data_files,
  "manifest deleted": lambda d: os.remove(os.path.join(d, "default", "manifest.ocdbt")),
  "metadata garbled": lambda d: open(os.path.join(d, "default", "_METADATA"), "w").write("{x"),
  "emptied": lambda d: [shutil.rmtree(d), os.mkdir(d)],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE) + ["nan state"])
@pytest.mark.slow
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(
  tmp_path, damage, caplog
):
  mngr = checkpoint.manager(str(tmp_path), max_to_keep=5)
  for k in (1, 2, 3):
    checkpoint.save(mngr, k, small_state(k))
  if damage == "nan state":  # no run saves one, so it counts as damaged
    bad = small_state(4)
    checkpoint.save(mngr, 4, bad.replace(params={**bad.params, "b": jnp.full((3,), jnp.nan)}))
  else:
    checkpoint.save(mngr, 4, small_state(4))
    DAMAGE[damage](os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "4"))
  # What a kill -9 in the middle of saving step 5 leaves behind.
  os.makedirs(
    os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "5.orbax-checkpoint-tmp", "default")
  )
  mngr.close()

  mngr = checkpoint.manager(str(tmp_path), max_to_keep=5, create=False)
  abstract = checkpoint.abstract_like(small_state(0))
  # Sampling and evaluation only read: the damaged step is skipped and stays where it is.
  caplog.clear()
  assert_trees_equal(checkpoint.restore(mngr, abstract), small_state(3))
  warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint: ")]
  assert len(warnings) == 2 and "step 4" in warnings[1] and "skipping it" in warnings[1], warnings
  assert saved_steps(tmp_path) == [1, 2, 3, 4] and unfinished_saves(tmp_path)

  reports = []
  state, step = checkpoint.restore_newest(mngr, abstract, report=reports.append)
  assert step == 3
  assert_trees_equal(state, small_state(3))
  assert len(reports) == 3, reports  # one line each: the unfinished save, step 4, where it went
  assert "5.orbax-checkpoint-tmp" in reports[0] and "deleting it" in reports[0]
  assert "step 4" in reports[1] and "cannot be restored" in reports[1]
  assert saved_steps(tmp_path) == [1, 2, 3] and not unfinished_saves(tmp_path)
  aside = os.listdir(tmp_path / checkpoint.CORRUPT_DIR)
  assert len(aside) == 1 and aside[0].startswith("4-") and aside[0] in reports[2]
  checkpoint.save(mngr, 4, small_state(4))  # training can save step 4 again
  assert checkpoint.latest_step(mngr) == 4
  mngr.close()


def test_when_no_checkpoint_restores_nothing_is_touched(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, 1, small_state(1))
  checkpoint.save(mngr, 2, small_state(2))
  mngr.close()
  mngr = checkpoint.manager(str(tmp_path), create=False)
  other_model = {"w": jax.ShapeDtypeStruct((5,), jnp.float32)}  # e.g. code that changed
  with pytest.raises(checkpoint.UnreadableCheckpointError, match=r"steps 2, 1.*new workdir"):
    checkpoint.restore_newest(mngr, other_model, report=lambda _: None)
  assert saved_steps(tmp_path) == [1, 2] and not os.path.exists(tmp_path / checkpoint.CORRUPT_DIR)
  mngr.close()


# --------------------------------------------------------------------------------------------------
# Signals, in process


def test_first_signal_is_recorded_second_goes_to_the_previous_handler():
  calls = []
  recorder = lambda signum, frame: calls.append(signum)
  original = signal.signal(signal.SIGTERM, recorder)
  try:
    with faults.StopOnSignal(announce=False) as stop:
      assert signal.getsignal(signal.SIGTERM) is not recorder
      deliver(signal.SIGTERM)
      assert stop.signal_number == signal.SIGTERM and calls == []
      deliver(signal.SIGTERM)  # at once: the previous handler, which is back in place
      assert calls == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is recorder
    with faults.StopOnSignal(announce=False) as stop:
      deliver(signal.SIGINT)
      assert stop.signal_number == signal.SIGINT
      with pytest.raises(KeyboardInterrupt):  # Python's own SIGINT handler
        deliver(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is recorder
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. nohup: an ignored signal stays ignored
    with faults.StopOnSignal(announce=False):
      assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
  finally:
    signal.signal(signal.SIGTERM, original)


def test_the_stopper_says_whether_training_ends_after_a_step_and_why():
  metrics = {train.HALT: np.asarray(False)}
  with faults.Stopper(num_steps=3, max_seconds=0, log_every=1, announce=False) as stopper:
    assert not stopper.should_stop(1, metrics) and stopper.why is None
    assert stopper.should_stop(3, metrics) and stopper.why == "last" and stopper.ends_as_last_step
  assert stopper.stopped_by is None
  with faults.Stopper(num_steps=3, max_seconds=1e-9, log_every=1, announce=False) as stopper:
    assert stopper.should_stop(1, metrics) and stopper.why == "time" and stopper.ends_as_last_step
  assert stopper.stopped_by is None and stopper.trained_seconds > 0

  before = signal.getsignal(signal.SIGTERM)
  with faults.Stopper(num_steps=3, max_seconds=0, log_every=1, announce=False) as stopper:
    assert not stopper.should_stop(1, metrics) and not stopper.signalled()
    deliver(signal.SIGTERM)  # e.g. while step 1 was logged: it stops there too, with no grid
    assert stopper.signalled() and stopper.why == "signal" and not stopper.ends_as_last_step
    assert stopper.should_stop(2, metrics) and stopper.why == "signal"
    assert stopper.should_stop(3, metrics) and stopper.why == "last"  # drawn, then interrupted
  assert stopper.stopped_by == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_train_stops_after_the_signalled_step_and_restores_the_handlers(
  tmp_path, monkeypatch, capsys
):
  """A SIGTERM delivered while step 3 is logged: step 3 is saved, TrainingInterrupted says so."""
  write_scalars = summary.MetricWriter.write_scalars

  def write_then_signal(self, step, scalars):
    write_scalars(self, step, scalars)
    if step == 3:
      deliver(signal.SIGTERM)

  monkeypatch.setattr(summary.MetricWriter, "write_scalars", write_then_signal)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(train.TrainingInterrupted, match="stopped by SIGTERM after step 3") as info:
    train.train(toy_config(), str(tmp_path), ddpm_toy2d.build)
  assert info.value.step == 3 and info.value.signal_number == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is before
  assert saved_steps(tmp_path) == [3] and [r["step"] for r in logged(tmp_path)] == [1, 2, 3]
  assert "SIGTERM received" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Start-up checks, in process: nothing is written when they fail


def test_resume_config_check_lists_changed_keys_and_allows_harmless_ones(tmp_path):
  saved = json.loads(toy_config().to_json_best_effort())
  harmless = toy_config()
  harmless.train.update(
    num_steps=99,
    log_every=7,
    checkpoint_every=7,
    sample_every=7,
    keep_checkpoints=9,
    skip_nonfinite=True,
  )
  harmless.model.remat = True  # (a new key of this model section: resumable all the same)
  harmless.sample.num_steps, harmless.eval.batch_size = 5, 3
  assert resume.config_changes(saved, harmless) == []
  changed = toy_config()
  changed.model.width, changed.data.name, changed.optim.learning_rate = 32, "two_moons", 0.5
  changed.model.compute_dtype = "bfloat16"  # other numbers: another run
  assert resume.config_changes(saved, changed) == [
    'data.name: "eight_gaussians" -> "two_moons"',
    'model.compute_dtype: <absent> -> "bfloat16"',
    "model.width: 16 -> 32",
    "optim.learning_rate: 0.001 -> 0.5",
  ]
  del saved["model"]["num_blocks"]
  assert resume.config_changes(saved, toy_config()) == ["model.num_blocks: <absent> -> 1"]


@pytest.mark.slow
def test_resume_with_data_of_another_shape_fails(tmp_path):
  path = tmp_path / "points.npz"
  np.savez(path, points=np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32))
  config = toy_config(num_steps=1)
  config.data.source, config.data.path = "npz", str(path)
  workdir = str(tmp_path / "wd")
  train.train(config, workdir, ddpm_toy2d.build)
  np.savez(path, points=np.zeros((32, 3), np.float32))  # same config, other data
  with pytest.raises(train.ConfigError, match=r"trained on points data of shape \(2,\).*\(3,\)"):
    train.train(config, workdir, ddpm_toy2d.build)


def test_full_disk_and_unwritable_workdir_fail_at_start_up(tmp_path, monkeypatch):
  workdir = tmp_path / "wd"
  real = shutil.disk_usage
  monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=2**19))
  # The estimate is the checkpoints (counted exactly) and 1 MB for logs and pictures, and the
  # advice names only what would help: here the pictures, not keep_checkpoints (was a fixed 16 MB
  # allowance that no lower keep_checkpoints could make fit).
  state = checkpoint.format_size(toy_state_bytes())
  with pytest.raises(train.ConfigError) as info:
    train.train(toy_config(), str(workdir), ddpm_toy2d.build)
  assert re.fullmatch(
    rf"workdir=.*wd has 512.0 kB free, but the run needs about 1\.\d MB: 4 x the {state} train "
    r"state \(config.train.keep_checkpoints=3, and one being written\) and 1.0 MB for logs and "
    r"sample pictures; free [\d.]+ kB or choose another workdir",
    str(info.value),
  ), str(info.value)
  config = toy_config()
  config.train.keep_checkpoints = 500
  with pytest.raises(train.ConfigError, match=r"lower config.train.keep_checkpoints \(each copy"):
    train.train(config, str(workdir), ddpm_toy2d.build)
  assert not workdir.exists()
  monkeypatch.setattr(shutil, "disk_usage", real)
  (tmp_path / "a_file").write_text("")
  with pytest.raises(train.ConfigError, match=r"workdir=.*a_file/wd is not writable"):
    train.train(toy_config(), str(tmp_path / "a_file" / "wd"), ddpm_toy2d.build)
