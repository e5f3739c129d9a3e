"""run_setup.open_run's start-up checks (issue 27 items 9 and 10): data the model could train on and then fail
to draw or trace is refused before anything is written; sample and eval read a checkpoint on any device count.
"""

import json
import os

import numpy as np
import pytest

from gen_jax import models
from gen_jax.data import DataError
from gen_jax.train import run_setup, sharding
from tests.support import runs

pytestmark = pytest.mark.usefixtures("fast_compile")


def _npz(tmp_path, shape):
  path = tmp_path / "images.npz"
  rng = np.random.default_rng(0)
  np.savez(path, images=rng.integers(0, 256, size=shape, dtype=np.uint8))
  return str(path)


def _digits_on(path):
  return runs.config(
    "ddpm_digits",
    runs.TWO_STEPS,
    runs.DIGITS_UNET,
    {"data.source": "npz", "data.path": path, "model.num_classes": 0},
  )


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_images_a_png_cannot_hold_are_refused_before_anything_is_written(tmp_path, mode):
  """5-channel images: before, accepted; training ran, then every sample grid (and --mode=sample) died in a
  40-line PIL traceback."""
  config = _digits_on(_npz(tmp_path, (16, 8, 8, 5)))
  workdir = tmp_path / "run"
  if mode == "eval":  # a workdir with a checkpoint to evaluate
    (workdir / "checkpoints" / "0").mkdir(parents=True)
  with pytest.raises(DataError, match=r"images\.npz.*have 5 channels.*1-4 channels") as raised:
    run_setup.open_run(config, str(workdir), models.make_unet_diffusion, mode)
  assert str(raised.value).startswith(f"config.data.path={config.data.path}: ")
  if mode == "train":
    assert not workdir.exists()


def test_sample_refuses_a_workdir_of_images_a_png_cannot_hold(tmp_path):
  """A workdir trained on 5-channel images before the check above: --mode=sample died in PIL after sampling."""
  config = runs.config("ddpm_digits", runs.TWO_STEPS, runs.DIGITS_UNET)
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "0").mkdir(parents=True)
  (workdir / "data_spec.json").write_text(json.dumps({"kind": "image", "example_shape": [8, 8, 5]}))
  with pytest.raises(DataError, match=r"data_spec\.json\): the images have 5 channels"):
    run_setup.open_run(config, str(workdir), models.make_unet_diffusion, "sample")


@pytest.mark.slow
def test_images_the_unet_cannot_halve_are_refused_by_size(tmp_path):
  """7x7 images for a U-Net of two levels: before, a 34-line concatenate traceback from tracing the model."""
  config = _digits_on(_npz(tmp_path, (16, 7, 7, 1)))
  workdir = tmp_path / "run"
  with pytest.raises(
    DataError,
    match=r"images are 7x7, but the U-Net \(config\.model\.ch_mult=\(1, 2\)\) halves them 1 "
    r"time\(s\), so their height and width must be multiples of 2",
  ):
    run_setup.open_run(config, str(workdir), models.make_unet_diffusion, "train")
  assert not workdir.exists()
  # 8x8 and any number of channels a PNG holds are fine.
  for shape in ((16, 8, 8, 3), (16, 8, 8, 2)):
    run = run_setup.open_run(
      _digits_on(_npz(tmp_path, shape)),
      str(tmp_path / f"ok{shape[-1]}"),
      models.make_unet_diffusion,
    )
    run.checkpoints.close()


@pytest.mark.parametrize("mode", ["sample", "eval"])
def test_sample_and_eval_read_an_fsdp_run_on_fewer_devices(tmp_path, mode):
  """A run trained with mesh.fsdp=4 on 4 devices, read on this one device with no flags: before, refused with
  'config.mesh.fsdp=4 must be a positive divisor of the number of devices (1)', a value from its config.json."""
  config = runs.config("ddpm_digits", runs.TWO_STEPS, runs.DIGITS_UNET, {"mesh.fsdp": 4})
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "0").mkdir(parents=True)
  (workdir / "data_spec.json").write_text(json.dumps({"kind": "image", "example_shape": [8, 8, 1]}))
  run = run_setup.open_run(config, str(workdir), models.make_unet_diffusion, mode)
  run.checkpoints.close()
  assert run.mesh.shape[sharding.FSDP_AXIS] == sharding.reading_fsdp(4) == 1
  assert sorted(os.listdir(workdir)) == ["checkpoints", "data_spec.json"]  # nothing written
  # Training still lays the state out as asked, and says so.
  with pytest.raises(Exception, match=r"config\.mesh\.fsdp=4 must be a positive divisor"):
    run_setup.open_run(config, str(tmp_path / "train"), models.make_unet_diffusion, "train")
