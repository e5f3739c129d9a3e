"""scripts/export_diffusers.py keeps run.py's contract (issue 27, item 8): one line on stderr and a
non-zero exit before any work for an --out it cannot write and for a workdir of another
experiment, and Ctrl-C / SIGTERM end it in one line with 130 / 143, nothing exported, no
temporary folder left. Before: 16-18-line tracebacks for --out, "damaged" checkpoints blamed for
the wrong --experiment, a 66-line traceback on Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import runs

SCRIPT = os.path.join(runs.REPO, "scripts", "export_diffusers.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step ddpm_digits run with a tiny U-Net, through run.py."""
  root = tmp_path_factory.mktemp("export")
  workdir = root / "ddpm"
  env = runs.subprocess_env(cache_dir=str(root / "jax"))
  args = runs.flags("ddpm_digits", runs.UNET, runs.TWO_STEPS)
  proc = subprocess.run(
    [sys.executable, runs.RUN_PY, *args, f"--workdir={workdir}"],
    env=env,
    cwd=root,
    capture_output=True,
    text=True,
    timeout=runs.TIMEOUT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, env


def _export(env, *args, timeout=runs.TIMEOUT):
  return subprocess.run(
    [sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout
  )


def _one_line(proc):
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def test_out_that_cannot_be_written_is_refused_in_one_line(trained, tmp_path):
  workdir, env = trained
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  read_only.chmod(0o555)
  cases = [(a_file / "out", [f"--out={a_file / 'out'}", "is a file"])]
  if os.geteuid() != 0:  # root writes anywhere
    cases.append((read_only / "out", [f"--out={read_only / 'out'}", "not writable"]))
  for out, words in cases:
    proc = _export(env, "--experiment=ddpm_digits", f"--workdir={workdir}", f"--out={out}")
    line = _one_line(proc)
    assert proc.returncode == 1 and all(w in line for w in words), line


def test_a_workdir_of_another_experiment_is_named_by_its_experiment_txt(trained, tmp_path):
  workdir, env = trained
  proc = _export(env, "--experiment=ddpm_cifar", f"--workdir={workdir}", f"--out={tmp_path / 'o'}")
  line = _one_line(proc)
  assert proc.returncode == 1
  assert "holds a run of ddpm_digits" in line and "--experiment=ddpm_digits" in line, line
  assert "damaged" not in line and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_signal_ends_the_export_in_one_line_leaving_nothing(trained, tmp_path):
  """SIGINT (Ctrl-C, to the process group) and SIGTERM at several points of the export."""
  workdir, env = trained
  stopped = 0
  for i, (signum, delay) in enumerate(
    [(signal.SIGINT, 0.5), (signal.SIGTERM, 1.0), (signal.SIGINT, 1.5), (signal.SIGTERM, 2.0)]
  ):
    out = tmp_path / f"out{i}"
    with open(tmp_path / "err.txt", "w") as err:
      proc = subprocess.Popen(
        [
          sys.executable,
          SCRIPT,
          "--experiment=ddpm_digits",
          f"--workdir={workdir}",
          f"--out={out}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
      )
    try:
      time.sleep(delay)
      if proc.poll() is None:
        os.killpg(proc.pid, signum)
      status = proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    text = (tmp_path / "err.txt").read_text()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export-")], text
    if status == 0:  # the export was done before the signal: whole
      assert (out / "unet" / "config.json").exists()
      continue
    assert status == 128 + signum, text[-3000:]
    stopped += 1
    assert "Traceback" not in text and not out.exists(), text[-3000:]
    assert text.strip().splitlines()[-1] == (
      f"export_diffusers: {signal.Signals(signum).name} received: stopped; nothing was exported"
    )
  assert stopped >= 2  # an export takes about 3 s here: most signals land in it
