"""scripts/likelihood_table.py: a tiny hvae_digits trained and evaluated through run.py and its row of the table
(the end-to-end run of the new experiment); the orchestration over several experiments (one evaluation classifier,
given workdirs, the picture) with run.py stubbed; the rows of a DDPM eval.json (bound and ODE)."""

import json
import math
import os

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
