"""The workdir lock and the workdir checks refuse what is in their way in one line naming the path
(issue 27, item 6): `.lock` or `lock.json` a folder, the workdir a dangling symbolic link or a
file. Before: IsADirectoryError tracebacks of 23-28 lines, and `not writable (File exists)`."""

import os
import subprocess
import sys

import pytest

from gen_jax.configs import ConfigError
from gen_jax.train import workdir as workdir_lib
from gen_jax.train import workdir_lock
from tests.support import runs


@pytest.mark.parametrize("name", [workdir_lock.LOCK_FILE, workdir_lock.OWNER_FILE])
def test_lock_file_that_is_a_folder_is_refused_naming_it(tmp_path, name):
  (tmp_path / name).mkdir()
  with pytest.raises(ConfigError) as e:
    workdir_lock.acquire(str(tmp_path))
  message = str(e.value)
  assert str(tmp_path / name) in message and "is a folder" in message and "\n" not in message
  assert sorted(os.listdir(tmp_path)) == [name]  # nothing else written


def test_lock_still_taken_and_released(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path))
  assert os.path.exists(tmp_path / workdir_lock.OWNER_FILE)
  lock.release()
  assert not os.path.exists(tmp_path / workdir_lock.OWNER_FILE)


def test_dangling_symlink_workdir_is_refused_naming_the_target(tmp_path):
  link, target = tmp_path / "wd", tmp_path / "gone"
  os.symlink(target, link)
  with pytest.raises(ConfigError) as e:
    workdir_lib.prepare_workdir(str(link))
  message = str(e.value)
  assert f"workdir={link}" in message and str(target) in message and "does not exist" in message
  assert "File exists" not in message


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "wd"
  path.write_text("")
  with pytest.raises(ConfigError, match="is a file, not a folder"):
    workdir_lib.prepare_workdir(str(path))


@pytest.mark.slow
def test_run_py_says_one_line_when_lock_json_is_a_folder(tmp_path):
  workdir = tmp_path / "wd"
  (workdir / workdir_lock.OWNER_FILE).mkdir(parents=True)
  args = runs.flags("ddpm_toy2d", runs.TOY2D, {"train.num_steps": 1})
  proc = subprocess.run(
    [sys.executable, runs.RUN_PY, *args, f"--workdir={workdir}", "--nocompilation_cache"],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=runs.TIMEOUT,
  )
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0
  assert len(lines) == 1, proc.stderr
  assert str(workdir / workdir_lock.OWNER_FILE) in lines[0] and "is a folder" in lines[0]
  assert "Traceback" not in proc.stderr
