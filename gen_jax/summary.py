"""Metrics to workdir/metrics.jsonl and TensorBoard event files (via tensorboardX,
which needs no TensorFlow)."""

import json
import os

import numpy as np


class MetricWriter:
  """Appends {'step': s, name: value, ...} lines to metrics.jsonl and writes
  the same scalars to TensorBoard. Only the writing process should create one."""

  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter  # Imported here: tests never need it.
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
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
