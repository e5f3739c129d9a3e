"""vdm_digits end to end through run.py (tiny U-Net, CPU): train (with its sample grid), then --mode=eval writing
the bound in bits/dim on the 8-bit digits test split, as the DDPM experiments do."""

import json
import os

import numpy as np
import pytest

from tests.support import runs

VDM_DIGITS = runs.flags(
  "vdm_digits",
  runs.UNET,
  runs.TWO_STEPS,
  runs.VDM,
  {"eval.num_samples": 16, "eval.classifier_steps": 10},
)

env = runs.env_fixture()


@pytest.mark.slow
def test_vdm_digits_train_sample_eval(env, tmp_path):
  cwd, workdir = str(tmp_path), str(tmp_path / "wd")
  runs.run_py(env, cwd, *VDM_DIGITS, f"--workdir={workdir}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [1, 2]
  for r in records:  # the loss is the bound in bits/dim, its terms logged beside it
    assert abs(r["loss"] - (r["diffusion"] + r["prior"] + r["reconstruction"])) < 1e-4 * r["loss"]
    assert r["gamma_0"] < r["gamma_1"]

  # the grid drawn while training: ancestral sampling on the learned schedule, 8-bit images
  assert os.path.isfile(os.path.join(workdir, "samples", "step_0000002.png"))

  runs.run_py(env, cwd, *VDM_DIGITS, "--mode=eval", f"--workdir={workdir}")
  with open(os.path.join(workdir, "eval.json")) as f:
    results = json.load(f)
  likelihood = results["likelihood"]
  assert likelihood["split"] == "test" and likelihood["data"] == "digits/test"
  assert likelihood["num_examples"] == 8  # eval.num_examples: the first 8, as DDPM's eval
  terms = likelihood["diffusion"] + likelihood["prior"] + likelihood["reconstruction"]
  assert 0 < likelihood["bits_per_dim"] and abs(likelihood["bits_per_dim"] - terms) < 1e-4
  assert "8-bit grid" in likelihood["setup"]["bits_per_dim"]
  assert "2 stratified times" in likelihood["setup"]["diffusion"]
  quality = results["sample_quality"]
  assert np.isfinite(quality["fd_samples_vs_test"]) and quality["samples"]["num_steps"] == 2
