"""End-to-end tests of the command line, run.py, in subprocesses (tiny configs, CPU).

Each run gets its own temporary working directory, so the default runs/ folder lands there.
"""

import concurrent.futures
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.support import runs

EXPERIMENTS = runs.EXPERIMENTS

TOY2D = runs.flags(
  "ddpm_toy2d",
  runs.TOY2D,
  {"train.checkpoint_every": 2, "eval.batch_size": 100, "eval.num_examples": 100},
)
DIGITS = runs.DIGITS_RUN

env = runs.env_fixture()
run = runs.run_py


def load_npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow  # four run.py launches, ~12 s
def test_toy2d_train_resume_sample_eval_with_default_workdir(env, tmp_path):
  cwd = str(tmp_path)
  run(env, cwd, *TOY2D, "--config.train.num_steps=2")
  found = os.listdir(os.path.join(cwd, "runs"))
  assert len(found) == 1 and found[0].startswith("ddpm_toy2d-"), found
  workdir = os.path.join(cwd, "runs", found[0])
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]

  result = run(env, cwd, *TOY2D, "--config.train.num_steps=4", f"--workdir={workdir}")
  assert "Resuming" in result.stdout and "from step 2" in result.stdout
  assert "4" in os.listdir(os.path.join(workdir, "checkpoints"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]

  # An older, empty run of the same experiment must not be picked: sample uses the newest.
  decoy = os.path.join(cwd, "runs", "ddpm_toy2d-19990101-000000")
  os.makedirs(decoy)
  os.utime(decoy, (1e9, 1e9))
  result = run(env, cwd, *TOY2D, "--mode=sample", "--num_samples=10")
  assert f"Using the newest workdir: runs/{found[0]}" in result.stdout
  arrays = load_npz(os.path.join(workdir, "samples.npz"))
  assert list(arrays) == ["points"]
  assert arrays["points"].dtype == np.float32 and arrays["points"].shape == (10, 2)
  assert np.all(np.isfinite(arrays["points"]))
  assert Image.open(os.path.join(workdir, "samples.png")).size[0] > 0
  assert os.listdir(decoy) == []

  run(env, cwd, *TOY2D, "--mode=eval", f"--workdir={workdir}")
  with open(os.path.join(workdir, "eval.json")) as f:
    results = json.load(f)
  likelihood = results["likelihood"]
  assert results["checkpoint_step"] == 4 and likelihood["num_examples"] == 100
  assert np.isfinite(likelihood["loss"]) and likelihood["split"] == "test"
  assert "points" in results["sample_quality"]["skipped"]


@pytest.mark.slow
def test_digits_train_resume_sample_eval(env, tmp_path, tmp_path_factory):
  """The 2-step run is the session's shared one (tests/test_docs.py loads it too); resumed on a copy."""
  trained = runs.trained_digits_workdir(env, tmp_path_factory)
  assert os.listdir(os.path.join(trained, "checkpoints")) == ["2"]
  assert os.path.isfile(os.path.join(trained, "samples", "step_0000002.png"))
  cwd, workdir = str(tmp_path), runs.copy_workdir(trained, tmp_path / "wd")

  result = run(env, cwd, *DIGITS, "--config.train.num_steps=3", f"--workdir={workdir}")
  assert "Resuming" in result.stdout
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]

  result = run(
    env,
    cwd,
    *DIGITS,
    "--mode=sample",
    "--num_samples=10",
    "--sampler=ddim",
    "--sampling_steps=2",
    f"--workdir={workdir}",
  )
  assert "sampler ddim" in result.stdout and "step 3" in result.stdout
  arrays = load_npz(os.path.join(workdir, "samples.npz"))
  assert list(arrays) == ["images"]
  assert arrays["images"].dtype == np.uint8 and arrays["images"].shape == (10, 8, 8, 1)
  with Image.open(os.path.join(workdir, "samples.png")) as im:
    assert im.size[0] >= 8 and im.size[1] >= 8

  quality_flags = ["--config.eval.num_samples=32", "--config.eval.classifier_steps=20"]
  result = run(
    env,
    cwd,
    *DIGITS,
    "--mode=eval",
    f"--workdir={workdir}",
    *quality_flags,
    "--sampler=ddim",
    "--sampling_steps=3",
  )
  with open(os.path.join(workdir, "eval.json")) as f:
    results = json.load(f)
  assert results["checkpoint_step"] == 3 and results["parameters"] == "ema"
  likelihood = results["likelihood"]
  assert (
    likelihood["num_examples"] == 8
    and likelihood["split"] == "test"
    and likelihood["data"] == "digits/test"
  )
  assert (
    np.isfinite(likelihood["loss"])
    and np.isfinite(likelihood["bits_per_dim"])
    and likelihood["bits_per_dim"] > 0
  )
  assert "T=50" in likelihood["setup"]["bits_per_dim"] and "L_simple" in likelihood["setup"]["loss"]
  quality = results["sample_quality"]
  for key in ("fd_samples_vs_test", "fd_samples_vs_train", "fd_train_vs_test", "fd_test_halves"):
    assert np.isfinite(quality[key]) and quality[key] >= -1e-6, (key, quality[key])
  assert 1.0 <= quality["is_samples"] <= 10.0 and 1.0 <= quality["is_test"] <= 10.0
  assert quality["samples"].pop("seconds") > 0
  assert quality["samples"] == {
    "num_samples": 32,
    "sampler": "ddim",
    "num_steps": 3,
    "network_calls": 3,
    "eta": 0.0,
    "checkpoint_step": 3,
    "parameters": "ema",
    "processing": "rounded to the 8-bit grid, as saved images",
  }
  space = quality["feature_space"]
  assert (
    space["num_steps"] == 20
    and 0.0 <= space["test_accuracy"] <= 1.0
    and space["data"] == "digits/train"
  )
  assert quality["reference"]["test"] == "all 360 examples of digits/test"
  assert "inception" not in results  # grayscale data: no Inception section unless weights are given
  assert os.path.isfile(os.path.join(workdir, "eval_classifier", "params.npz"))
  for text in ("bits/dim", "L_simple", "test halves", "IS-like", "eval.json"):
    assert text in result.stdout, text

  result = run(
    env,
    cwd,
    *DIGITS,
    "--mode=eval",
    f"--workdir={workdir}",
    *quality_flags,
    "--sampler=nope",
    check=False,
  )
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert any("--sampler=nope" in line for line in result.stderr.splitlines()), result.stderr
  assert not os.path.exists(os.path.join(cwd, "runs"))


# ----------------------------------------------------------------------------------------------------------------
# Bad input: a clear one-line error, a non-zero exit, nothing written. All cases run concurrently.


def _image(path, size):
  Image.fromarray(np.zeros((size, size), np.uint8)).save(path)


def _setup_empty_folder(cwd):
  os.makedirs(os.path.join(cwd, "images"))


def _setup_mixed_folder(cwd):
  os.makedirs(os.path.join(cwd, "images"))
  _image(os.path.join(cwd, "images", "a.png"), 8)
  _image(os.path.join(cwd, "images", "b.png"), 10)


def _setup_empty_workdir(cwd):
  os.makedirs(os.path.join(cwd, "wd"))


# name -> (arguments, set-up, texts that one line of stderr must contain, extra environment)
BAD_INPUTS = {
  "unknown_experiment": (
    ["--experiment=no_such_experiment", "--workdir=wd"],
    None,
    ["unknown --experiment", "no_such_experiment"],
    None,
  ),
  "unknown_config_key": (
    ["--experiment=ddpm_toy2d", "--config.train.num_stepz=3"],
    None,
    ["--config.train.num_stepz", "num_steps", "checkpoint_every"],
    None,
  ),
  "unknown_config_section": (
    ["--experiment=ddpm_toy2d", "--config.trainn.num_steps=3", "--workdir=wd"],
    None,
    ["--config.trainn", "train", "optim"],
    None,
  ),
  "wrong_type": (
    ["--experiment=ddpm_toy2d", "--config.data.batch_size=abc", "--workdir=wd"],
    None,
    ["--config.data.batch_size", "abc"],
    None,
  ),
  "negative_steps": (
    ["--experiment=ddpm_toy2d", "--config.train.num_steps=-3"],
    None,
    ["--config.train.num_steps", "positive"],
    None,
  ),
  "batch_not_divisible_by_devices": (
    ["--experiment=ddpm_toy2d", "--config.data.batch_size=3", "--workdir=wd"],
    None,
    ["--config.data.batch_size=3", "number of devices (2)"],
    {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
  ),
  "sample_without_checkpoint": (
    ["--experiment=ddpm_toy2d", "--mode=sample", "--workdir=wd"],
    _setup_empty_workdir,
    ["--mode=sample", "no checkpoint"],
    None,
  ),
  "sample_without_any_run": (
    ["--experiment=ddpm_toy2d", "--mode=sample"],
    None,
    ["--mode=sample", "train first"],
    None,
  ),
  "unknown_tfds_dataset": (
    ["--experiment=ddpm_mnist", "--config.data.name=not_a_dataset"],
    None,
    ["not_a_dataset", "--config.data.name"],
    None,
  ),
  "empty_image_folder": (
    [
      "--experiment=ddpm_digits",
      "--config.data.source=folder",
      "--config.data.path=images",
      "--workdir=wd",
    ],
    _setup_empty_folder,
    ["images", "no images"],
    None,
  ),
  "mixed_image_sizes": (
    [
      "--experiment=ddpm_digits",
      "--config.data.source=folder",
      "--config.data.path=images",
      "--workdir=wd",
    ],
    _setup_mixed_folder,
    ["b.png", "10x10", "8x8", "same size"],
    None,
  ),
}


RUNS = dict(BAD_INPUTS, helpfull=(["--helpfull"], None, [], None))


@pytest.fixture(scope="module")
def bad_input_results(env, tmp_path_factory):
  base = tmp_path_factory.mktemp("bad")

  def one(name):
    args, setup, _, extra_env = RUNS[name]
    cwd = str(base / name)
    os.makedirs(cwd)
    if setup:
      setup(cwd)
    before = sorted(os.listdir(cwd))
    result = run(env, cwd, *args, extra_env=extra_env, check=False)
    return result, cwd, before

  names = list(RUNS)
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    return dict(zip(names, pool.map(one, names)))


@pytest.mark.parametrize("name", list(BAD_INPUTS))
@pytest.mark.slow
def test_bad_input_fails_cleanly(bad_input_results, name):
  result, cwd, before = bad_input_results[name]
  texts = BAD_INPUTS[name][2]
  assert result.returncode != 0, result.stdout
  assert "Traceback" not in result.stderr, result.stderr
  assert any(all(t in line for t in texts) for line in result.stderr.splitlines()), result.stderr
  # Nothing half-written: no workdir, no runs/, and a pre-existing workdir stays as it was.
  assert sorted(os.listdir(cwd)) == before
  if os.path.isdir(os.path.join(cwd, "wd")):
    assert os.listdir(os.path.join(cwd, "wd")) == []


@pytest.mark.slow
def test_unknown_experiment_lists_experiments(bad_input_results):
  result = bad_input_results["unknown_experiment"][0]
  for name in EXPERIMENTS:
    assert name in result.stderr


@pytest.mark.slow
def test_helpfull_lists_every_experiment(bad_input_results):
  result = bad_input_results["helpfull"][0]
  out = result.stdout + result.stderr
  assert "--experiment" in out and "--config" in out and "--sampling_steps" in out
  for name in EXPERIMENTS:
    assert f"  {name} " in out, name
