"""Tests of gen_jax.data's sources and validation (gen_jax/data/sources.py, validation.py): the `data` config,
TFDS (mock data), .npz files and image folders, and the one-line errors that name the file.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from gen_jax import data
from tests.support.runs import REPO, data_config, load_script

# ---------------------------------------------------------------------------------------------------------------
# config validation


def test_config_errors():
  with pytest.raises(data.DataError, match="digits"):  # lists the allowed sources
    data.load_dataset(data_config(source="imagenet"), "train")
  with pytest.raises(data.DataError, match="split"):
    data.load_dataset(data_config(), "validation")
  with pytest.raises(data.DataError, match="data.path"):
    data.load_dataset(data_config(source="npz"), "train")
  assert data.load_dataset(data_config(), "train").example_shape == (8, 8, 1)


# ---------------------------------------------------------------------------------------------------------------
# digits


def test_digits_are_read_without_importing_sklearn():
  """The digits come from scikit-learn's own table file, equal to load_digits(), and scikit-learn (seconds of
  start-up) is never imported for them."""
  from sklearn.datasets import load_digits

  from gen_jax.data import sources

  images, labels = sources._digits_arrays()
  reference = load_digits()
  np.testing.assert_array_equal(images, reference.images)
  np.testing.assert_array_equal(labels, reference.target)
  code = (
    "import sys; from gen_jax import data; data.load_dataset({'source': 'digits'}, 'train'); "
    "assert 'sklearn' not in sys.modules"
  )
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, cwd=REPO)
  assert result.returncode == 0, result.stderr.decode()


# ---------------------------------------------------------------------------------------------------------------
# tfds (mock data; no TensorFlow, no network)


def test_tfds_mock_mnist():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset(data_config(source="tfds", name="mnist", random_flip=True), "train")
    assert ds.example_shape == (28, 28, 1) and ds.num_examples == 16 and ds.num_classes == 10
    batch = ds.get_batch(3, seed=0, batch_size=8)  # positions 24..31: the second epoch
    assert batch["x"].shape == (8, 28, 28, 1) and batch["label"].shape == (8,)
    assert batch["x"].min() >= -1 and batch["x"].max() <= 1
    test = data.load_dataset(data_config(source="tfds", name="mnist"), "test")
    masks = [b["mask"] for b in test.eval_batches(10)]
    assert [m.sum() for m in masks] == [10, 6]
  assert "tensorflow" not in sys.modules


def test_tfds_unknown_name():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(data.DataError, match="no_such_dataset_xyz") as info:
      data.load_dataset(data_config(source="tfds", name="no_such_dataset_xyz"), "train")
  assert "\n" not in str(info.value)


def test_tfds_missing_data_says_what_to_do(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  start = time.monotonic()
  with pytest.raises(data.DataError) as info:
    data.load_dataset(
      data_config(source="tfds", name="cifar10", tfds_data_dir=str(tmp_path)), "train"
    )
  message = str(info.value)
  assert "tfds_data_dir" in message and str(tmp_path) in message and "cifar10" in message
  assert "array_record" in message and "\n" not in message
  assert info.value.__suppress_context__  # no chained tfds traceback
  assert time.monotonic() - start < 10  # never waits on the network


@pytest.fixture(scope="module")
def cifar_shaped_tfds(tmp_path_factory):
  """A tiny cifar10 written as TFDS ArrayRecord files without TensorFlow (benchmarks/input_pipeline.py's
  writer): (data_dir, {split: (images, labels)})."""
  pytest.importorskip("tensorflow_datasets")
  writer = load_script("benchmarks/input_pipeline.py")
  splits = writer.cifar_shaped(num_train=12, num_test=5, seed=3)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  writer.write_tfds_images(data_dir, "cifar10", splits)
  return data_dir, splits


def test_tfds_array_record_round_trip(cifar_shaped_tfds):
  """The pixels and labels written come back exactly, in index order, through gen_jax's tfds source."""
  data_dir, splits = cifar_shaped_tfds
  for split, (images, labels) in splits.items():
    ds = data.load_dataset(
      data_config(source="tfds", name="cifar10", tfds_data_dir=data_dir), split
    )
    assert ds.example_shape == (32, 32, 3) and ds.num_examples == len(images)
    assert ds.num_classes == 10 and ds.name == f"cifar10/{split}"
    batch = next(ds.eval_batches(len(images)))
    np.testing.assert_array_equal(batch["x"], images.astype(np.float32) / np.float32(127.5) - 1)
    np.testing.assert_array_equal(batch["label"], labels)
  assert "tensorflow" not in sys.modules
  with pytest.raises(data.DataError, match=r"data\.num_workers must be an int >= 0, got -1"):
    data.load_dataset(data_config(source="tfds", name="cifar10", num_workers=-1), "train")


@pytest.mark.slow
def test_tfds_worker_processes_give_the_same_batches(cifar_shaped_tfds):
  """num_workers=3 reads each batch in three processes: the batches (flips and an epoch boundary included) are
  those of the in-thread reader, so a run may change its worker count and resume exactly."""
  data_dir, _ = cifar_shaped_tfds
  config = lambda workers: data_config(
    source="tfds", name="cifar10", tfds_data_dir=data_dir, random_flip=True, num_workers=workers
  )
  in_thread = data.load_dataset(config(0), "train")
  workers = data.load_dataset(config(3), "train")
  for step in (0, 1, 2):  # batch 5 over 12 examples: step 2 spans epochs 0 and 1
    a = in_thread.get_batch(step, seed=7, batch_size=5)
    b = workers.get_batch(step, seed=7, batch_size=5)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  half = workers.get_batch(2, seed=7, batch_size=6, process_index=1, process_count=2)
  np.testing.assert_array_equal(half["x"], in_thread.get_batch(2, seed=7, batch_size=6)["x"][3:])


# ---------------------------------------------------------------------------------------------------------------
# npz


def test_npz_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(20, 4, 6), dtype=np.uint8)  # NHW becomes NHW1
  labels = np.arange(20) % 3
  path = tmp_path / "d.npz"
  np.savez(path, images=images, labels=labels)
  train = data.load_dataset(data_config(source="npz", path=str(path)), "train")
  assert train.example_shape == (4, 6, 1) and train.num_examples == 20 and train.num_classes == 3
  batch = next(train.eval_batches(20))
  np.testing.assert_array_equal(
    batch["x"][..., 0], images.astype(np.float32) / np.float32(127.5) - 1
  )
  np.testing.assert_array_equal(batch["label"], labels)
  test = data.load_dataset(data_config(source="npz", path=str(path)), "test")  # last 10%
  np.testing.assert_array_equal(next(test.eval_batches(2))["label"], labels[18:])

  points_path = tmp_path / "p.npz"
  np.savez(points_path, points=rng.normal(size=(30, 2)).astype(np.float32))
  points = data.load_dataset(data_config(source="npz", path=str(points_path)), "train")
  assert points.kind == "points" and points.example_shape == (2,)


@pytest.mark.parametrize(
  "arrays, match",
  [
    (dict(points=np.array([[0.0, np.nan], [1.0, 2.0]])), "NaN"),
    (dict(images=np.zeros((3, 4, 4, 1), np.float32)), "uint8"),
    (dict(pictures=np.zeros((3, 4, 4), np.uint8)), "pictures"),  # lists the keys it found
    (dict(images=np.zeros((3, 4), np.uint8)), "shape"),
    (dict(images=np.zeros((3, 4, 4), np.uint8), labels=np.zeros(2, np.int64)), "labels"),
    (dict(images=np.full((3, 4, 4), 300, np.int64)), r"values in 300\.\.300.*0\.\.255"),
    (dict(images=np.full((3, 4, 4), -2, np.int16)), r"values in -2\.\.-2"),
    (dict(images=np.eye(4, dtype=np.uint8)[None].repeat(3, 0)), "only 0s and 1s"),
    (dict(images=np.ones((3, 4, 4), bool)), "dtype bool"),
    (dict(images=np.array(7, np.uint8)), "no examples"),
    (dict(points=np.array([[0.0, np.inf], [1.0, 2.0]])), "NaN/inf"),
    (dict(points=np.array([[0.0, 1e300], [1.0, 2.0]])), "float32 range"),
    (dict(points=np.zeros((3, 2), np.complex64)), "points must be float"),
    (
      dict(images=np.full((3, 4, 4), 9, np.uint8), test_images=np.full((2, 5, 4), 9, np.uint8)),
      r"'test_images' has examples of shape \(5, 4, 1\) but 'images' has \(4, 4, 1\)",
    ),
    (
      dict(points=np.zeros((3, 2)), test_points=np.array([[np.nan, 0.0]])),
      "'test_points' has 1 NaN",
    ),
  ],
)
def test_npz_errors_name_the_file(tmp_path, arrays, match):
  """Each problem is caught when the train split loads (at start-up), with the file and the problem named."""
  path = tmp_path / "bad_file.npz"
  np.savez(path, **arrays)
  with pytest.raises(data.DataError, match=match) as info:
    data.load_dataset(data_config(source="npz", path=str(path)), "train")
  assert "bad_file.npz" in str(info.value)


def test_npz_integer_images_in_range_are_accepted(tmp_path):
  images = (
    np.arange(3 * 4 * 4).reshape(3, 4, 4) * 5
  )  # int64 0..235, as np.array of Python ints gives
  path = tmp_path / "ints.npz"
  np.savez(path, images=images)
  ds = data.load_dataset(data_config(source="npz", path=str(path)), "train")
  batch = next(ds.eval_batches(3))
  np.testing.assert_array_equal(
    batch["x"][..., 0], images.astype(np.float32) / np.float32(127.5) - 1
  )


def test_npz_missing_and_unreadable(tmp_path):
  with pytest.raises(data.DataError, match="nothere.npz"):
    data.load_dataset(data_config(source="npz", path=str(tmp_path / "nothere.npz")), "train")
  junk = tmp_path / "junk.npz"
  junk.write_text("not a zip")
  with pytest.raises(data.DataError, match="junk.npz"):
    data.load_dataset(data_config(source="npz", path=str(junk)), "train")


# ---------------------------------------------------------------------------------------------------------------
# folder


def _write_png(path, array):
  from PIL import Image

  Image.fromarray(array).save(path)


def test_folder_loads_images(tmp_path):
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8) for _ in range(4)]
  for i, a in enumerate(arrays):
    _write_png(tmp_path / f"img{i}.PNG", a)  # upper-case extension counts
  (tmp_path / "notes.txt").write_text("ignored")
  ds = data.load_dataset(data_config(source="folder", path=str(tmp_path)), "train")
  assert ds.example_shape == (5, 7, 3) and ds.num_examples == 4 and ds.num_classes is None
  batch = next(ds.eval_batches(4))
  np.testing.assert_array_equal(
    batch["x"], np.stack(arrays).astype(np.float32) / np.float32(127.5) - 1
  )
  assert "label" not in batch


def test_folder_grayscale_and_palette(tmp_path):
  from PIL import Image

  gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
  _write_png(tmp_path / "a.png", gray)
  ds = data.load_dataset(data_config(source="folder", path=str(tmp_path)), "train")
  assert ds.example_shape == (3, 4, 1)
  other = tmp_path / "rgb"
  other.mkdir()
  Image.fromarray(np.zeros((3, 4, 3), np.uint8)).convert("P").save(other / "p.png")
  Image.fromarray(np.zeros((3, 4, 4), np.uint8), "RGBA").save(other / "q.png")
  assert data.load_dataset(
    data_config(source="folder", path=str(other)), "train"
  ).example_shape == (
    3,
    4,
    3,
  )


def test_folder_errors(tmp_path):
  with pytest.raises(data.DataError, match="missing_dir"):
    data.load_dataset(data_config(source="folder", path=str(tmp_path / "missing_dir")), "train")
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  with pytest.raises(data.DataError, match="empty_dir"):
    data.load_dataset(data_config(source="folder", path=str(empty)), "train")
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  _write_png(mixed / "a.png", np.zeros((4, 4, 3), np.uint8))
  _write_png(mixed / "b.png", np.zeros((4, 4, 3), np.uint8))
  _write_png(mixed / "c_odd.png", np.zeros((6, 5, 3), np.uint8))
  with pytest.raises(data.DataError, match="c_odd.png") as info:
    data.load_dataset(data_config(source="folder", path=str(mixed)), "train")
  assert "5x6" in str(info.value) and "4x4" in str(info.value)


def test_folder_wide_pixels_must_fit_8_bits(tmp_path):
  from PIL import Image

  fits = tmp_path / "fits"
  fits.mkdir()
  Image.fromarray(np.array([[0, 100], [3, 255]], np.uint16)).save(
    fits / "a.png"
  )  # a 16-bit PNG, 8-bit values
  ds = data.load_dataset(data_config(source="folder", path=str(fits)), "train")
  np.testing.assert_array_equal(
    next(ds.eval_batches(1))["x"][0, ..., 0],
    np.array([[0, 100], [3, 255]], np.float32) / np.float32(127.5) - 1,
  )
  wide = tmp_path / "wide"
  wide.mkdir()
  Image.fromarray(np.array([[0, 1000], [3, 65535]], np.uint16)).save(wide / "deep.png")
  with pytest.raises(
    data.DataError, match=r"deep\.png is a I;16 image with values in 0\.\.65535.*8 bits"
  ):
    data.load_dataset(
      data_config(source="folder", path=str(wide)), "train"
    )  # convert('L') would clip them


def test_folder_mixed_channels_name_the_file(tmp_path):
  _write_png(tmp_path / "a.png", np.full((4, 4, 3), 9, np.uint8))
  _write_png(tmp_path / "b_gray.png", np.full((4, 4), 9, np.uint8))
  with pytest.raises(
    data.DataError, match=r"b_gray\.png is 4x4 with 1 channel\(s\) but a\.png is 4x4 with 3"
  ):
    data.load_dataset(data_config(source="folder", path=str(tmp_path)), "train")
