"""scripts/compare_vae_diffusion.py end to end on tiny models: both runs stop on the budget, both are evaluated with
one classifier, and compare.md / compare.png hold what the two eval.json files say."""

import json
import math
import os
import re

import numpy as np
import pytest
from PIL import Image

from tests.support import runs as support  # `runs` is a local name here

VAE_HIDDEN, VAE_LATENT = support.MLP_VAE["model.hidden"][0], support.MLP_VAE["model.latent_dim"]
VAE_MIXTURES = support.config("vae_digits").model.num_mixtures
TINY_VAE = [f"--vae_override={path}={value}" for path, value in support.MLP_VAE.items()]
TINY_DDPM = [
  f"--ddpm_override={path}={value}"
  for path, value in support.merged(
    support.UNET, {"diffusion.num_timesteps": 20, "sample.num_steps": 2}
  ).items()
]
TINY_BOTH = [
  f"--override={o}" for o in ("data.batch_size=8", "sample.num_samples=4", "eval.batch_size=8")
]


def load_script():
  return support.load_script("scripts/compare_vae_diffusion.py")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("compare") / "out")
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  with pytest.MonkeyPatch.context() as patch:  # for the run.py processes
    wanted = support.subprocess_env(cache_dir=cache)
    for name in set(os.environ) - set(wanted):
      patch.delenv(name)
    for name, value in wanted.items():
      patch.setenv(name, value)
    argv = [
      "--budget_seconds=0.2",
      f"--workdir={workdir}",
      "--num_samples=32",
      "--num_examples=8",
      "--classifier_steps=20",
      *TINY_VAE,
      *TINY_DDPM,
      *TINY_BOTH,
    ]
    runs = load_script().main(argv)
  evals = {}
  for name in ("vae_digits", "ddpm_digits"):
    with open(os.path.join(workdir, name, "eval.json")) as f:
      evals[name] = json.load(f)
  return dict(workdir=workdir, runs=runs, evals=evals)


def table(workdir):
  """compare.md's table: label -> (VAE cell, DDPM cell)."""
  with open(os.path.join(workdir, "compare.md")) as f:
    rows = [line.split(" | ") for line in f if line.startswith("| ") and not line.startswith("| |")]
  return {cells[0][2:]: (cells[1], cells[2].rstrip(" |\n")) for cells in rows}


def first_number(cell):
  return float(re.search(r"-?[\d,]*\.?\d+", cell).group(0).replace(",", ""))


@pytest.mark.slow
def test_both_runs_stop_on_the_budget_and_share_the_classifier(compared):
  for name, results in compared["evals"].items():
    workdir = os.path.join(compared["workdir"], name)
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    assert config["train"]["max_seconds"] == 0.2 and config["train"]["num_steps"] == 10**7
    step = results["checkpoint_step"]
    assert 1 <= step < 10**7 and os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
    assert os.listdir(os.path.join(workdir, "samples")) == [f"step_{step:07d}.png"]
    assert results["sample_quality"]["samples"]["num_samples"] == 32
    assert results["likelihood"]["num_examples"] == 8
  spaces = [
    {k: v for k, v in r["sample_quality"]["feature_space"].items() if k != "path"}
    for r in compared["evals"].values()
  ]
  assert spaces[0] == spaces[1] and spaces[0]["num_steps"] == 20
  # One classifier, the same real data: the real-data floors agree to the last digit.
  vae, ddpm = (r["sample_quality"] for r in compared["evals"].values())
  for key in ("fd_train_vs_test", "fd_test_halves", "is_test"):
    assert vae[key] == ddpm[key], key


@pytest.mark.slow
def test_table_holds_the_eval_json_figures(compared):
  rows = table(compared["workdir"])
  vae, ddpm = compared["evals"]["vae_digits"], compared["evals"]["ddpm_digits"]
  figures = {
    "FD samples vs test (lower is better)": "fd_samples_vs_test",
    "FD samples vs train": "fd_samples_vs_train",
    "floor: FD real train vs test, as many examples": "fd_train_vs_test",
    "floor: FD test halves": "fd_test_halves",
    "IS-like score of the samples (higher is better, at most 10)": "is_samples",
    "IS-like score of the test data": "is_test",
  }
  for label, key in figures.items():
    for cell, results in zip(rows[label], (vae, ddpm)):
      np.testing.assert_allclose(
        first_number(cell), results["sample_quality"][key], rtol=1e-3, atol=0.006
      )
  for cell, results in zip(rows["training steps reached in the budget"], (vae, ddpm)):
    assert first_number(cell) == results["checkpoint_step"]
  for cell, results in zip(rows["sampling wall time, s (compilation included)"], (vae, ddpm)):
    np.testing.assert_allclose(
      first_number(cell), results["sample_quality"]["samples"]["seconds"], atol=0.051
    )

  # The likelihoods, both of the 8-bit digits in bits/dim: the VAE's IWAE bound (its NLL in nats over D ln 2)
  # against DDPM's variational bound.
  vae_cell, ddpm_cell = rows["likelihood (as each model defines it)"]
  nll = vae["likelihood"]["nll_iwae"]
  np.testing.assert_allclose(vae["likelihood"]["bits_per_dim"], nll / (64 * math.log(2)), rtol=1e-6)
  assert re.fullmatch(
    rf"{nll / (64 * math.log(2)):.3f} bits/dim \(IWAE bound, K = 4; 8-bit test digits, .*", vae_cell
  ), vae_cell
  assert ddpm_cell.startswith(
    f"{ddpm['likelihood']['bits_per_dim']:.3f} bits/dim (variational bound; 8-bit"
  )

  # Parameters: the MLP VAE's count in closed form (encoder 64 -> h -> 2 x latent, decoder latent -> h -> 64 x 3K,
  # K logistics' logits, means and log-scales per pixel).
  h, z, d, out = VAE_HIDDEN, VAE_LATENT, 64, 64 * 3 * VAE_MIXTURES
  expected = (d * h + h) + (h * 2 * z + 2 * z) + (z * h + h) + (h * out + out)
  assert vae["num_parameters"] == expected
  assert rows["parameters"] == (f"{expected:,}", f"{ddpm['num_parameters']:,}")
  with open(os.path.join(compared["workdir"], "compare.md")) as f:
    text = f.read()
  assert "are comparable" in text and "not comparable" not in text and "WARNING" not in text


@pytest.mark.slow
def test_picture_puts_the_two_final_grids_side_by_side(compared):
  grids = []
  for name, results in compared["evals"].items():
    path = os.path.join(
      compared["workdir"], name, "samples", f"step_{results['checkpoint_step']:07d}.png"
    )
    grids.append(np.asarray(Image.open(path).convert("L")))
  with Image.open(os.path.join(compared["workdir"], "compare.png")) as im:
    picture = np.asarray(im.convert("L"))
  header = picture.shape[0] - max(g.shape[0] for g in grids)
  assert header > 0 and picture.shape[1] > grids[0].shape[1] + grids[1].shape[1]
  left = picture[header : header + grids[0].shape[0], : grids[0].shape[1]]
  right = picture[header : header + grids[1].shape[0], -grids[1].shape[1] :]
  np.testing.assert_array_equal(left, grids[0])
  np.testing.assert_array_equal(right, grids[1])
  assert picture[:header].min() < 128  # the labels are drawn


def test_bad_arguments_and_a_used_workdir_are_refused(tmp_path, capsys):
  script = load_script()
  for argv, text in (
    (["--budget_seconds=0"], "--budget_seconds"),
    (["--vae_override=train.max_seconds=3"], "train.max_seconds is set by this script"),
    (["--override=--config.seed=1"], "PATH=VALUE"),
  ):
    with pytest.raises(SystemExit):
      script.main(argv)
    assert text in capsys.readouterr().err
  os.makedirs(tmp_path / "vae_digits" / "checkpoints")
  with pytest.raises(SystemExit, match="already holds a run"):
    script.main([f"--workdir={tmp_path}"])
