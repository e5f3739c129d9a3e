"""Where data comes from: one function per `data.source`, each returning the Dataset of one split, and
`load_dataset`, which reads the `data` config and picks one.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy as np

from gen_jax import checks
from gen_jax.data.dataset import DataError, Dataset, array_dataset
from gen_jax.data.toy2d import load_toy2d
from gen_jax.data.validation import check_examples, check_labels, read_image

SOURCES = ("tfds", "digits", "toy2d", "npz", "folder")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def load_dataset(data_config: Any, split: str) -> Dataset:
  """The Dataset of `split` ('train' or 'test') described by config `data` (see the package docstring).

  Fields: source, name, path, tfds_data_dir, random_flip (train split only), num_workers (tfds:
  worker processes that read and decode the records; 0 reads them in the calling thread).
  """
  cfg = data_config
  source = cfg.get("source", None)
  if source not in SOURCES:
    raise DataError(f"unknown data.source {source!r}; use one of {', '.join(SOURCES)}")
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
  name, path = cfg.get("name", None), cfg.get("path", None)
  random_flip = bool(cfg.get("random_flip", False)) and split == "train"
  num_workers = cfg.get("num_workers", 0)
  if not checks.is_integer(num_workers) or num_workers < 0:
    raise DataError(f"data.num_workers must be an int >= 0, got {num_workers!r}")
  if source in ("npz", "folder") and not path:
    raise DataError(f"data.source={source!r} needs data.path; set config.data.path")

  if source == "digits":
    dataset = _digits(split, random_flip)
  elif source == "toy2d":
    return load_toy2d(name, split)
  elif source == "npz":
    dataset = _npz(os.path.expanduser(path), split, random_flip)
  elif source == "folder":
    dataset = _folder(os.path.expanduser(path), split, random_flip)
  else:
    if not name:
      raise DataError(
        'data.source="tfds" needs data.name (e.g. mnist, cifar10); set config.data.name'
      )
    dataset = _tfds(name, split, cfg.get("tfds_data_dir", None), random_flip, int(num_workers))
  return dataset


def _holdout(n: int) -> slice:
  """The test part of a file that has no separate test arrays: its last 10% (at least one example)."""
  return slice(n - max(1, n // 10), n)


# ----------------------------------------------------------------------------------------------------------------
# digits


def _digits(split: str, random_flip: bool) -> Dataset:
  """scikit-learn's 1797 8x8 digits: a fixed permutation (seed 0), the last 360 are 'test'.

  Their 17 intensity levels 0..16 are put on the 8-bit grid, round(v * 255 / 16), so digits are ordinary
  8-bit images: the same [-1, 1] scaling, uint8 samples and discretized decoder as every other image source.
  """
  raw, labels = _digits_arrays()
  images = np.round(raw * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
  order = np.random.default_rng(0).permutation(len(images))
  num_test = int(np.ceil(0.2 * len(images)))  # 360
  order = order[:-num_test] if split == "train" else order[-num_test:]
  return array_dataset(f"digits/{split}", images[order], labels[order], 10, 255, random_flip)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits: images (1797, 8, 8) float64 in 0..16 and labels (1797,) int32, as load_digits()
  gives them, read from the table the package ships (datasets/data/digits.csv.gz: 64 pixels and the label per
  row) without importing scikit-learn, which loads scipy.stats: 2.6-3.3 s of the default run's start-up on
  our busy 2-core CPU. Falls back to load_digits() if the file is not where it has always been."""
  spec = importlib.util.find_spec("sklearn")
  folders = spec.submodule_search_locations if spec and spec.submodule_search_locations else []
  for folder in folders:
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      table = np.loadtxt(path, delimiter=",")  # (1797, 65); numpy reads .gz itself
      return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)
  from sklearn.datasets import load_digits

  digits = load_digits()
  return digits.images, digits.target.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# npz


def _npz(path: str, split: str, random_flip: bool) -> Dataset:
  """An .npz with 'images' (uint8 NHWC/NHW) or 'points' (N, D), optional 'labels' and 'test_*' arrays.

  'train' is the whole of 'images'/'points'. 'test' is 'test_images'/'test_points' (with 'test_labels') when the
  file has them, else the last 10% of the training arrays (so it overlaps 'train').
  """
  if not os.path.isfile(path):
    raise DataError(f"data.path {path!r} is not a file; point config.data.path to an .npz file")
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
  examples = check_examples(arrays[key], key, path)
  labels = check_labels(arrays["labels"], len(examples), path) if "labels" in arrays else None
  # The test arrays are checked for either split, so a bad test array fails training at start-up.
  if f"test_{key}" in arrays:
    test_examples = check_examples(arrays[f"test_{key}"], f"test_{key}", path)
    if test_examples.shape[1:] != examples.shape[1:]:
      raise DataError(
        f"{path}: {f'test_{key}'!r} has examples of shape {test_examples.shape[1:]} but {key!r} "
        f"has {examples.shape[1:]}; both must have the same example shape"
      )
  if split == "test" and f"test_{key}" in arrays:
    examples = test_examples
    has_test_labels = labels is not None and "test_labels" in arrays
    labels = check_labels(arrays["test_labels"], len(examples), path) if has_test_labels else None
  elif split == "test":
    held = _holdout(len(examples))
    examples, labels = examples[held], None if labels is None else labels[held]
  num_classes = None
  if labels is not None:
    all_labels = [arrays[k] for k in ("labels", "test_labels") if k in arrays]
    num_classes = int(max(int(l.max()) for l in all_labels)) + 1
  max_value = 255 if key == "images" else None
  return array_dataset(
    f"npz:{os.path.basename(path)}/{split}", examples, labels, num_classes, max_value, random_flip
  )


# ----------------------------------------------------------------------------------------------------------------
# folder


def _folder(path: str, split: str, random_flip: bool) -> Dataset:
  """Same-size images (png/jpg/jpeg/bmp) directly in folder `path`, in file-name order; no labels.

  'test' is the last 10% of the files (overlapping 'train', which is all of them).
  """
  if not os.path.isdir(path):
    raise DataError(
      f"data.path {path!r} is not a folder; point config.data.path to a folder of images"
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
  images = [read_image(os.path.join(path, f)) for f in files]
  for f, im in zip(files, images):
    if im.shape != images[0].shape:
      raise DataError(
        f"{os.path.join(path, f)} is {_describe(im)} but {files[0]} is {_describe(images[0])}; "
        "all images in a folder must have the same size and channels"
      )
  return array_dataset(
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


# ----------------------------------------------------------------------------------------------------------------
# tfds


def _tfds(
  name: str, split: str, data_dir: str | None, random_flip: bool, num_workers: int = 0
) -> Dataset:
  """A TFDS image data set read by random access (`tfds.data_source`, ArrayRecord files, no TensorFlow).

  num_workers = 0 reads and decodes the records in the calling thread (the training loop's prefetch thread):
  one core, about 4,000 CIFAR-sized images/s (README, Performance), less than an H100 trains on; two threads
  decoded no faster than one (measured). num_workers = k > 0 splits each batch's indices into k contiguous
  chunks read by k worker processes, and concatenates them in order: the same batch for every k.
  """
  source = _open_tfds(name, split, data_dir)
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
  if num_workers:
    fetch = _WorkerPool(num_workers, (name, split, data_dir), has_label)
  else:
    fetch = functools.partial(_read_records, source, has_label=has_label)
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


def _open_tfds(name: str, split: str, data_dir: str | None):
  """tfds.data_source(name, split) over ArrayRecord files, with one-line DataErrors for what can go wrong."""
  import tensorflow_datasets as tfds  # a slow import, needed by this source only

  where = data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
  prepare = (
    f'python -c \'import tensorflow_datasets as tfds; tfds.builder("{name}"'
    + (f', data_dir="{data_dir}"' if data_dir else "")
    + ', file_format="array_record").download_and_prepare()\''
  )
  todo = (
    f"run once with network and TensorFlow installed (`pip install tensorflow-cpu`, then `{prepare}`) or "
    "point config.data.tfds_data_dir to a folder that has it"
  )
  try:
    # file_format is explicit because tfds.data_source only defaults to ArrayRecord when data_dir is None.
    return tfds.data_source(
      name,
      split=split,
      data_dir=data_dir,
      download=False,
      builder_kwargs={"file_format": "array_record"},
    )
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
      f"TFDS does not know dataset {name!r}; check config.data.name (e.g. mnist, "
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


def _read_records(
  source, indices: np.ndarray, *, has_label: bool
) -> tuple[np.ndarray, np.ndarray | None]:
  """Records `indices` (k,) of a TFDS data source: uint8 images (k, H, W, C) and int32 labels (k,) or None."""
  # One record at a time: __getitems__ breaks under tfds.testing.mock_data, and prefetch hides the latency.
  records = [source[int(i)] for i in indices]
  images = np.stack([r["image"] for r in records]).astype(np.uint8)
  labels = np.array([r["label"] for r in records], np.int32) if has_label else None
  return images, labels


# The data source of a worker process of _WorkerPool, opened once by its initializer.
_worker_source = None


def _open_in_worker(name: str, split: str, data_dir: str | None) -> None:
  global _worker_source  # noqa: PLW0603 (one per worker process: the pool's initializer sets it)
  _worker_source = _open_tfds(name, split, data_dir)


def _read_in_worker(indices: np.ndarray, has_label: bool):
  return _read_records(_worker_source, indices, has_label=has_label)


class _WorkerPool:
  """A Fetch that reads records in `num_workers` processes: the indices (k,) are cut into num_workers
  contiguous chunks, each read by one worker, and the results concatenated in order.

  The processes are spawned (a fork of a process that runs JAX can deadlock) at the first call, so a Dataset
  that is never read starts none; each opens the data source once. They stop with the interpreter, or when
  the Dataset holding this fetch is garbage collected.
  """

  def __init__(self, num_workers: int, source_args: tuple, has_label: bool):
    self.num_workers, self.source_args, self.has_label = num_workers, source_args, has_label
    self._executor = None

  def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if self._executor is None:
      import concurrent.futures
      import multiprocessing
      import weakref

      self._executor = concurrent.futures.ProcessPoolExecutor(
        self.num_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_open_in_worker,
        initargs=self.source_args,
      )
      weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
    chunks = [c for c in np.array_split(np.asarray(indices), self.num_workers) if len(c)]
    parts = list(self._executor.map(_read_in_worker, chunks, [self.has_label] * len(chunks)))
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts]) if self.has_label else None
    return images, labels
