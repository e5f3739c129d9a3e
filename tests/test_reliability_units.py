"""Reliability, round two (issue 20), in process and in milliseconds: the workdir lock, full disks,
damaged workdir files, the start-up checks of a resume, out-of-memory errors, temporary files.

The end-to-end cases (signals at any moment, a second launch, a kill during the last grid, a
real full disk) are in tests/test_reliability_e2e.py.
"""

import errno
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from gen_jax import train
from gen_jax.data import DataError, validation
from gen_jax.runtime import fileio
from gen_jax.train import checkpoint, faults, resume, workdir_lock
from gen_jax.train import workdir as workdir_lib
from tests.support import runs
from tests.support.faults import small_state

# --------------------------------------------------------------------------------------------------
# One training per workdir


# A second process that takes a workdir's lock, says so, and sleeps: the lock module alone, loaded
# from its file (no JAX), so it starts in a fraction of a second.
HOLD_LOCK = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("workdir_lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
lock.acquire(sys.argv[2])
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock_in_a_child(workdir):
  """A process holding the lock of `workdir`, once it holds it."""
  child = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, workdir_lock.__file__, str(workdir)],
    stdout=subprocess.PIPE,
    text=True,
    env=dict(os.environ, PYTHONPATH=runs.REPO),
  )
  assert child.stdout.readline() == "locked\n"
  return child


def test_a_second_training_is_refused_naming_the_first_and_a_killed_ones_lock_is_taken_over(
  tmp_path,
):
  holder = _hold_lock_in_a_child(tmp_path)
  child = holder.pid
  try:
    owner = json.loads((tmp_path / workdir_lock.OWNER_FILE).read_text())
    with pytest.raises(workdir_lock.WorkdirLockedError) as info:
      workdir_lock.acquire(str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"workdir={tmp_path} is in use by another training (host ")
    assert f"host {socket.gethostname()}, pid {child}, started {owner['started']}" in message
    assert isinstance(info.value, train.ConfigError)  # run.py: exit 1, one line
  finally:
    holder.kill()  # kill -9: the kernel releases the flock, lock.json stays
    holder.wait()
  assert json.loads((tmp_path / workdir_lock.OWNER_FILE).read_text())["pid"] == child
  lock = workdir_lock.acquire(str(tmp_path))
  assert f"pid {child}" in workdir_lock.stale_note(lock)
  assert json.loads((tmp_path / workdir_lock.OWNER_FILE).read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / workdir_lock.OWNER_FILE).exists()  # a clean end leaves no lock.json
  with workdir_lock.WorkdirLock(str(tmp_path)) as again:
    assert workdir_lock.stale_note(again) is None


def test_without_flock_lock_json_decides_and_a_reused_pid_is_not_mistaken_for_the_owner(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(workdir_lock, "_flock", lambda fd: None)  # e.g. NFS mounted with nolock
  owner_path = tmp_path / workdir_lock.OWNER_FILE
  parent = os.getppid()  # a live process of this host
  ticks = workdir_lock.process_start_ticks(parent)
  here = socket.gethostname()
  owner_path.write_text(json.dumps({"host": here, "pid": parent, "pid_start_ticks": ticks}))
  with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"pid {parent}"):
    workdir_lock.acquire(str(tmp_path))
  # Same pid, another start time: the pid was reused after the owner died.
  owner_path.write_text(json.dumps({"host": here, "pid": parent, "pid_start_ticks": ticks - 1}))
  workdir_lock.acquire(str(tmp_path)).release()
  # Another host cannot be checked from here: refused, saying how to clear it.
  owner_path.write_text(json.dumps({"host": "node-17", "pid": 4242, "started": "x"}))
  with pytest.raises(
    workdir_lock.WorkdirLockedError, match=rf"another host .*node-17.*delete {owner_path} and"
  ):
    workdir_lock.acquire(str(tmp_path))


# --------------------------------------------------------------------------------------------------
# Full disks and temporary files


def _enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_no_temporary_file_and_says_so_in_one_line(tmp_path, monkeypatch):
  target = tmp_path / "samples.npz"
  target.write_bytes(b"old")
  monkeypatch.setattr(os, "replace", _enospc)
  with pytest.raises(fileio.DiskFullError, match=rf"^the disk is full: cannot write {target} "):
    with fileio.atomic_path(str(target)) as tmp:
      np.savez(tmp, x=np.zeros(3))
  assert os.listdir(tmp_path) == ["samples.npz"] and target.read_bytes() == b"old"
  assert isinstance(fileio.DiskFullError("x"), OSError) and fileio.DiskFullError("x").errno == 28


def test_temporary_names_are_hidden_and_leftovers_are_removed(tmp_path):
  path = str(tmp_path / "step_0000200.png")
  assert os.path.basename(fileio.temporary_path(path)).startswith(".step_0000200.png.")
  assert fileio.temporary_path(path).endswith(".tmp.png")  # PIL picks the format by extension
  dead = subprocess.Popen([sys.executable, "-c", ""])
  dead.wait()
  leftovers = [
    f".step_0000200.png.{os.getpid()}.tmp.png",
    "step_0000200.png.tmp.png",  # gen_jax before this change
    f".config.json.{dead.pid}.tmp.json",
  ]
  # Another live process' file (a --mode=sample writing into this workdir) is left alone.
  busy = f".samples.npz.{os.getppid()}.tmp.npz"
  kept = ["step_0000100.png", "notes.tmp", "a.tmp.txt", ".hidden", "x.png.tmp.jpg", busy]
  for name in leftovers + kept:
    (tmp_path / name).write_text("")
  removed = fileio.remove_temporary_files(str(tmp_path))
  assert sorted(os.path.basename(p) for p in removed) == sorted(leftovers)
  assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_a_checkpoint_save_on_a_full_disk_deletes_its_unfinished_folder(tmp_path, monkeypatch):
  mngr = checkpoint.manager(str(tmp_path), max_to_keep=3)
  checkpoint.save(mngr, 1, small_state(1))
  unfinished = os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "2.orbax-checkpoint-tmp")

  def full(step, args, force):  # what orbax raises: tensorstore's error as text in a ValueError
    os.makedirs(os.path.join(unfinished, "default"))
    raise ValueError(
      'RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": No space left on device '
      "[os_error_code='28']"
    )

  monkeypatch.setattr(mngr, "save", full)
  with pytest.raises(fileio.DiskFullError) as info:
    checkpoint.save(mngr, 2, small_state(2))
  size = checkpoint.format_size(checkpoint.state_bytes(small_state(2)))
  assert str(info.value) == (
    f"the disk is full: checkpoint 2 could not be saved in "
    f"{checkpoint.checkpoint_dir(str(tmp_path))} (a checkpoint needs about {size})"
  )
  assert not os.path.exists(unfinished) and checkpoint.saved_steps(str(tmp_path)) == [1]
  # In the training loop it names the newest good checkpoint, in one line.
  with pytest.raises(fileio.DiskFullError) as info:
    with faults.resource_errors("training", newest_checkpoint=lambda: "the newest is step 1"):
      raise fileio.DiskFullError("the disk is full: checkpoint 2 could not be saved")
  assert str(info.value) == (
    "the disk is full: checkpoint 2 could not be saved, while training; the newest is step 1. "
    "Free space and run the same command again"
  )
  assert fileio.DiskFullError in train.USER_ERRORS


def test_out_of_memory_is_one_line_saying_what_to_make_smaller():
  with pytest.raises(faults.OutOfMemoryError) as info:
    with faults.resource_errors("training", newest_checkpoint=lambda: "no checkpoint saved"):
      raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory allocating 512240448853520 bytes.\nmore"
      )
  message = str(info.value)
  assert message.startswith(
    "out of memory while training (RESOURCE_EXHAUSTED: Out of memory allocating "
    "512240448853520 bytes.); no checkpoint saved. Lower config.data.batch_size"
  )
  assert "\n" not in message and faults.OutOfMemoryError in train.USER_ERRORS
  with pytest.raises(ValueError, match="a bug"):  # anything else passes through untouched
    with faults.resource_errors("training"):
      raise ValueError("a bug")


# --------------------------------------------------------------------------------------------------
# What a workdir records: damaged files, another experiment, a missing config.json


def _with_checkpoint(workdir):
  os.makedirs(os.path.join(checkpoint.checkpoint_dir(str(workdir)), "100"))


def test_damaged_workdir_files_are_named_and_a_resume_needs_its_config_json(tmp_path, capsys):
  config = runs.config("ddpm_toy2d", runs.TOY2D)
  _with_checkpoint(tmp_path)
  config_json = tmp_path / "config.json"
  # Missing: a resume would silently take this command's settings; refused, naming the way out.
  with pytest.raises(train.ConfigError) as info:
    resume.check_resume_config(config, str(tmp_path))
  assert f"{config_json} is missing" in str(info.value)
  assert "resume_unverified=True" in str(info.value)
  resume.check_resume_config(config, str(tmp_path), unverified=True)
  assert "Resuming without comparing configs" in capsys.readouterr().out
  # Truncated or empty: the same, naming the file (was a warning, then a resume).
  for damaged in ('{"seed": 0, "data": {', ""):
    config_json.write_text(damaged)
    with pytest.raises(train.ConfigError, match=rf"{config_json} is damaged \(not valid JSON"):
      resume.check_resume_config(config, str(tmp_path))
    with pytest.raises(train.ConfigError, match=rf"^{config_json} is damaged"):
      workdir_lib.with_saved_config(config, str(tmp_path))  # --mode=sample|eval
  # data_spec.json: named when sampling; rewritten from the data when training.
  (tmp_path / "data_spec.json").write_text('{"kind": "points\x01"}')
  with pytest.raises(
    train.ConfigError,
    match=r"data_spec.json is damaged \(not valid JSON: Inv.*\); the training command with this "
    r"workdir writes it again$",
  ):
    workdir_lib.read_data_spec(str(tmp_path))
  resume.check_resume_data(str(tmp_path), dataset=None)
  assert "data_spec.json is damaged" in capsys.readouterr().out


def test_another_experiment_is_refused_naming_both(tmp_path):
  workdir_lib.write_experiment(str(tmp_path), "ddpm_toy2d")
  workdir_lib.check_experiment(str(tmp_path), "ddpm_toy2d")
  workdir_lib.check_experiment(str(tmp_path), None)
  with pytest.raises(
    train.ConfigError,
    match=r"holds a run of the experiment 'ddpm_toy2d', not 'vae_digits'; pass "
    r"experiment=ddpm_toy2d",
  ):
    workdir_lib.check_experiment(str(tmp_path), "vae_digits")
  workdir_lib.check_experiment(str(tmp_path / "new"), "vae_digits")  # nothing recorded yet


def test_points_data_must_be_two_dimensional():
  validation.check_points_dimension("points", (2,), where="x.npz")
  validation.check_points_dimension("image", (8, 8, 1), where="x.npz")
  with pytest.raises(DataError, match=r"^x.npz: the points have shape \(3,\) each"):
    validation.check_points_dimension("points", (3,), where="x.npz")


def test_read_only_output_is_refused_before_any_work_offering_out_dir(tmp_path, monkeypatch):
  def read_only(path, content):
    raise OSError(errno.EROFS, "Read-only file system")

  monkeypatch.setattr(fileio, "write_atomically", read_only)
  with pytest.raises(
    train.ConfigError,
    match=r"^workdir=wd is not writable \(Read-only file system\); choose where the output goes "
    r"with out_dir=DIR",
  ):
    workdir_lib.check_writable(str(tmp_path), what="workdir=wd")


def test_points_that_are_not_2d_are_refused_at_start_up_before_anything_is_written(tmp_path):
  """Was `too many values to unpack` at the first sample grid, after sample_every steps."""
  from experiments import ddpm_toy2d

  path = tmp_path / "points.npz"
  np.savez(path, points=np.zeros((32, 3), np.float32))
  config = runs.config("ddpm_toy2d", runs.TOY2D, {"data.source": "npz", "data.path": str(path)})
  with pytest.raises(DataError, match=rf"^config.data.path={path}: the points have shape \(3,\)"):
    train.train(config, str(tmp_path / "wd"), ddpm_toy2d.build)
  assert not (tmp_path / "wd").exists()


def test_images_too_large_for_the_unet_are_refused_before_any_allocation(tmp_path):
  """Was XLA's out-of-memory error at the first step, asking for petabytes, after minutes of
  compiling: the middle block's attention over 512 x 512 positions cannot fit anywhere."""
  from PIL import Image

  from experiments import ddpm_digits

  (tmp_path / "images").mkdir()
  Image.fromarray(np.zeros((1024, 1024), np.uint8)).save(tmp_path / "images" / "big.png")
  config = runs.config(
    "ddpm_digits", {"data.source": "folder", "data.path": str(tmp_path / "images")}
  )
  with pytest.raises(train.ConfigError) as info:
    train.train(config, str(tmp_path / "wd"), ddpm_digits.build)
  assert re.match(
    r"images of 1024x1024 are too large for this U-Net: the self-attention of its middle block "
    r"at 512x512 \(the lowest of config.model.ch_mult's 2 levels\) needs at least 64 x 262144\^2 "
    r"scores, 16.0 TB, more than the [\d.]+ [kMGT]B of memory",
    str(info.value),
  ), str(info.value)
  assert not (tmp_path / "wd").exists()
  resume.check_attention_memory(
    config.model, (8, 8, 1), batch_size=128, num_devices=1
  )  # the digits: fine


def test_the_suites_children_get_a_sigint_they_can_act_on():
  """tests/conftest.py: started as a background job the suite inherits SIGINT ignored, and every run.py it
  started kept it ignored, so the Ctrl-C tests (data workers, likelihood_table.py, export_diffusers.py) hung
  in `python -m pytest -q &` and passed in a terminal. Here a child reports the disposition it started
  with: the default one, whatever this process inherited."""
  import subprocess
  import sys

  probe = "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
