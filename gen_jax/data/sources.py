"""Where data comes from: one function per `data.source`, each returning the Dataset of one split, and
`load_dataset`, which reads the `data` config and picks one.

Longer than the house's ~400 lines: one function per source plus the worker-process pool the
ArrayRecord/TFDS source reads through; the pool is the next thing to move to a module of its own.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import signal
import threading
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
    fetch = _WorkerPool(num_workers, (name, split, data_dir), has_label, f"{name}/{split}")
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


class _WorkerPool:
  """A Fetch that reads records in `num_workers` processes: the indices (k,) are cut into num_workers
  contiguous chunks, each read by one worker, and the results concatenated in order.

  The processes are spawned (a fork of a process that runs JAX can deadlock) at the first call, so a Dataset
  that is never read starts none; each opens the data source once. A stop is the training process's to
  decide, so they ignore SIGINT and SIGTERM (Ctrl-C and `timeout` signal the whole process group): the loop
  finishes its step with their batches and saves. They are killed when the interpreter exits, when this
  fetch is garbage collected or closed, and end by themselves when the training process is gone (their pipe
  closes). A worker that dies (the out-of-memory killer's SIGKILL) is a one-line DataError naming it, raised
  by the call waiting for it, never a wait for ever.
  """

  def __init__(self, num_workers: int, source_args: tuple, has_label: bool, name: str = ""):
    self.num_workers, self.source_args, self.has_label = num_workers, source_args, has_label
    self.name = name or f"{source_args[0]}/{source_args[1]}"
    self._workers = _Workers()
    self._lock = threading.Lock()  # one batch at a time: each worker's pipe carries one request
    self._finalizer = None
    # The message of the DataError that ended this pool, repeated by later calls.
    self._failure = None

  def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    with self._lock:
      if self._failure is not None:
        raise DataError(self._failure)
      if self._workers.closed:
        raise DataError(self._stopped())
      chunks = [c for c in np.array_split(np.asarray(indices), self.num_workers) if len(c)]
      try:
        if not self._workers.processes:
          self._start()
        for k, chunk in enumerate(chunks):
          try:
            self._workers.connections[k].send((chunk, self.has_label))
          except OSError:  # a closed pipe: the worker is gone; _receive says how
            pass
        parts = [self._receive(k) for k in range(len(chunks))]
      except BaseException as e:
        # The other workers' answers would answer the next request: this pool is done.
        self._failure = str(e) if isinstance(e, DataError) else self._failure
        _stop_workers(self._workers)
        raise
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts]) if self.has_label else None
    return images, labels

  def close(self) -> None:
    """Kills the worker processes (they only read); later calls raise DataError."""
    _stop_workers(self._workers)

  def _start(self) -> None:
    import multiprocessing
    import multiprocessing.util
    from multiprocessing import resource_tracker

    context = multiprocessing.get_context("spawn")
    if self._finalizer is None:
      # Runs before multiprocessing's own exit hook, which would SIGTERM (ignored) and join them for ever.
      self._finalizer = multiprocessing.util.Finalize(
        self, _stop_workers, args=(self._workers,), exitpriority=100
      )
    # Started first: starting it unblocks SIGINT and SIGTERM in the calling thread (its own masking).
    resource_tracker.ensure_running()
    # Blocked in this thread while the workers start: a child inherits the mask through fork and exec, so
    # a Ctrl-C during their seconds of imports stays pending until they ignore it (_worker_main).
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_IGNORES)
    try:
      for k in range(self.num_workers):
        mine, theirs = context.Pipe()
        process = context.Process(
          target=_worker_main,
          args=(theirs, self.source_args),
          name=f"gen_jax-data-worker-{k + 1}",
          daemon=True,
        )
        with self._workers.lock:  # a stop at exit (another thread) either kills it or comes first
          if self._workers.closed:
            raise DataError(self._stopped())
          try:
            process.start()
          except OSError as e:  # no more processes or memory: say so in one line
            raise DataError(
              f"cannot start data worker {k + 1} of {self.num_workers} for {self.name} ({e}); "
              "lower config.data.num_workers (0: no worker processes)"
            ) from None
          self._workers.processes.append(process)
          self._workers.connections.append(mine)
        theirs.close()  # only the worker holds its end: its death closes the pipe
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, previous)

  def _receive(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Worker k's answer to its request; a DataError if it died or could not read (liveness: its
    process sentinel wakes the wait when it ends)."""
    from multiprocessing.connection import wait

    connection, process = self._workers.connections[k], self._workers.processes[k]
    while True:
      ready = wait([connection, process.sentinel])
      if self._workers.closed:
        raise DataError(self._stopped())
      if connection in ready:
        try:
          kind, payload = connection.recv()
        except (EOFError, OSError):  # it died: its sentinel says how
          process.join(timeout=5)
          raise DataError(self._died(k)) from None
        if kind == "ok":
          return payload
        raise DataError(
          f"data worker {k + 1} of {self.num_workers} cannot read {self.name}: {payload}"
        )
      if process.sentinel in ready:
        process.join(timeout=5)
        raise DataError(self._died(k))

  def _stopped(self) -> str:
    return f"the data workers of {self.name} were stopped; no batch is read any more"

  def _died(self, k: int) -> str:
    process = self._workers.processes[k]
    code = process.exitcode
    if code is not None and code < 0:
      name = signal.Signals(-code).name
      how = f"was killed by {name}" + (
        " (the kernel's out-of-memory killer sends it when memory runs out)"
        if -code == signal.SIGKILL
        else ""
      )
    else:
      how = f"exited with status {code}"
    return (
      f"data worker {k + 1} of {self.num_workers} (pid {process.pid}) reading {self.name} {how}; "
      "run the same command again (training resumes from its newest checkpoint), with a lower "
      "config.data.num_workers if memory is short (0: no worker processes)"
    )


class _Workers:
  """The processes of a _WorkerPool and the parent's ends of their pipes (the finalizer's state)."""

  def __init__(self):
    self.processes: list = []
    self.connections: list = []
    self.closed = False
    self.lock = threading.Lock()  # closed and a process start: one at a time


_WORKER_IGNORES = (signal.SIGINT, signal.SIGTERM)


def _stop_workers(workers: _Workers) -> None:
  """Kills the workers and reaps them (a SIGKILL cannot be ignored; they hold nothing to save)."""
  with workers.lock:
    workers.closed = True
  for process in workers.processes:
    if process.exitcode is None:
      try:
        process.kill()
      except OSError:
        pass
  for process in workers.processes:
    process.join(timeout=5)


def _worker_main(connection, source_args: tuple) -> None:
  """A worker process: opens the data source, then answers (indices, has_label) requests with
  ('ok', (images, labels)) or ('error', one line) until its pipe closes."""
  for signum in _WORKER_IGNORES:  # the training process decides when to stop (see _WorkerPool)
    signal.signal(signum, signal.SIG_IGN)
  # Ignored now, so unblocking drops one that came while the worker started.
  signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_IGNORES)
  # Quiet as the training process is (absl shows it no warnings): an error comes back as a DataError.
  logging.getLogger("absl").setLevel(logging.ERROR)
  try:
    source = _open_tfds(*source_args)
  except Exception as e:  # DataError: its one line goes to the first request's answer
    source, failure = None, _one_line(e)
  while True:
    try:
      request = connection.recv()
    except (EOFError, OSError):  # the training process is gone or closed the pool
      return
    if source is None:
      answer = ("error", failure)
    else:
      try:
        answer = ("ok", _read_records(source, request[0], has_label=request[1]))
      except Exception as e:  # a damaged record: the parent raises it as a DataError
        answer = ("error", _one_line(e))
    try:
      connection.send(answer)
    except OSError:
      return


def _one_line(error: BaseException) -> str:
  if isinstance(error, DataError):
    return str(error).splitlines()[0]
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
