"""What happens on a signal, a preemption, a spent time budget or a NaN: the loop asks here.

Stopper           the one object the loop asks after each step whether training
                  ends there, and that knows why (the three below)
StopOnSignal      the first SIGTERM/SIGINT is recorded, so the loop can finish
                  its step, save and raise TrainingInterrupted; a second one
                  goes to the previous handler at once
reached_preemption  multi-process runs: JAX's preemption service names the
                  step at which every process saves and stops
out_of_time       whether train.max_seconds is spent (agreed by all processes)
first_halted_step the first step whose HALT flag (gen_jax.train.step) is set
nonfinite_message what NonFiniteError says about it
resource_errors   a full disk or an exhausted memory as one-line errors
"""

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

import jax
import numpy as np

from gen_jax.runtime import fileio
from gen_jax.train import checkpoint
from gen_jax.train.step import HALT, MAX_CONSECUTIVE_NONFINITE


class NonFiniteError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient; the message names the step."""


class TrainingInterrupted(Exception):
  """train() stopped on a signal after saving a checkpoint at `step`.

  Attributes: step, signal_number (signal.SIGTERM or SIGINT), workdir.
  """

  def __init__(self, step: int, signal_number: int, workdir: str):
    self.step, self.signal_number, self.workdir = step, signal_number, workdir
    super().__init__(
      f"training stopped by {signal.Signals(signal_number).name} after step {step}; "
      f"its checkpoint is saved in {checkpoint.checkpoint_dir(workdir)}"
    )


class StopOnSignal:
  """A context manager: the first SIGTERM or SIGINT only records itself in
  `signal_number`, so the training loop can finish its step, save and stop.

  A second one restores the previous handlers and hands the signal to its
  previous handler at once (Python's SIGINT handler raises KeyboardInterrupt;
  SIGTERM's default ends the process). The previous handlers come back on
  exit. Only the main thread can install handlers; elsewhere, with several
  processes (`enabled=False`: the preemption service handles SIGTERM there),
  and for a signal that is ignored (SIG_IGN) or handled outside Python, this
  does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, announce: bool = True, enabled: bool = True):
    self.signal_number = None
    self._announce = announce
    self._enabled = enabled
    self._previous = {}

  def __enter__(self):
    if self._enabled and threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        previous = signal.getsignal(signum)
        if previous is None or previous == signal.SIG_IGN:
          continue
        self._previous[signum] = previous
        signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.signal_number is None:
      self.signal_number = signum
      if self._announce:
        print(
          f"\n{name} received: finishing this step and saving a checkpoint; "
          f"send it again to stop at once without saving",
          flush=True,
        )
      return
    previous = self._previous.get(signum, signal.SIG_DFL)
    self._restore()
    if callable(previous):
      previous(signum, frame)
    else:  # SIG_DFL: let the signal do what it does without us.
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)

  def _restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()
    return False


class Stopper:
  """Whether training ends after a step, and why; a context manager around the loop (inside it,
  StopOnSignal's handlers are installed).

  should_stop(step, metrics), asked once after each step, sets `why`:
    "last"        step is config.train.num_steps
    "time"        train.max_seconds is spent: the step ends the run as a last step would
    "signal"      a SIGTERM/SIGINT came: save this step, draw no grid, TrainingInterrupted
    "preemption"  several processes: JAX's preemption service chose this step (as SIGTERM)
  The time budget's clock starts at the first call (the first step has compiled by then) and
  is read once the previous step has finished on the device: the device stays busy, and at
  most the step in flight runs past the budget. A signal can also come while a step's logs,
  checkpoint or grid are written: `signalled()` asks again then.
  """

  def __init__(self, num_steps: int, max_seconds: float, log_every: int, *, announce: bool):
    self.signals = StopOnSignal(announce=announce, enabled=jax.process_count() == 1)
    self.num_steps, self.max_seconds, self.log_every = num_steps, float(max_seconds), log_every
    self.why = None
    self.trained_seconds = 0.0
    self._clock_start = self._previous_halt = None

  def __enter__(self):
    self.signals.__enter__()
    return self

  def __exit__(self, *exc):
    return self.signals.__exit__(*exc)

  def should_stop(self, step: int, metrics) -> bool:
    """Whether training ends after `step` (whose metrics hold the device's HALT flag)."""
    if self._clock_start is None:
      self._clock_start = time.perf_counter()
    self.why = self._why(step, metrics)
    return self.why is not None

  def _why(self, step: int, metrics) -> str | None:
    if step == self.num_steps:
      return "last"
    if self.max_seconds:
      jax.block_until_ready(self._previous_halt)
      self.trained_seconds = time.perf_counter() - self._clock_start
      if out_of_time(self.trained_seconds, self.max_seconds, step, self.log_every):
        return "time"
    self._previous_halt = metrics[HALT]
    if self.signals.signal_number is not None:
      return "signal"
    if reached_preemption(step):
      return "preemption"
    return None

  def signalled(self) -> bool:
    """Whether a signal has come (after should_stop: while that step was logged, saved or drawn)."""
    if self.signals.signal_number is not None and self.why is None:
      self.why = "signal"
    return self.signals.signal_number is not None

  @property
  def ends_as_last_step(self) -> bool:
    """The step should_stop stopped at gets a sample grid, as a last step does."""
    return self.why in ("last", "time")

  @property
  def stopped_by(self) -> int | None:
    """The signal that stopped training (a preemption counts as SIGTERM), or None."""
    if self.signals.signal_number is not None:  # also one during the last step's grid
      return self.signals.signal_number
    return signal.SIGTERM if self.why == "preemption" else None


def reached_preemption(step: int) -> bool:
  """Multi-process runs: JAX's preemption service catches SIGTERM on any host
  and names a step at which all processes save (a local check per step)."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils

  try:
    return multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:  # the service is off (jax_enable_preemption_service=False)
    return False


def out_of_time(elapsed: float, max_seconds: float, step: int, log_every: int) -> bool:
  """Whether the training budget train.max_seconds is spent after `elapsed` seconds.

  One process: checked after every step. Several: only at logging steps, on
  process 0's clock (broadcast to all), so every process stops at the same step.
  """
  if jax.process_count() == 1:
    return elapsed >= max_seconds
  if step % log_every:
    return False
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(elapsed >= max_seconds)))


def first_halted_step(host_metrics) -> int | None:
  """The first step of [(step, metrics on the host)] whose HALT flag is set, or None."""
  for step, metrics in host_metrics:
    if metrics[HALT]:
      return step
  return None


def nonfinite_message(bad_step, host_metrics, last_saved, workdir, skip_nonfinite) -> str:
  """What NonFiniteError says: the step, its loss and gradient norm, the newest checkpoint."""
  metrics = dict(host_metrics).get(bad_step, {})
  values = ", ".join(f"{k} {float(metrics[k]):.4g}" for k in ("loss", "grad_norm") if k in metrics)
  newest = (
    f"the newest checkpoint is step {last_saved} in {checkpoint.checkpoint_dir(workdir)}"
    if last_saved
    else "no checkpoint was written"
  )
  if skip_nonfinite:
    what = (
      f"{MAX_CONSECUTIVE_NONFINITE} consecutive steps had a non-finite gradient, "
      f"the last at step {bad_step}"
    )
    hint = "lower the learning rate or check the data"
  else:
    what = f"non-finite loss or gradient at step {bad_step} ({values})"
    hint = (
      "lower the learning rate or check the data; config.train.skip_nonfinite=True skips such steps"
    )
  return f"{what}; stopped without saving it: {newest}. To go on, {hint}"


class OutOfMemoryError(MemoryError):
  """The device (or host) ran out of memory; the message says what to make smaller."""


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` is XLA's out-of-memory error (JaxRuntimeError RESOURCE_EXHAUSTED)."""
  return isinstance(error, jax.errors.JaxRuntimeError) and (
    "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)
  )


@contextlib.contextmanager
def resource_errors(what: str, newest_checkpoint: Callable[[], str] | None = None):
  """Turns a full disk (fileio.DiskFullError, or orbax's wrapped ENOSPC) and XLA's out-of-memory
  error raised inside the block into one-line user errors.

  what: what was being done ("training step 300", "drawing samples");
  newest_checkpoint: () -> a sentence naming the newest good checkpoint (training).
  """
  try:
    yield
  except Exception as e:
    if isinstance(e, (fileio.DiskFullError, OutOfMemoryError)) and newest_checkpoint is None:
      raise
    if fileio.is_disk_full(e):
      message = str(e) if isinstance(e, fileio.DiskFullError) else f"the disk is full ({e})"
      message = message.strip().splitlines()[0]
      saved = f"; {newest_checkpoint()}" if newest_checkpoint else ""
      raise fileio.DiskFullError(
        f"{message}, while {what}{saved}. Free space and run the same command again"
      ) from None
    if is_out_of_memory(e):
      first_line = str(e).strip().splitlines()[0]
      saved = f"; {newest_checkpoint()}" if newest_checkpoint else ""
      raise OutOfMemoryError(
        f"out of memory while {what} ({first_line}){saved}. Lower config.data.batch_size "
        "(or config.sample.batch_size), use smaller images or a smaller model: self-attention "
        "memory grows with the square of the number of pixels"
      ) from None
    raise
