"""Metrics to workdir/metrics.jsonl and TensorBoard event files (via tensorboardX,
which needs no TensorFlow).

MetricLog          what the training loop logs: the metrics of the steps since the
                   last log, their non-finite check, their averages and the progress bar
MetricWriter       one record of scalars to metrics.jsonl and TensorBoard; images too
drop_records_after the records a resumed run is about to write again
"""

import json
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from gen_jax.runtime import fileio
from gen_jax.train import faults
from gen_jax.train.step import HALT

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


class MetricLog:
  """The metrics of the steps since the last log: the non-finite check, the averages
  written to metrics.jsonl and TensorBoard (the writing process), and the progress bar."""

  def __init__(
    self, workdir: str, num_steps: int, start_step: int, *, is_writer: bool, skip_nonfinite: bool
  ):
    self.workdir, self.skip_nonfinite = workdir, skip_nonfinite
    self.pending = []  # (step, metrics), on the device until check_finite fetches them
    self.writer = MetricWriter(workdir) if is_writer else None
    self.progress = tqdm(
      total=num_steps,
      initial=start_step,
      desc="train",
      disable=not is_writer,
      dynamic_ncols=True,
      mininterval=1.0,
    )
    self._logged_step, self._logged_time = start_step, time.time()

  def append(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))
    self.progress.update(1)

  def check_finite(self, last_saved: int) -> None:
    """Raises NonFiniteError if a pending step set HALT. Fetches the metrics: a sync."""
    self.pending = jax.device_get(self.pending)
    bad_step = faults.first_halted_step(self.pending)
    if bad_step is not None:
      raise faults.NonFiniteError(
        faults.nonfinite_message(
          bad_step, self.pending, last_saved, self.workdir, self.skip_nonfinite
        )
      )

  def write(self, step: int) -> None:
    """Writes the pending steps' averages (NaNs of skipped steps left out) as step `step`."""
    host = [metrics for _, metrics in jax.device_get(self.pending)]
    self.pending = []
    values = {}
    for name in host[0]:
      series = np.asarray([m[name] for m in host])
      if name == HALT:
        continue
      if name == "skipped_nonfinite_steps":  # a running total
        values[name] = float(series[-1])
      else:
        finite = series[np.isfinite(series)]
        values[name] = float(np.mean(finite)) if finite.size else float("nan")
    now = time.time()
    values["steps_per_sec"] = (step - self._logged_step) / max(now - self._logged_time, 1e-9)
    self._logged_step, self._logged_time = step, now
    self.progress.set_postfix(loss=f"{values['loss']:.4f}")
    if self.writer:
      self.writer.write_scalars(step, values)

  def close(self) -> None:
    self.progress.close()
    if self.writer:
      self.writer.close()
