"""The Colab notebook runs top to bottom (on CPU, a tiny offline config), so it never rots."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support import runs

REPO = runs.REPO
NOTEBOOK = os.path.join(REPO, "notebooks", "colab_tpu.ipynb")

pytestmark = pytest.mark.slow  # a kernel, a two-step training run and an evaluation


def test_colab_notebook_executes(tmp_path, monkeypatch):
  overrides = runs.merged(
    runs.UNET,  # the notebook's path, not the network, is the question: the smallest U-Net
    {"diffusion.num_timesteps": 20, "data.batch_size": 8, "sample.num_samples": 4},
    {"sample.num_steps": 2, "eval.batch_size": 16, "eval.num_examples": 16},
    {"eval.num_samples": 16, "eval.classifier_steps": 20},
  )
  workdir = tmp_path / "run"
  monkeypatch.setenv("NOTEBOOK_EXPERIMENT", "ddpm_digits")
  monkeypatch.setenv("NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("NOTEBOOK_NUM_STEPS", "2")
  monkeypatch.setenv("NOTEBOOK_OVERRIDES", json.dumps(overrides))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(
    notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()

  outputs = [
    o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
  ]
  assert any(
    o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs
  ), "the sample grid is shown inline"
  with open(workdir / "eval.json") as f:
    results = json.load(f)
  assert results["likelihood"]["num_examples"] == 16 and results["likelihood"]["bits_per_dim"] > 0
  assert (workdir / "checkpoints" / "2").is_dir()
