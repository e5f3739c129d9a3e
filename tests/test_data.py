"""Tests of gen_jax.data: sources, determinism, process slicing, eval coverage, error messages, prefetch."""

import os
import sys
import time

import ml_collections
import numpy as np
import pytest

try:
  from gen_jax import data
except (
  ImportError
):  # pytest run from a checkout that is not installed: put the repository root on the path
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from gen_jax import data


def config(**fields):
  base = dict(
    source="digits",
    name=None,
    path=None,
    tfds_data_dir=None,
    batch_size=32,
    random_flip=False,
    image_size=None,
  )
  base.update(fields)
  return ml_collections.ConfigDict(base)


@pytest.fixture(scope="module")
def digits_train():
  return data.load_dataset(config(), "train")


@pytest.fixture(scope="module")
def digits_test():
  return data.load_dataset(config(), "test")


# ---------------------------------------------------------------------------------------------------------------
# digits: shapes, values, determinism, epochs, process slices


def test_digits_shapes_and_range(digits_train, digits_test):
  assert (digits_train.num_examples, digits_test.num_examples) == (1437, 360)
  assert digits_train.kind == "image" and digits_train.example_shape == (8, 8, 1)
  assert digits_train.num_classes == 10 and digits_train.pixel_levels == 256
  batch = digits_train.get_batch(step=0, seed=0, batch_size=64)
  assert batch["x"].shape == (64, 8, 8, 1) and batch["x"].dtype == np.float32
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  assert (
    batch["x"].min() == -1.0 and batch["x"].max() == 1.0
  )  # 0 -> -1 and 16 -> 1 occur in any 64 digits
  # The 17 levels v = 0..16 sit on the 8-bit grid: x = round(v * 255 / 16) / 127.5 - 1.
  levels = np.round(np.arange(17) * 255 / 16) / 127.5 - 1
  assert np.all(np.min(np.abs(batch["x"][..., None] - levels.astype(np.float32)), axis=-1) < 1e-6)


def test_digits_split_is_disjoint_and_fixed(digits_train, digits_test):
  def rows(ds):
    return {b.tobytes() for b in next(ds.eval_batches(ds.num_examples))["x"]}

  train, test = rows(digits_train), rows(digits_test)
  # load_digits has a few duplicate images, so compare to the size rather than demand an empty intersection
  assert len(train & test) < 10
  again = data.load_dataset(config(), "test")
  np.testing.assert_array_equal(
    next(again.eval_batches(360))["x"], next(digits_test.eval_batches(360))["x"]
  )


def test_get_batch_is_a_function_of_seed_and_step(digits_train):
  a = digits_train.get_batch(step=5, seed=0, batch_size=32)
  b = digits_train.get_batch(step=5, seed=0, batch_size=32)
  np.testing.assert_array_equal(a["x"], b["x"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(a["x"], digits_train.get_batch(step=6, seed=0, batch_size=32)["x"])
  assert not np.array_equal(a["x"], digits_train.get_batch(step=5, seed=1, batch_size=32)["x"])


def test_each_example_once_per_epoch(digits_train):
  # Tag every example by its index through a fetch that returns the index itself.
  n = digits_train.num_examples
  tagged = data.Dataset(
    name="tags",
    kind="points",
    example_shape=(1,),
    num_examples=n,
    num_classes=None,
    fetch=lambda idx: (idx[:, None].astype(np.float32), None),
  )
  batch_size = 100  # does not divide 1437: batches straddle epochs
  seen = np.concatenate(
    [
      tagged.get_batch(s, seed=3, batch_size=batch_size)["x"][:, 0]
      for s in range(3 * n // batch_size + 1)
    ]
  ).astype(int)
  for epoch in range(3):
    part = seen[epoch * n : (epoch + 1) * n]
    np.testing.assert_array_equal(np.sort(part), np.arange(n))
  assert not np.array_equal(seen[:n], seen[n : 2 * n])  # a fresh order every epoch


def test_process_slices_concatenate_to_global_batch(digits_train):
  ds = data.load_dataset(config(random_flip=True), "train")
  for step in (0, 44, 45):  # 45 * 32 > 1437: crosses an epoch boundary
    whole = ds.get_batch(step, seed=7, batch_size=32)
    parts = [
      ds.get_batch(step, seed=7, batch_size=32, process_index=i, process_count=2) for i in range(2)
    ]
    assert parts[0]["x"].shape == (16, 8, 8, 1)
    for key in ("x", "label"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  with pytest.raises(data.DataError, match="process_count"):
    ds.get_batch(0, seed=0, batch_size=30, process_count=4)


def test_eval_batches_cover_split_once_with_mask(digits_test):
  for process_count in (1, 2):
    xs, labels, masks = [], [], []
    for p in range(process_count):
      batches = list(digits_test.eval_batches(64, process_index=p, process_count=process_count))
      assert len(batches) == 6  # ceil(360 / 64)
      assert all(b["x"].shape == (64 // process_count, 8, 8, 1) for b in batches)
      xs.append([b["x"] for b in batches])
      labels.append([b["label"] for b in batches])
      masks.append([b["mask"] for b in batches])
    # reassemble global batches from the process slices
    x = np.concatenate([np.concatenate([xs[p][i] for p in range(process_count)]) for i in range(6)])
    mask = np.concatenate(
      [np.concatenate([masks[p][i] for p in range(process_count)]) for i in range(6)]
    )
    assert mask.dtype == bool and mask.sum() == 360 and mask[:360].all() and not mask[360:].any()
    whole = next(digits_test.eval_batches(360))
    np.testing.assert_array_equal(x[mask], whole["x"])
    assert whole["mask"].all()


def test_random_flip_flips_some_images_and_keeps_the_rest(digits_train):
  flipping = data.load_dataset(config(random_flip=True), "train")
  plain = digits_train.get_batch(3, seed=0, batch_size=128)["x"]
  flipped = flipping.get_batch(3, seed=0, batch_size=128)["x"]
  same = np.all(plain == flipped, axis=(1, 2, 3))
  mirrored = np.all(plain[:, :, ::-1] == flipped, axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 20 < np.sum(mirrored & ~same) < 108
  np.testing.assert_array_equal(
    flipping.get_batch(3, seed=0, batch_size=128, train=False)["x"], plain
  )
  # the test split never flips
  test_flip = data.load_dataset(config(random_flip=True), "test")
  assert not test_flip.random_flip


# ---------------------------------------------------------------------------------------------------------------
# toy 2-D


@pytest.mark.parametrize("name", data.TOY2D_NAMES)
def test_toy2d(name):
  train = data.load_dataset(config(source="toy2d", name=name), "train")
  assert train.kind == "points" and train.example_shape == (2,) and train.num_examples is None
  a = train.get_batch(4, seed=1, batch_size=512)
  assert a["x"].shape == (512, 2) and a["x"].dtype == np.float32 and np.isfinite(a["x"]).all()
  assert "label" not in a
  np.testing.assert_array_equal(a["x"], train.get_batch(4, seed=1, batch_size=512)["x"])
  assert not np.array_equal(a["x"], train.get_batch(5, seed=1, batch_size=512)["x"])
  halves = [
    train.get_batch(4, seed=1, batch_size=512, process_index=i, process_count=2)["x"]
    for i in (0, 1)
  ]
  np.testing.assert_array_equal(np.concatenate(halves), a["x"])
  big = data.sample_toy2d(name, 20_000, np.random.default_rng(0))
  assert big.shape == (20_000, 2) and big.dtype == np.float32
  assert np.all(np.abs(big.mean(0)) < 0.2) and np.all((0.7 < big.std(0)) & (big.std(0) < 1.3))

  test = data.load_dataset(config(source="toy2d", name=name), "test")
  assert test.num_examples == data.TOY2D_TEST_SIZE
  batches = list(test.eval_batches(3000))
  assert len(batches) == 4 and batches[-1]["mask"].sum() == 1000
  again = np.concatenate(
    [
      b["x"]
      for b in data.load_dataset(config(source="toy2d", name=name), "test").eval_batches(3000)
    ]
  )
  np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), again)


def test_toy2d_unknown_name():
  with pytest.raises(data.DataError, match="spiral"):
    data.load_dataset(config(source="toy2d", name="spiral"), "train")


# ---------------------------------------------------------------------------------------------------------------
# config validation


def test_config_errors():
  with pytest.raises(data.DataError, match="digits"):  # lists the allowed sources
    data.load_dataset(config(source="imagenet"), "train")
  with pytest.raises(data.DataError, match="batch_size"):
    data.load_dataset(config(batch_size=0), "train")
  with pytest.raises(data.DataError, match="split"):
    data.load_dataset(config(), "validation")
  with pytest.raises(data.DataError, match="data.path"):
    data.load_dataset(config(source="npz"), "train")
  with pytest.raises(data.DataError, match="image_size"):
    data.load_dataset(config(image_size=32), "train")
  assert data.load_dataset(config(image_size=8), "train").example_shape == (8, 8, 1)


# ---------------------------------------------------------------------------------------------------------------
# tfds (mock data; no TensorFlow, no network)


def test_tfds_mock_mnist():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset(config(source="tfds", name="mnist", random_flip=True), "train")
    assert ds.example_shape == (28, 28, 1) and ds.num_examples == 16 and ds.num_classes == 10
    batch = ds.get_batch(3, seed=0, batch_size=8)  # positions 24..31: the second epoch
    assert batch["x"].shape == (8, 28, 28, 1) and batch["label"].shape == (8,)
    assert batch["x"].min() >= -1 and batch["x"].max() <= 1
    test = data.load_dataset(config(source="tfds", name="mnist"), "test")
    masks = [b["mask"] for b in test.eval_batches(10)]
    assert [m.sum() for m in masks] == [10, 6]
  assert "tensorflow" not in sys.modules


def test_tfds_unknown_name():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(data.DataError, match="no_such_dataset_xyz") as info:
      data.load_dataset(config(source="tfds", name="no_such_dataset_xyz"), "train")
  assert "\n" not in str(info.value)


def test_tfds_missing_data_says_what_to_do(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  start = time.monotonic()
  with pytest.raises(data.DataError) as info:
    data.load_dataset(config(source="tfds", name="cifar10", tfds_data_dir=str(tmp_path)), "train")
  message = str(info.value)
  assert "tfds_data_dir" in message and str(tmp_path) in message and "cifar10" in message
  assert "array_record" in message and "\n" not in message
  assert info.value.__suppress_context__  # no chained tfds traceback
  assert time.monotonic() - start < 10  # never waits on the network


# ---------------------------------------------------------------------------------------------------------------
# npz


def test_npz_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(20, 4, 6), dtype=np.uint8)  # NHW becomes NHW1
  labels = np.arange(20) % 3
  path = tmp_path / "d.npz"
  np.savez(path, images=images, labels=labels)
  train = data.load_dataset(config(source="npz", path=str(path)), "train")
  assert train.example_shape == (4, 6, 1) and train.num_examples == 20 and train.num_classes == 3
  batch = next(train.eval_batches(20))
  np.testing.assert_array_equal(
    batch["x"][..., 0], images.astype(np.float32) / np.float32(127.5) - 1
  )
  np.testing.assert_array_equal(batch["label"], labels)
  test = data.load_dataset(config(source="npz", path=str(path)), "test")  # last 10%
  np.testing.assert_array_equal(next(test.eval_batches(2))["label"], labels[18:])

  points_path = tmp_path / "p.npz"
  np.savez(points_path, points=rng.normal(size=(30, 2)).astype(np.float32))
  points = data.load_dataset(config(source="npz", path=str(points_path)), "train")
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
    data.load_dataset(config(source="npz", path=str(path)), "train")
  assert "bad_file.npz" in str(info.value)


def test_npz_integer_images_in_range_are_accepted(tmp_path):
  images = (
    np.arange(3 * 4 * 4).reshape(3, 4, 4) * 5
  )  # int64 0..235, as np.array of Python ints gives
  path = tmp_path / "ints.npz"
  np.savez(path, images=images)
  ds = data.load_dataset(config(source="npz", path=str(path)), "train")
  batch = next(ds.eval_batches(3))
  np.testing.assert_array_equal(
    batch["x"][..., 0], images.astype(np.float32) / np.float32(127.5) - 1
  )


def test_npz_missing_and_unreadable(tmp_path):
  with pytest.raises(data.DataError, match="nothere.npz"):
    data.load_dataset(config(source="npz", path=str(tmp_path / "nothere.npz")), "train")
  junk = tmp_path / "junk.npz"
  junk.write_text("not a zip")
  with pytest.raises(data.DataError, match="junk.npz"):
    data.load_dataset(config(source="npz", path=str(junk)), "train")


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
  ds = data.load_dataset(config(source="folder", path=str(tmp_path)), "train")
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
  ds = data.load_dataset(config(source="folder", path=str(tmp_path)), "train")
  assert ds.example_shape == (3, 4, 1)
  other = tmp_path / "rgb"
  other.mkdir()
  Image.fromarray(np.zeros((3, 4, 3), np.uint8)).convert("P").save(other / "p.png")
  Image.fromarray(np.zeros((3, 4, 4), np.uint8), "RGBA").save(other / "q.png")
  assert data.load_dataset(config(source="folder", path=str(other)), "train").example_shape == (
    3,
    4,
    3,
  )


def test_folder_errors(tmp_path):
  with pytest.raises(data.DataError, match="missing_dir"):
    data.load_dataset(config(source="folder", path=str(tmp_path / "missing_dir")), "train")
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  with pytest.raises(data.DataError, match="empty_dir"):
    data.load_dataset(config(source="folder", path=str(empty)), "train")
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  _write_png(mixed / "a.png", np.zeros((4, 4, 3), np.uint8))
  _write_png(mixed / "b.png", np.zeros((4, 4, 3), np.uint8))
  _write_png(mixed / "c_odd.png", np.zeros((6, 5, 3), np.uint8))
  with pytest.raises(data.DataError, match="c_odd.png") as info:
    data.load_dataset(config(source="folder", path=str(mixed)), "train")
  assert "5x6" in str(info.value) and "4x4" in str(info.value)


def test_folder_wide_pixels_must_fit_8_bits(tmp_path):
  from PIL import Image

  fits = tmp_path / "fits"
  fits.mkdir()
  Image.fromarray(np.array([[0, 100], [3, 255]], np.uint16)).save(
    fits / "a.png"
  )  # a 16-bit PNG, 8-bit values
  ds = data.load_dataset(config(source="folder", path=str(fits)), "train")
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
      config(source="folder", path=str(wide)), "train"
    )  # convert('L') would clip them


def test_folder_mixed_channels_name_the_file(tmp_path):
  _write_png(tmp_path / "a.png", np.full((4, 4, 3), 9, np.uint8))
  _write_png(tmp_path / "b_gray.png", np.full((4, 4), 9, np.uint8))
  with pytest.raises(
    data.DataError, match=r"b_gray\.png is 4x4 with 1 channel\(s\) but a\.png is 4x4 with 3"
  ):
    data.load_dataset(config(source="folder", path=str(tmp_path)), "train")


# ---------------------------------------------------------------------------------------------------------------
# iterators


def test_train_iterator_resumes_exactly(digits_train):
  it = data.train_iterator(digits_train, seed=2, batch_size=16, start_step=7)
  for step in range(7, 11):
    got, want = next(it), digits_train.get_batch(step, 2, 16)
    np.testing.assert_array_equal(got["x"], want["x"])
    np.testing.assert_array_equal(got["label"], want["label"])


def test_prefetch_yields_in_order_and_propagates_exceptions():
  assert list(data.prefetch(iter(range(10)), size=3)) == list(range(10))

  def failing():
    yield 1
    yield 2
    raise RuntimeError("boom in producer")

  it = data.prefetch(failing())
  assert next(it) == 1 and next(it) == 2
  with pytest.raises(RuntimeError, match="boom in producer"):
    next(it)


def test_prefetch_stops_when_closed(digits_train):
  import threading

  it = data.prefetch(data.train_iterator(digits_train, seed=0, batch_size=8, start_step=0), size=2)
  first = next(it)
  np.testing.assert_array_equal(first["x"], digits_train.get_batch(0, 0, 8)["x"])
  it.close()
  deadline = time.monotonic() + 5
  while (
    any(t.name == "gen_jax-prefetch" for t in threading.enumerate()) and time.monotonic() < deadline
  ):
    time.sleep(0.02)
  assert not any(t.name == "gen_jax-prefetch" for t in threading.enumerate())
