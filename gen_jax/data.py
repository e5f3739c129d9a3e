"""Host-side data for training and evaluation (numpy only; no JAX, no TensorFlow).

Every training batch is a pure function of ``(seed, step)``, so a run resumed at step k sees exactly the batches
it would have seen without the interruption:

* finite data is read epoch-wise without replacement: global position ``p = step * batch_size + i`` is example
  ``perm_e[p % N]`` of epoch ``e = p // N``, where ``perm_e = np.random.default_rng([seed, e]).permutation(N)``;
* random horizontal flips (train split only) come from ``np.random.default_rng([seed, step, 1])``;
* toy 2-D data is infinite: every step draws fresh points from ``np.random.default_rng([seed, step])``.

Multi-process: the *global* batch is cut into ``process_count`` contiguous slices and each process builds only its
own slice; randomness is always drawn for the global batch, so the slices concatenate to the global batch.

Values: images come back as float32 HWC in [-1, 1], ``x / (max_value / 2) - 1``. For uint8 data max_value = 255
(``x / 127.5 - 1``); scikit-learn's digits (0..16) are first put on the 8-bit grid, round(v * 255 / 16).
``Dataset.pixel_levels`` is 256 for images (for discretized likelihoods). Points come back as float32 unchanged.

Sources (``data.source``): 'digits', 'toy2d', 'tfds', 'npz', 'folder'; see ``load_dataset``.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

SOURCES = ("tfds", "digits", "toy2d", "npz", "folder")
SPLITS = ("train", "test")
TOY2D_NAMES = ("eight_gaussians", "two_moons", "swiss_roll")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
TOY2D_TEST_SIZE = 10_000  # fixed test set of a toy 2-D distribution
_TOY2D_TEST_SEED = (
  1_000_003  # its seed; also keeps the toy test stream apart from any training seed
)
_TOY2D_EVAL_SEED = (
  1_000_033  # seed of the fixed sample that eval_batches uses on the (infinite) train split
)

Batch = dict[str, np.ndarray]
# indices (k,) -> (raw examples (k, *example_shape), int labels (k,) or None)
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class DataError(ValueError):
  """A data configuration or data file problem, with a one-line message that says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Batch arithmetic


def _local_slice(batch_size: int, process_index: int, process_count: int) -> slice:
  """The slice of the global batch that process `process_index` builds."""
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
    raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise DataError(f"process_index={process_index} is not in [0, process_count={process_count})")
  if batch_size % process_count:
    raise DataError(
      f"batch_size={batch_size} does not divide by process_count={process_count}; "
      "set data.batch_size to a multiple of the number of processes"
    )
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of epoch `epoch`: (n,) int64, read-only (it is shared through the cache)."""
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  perm.flags.writeable = False
  return perm


def _shuffled_indices(seed: int, positions: np.ndarray, n: int) -> np.ndarray:
  """Example indices at global stream positions (k,) when each epoch is a fresh permutation of n examples."""
  epochs, offsets = np.divmod(positions, n)
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):  # a batch spans at most a few epochs
    sel = epochs == epoch
    out[sel] = _epoch_permutation(seed, int(epoch), n)[offsets[sel]]
  return out


# ----------------------------------------------------------------------------------------------------------------
# Datasets


class Dataset:
  """One split of a finite data set, read by index.

  Attributes:
    name: e.g. 'digits/train', for logs.
    kind: 'image' (x is (B, H, W, C)) or 'points' (x is (B, D)).
    example_shape: shape of one example, e.g. (8, 8, 1) or (2,).
    num_examples: examples in the split (None for infinite data).
    num_classes: number of label classes, or None when batches have no 'label'.
    pixel_levels: 256 for images, None for points.
  """

  def __init__(
    self,
    *,
    name: str,
    kind: str,
    example_shape: tuple[int, ...],
    num_examples: int | None,
    num_classes: int | None,
    fetch: Fetch | None,
    max_value: float | None = None,
    random_flip: bool = False,
  ):
    self.name = name
    self.kind = kind
    self.example_shape = tuple(int(d) for d in example_shape)
    self.num_examples = num_examples
    self.num_classes = num_classes
    self.pixel_levels = None if max_value is None else int(max_value) + 1
    self.random_flip = bool(random_flip) and kind == "image"
    self._fetch = fetch
    self._max_value = max_value

  def __repr__(self) -> str:
    return (
      f"Dataset({self.name!r}, kind={self.kind!r}, example_shape={self.example_shape}, "
      f"num_examples={self.num_examples}, num_classes={self.num_classes})"
    )

  def _batch(self, indices: np.ndarray) -> Batch:
    """{'x': float32 (k, *example_shape), 'label': int32 (k,) if labelled} for example indices (k,)."""
    raw, labels = self._fetch(indices)
    x = raw.astype(np.float32)
    if self._max_value is not None:
      x = x / np.float32(self._max_value / 2) - np.float32(1)
    batch = {"x": x}
    if labels is not None:
      batch["label"] = labels.astype(np.int32)
    return batch

  def get_batch(
    self,
    step: int,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    train: bool = True,
  ) -> Batch:
    """This process's slice of global batch `step`: {'x': (batch_size // process_count, ...), 'label': ...}.

    `train=False` turns random flips off (they are also off unless this is the train split with random_flip).
    """
    sl = _local_slice(batch_size, process_index, process_count)
    step, seed = int(step), int(seed)
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)[sl]
    batch = self._batch(_shuffled_indices(seed, positions, self.num_examples))
    if train and self.random_flip:
      flip = (np.random.default_rng([seed, step, 1]).random(batch_size) < 0.5)[sl]
      batch["x"][flip] = batch["x"][flip, :, ::-1]  # (B, H, W, C): axis 2 is width
    return batch

  def eval_batches(
    self, batch_size: int, process_index: int = 0, process_count: int = 1
  ) -> Iterator[Batch]:
    """Batches covering the split once, in index order; every batch is full size, with a bool 'mask' (B,).

    Padding repeats the last example (mask False), so padded rows are real data and statistics stay finite.
    Every process gets the same number of batches, ceil(num_examples / batch_size).
    """
    sl = _local_slice(batch_size, process_index, process_count)
    n = self.num_examples

    def batches():
      for start in range(0, n, batch_size):
        positions = np.arange(start, start + batch_size)[sl]
        mask = positions < n
        batch = self._batch(np.where(mask, positions, n - 1))
        batch["mask"] = mask
        yield batch

    return batches()


class Toy2DDataset(Dataset):
  """The train split of a toy 2-D distribution: infinite, fresh points every step."""

  def __init__(self, name: str):
    super().__init__(
      name=f"toy2d/{name}/train",
      kind="points",
      example_shape=(2,),
      num_examples=None,
      num_classes=None,
      fetch=None,
    )
    self._toy_name = name

  def get_batch(
    self,
    step: int,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    train: bool = True,
  ) -> Batch:
    """{'x': float32 (batch_size // process_count, 2)} drawn from default_rng([seed, step])."""
    sl = _local_slice(batch_size, process_index, process_count)
    rng = np.random.default_rng([int(seed), int(step)])
    return {"x": sample_toy2d(self._toy_name, batch_size, rng)[sl]}

  def eval_batches(
    self, batch_size: int, process_index: int = 0, process_count: int = 1
  ) -> Iterator[Batch]:
    """A fixed sample of TOY2D_TEST_SIZE training points (its own seed), batched as in Dataset.eval_batches."""
    rng = np.random.default_rng(_TOY2D_EVAL_SEED)
    return _points_dataset(
      self.name, sample_toy2d(self._toy_name, TOY2D_TEST_SIZE, rng)
    ).eval_batches(batch_size, process_index, process_count)


def _array_dataset(
  name: str,
  examples: np.ndarray,
  labels: np.ndarray | None,
  num_classes: int | None,
  max_value: float | None,
  random_flip: bool,
) -> Dataset:
  """A Dataset over in-memory arrays: images uint8 (N, H, W, C) (max_value set) or points float32 (N, D)."""
  fetch = lambda idx: (examples[idx], None if labels is None else labels[idx])
  return Dataset(
    name=name,
    kind="points" if max_value is None else "image",
    example_shape=examples.shape[1:],
    num_examples=len(examples),
    num_classes=num_classes,
    fetch=fetch,
    max_value=max_value,
    random_flip=random_flip,
  )


def _points_dataset(name: str, points: np.ndarray) -> Dataset:
  return _array_dataset(name, points, None, None, None, False)


# ----------------------------------------------------------------------------------------------------------------
# Toy 2-D distributions (every one is scaled so that each coordinate has roughly unit standard deviation)


def sample_toy2d(name: str, num: int, rng: np.random.Generator) -> np.ndarray:
  """`num` points (num, 2) float32 from toy distribution `name` (one of TOY2D_NAMES).

  eight_gaussians: 8 equal Gaussians centred on a circle of radius 2 (std 0.1), then divided by sqrt(2):
    radius 1.41, std 0.071, per-coordinate std 1.0.
  two_moons: sklearn's two interleaved half circles with Gaussian noise std 0.05, standardized per axis with the
    noiseless shape's exact moments (mean (0.5, 0.25), std (0.866, 0.494)).
  swiss_roll: (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi], noise std 0.5, standardized per axis with the noiseless
    shape's moments (mean (2.0, 0.21), std (6.62, 6.95), computed numerically).
  """
  if name == "eight_gaussians":
    angles = rng.integers(8, size=num) * (np.pi / 4)
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = (centres + 0.1 * rng.standard_normal((num, 2))) / np.sqrt(2.0)
  elif name == "two_moons":
    t = rng.uniform(0.0, np.pi, size=num)
    lower = rng.random(num) < 0.5
    upper_xy = np.stack([np.cos(t), np.sin(t)], axis=1)
    lower_xy = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    points = np.where(lower[:, None], lower_xy, upper_xy) + 0.05 * rng.standard_normal((num, 2))
    y_std = np.sqrt(0.5 - 4 / np.pi**2 + (4 / np.pi - 0.5) ** 2 / 4)
    points = (points - [0.5, 0.25]) / [np.sqrt(0.75), y_std]
  elif name == "swiss_roll":
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(num))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.5 * rng.standard_normal((num, 2))
    points = (points - [2.0, 0.21]) / [6.62, 6.95]
  else:
    raise DataError(f"unknown toy2d data.name {name!r}; use one of {', '.join(TOY2D_NAMES)}")
  return points.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Sources: each returns the Dataset of one split


def _digits(split: str, random_flip: bool) -> Dataset:
  """scikit-learn's 1797 8x8 digits: a fixed permutation (seed 0), the last 360 are 'test'.

  Their 17 intensity levels 0..16 are put on the 8-bit grid, round(v * 255 / 16), so digits are ordinary
  8-bit images: the same [-1, 1] scaling, uint8 samples and discretized decoder as every other image source.
  """
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(images))
  num_test = int(np.ceil(0.2 * len(images)))  # 360
  order = order[:-num_test] if split == "train" else order[-num_test:]
  return _array_dataset(f"digits/{split}", images[order], labels[order], 10, 255, random_flip)


def _holdout(n: int) -> slice:
  """The test part of a file that has no separate test arrays: its last 10% (at least one example)."""
  return slice(n - max(1, n // 10), n)


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
  if (
    labels.ndim != 1
    or len(labels) != n
    or not np.issubdtype(labels.dtype, np.integer)
    or labels.min() < 0
  ):
    raise DataError(
      f"{where}: labels must be non-negative ints of shape ({n},), got {labels.dtype} "
      f"{labels.shape}"
    )
  return labels.astype(np.int32)


def _check_examples(arr: np.ndarray, key: str, where: str) -> np.ndarray:
  """Validated images uint8 (N, H, W, C) or points float32 (N, D).

  Images may come in any integer dtype with values in 0..255 (np.array of Python ints gives int64); float or
  bool images, values outside 0..255, and 0/1 images (binary data never scaled to 0..255, which would
  train on nearly black pictures) are refused. Points must be finite in float32.
  """
  if arr.ndim == 0 or len(arr) == 0:
    raise DataError(f"{where}: {key!r} has no examples (shape {arr.shape})")
  if key.endswith("images"):
    if not np.issubdtype(arr.dtype, np.integer):
      raise DataError(
        f"{where}: {key!r} has dtype {arr.dtype}; images must be uint8 0..255 "
        "(store float data under 'points')"
      )
    if arr.ndim == 3:
      arr = arr[..., None]  # NHW grayscale -> NHW1
    if arr.ndim != 4:
      raise DataError(f"{where}: {key!r} has shape {arr.shape}; images must be NHWC or NHW")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high > 255:
      raise DataError(
        f"{where}: {key!r} has values in {low}..{high}; images must lie in 0..255 "
        "(8-bit); rescale them"
      )
    if high == 1:
      raise DataError(
        f"{where}: {key!r} holds only 0s and 1s; images must be on the 0..255 scale "
        "(multiply binary images by 255)"
      )
    return arr.astype(np.uint8)
  if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
    raise DataError(f"{where}: {key!r} has dtype {arr.dtype}; points must be float")
  if arr.ndim != 2:
    raise DataError(f"{where}: {key!r} has shape {arr.shape}; points must be (N, D)")
  bad = int(np.sum(~np.isfinite(arr)))
  if bad:
    raise DataError(f"{where}: {key!r} has {bad} NaN/inf values; clean the file")
  points = arr.astype(np.float32)
  bad = int(np.sum(~np.isfinite(points)))
  if bad:
    raise DataError(
      f"{where}: {key!r} has {bad} values beyond the float32 range (|x| > 3.4e38); rescale them"
    )
  return points


def _npz(path: str, split: str, random_flip: bool) -> Dataset:
  """An .npz with 'images' (uint8 NHWC/NHW) or 'points' (N, D), optional 'labels' and 'test_*' arrays.

  'train' is the whole of 'images'/'points'. 'test' is 'test_images'/'test_points' (with 'test_labels') when the
  file has them, else the last 10% of the training arrays (so it overlaps 'train').
  """
  if not os.path.isfile(path):
    raise DataError(f"data.path {path!r} is not a file; point --config.data.path to an .npz file")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile / pickle / format errors all mean "not a readable npz"
    raise DataError(
      f"{path}: cannot read as .npz ({type(e).__name__}: {str(e).splitlines()[0]})"
    ) from None
  key = "images" if "images" in arrays else "points" if "points" in arrays else None
  if key is None:
    raise DataError(f"{path}: needs an 'images' or 'points' array; found keys {sorted(arrays)}")
  if key == "images" and "points" in arrays:
    raise DataError(f"{path}: has both 'images' and 'points'; keep one")
  examples = _check_examples(arrays[key], key, path)
  labels = _check_labels(arrays["labels"], len(examples), path) if "labels" in arrays else None
  if (
    f"test_{key}" in arrays
  ):  # checked for either split, so a bad test array fails training at start-up
    test_examples = _check_examples(arrays[f"test_{key}"], f"test_{key}", path)
    if test_examples.shape[1:] != examples.shape[1:]:
      raise DataError(
        f"{path}: {f'test_{key}'!r} has examples of shape {test_examples.shape[1:]} but {key!r} "
        f"has {examples.shape[1:]}; both must have the same example shape"
      )
  if split == "test" and f"test_{key}" in arrays:
    examples = test_examples
    has_test_labels = labels is not None and "test_labels" in arrays
    labels = _check_labels(arrays["test_labels"], len(examples), path) if has_test_labels else None
  elif split == "test":
    held = _holdout(len(examples))
    examples, labels = examples[held], None if labels is None else labels[held]
  num_classes = None
  if labels is not None:
    all_labels = [arrays[k] for k in ("labels", "test_labels") if k in arrays]
    num_classes = int(max(int(l.max()) for l in all_labels)) + 1
  max_value = 255 if key == "images" else None
  return _array_dataset(
    f"npz:{os.path.basename(path)}/{split}", examples, labels, num_classes, max_value, random_flip
  )


def _read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 1) for grayscale files, (H, W, 3) for everything else (palette and alpha become RGB)."""
  from PIL import Image

  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      if mode.startswith(
        ("I", "F")
      ):  # 16/32-bit integer or float pixels: convert('L') would clip them
        raw = np.asarray(im)
        arr = None
      else:
        gray = mode in ("1", "L", "LA")
        arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
  except Exception as e:  # PIL raises several types for unreadable files
    raise DataError(
      f"cannot read image {path} ({type(e).__name__}: {str(e).splitlines()[0]})"
    ) from None
  if arr is None:
    if (
      not np.all(np.isfinite(raw))
      or raw.min() < 0
      or raw.max() > 255
      or np.any(raw != np.round(raw))
    ):
      raise DataError(
        f"{path} is a {mode} image with values in {raw.min()}..{raw.max()}; gen_jax reads "
        "8-bit images (0..255): convert it to 8 bits"
      )
    arr = raw.astype(np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def _folder(path: str, split: str, random_flip: bool) -> Dataset:
  """Same-size images (png/jpg/jpeg/bmp) directly in folder `path`, in file-name order; no labels.

  'test' is the last 10% of the files (overlapping 'train', which is all of them).
  """
  if not os.path.isdir(path):
    raise DataError(
      f"data.path {path!r} is not a folder; point --config.data.path to a folder of images"
    )
  files = sorted(
    f
    for f in os.listdir(path)
    if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, f))
  )
  if not files:
    raise DataError(
      f"folder {path} has no images ({'/'.join(IMAGE_EXTENSIONS)}); put images in it or fix "
      "data.path"
    )
  if split == "test":
    files = files[_holdout(len(files))]
  images = [_read_image(os.path.join(path, f)) for f in files]
  for f, im in zip(files, images):
    if im.shape != images[0].shape:
      raise DataError(
        f"{os.path.join(path, f)} is {_describe(im)} but {files[0]} is {_describe(images[0])}; "
        "all images in a folder must have the same size and channels"
      )
  return _array_dataset(
    f"folder:{os.path.basename(os.path.normpath(path))}/{split}",
    np.stack(images),
    None,
    None,
    255,
    random_flip,
  )


def _describe(image: np.ndarray) -> str:
  h, w, c = image.shape
  return f"{w}x{h} with {c} channel(s)"


def _tfds(name: str, split: str, data_dir: str | None, random_flip: bool) -> Dataset:
  """A TFDS image data set read by random access (`tfds.data_source`, ArrayRecord files, no TensorFlow)."""
  import tensorflow_datasets as tfds  # a slow import, needed by this source only

  where = data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
  prepare = (
    f'python -c \'import tensorflow_datasets as tfds; tfds.builder("{name}"'
    + (f', data_dir="{data_dir}"' if data_dir else "")
    + ', file_format="array_record").download_and_prepare()\''
  )
  todo = (
    f"run once with network and TensorFlow installed (`pip install tensorflow-cpu`, then `{prepare}`) or "
    "point --config.data.tfds_data_dir to a folder that has it"
  )
  try:
    # file_format is explicit because tfds.data_source only defaults to ArrayRecord when data_dir is None.
    source = tfds.data_source(
      name,
      split=split,
      data_dir=data_dir,
      download=False,
      builder_kwargs={"file_format": "array_record"},
    )
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
      f"TFDS does not know dataset {name!r}; check --config.data.name (e.g. mnist, "
      "fashion_mnist, cifar10)"
    ) from None
  except KeyError:  # "splits is empty": nothing prepared in data_dir
    raise DataError(f"TFDS has no prepared data for {name!r} in {where}; {todo}.") from None
  except NotImplementedError:  # prepared, but only as TFRecord, which has no random access
    raise DataError(
      f"TFDS data for {name!r} in {where} is in TFRecord format only; random access needs "
      f"ArrayRecord: {todo}."
    ) from None
  except Exception as e:  # e.g. an unknown split; keep tfds internals out of the user's face
    raise DataError(
      f"TFDS cannot open {name!r} split {split!r} in {where} "
      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    ) from None

  features = source.dataset_info.features
  if "image" not in features:
    raise DataError(
      f'TFDS dataset {name!r} has no "image" feature (features: {sorted(features.keys())})'
    )
  shape = features["image"].shape
  if None in shape:
    raise DataError(
      f"TFDS dataset {name!r} has images of varying size {shape}; resizing is not supported"
    )
  has_label = "label" in features and hasattr(features["label"], "num_classes")
  num_classes = features["label"].num_classes if has_label else None

  def fetch(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    # One record at a time: __getitems__ breaks under tfds.testing.mock_data, and prefetch hides the latency.
    records = [source[int(i)] for i in indices]
    images = np.stack([r["image"] for r in records]).astype(np.uint8)
    labels = np.array([r["label"] for r in records], np.int32) if has_label else None
    return images, labels

  return Dataset(
    name=f"{name}/{split}",
    kind="image",
    example_shape=shape,
    num_examples=len(source),
    num_classes=num_classes,
    fetch=fetch,
    max_value=255,
    random_flip=random_flip,
  )


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(data_config: Any, split: str) -> Dataset:
  """The Dataset of `split` ('train' or 'test') described by config `data` (see the module docstring).

  Fields: source, name, path, tfds_data_dir, batch_size, random_flip (train split only), image_size (None or the
  native size: resizing is not implemented).
  """
  cfg = data_config
  source = cfg.get("source", None)
  if source not in SOURCES:
    raise DataError(f"unknown data.source {source!r}; use one of {', '.join(SOURCES)}")
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
  batch_size = cfg.get("batch_size", None)
  if batch_size is not None and (
    isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0
  ):
    raise DataError(f"data.batch_size must be a positive int, got {batch_size!r}")
  name, path = cfg.get("name", None), cfg.get("path", None)
  random_flip = bool(cfg.get("random_flip", False)) and split == "train"
  if source in ("npz", "folder") and not path:
    raise DataError(f"data.source={source!r} needs data.path; set --config.data.path")

  if source == "digits":
    dataset = _digits(split, random_flip)
  elif source == "toy2d":
    if name not in TOY2D_NAMES:
      raise DataError(f"unknown toy2d data.name {name!r}; use one of {', '.join(TOY2D_NAMES)}")
    if split == "train":
      return Toy2DDataset(name)
    # A fixed, finite test set, so eval_batches covers it exactly once (num_examples = TOY2D_TEST_SIZE).
    points = sample_toy2d(name, TOY2D_TEST_SIZE, np.random.default_rng(_TOY2D_TEST_SEED))
    return _points_dataset(f"toy2d/{name}/test", points)
  elif source == "npz":
    dataset = _npz(os.path.expanduser(path), split, random_flip)
  elif source == "folder":
    dataset = _folder(os.path.expanduser(path), split, random_flip)
  else:
    if not name:
      raise DataError(
        'data.source="tfds" needs data.name (e.g. mnist, cifar10); set --config.data.name'
      )
    dataset = _tfds(name, split, cfg.get("tfds_data_dir", None), random_flip)
  _check_image_size(cfg.get("image_size", None), dataset)
  return dataset


def _check_image_size(image_size: Any, dataset: Dataset) -> None:
  """Accept image_size None or equal to the native size (an int for square images, or (H, W))."""
  if image_size is None or dataset.kind != "image":
    return
  want = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  if want != dataset.example_shape[:2]:
    raise DataError(
      f"data.image_size={image_size!r} but {dataset.name} images are "
      f"{dataset.example_shape[:2]}; resizing is not implemented, set data.image_size=None"
    )


def train_iterator(
  dataset: Dataset,
  seed: int,
  batch_size: int,
  start_step: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[Batch]:
  """dataset.get_batch(step) for step = start_step, start_step + 1, ... (endless; no prefetch: wrap it in
  `prefetch(...)` at the call site)."""
  _local_slice(batch_size, process_index, process_count)  # fail here, not at the first next()

  def batches():
    step = int(start_step)
    while True:
      yield dataset.get_batch(step, seed, batch_size, process_index, process_count, train=True)
      step += 1

  return batches()


class _Raised:
  """An exception from the producer thread, carried to the consumer."""

  def __init__(self, exc: BaseException):
    self.exc = exc


_END = object()


def prefetch(iterator: Iterable[Any], size: int = 2) -> Iterator[Any]:
  """Yields the items of `iterator`, produced up to `size` ahead by a daemon thread.

  An exception in the producer is re-raised in the consumer (with its original traceback). Closing the returned
  generator (or dropping it) stops the producer after at most one more item.
  """
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}")
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while (
      not stop.is_set()
    ):  # a timeout, so a stopped consumer never leaves the thread blocked forever
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for item in iterator:
        if not put(item):
          return
      put(_END)
    except BaseException as e:  # handed to the consumer
      put(_Raised(e))

  def consume():
    thread = threading.Thread(target=produce, name="gen_jax-prefetch", daemon=True)
    thread.start()
    try:
      while True:
        item = items.get()
        if item is _END:
          return
        if isinstance(item, _Raised):
          raise item.exc
        yield item
    finally:
      stop.set()

  return consume()
