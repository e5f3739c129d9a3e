"""A split of a data set read by index, and its batches as a pure function of (seed, step).

Global stream position ``p = step * batch_size + i`` is example ``perm_e[p % N]`` of epoch ``e = p // N``, with
``perm_e = np.random.default_rng([seed, e]).permutation(N)``; process ``k`` of ``n`` builds the k-th contiguous
slice of the global batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import numpy as np

from gen_jax import checks

Batch = dict[str, np.ndarray]
# indices (k,) -> (raw examples (k, *example_shape), int labels (k,) or None)
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class DataError(ValueError):
  """A data configuration or data file problem, with a one-line message that says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Batch arithmetic


def local_slice(batch_size: int, process_index: int, process_count: int) -> slice:
  """The slice of the global batch that process `process_index` builds."""
  if not checks.is_integer(batch_size) or batch_size <= 0:
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
    examples_read: how many examples this object has fetched (all batches, prefetched ones too).
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
    # Examples fetched so far by this process (a multi-process run reads only its slices).
    self.examples_read = 0

  def __repr__(self) -> str:
    return (
      f"Dataset({self.name!r}, kind={self.kind!r}, example_shape={self.example_shape}, "
      f"num_examples={self.num_examples}, num_classes={self.num_classes})"
    )

  def close(self) -> None:
    """Stops the worker processes that read this split (data.num_workers > 0), if any; reading it again
    raises DataError. They also stop when the interpreter exits or this Dataset is garbage collected."""
    close = getattr(self._fetch, "close", None)
    if close is not None:
      close()

  def _batch(self, indices: np.ndarray) -> Batch:
    """{'x': float32 (k, *example_shape), 'label': int32 (k,) if labelled} for example indices (k,)."""
    raw, labels = self._fetch(indices)
    self.examples_read += len(indices)
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
    sl = local_slice(batch_size, process_index, process_count)
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
    sl = local_slice(batch_size, process_index, process_count)
    n = self.num_examples

    def batches():
      for start in range(0, n, batch_size):
        positions = np.arange(start, start + batch_size)[sl]
        mask = positions < n
        batch = self._batch(np.where(mask, positions, n - 1))
        batch["mask"] = mask
        yield batch

    return batches()


def array_dataset(
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


def points_dataset(name: str, points: np.ndarray) -> Dataset:
  """An unlabelled Dataset over points (N, D)."""
  return array_dataset(name, points, None, None, None, False)
