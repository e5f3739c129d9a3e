"""Metrics to workdir/metrics.jsonl and TensorBoard event files (via tensorboardX,
which needs no TensorFlow)."""

import json
import os

import numpy as np

from gen_jax.runtime import fileio

METRICS_FILE = "metrics.jsonl"


def drop_records_after(workdir: str, step: int) -> int:
  """Rewrites workdir/metrics.jsonl without the records of steps > `step`.

  A run that resumes from checkpoint `step` logs the steps after it again;
  the records the interrupted run wrote for them (and a last line cut short by
  a kill) are dropped, so each step appears once. Returns how many lines went.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        keep = json.loads(line)["step"] <= step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(line)
      else:
        dropped += 1
  if dropped:
    fileio.write_atomically(path, "".join(kept))
  return dropped


def _import_summary_writer():
  """tensorboardX.SummaryWriter, imported here (tests never need it) and without PyTorch.

  tensorboardX imports torch whenever it is installed, only to accept torch tensors, which gen_jax never
  passes: on our shared 2-core CPU, under load, `import tensorboardX` took 7.7-10.3 s with torch installed
  and 0.7-0.8 s with it blocked, seconds of every run's start-up. Blocked for that one import unless torch
  is already loaded.
  """
  import sys

  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = (
      None  # `import torch` raises ImportError; tensorboardX falls back to numpy
    )
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Appends {'step': s, name: value, ...} lines to metrics.jsonl and writes
  the same scalars to TensorBoard. Only the writing process should create one."""

  def __init__(self, workdir: str):
    SummaryWriter = _import_summary_writer()
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: dict) -> None:
    record = {"step": int(step)}
    for name, value in scalars.items():
      value = float(np.asarray(value))
      record[name] = value
      self._tb.add_scalar(name, value, global_step=int(step))
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._tb.flush()

  def write_image(self, step: int, name: str, image_uint8: np.ndarray) -> None:
    """image: (H, W, C) uint8."""
    self._tb.add_image(name, image_uint8, global_step=int(step), dataformats="HWC")
    self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()
