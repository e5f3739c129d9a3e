"""scripts/likelihood_table.py: a tiny hvae_digits trained and evaluated through run.py and its row of the table
(the end-to-end run of the new experiment); the orchestration over several experiments (one evaluation classifier,
given workdirs, the picture) with run.py stubbed; the rows of a DDPM eval.json (bound and ODE)."""

import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support import runs as support


def load_script():
  return support.load_script("scripts/likelihood_table.py")


@pytest.fixture(scope="module")
def table_run(request, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("table") / "out")
  # the test session's compilation cache (tests/conftest.py), else one of this module's own
  cache = getattr(request.config, "cache", None)
  cache = str(cache.mkdir("jax_compilation_cache") if cache else tmp_path_factory.mktemp("jax"))
  overrides = [f"--override=hvae_digits:{path}={value}" for path, value in support.HVAE.items()]
  overrides += [
    f"--override={o}"
    for o in ("data.batch_size=8", "sample.num_samples=4", "eval.batch_size=8", "train.log_every=1")
  ]
  with pytest.MonkeyPatch.context() as patch:  # for the run.py processes
    wanted = support.subprocess_env(cache_dir=cache)
    for name in set(os.environ) - set(wanted):
      patch.delenv(name)
    for name, value in wanted.items():
      patch.setenv(name, value)
    rows = load_script().main(
      [
        "--experiments=hvae_digits",
        "--budget_seconds=0.5",
        f"--workdir={workdir}",
        "--num_samples=16",
        "--num_examples=8",
        "--classifier_steps=10",
        *overrides,
      ]
    )
  return workdir, rows


@pytest.mark.slow
def test_hvae_trains_evaluates_and_fills_its_row(table_run):
  workdir, rows = table_run
  assert [r["experiment"] for r in rows] == ["hvae_digits"]
  with open(os.path.join(workdir, "table.md")) as f:
    lines = [line for line in f if line.startswith("| ") and "`" in line]
  with open(os.path.join(workdir, "hvae_digits", "eval.json")) as f:
    results = json.load(f)
  likelihood = results["likelihood"]
  assert likelihood["num_examples"] == 8 and likelihood["data"] == "digits/test"
  assert math.isfinite(likelihood["bits_per_dim"]) and likelihood["bits_per_dim"] > 0
  # bits/dim is the IWAE NLL in nats over D ln 2, D = 64
  np.testing.assert_allclose(
    likelihood["bits_per_dim"], likelihood["nll_iwae"] / (64 * math.log(2)), rtol=1e-6
  )
  assert "K=4" in likelihood["setup"]["nll_iwae"]
  cells = [c.strip() for c in lines[0].strip().strip("|").split("|")]
  assert len(lines) == 1 and cells[0] == "hierarchical VAE: IWAE bound (`hvae_digits`)"
  assert cells[1] == f"{likelihood['bits_per_dim']:.3f}"
  assert cells[3] == f"{results['num_parameters']:,}"
  assert cells[5] == f"{results['sample_quality']['fd_samples_vs_test']:.2f}"
  assert cells[2].startswith(f"{results['checkpoint_step']:,} steps, ")
  assert os.path.isfile(os.path.join(workdir, "samples.png"))
  # the hierarchy's KL warm-up over 2 steps reached the loss through the train step
  with open(os.path.join(workdir, "hvae_digits", "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["kl_weight"] for r in records[:2]] == [0.0, 0.5]
  assert all(r["skipped_large_grad_steps"] == 0 for r in records)


def test_several_experiments_share_one_classifier_and_given_runs_are_not_trained(
  tmp_path, monkeypatch
):
  """run.py stubbed: it records its calls, 'trains' (a checkpoint and a grid) and 'evaluates' (an eval.json whose
  feature space is the evaluation classifier found in the workdir, trained there when absent)."""
  from PIL import Image

  script = load_script()
  calls = []

  def fake_run_py(experiment, workdir, mode, flags):
    calls.append((experiment, mode))
    if mode == "train":
      os.makedirs(os.path.join(workdir, "checkpoints", "7"))
      os.makedirs(os.path.join(workdir, "samples"))
      Image.new("L", (10, 10), 128).save(os.path.join(workdir, "samples", "step_0000007.png"))
    else:
      classifier = os.path.join(workdir, "eval_classifier")
      if not os.path.isdir(classifier):
        os.makedirs(classifier)
        with open(os.path.join(classifier, "id"), "w") as f:
          f.write(experiment)
      with open(os.path.join(classifier, "id")) as f:
        trained_by = f.read()
      results = {
        "checkpoint_step": 7,
        "num_parameters": 10,
        "likelihood": {"bits_per_dim": 3.0, "num_examples": 8, "data": "digits/test"},
        "sample_quality": {"feature_space": {"trained_by": trained_by, "path": classifier}},
      }
      with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(results, f)
    return 1.5

  monkeypatch.setattr(script, "run_py", fake_run_py)
  given = tmp_path / "given"
  os.makedirs(given / "checkpoints" / "3")
  os.makedirs(given / "samples")
  Image.new("L", (10, 10), 0).save(given / "samples" / "step_0000003.png")
  rows = script.main(
    [
      f"--workdir={tmp_path / 'out'}",
      "--experiments=vae_digits,hvae_digits,ddpm_digits",
      f"--run=hvae_digits={given}",
    ]
  )
  assert calls == [
    ("vae_digits", "train"),
    ("ddpm_digits", "train"),
    ("vae_digits", "eval"),
    ("hvae_digits", "eval"),
    ("ddpm_digits", "eval"),
  ]
  assert {r["feature_space"]["trained_by"] for r in rows} == {"vae_digits"}
  assert [r["train_seconds"] for r in rows] == [1.5, None, 1.5]
  text = (tmp_path / "out" / "table.md").read_text()
  assert "WARNING" not in text
  assert "| 7 steps, 2 s | 10 |" in text and "| 7 steps | 10 |" in text
  picture = np.asarray(Image.open(tmp_path / "out" / "samples.png"))
  assert picture.shape[1] > 30  # three grids side by side


def test_rows_of_a_diffusion_eval_json_and_refused_arguments(tmp_path, capsys):
  script = load_script()
  results = {
    "checkpoint_step": 2500,
    "num_parameters": 284_513,
    "seconds": {"likelihood": 100.0},
    "likelihood": {
      "bits_per_dim": 4.93,
      "ode_bits_per_dim": 4.1,
      "loss": 0.07,
      "num_examples": 360,
      "data": "digits/test",
      "setup": {"bits_per_dim": "the full variational bound", "ode_bits_per_dim": "the ODE"},
    },
    "sample_quality": {
      "fd_samples_vs_test": 23.5,
      "is_samples": 8.9,
      "samples": {"sampler": "ddim", "network_calls": 100, "seconds": 30.0, "num_samples": 1000},
      "feature_space": {"feature_dim": 64, "num_steps": 1000, "path": "x"},
    },
  }
  rows = script.figure_rows("ddpm_digits", results, {"seconds": 150.0})
  assert [r["model"] for r in rows] == ["DDPM: variational bound", "DDPM: probability-flow ODE"]
  table = script.markdown(rows, "cmd")
  assert (
    "| DDPM: probability-flow ODE (`ddpm_digits`) | 4.100 | 2,500 steps, 150 s | 284,513 | 100, 30.0 s "
    "| 23.50 | 8.90 |" in table
  )
  for argv, text in (
    (["--experiments=nope"], "unknown experiment"),
    (["--override=train.max_seconds=3"], "set by this script"),
    (["--experiments=vae_digits", f"--run=vae_digits={tmp_path}"], "holds no checkpoints"),
  ):
    with pytest.raises(SystemExit):
      script.main(argv)
    assert text in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Issue 27, item 8: refusals in one line before any work, and signals that end the run.py child too.


def _stub_run_py(calls):
  def fake_run_py(experiment, workdir, mode, flags):
    calls.append((experiment, mode))
    os.makedirs(os.path.join(workdir, "eval_classifier"), exist_ok=True)
    results = {
      "checkpoint_step": 3,
      "num_parameters": 10,
      "likelihood": {"bits_per_dim": 3.0, "num_examples": 8, "data": "digits/test"},
    }
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(results, f)
    return 1.0

  return fake_run_py


def test_workdir_that_is_a_file_and_point_experiments_are_refused_in_one_line(
  tmp_path, monkeypatch, capsys
):
  """Before: a FileExistsError traceback (7 lines); ddpm_toy2d exited 0 with an empty table."""
  script = load_script()
  calls = []
  monkeypatch.setattr(script, "run_py", _stub_run_py(calls))
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  for argv, words in [
    ([f"--workdir={a_file}", "--experiments=vae_digits"], [f"--workdir={a_file}", "is a file"]),
    ([f"--workdir={tmp_path / 'out'}", "--experiments=ddpm_toy2d"], ["ddpm_toy2d", "2-D points"]),
  ]:
    with pytest.raises(SystemExit) as e:
      script.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
  assert calls == [] and not (tmp_path / "out").exists()


def test_given_run_without_samples_is_noted_first_and_evaluated(tmp_path, monkeypatch, capsys):
  """An imported --pretrained run has no samples/: before, a FileNotFoundError traceback after
  every evaluation; now a note before the work, and the table without its picture."""
  script = load_script()
  calls = []
  monkeypatch.setattr(script, "run_py", _stub_run_py(calls))
  given = tmp_path / "given"
  os.makedirs(given / "checkpoints" / "3")
  rows = script.main(
    [f"--workdir={tmp_path / 'out'}", "--experiments=ddpm_digits", f"--run=ddpm_digits={given}"]
  )
  out = capsys.readouterr().out
  assert out.index("no samples/step_*.png") < out.index("| DDPM")
  assert calls == [("ddpm_digits", "eval")] and len(rows) == 1
  assert (tmp_path / "out" / "table.md").exists() and not (
    tmp_path / "out" / "samples.png"
  ).exists()


def _pid_exists(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_py_child_and_the_script_in_one_line(tmp_path, signum):
  """SIGTERM to the script (as `timeout` sends it) or SIGINT to its process group (Ctrl-C). Before:
  SIGTERM left run.py training as an orphan holding the workdir lock; Ctrl-C a traceback."""
  workdir = tmp_path / "out"
  overrides = [f"--override={p}={v}" for p, v in support.UNET.items()]
  overrides += [
    f"--override={o}" for o in ("data.batch_size=4", "sample.num_samples=4", "train.log_every=1")
  ]
  env = support.subprocess_env(cache_dir=str(tmp_path / "jax"))
  with open(tmp_path / "err.txt", "w") as err:
    proc = subprocess.Popen(
      [
        sys.executable,
        os.path.join(support.REPO, "scripts", "likelihood_table.py"),
        "--experiments=ddpm_digits",
        "--budget_seconds=600",
        f"--workdir={workdir}",
        *overrides,
      ],
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=err,
      start_new_session=True,  # its own process group, as a terminal's foreground job
    )
  owner = workdir / "ddpm_digits" / "lock.json"
  metrics = workdir / "ddpm_digits" / "metrics.jsonl"
  child = None
  try:
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
      time.sleep(0.5)
      try:
        child = child or json.loads(owner.read_text())["pid"]
      except (OSError, ValueError, KeyError):
        pass
      if child and metrics.exists() and metrics.stat().st_size:  # training
        break
    assert child is not None and metrics.exists(), (tmp_path / "err.txt").read_text()
    start = time.time()
    if signum == signal.SIGINT:
      os.killpg(proc.pid, signum)
    else:
      proc.send_signal(signum)
    status = proc.wait(timeout=120)
    seconds = time.time() - start
  finally:
    for pid in (proc.pid, child):
      if pid is not None and _pid_exists(pid):
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
  err = (tmp_path / "err.txt").read_text()
  assert status == 128 + signum, err[-2000:]
  # run.py finished its step, saved and released the workdir lock
  assert not _pid_exists(child) and not owner.exists()
  with open(workdir / "ddpm_digits" / ".lock") as f:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  assert os.listdir(workdir / "ddpm_digits" / "checkpoints")
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"likelihood_table: {signal.Signals(signum).name} received"), last
  assert f"--run=ddpm_digits={workdir / 'ddpm_digits'}" in last
  assert seconds < 60
