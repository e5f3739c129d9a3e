"""Reliability, round two (issue 20), end to end: what a cluster does every week.

* run.py in subprocesses: Ctrl-C at start-up, during training, --mode=sample and --mode=eval
  (exit 130, one line, never a traceback or a segfault, nothing half-written), and a second
  launch on a training's workdir (refused in one line naming the first, which goes on);
* in process: a kill during the last sample grid (the next run draws it and removes the
  half-written file), resumes that say what they refuse, sampling that refuses non-finite
  settings and samples and a read-only workdir before any work, and a real full disk (a small
  tmpfs, where this process may mount one).
"""

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import ddpm_toy2d
from gen_jax import train
from gen_jax.runtime import fileio
from gen_jax.train import checkpoint, run_setup, sampling
from tests.support import faults, runs
from tests.support.faults import (
  TIMEOUT,
  deliver,
  logged,
  saved_steps,
  toy_config,
  toy_state_bytes,
)

env = runs.env_fixture()
run = functools.partial(runs.run_py, timeout=TIMEOUT)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_compile")]


def launched(env, cwd, name, *args):
  """run.py in the background, output to cwd/<name>.out and .err; killed if still running."""
  return faults.launched(env, cwd, *args, stdout=f"{name}.out", stderr=f"{name}.err")


def wait_until(condition, proc):
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    assert proc.poll() is None, "the process ended first"
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.01)


def interrupt(proc) -> float:
  """Sends SIGINT; returns the seconds until the process ended."""
  start = time.monotonic()
  proc.send_signal(signal.SIGINT)
  proc.wait(timeout=TIMEOUT)
  return time.monotonic() - start


def temporary_files(directory):
  found = []
  for root, _, names in os.walk(directory):
    found += [os.path.join(root, n) for n in names if fileio._TEMPORARY.match(n)]
  return found


def one_line(stderr: str) -> str:
  """The one line a signal leaves on stderr (tqdm's progress bars aside)."""
  lines = [line for line in re.split(r"[\r\n]", stderr) if line.strip()]
  lines = [line for line in lines if not re.match(r"^(train|sample|eval)\b.*\|", line)]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr
  return lines[0]


def test_ctrl_c_at_any_moment_ends_in_one_line_and_a_second_launch_is_refused(env, tmp_path):
  workdir = tmp_path / "wd"
  # Tens of steps a second (a picture per step) and a final step far away.
  args = runs.flags(
    "ddpm_toy2d",
    runs.TOY2D,
    {"train.num_steps": 10**6, "train.sample_every": 1, "train.checkpoint_every": 10**6},
  )

  # Start-up (imports, flags, data, compilation): was a KeyboardInterrupt traceback or ignored.
  with launched(env, tmp_path, "startup", *args, f"--workdir={tmp_path / 'early'}") as proc:
    time.sleep(0.5)
    interrupt(proc)
  assert proc.returncode == 130
  assert one_line((tmp_path / "startup.err").read_text()).startswith(
    "SIGINT received: stopped at once"
  )

  # A scheduler launches the job twice: the second is refused, the first goes on untouched.
  with launched(env, tmp_path, "first", *args, f"--workdir={workdir}") as first:
    wait_until(lambda: len(logged(workdir)) >= 2, first)
    second = run(env, tmp_path, *args, f"--workdir={workdir}", check=False)
    assert first.poll() is None
    steps_then = len(logged(workdir))
    wait_until(lambda: len(logged(workdir)) > steps_then + 2, first)
    assert interrupt(first) < 30 and first.returncode == 130
  assert second.returncode == 1, second.stderr
  error = one_line(second.stderr)
  assert re.fullmatch(
    rf"error: --workdir={workdir} is in use by another training \(host [^,]+, pid {first.pid}, "
    r"started [-\d:T+]+\); wait for it to end or stop it, or use another workdir",
    error,
  ), error
  assert "Training on" not in second.stdout and "Resuming" not in second.stdout
  steps = [r["step"] for r in logged(workdir)]
  assert steps == list(range(1, len(steps) + 1))  # each step once: one writer
  assert len(os.listdir(workdir / "tensorboard")) == 1
  out = (tmp_path / "first.out").read_text()
  assert "To resume, run the same command" in out and not os.path.exists(workdir / "lock.json")
  stopped = int(re.search(r"after step (\d+)", out)[1])
  assert saved_steps(workdir) == [stopped]

  # --mode=sample: many chunks of samples; Ctrl-C while they are drawn.
  sample_args = [*args, f"--workdir={workdir}", "--mode=sample", "--num_samples=4000000"]
  with launched(env, tmp_path, "sample", *sample_args) as proc:
    wait_until(lambda: "sample (ddpm)" in (tmp_path / "sample.err").read_text(), proc)
    assert interrupt(proc) < 30
  assert proc.returncode == 130
  assert one_line((tmp_path / "sample.err").read_text()) == (
    "SIGINT received: stopped at once; nothing was written"
  )
  assert not (workdir / "samples.npz").exists() and not temporary_files(workdir)

  # --mode=eval: was a segmentation fault (exit 139) 8 s in.
  eval_args = [*args, f"--workdir={workdir}", "--mode=eval", "--config.eval.batch_size=8"]
  with launched(env, tmp_path, "eval", *eval_args) as proc:
    wait_until(lambda: "eval: likelihood" in (tmp_path / "eval.err").read_text(), proc)
    time.sleep(0.5)
    assert interrupt(proc) < 30
  assert proc.returncode == 130
  assert one_line((tmp_path / "eval.err").read_text()).startswith("SIGINT received: stopped")
  assert not (workdir / "eval.json").exists()

  # An empty config.json: --mode=sample says which file (was a JSONDecodeError traceback).
  (workdir / "config.json").write_text("")
  result = run(env, tmp_path, *sample_args[:-1], check=False)
  assert result.returncode == 1
  assert one_line(result.stderr) == (
    f"error: {workdir}/config.json is damaged (not valid JSON: Expecting value: line 1 column 1 "
    "(char 0))"
  )


def test_a_kill_during_the_last_grid_and_resumes_that_say_what_they_do(tmp_path, capsys):
  workdir = str(tmp_path / "wd")
  grid = os.path.join(workdir, "samples", "step_0000002.png")
  train.train(toy_config(num_steps=2), workdir, ddpm_toy2d.build, experiment="ddpm_toy2d")
  assert capsys.readouterr().out.endswith(f"Done: 2 steps in {workdir}; samples: {grid}\n")

  # What a kill -9 while the last grid was written leaves: the checkpoint, half a picture.
  os.remove(grid)
  killed = subprocess.Popen([sys.executable, "-c", ""])  # the writer, gone
  killed.wait()
  half_written = [
    os.path.join(workdir, "samples", f".step_0000002.png.{killed.pid}.tmp.png"),
    os.path.join(workdir, "samples", "step_0000002.png.tmp.png"),  # the old temporary name
  ]
  for path in half_written:
    with open(path, "wb") as f:
      f.write(b"\x89PNG")
  train.train(toy_config(num_steps=2), workdir, ddpm_toy2d.build, experiment="ddpm_toy2d")
  out = capsys.readouterr().out
  assert "Drawing the sample grid of step 2, which the last run did not finish" in out
  assert all(f"removed {path}" in out for path in half_written)
  assert out.endswith(f"Done: 2 steps in {workdir}; samples: {grid}\n") and os.path.exists(grid)
  assert sorted(os.listdir(os.path.dirname(grid))) == ["step_0000002.png"]

  # Resumes that used to say too little.
  with pytest.raises(
    train.ConfigError,
    match=rf"workdir={workdir} holds a checkpoint at step 2, past config.train.num_steps=1: "
    "nothing to train",
  ):
    train.train(toy_config(num_steps=1), workdir, ddpm_toy2d.build)
  with pytest.raises(train.ConfigError, match=r"the experiment 'ddpm_toy2d', not 'vae_digits'"):
    train.train(toy_config(num_steps=3), workdir, ddpm_toy2d.build, experiment="vae_digits")
  assert saved_steps(workdir) == [2]

  # Ctrl-C during the last step's grid: the step is saved, and the run still says it was stopped.
  draw = sampling.SampleGrid.draw

  def draw_then_signal(self, params, step):
    draw(self, params, step)
    deliver(signal.SIGINT)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sampling.SampleGrid, "draw", draw_then_signal)
    with pytest.raises(train.TrainingInterrupted, match="stopped by SIGINT after step 3"):
      train.train(toy_config(num_steps=3), workdir, ddpm_toy2d.build)
  assert saved_steps(workdir) == [2, 3] and [r["step"] for r in logged(workdir)] == [1, 2, 3]


def test_sampling_refuses_non_finite_settings_and_samples_and_checks_its_output_first(
  tmp_path, monkeypatch, capsys
):
  workdir = str(tmp_path / "wd")
  config = toy_config(num_steps=1)
  make_sampler = sampling.make_sampler

  def nan_sampler(run, *args, **kwargs):
    draw = make_sampler(run, *args, **kwargs)
    return lambda *a, **k: draw(*a, **k) * np.float32(np.nan)

  with pytest.MonkeyPatch.context() as patch:  # the training grid: reported, not drawn
    patch.setattr(sampling, "make_sampler", nan_sampler)
    train.train(config, workdir, ddpm_toy2d.build)
  out = capsys.readouterr().out
  assert "The sample grid of step 1 is not written: 4 of 4 samples hold NaN/inf" in out
  assert out.endswith(f"Done: 1 steps in {workdir}\n") and not os.listdir(f"{workdir}/samples")
  with pytest.raises(train.ConfigError, match=r"^guidance_scale=nan must be a finite number"):
    train.sample(config, workdir, ddpm_toy2d.build, guidance_scale=float("nan"))

  draw_samples = sampling.draw_samples
  monkeypatch.setattr(
    sampling, "draw_samples", lambda *a, **k: draw_samples(*a, **k) * np.float32(np.nan)
  )
  with pytest.raises(train.NonFiniteError, match=r"^4 of 4 samples hold NaN/inf \(checkpoint"):
    train.sample(config, workdir, ddpm_toy2d.build)
  assert not os.path.exists(os.path.join(workdir, "samples.npz")) and not temporary_files(workdir)
  monkeypatch.setattr(sampling, "draw_samples", draw_samples)

  # A read-only workdir: refused before the checkpoint is even read; out_dir goes elsewhere.
  write = fileio.write_atomically

  def read_only(path, content):
    if path.startswith(workdir):
      raise OSError(30, "Read-only file system")
    write(path, content)

  monkeypatch.setattr(fileio, "write_atomically", read_only)
  monkeypatch.setattr(run_setup.Run, "restore", lambda self: pytest.fail("worked before the check"))
  with pytest.raises(train.ConfigError, match=rf"^workdir={workdir} is not writable"):
    train.sample(config, workdir, ddpm_toy2d.build)
  with pytest.raises(train.ConfigError, match=r"choose where the output goes with out_dir=DIR"):
    train.evaluate(config, workdir, ddpm_toy2d.build)
  monkeypatch.undo()
  out_dir = str(tmp_path / "elsewhere")
  path = train.sample(config, workdir, ddpm_toy2d.build, out_dir=out_dir)
  assert path == os.path.join(out_dir, "samples.npz") and os.path.exists(path)
  config.eval.num_examples = 100
  train.evaluate(config, workdir, ddpm_toy2d.build, out_dir=out_dir)
  assert f"all figures and their setup: {out_dir}/eval.json" in capsys.readouterr().out
  assert sorted(os.listdir(out_dir)) == ["eval.json", "samples.npz", "samples.png"]


@contextlib.contextmanager
def small_tmpfs(path, size):
  """A tmpfs of `size` at `path` (needs root: skips the test otherwise)."""
  os.makedirs(path)
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
  )
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
  try:
    yield
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_real_full_disk_stops_in_one_line_naming_the_newest_checkpoint(env, tmp_path):
  """Was exit 1 after a hundred orbax/tensorstore tracebacks and no error line."""
  disk = tmp_path / "disk"
  with small_tmpfs(disk, "4m"):
    workdir = disk / "wd"
    overrides = (
      runs.TOY2D,
      {"train.checkpoint_every": 5, "train.sample_every": 10**6, "sample.sampler": "ddim"},
      {"sample.num_steps": 2},
    )
    args = [*runs.flags("ddpm_toy2d", *overrides), f"--workdir={workdir}"]

    def fill(path):  # another job takes the rest of the disk
      with contextlib.suppress(OSError), open(path, "wb", buffering=0) as f:
        while True:
          f.write(b"\0" * 2**12)

    with launched(env, tmp_path, "full", *args, "--config.train.num_steps=100000") as proc:
      wait_until(lambda: len(saved_steps(workdir)) >= 2, proc)
      fill(disk / "filler")
      proc.wait(timeout=TIMEOUT)
    newest = saved_steps(workdir)[-1]
    assert proc.returncode == 1
    size = checkpoint.format_size(toy_state_bytes())
    assert re.fullmatch(
      rf"error: the disk is full: checkpoint {newest + 5} could not be saved in {workdir}/"
      rf"checkpoints \(a checkpoint needs about {size}\), while training; the newest checkpoint is "
      rf"step {newest} in {workdir}/checkpoints. Free space and run the same command again",
      one_line((tmp_path / "full.err").read_text()),
    )
    assert not temporary_files(workdir)
    assert not [n for n in os.listdir(f"{workdir}/checkpoints") if checkpoint.TMP_SUFFIX in n]

    # --mode=sample on the same full disk: refused before drawing, in one line (was a traceback
    # after the work, and a 0-byte samples.npz.tmp.npz).
    fill(disk / "filler_2")  # (deleting the unfinished save made a little room)
    config = runs.config("ddpm_toy2d", *overrides, {"train.num_steps": newest + 2})
    with pytest.raises(train.ConfigError, match=r"^workdir=.* is not writable \(the disk is full"):
      train.sample(config, str(workdir), ddpm_toy2d.build)
    assert not temporary_files(workdir) and not os.path.exists(f"{workdir}/samples.npz")

    # Space again: the same command resumes from the newest checkpoint and goes on.
    os.remove(disk / "filler")
    os.remove(disk / "filler_2")
    state = train.train(config, str(workdir), ddpm_toy2d.build)
    assert int(state.step) == newest + 2 and saved_steps(workdir)[-1] == newest + 2
