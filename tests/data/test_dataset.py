"""Tests of gen_jax.data's batches (gen_jax/data/dataset.py, toy2d.py, iteration.py): determinism as a function
of (seed, step), epochs, process slices, eval coverage, random flips, toy 2-D data, the train stream and prefetch.

The sources and the validation of files are tested in tests/data/test_sources.py.
"""

import threading
import time

import numpy as np
import pytest

from gen_jax import data
from tests.support.runs import data_config


@pytest.fixture(scope="module")
def digits_train():
  return data.load_dataset(data_config(), "train")


@pytest.fixture(scope="module")
def digits_test():
  return data.load_dataset(data_config(), "test")


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
  again = data.load_dataset(data_config(), "test")
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
  ds = data.load_dataset(data_config(random_flip=True), "train")
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
  flipping = data.load_dataset(data_config(random_flip=True), "train")
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
  test_flip = data.load_dataset(data_config(random_flip=True), "test")
  assert not test_flip.random_flip


# ---------------------------------------------------------------------------------------------------------------
# toy 2-D


@pytest.mark.parametrize("name", data.TOY2D_NAMES)
def test_toy2d(name):
  train = data.load_dataset(data_config(source="toy2d", name=name), "train")
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

  test = data.load_dataset(data_config(source="toy2d", name=name), "test")
  assert test.num_examples == data.TOY2D_TEST_SIZE
  batches = list(test.eval_batches(3000))
  assert len(batches) == 4 and batches[-1]["mask"].sum() == 1000
  again = np.concatenate(
    [
      b["x"]
      for b in data.load_dataset(data_config(source="toy2d", name=name), "test").eval_batches(3000)
    ]
  )
  np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), again)


def test_toy2d_unknown_name():
  with pytest.raises(data.DataError, match="spiral"):
    data.load_dataset(data_config(source="toy2d", name="spiral"), "train")


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
