"""The training stream (batches for step = start, start + 1, ...) and a thread that prefetches it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from gen_jax.data.dataset import Batch, Dataset, local_slice


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
  local_slice(batch_size, process_index, process_count)  # fail here, not at the first next()

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
    # A timeout, so a stopped consumer never leaves the thread blocked forever.
    while not stop.is_set():
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
