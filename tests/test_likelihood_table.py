"""scripts/likelihood_table.py: tiny hvae_digits and vae_digits trained through run.py on one budget, evaluated with
one classifier, and the table holding what their eval.json files say; the rows of a DDPM eval.json (bound and ODE)."""

import json
import math
import os

import numpy as np
import pytest

from tests.support import runs as support

TINY = {
  "hvae_digits": support.HVAE,
  "vae_digits": support.MLP_VAE,
}


def load_script():
  return support.load_script("scripts/likelihood_table.py")


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("table") / "out")
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  overrides = [
    f"--override={name}:{path}={value}"
    for name, tiny in TINY.items()
    for path, value in tiny.items()
  ]
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
        "--experiments=hvae_digits,vae_digits",
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
def test_both_train_evaluate_and_fill_the_table(table_run):
  workdir, rows = table_run
  assert [r["experiment"] for r in rows] == ["hvae_digits", "vae_digits"]
  with open(os.path.join(workdir, "table.md")) as f:
    lines = [line for line in f if line.startswith("| ") and "`" in line]
  assert len(lines) == 2
  for row, line in zip(rows, lines):
    with open(os.path.join(workdir, row["experiment"], "eval.json")) as f:
      results = json.load(f)
    likelihood = results["likelihood"]
    assert likelihood["num_examples"] == 8 and likelihood["data"] == "digits/test"
    assert math.isfinite(likelihood["bits_per_dim"]) and likelihood["bits_per_dim"] > 0
    # bits/dim is the IWAE NLL in nats over D ln 2, D = 64
    np.testing.assert_allclose(
      likelihood["bits_per_dim"], likelihood["nll_iwae"] / (64 * math.log(2)), rtol=1e-6
    )
    assert "K=4" in likelihood["setup"]["nll_iwae"]
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert cells[1] == f"{likelihood['bits_per_dim']:.3f}"
    assert cells[3] == f"{results['num_parameters']:,}"
    assert cells[5] == f"{results['sample_quality']['fd_samples_vs_test']:.2f}"
    assert cells[2].startswith(f"{results['checkpoint_step']:,} steps, ")
  # one evaluation classifier for both rows (the second run reused the first's)
  assert rows[0]["feature_space"] == rows[1]["feature_space"]
  text = open(os.path.join(workdir, "table.md")).read()
  assert "WARNING" not in text
  assert os.path.isfile(os.path.join(workdir, "samples.png"))
  # the hierarchy's KL warm-up over 2 steps reached the loss through the train step
  with open(os.path.join(workdir, "hvae_digits", "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["kl_weight"] for r in records[:2]] == [0.0, 0.5]
  assert all(r["skipped_large_grad_steps"] == 0 for r in records)


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
