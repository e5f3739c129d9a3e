"""Checkpoints of the whole train state with orbax (the one module that imports it),
and single parameter trees as .npz files (the evaluation classifier's cache).

Saves are atomic: orbax 0.12.8 writes step N into `N.orbax-checkpoint-tmp`
(and `commit_success.txt` into it last), then renames it to `N`. A process
killed mid-save therefore leaves the previous checkpoints intact plus a
`N.orbax-checkpoint-tmp` folder, which `latest_step()` ignores. A step folder
can still be unreadable (a disk error, a partial copy, a hand edit), so
resuming goes through `restore_newest`, which tries the steps newest first and
sets aside (and reports) the ones that cannot be restored.
Small numpy pytrees (the evaluation classifier) are saved as npz files through
gen_jax.runtime.fileio (a temporary name, then renamed). `saved_steps` is the one
place that decides what counts as a checkpoint on disk.
"""

import contextlib
import logging as std_logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from gen_jax.runtime import fileio

# The name orbax gives an unfinished save (`<step>.orbax-checkpoint-tmp`), as a kill -9 mid-save
# leaves it.
TMP_SUFFIX = ".orbax-checkpoint-tmp"
# workdir/corrupt_checkpoints/<step>-<time>: unreadable steps, set aside for a post-mortem.
CORRUPT_DIR = "corrupt_checkpoints"


class NoCheckpointError(FileNotFoundError):
  """Raised when a run needs a checkpoint and the workdir has none."""


class UnreadableCheckpointError(ValueError):
  """Raised when a workdir has checkpoints but none of them can be restored."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(
  workdir: str, max_to_keep: int | None = 3, create: bool = True
) -> ocp.CheckpointManager:
  """A CheckpointManager for workdir/checkpoints, keeping the newest `max_to_keep`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` (a pytree) as checkpoint `step`; waits until it is on disk.

  A full disk raises fileio.DiskFullError saying how much a checkpoint needs,
  after the manager is closed (it would raise the same error again) and the
  unfinished `<step>.orbax-checkpoint-tmp` folder is deleted; orbax's own log
  records of it (a traceback per thread and array) are dropped.
  """
  _DropDiskFullRecords.install()
  # Before the save, not after its failure: tensorstore's late callbacks can reach the closed loop
  # before the except clause runs (seen in CI on a loaded machine).
  _drop_closed_loop_errors()
  try:
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    mngr.wait_until_finished()
  except Exception as e:
    if not fileio.is_disk_full(e):
      raise
    with contextlib.suppress(Exception):
      mngr.close()
    directory = str(mngr.directory)
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
      if name.startswith(f"{step}{TMP_SUFFIX}"):
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    raise fileio.DiskFullError(
      f"the disk is full: checkpoint {step} could not be saved in {directory} (a checkpoint "
      f"needs about {format_size(state_bytes(state))})"
    ) from e


class _DropDiskFullRecords(std_logging.Filter):
  """Drops the log records of orbax's threads (absl) and of asyncio's unretrieved tasks that
  report a full disk: save() raises one DiskFullError for all of them."""

  installed = False

  def filter(self, record) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (
      (error is not None and fileio.is_disk_full(error))
      or "No space left on device" in record.getMessage()
    )

  @classmethod
  def install(cls) -> None:
    if not cls.installed:
      for name in ("absl", "asyncio"):
        std_logging.getLogger(name).addFilter(cls())
      cls.installed = True


def state_bytes(state) -> int:
  """The bytes of a pytree's arrays (concrete or ShapeDtypeStructs): about a checkpoint's size."""
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)))


def format_size(num_bytes) -> str:
  """1234567 -> '1.2 MB' (powers of 1024)."""
  if num_bytes < 1024:
    return f"{num_bytes:.0f} bytes"
  for unit in ("kB", "MB", "GB", "TB"):
    num_bytes /= 1024
    if num_bytes < 1024 or unit == "TB":
      return f"{num_bytes:.1f} {unit}"


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
  return mngr.latest_step()


def saved_steps(workdir: str) -> list[int]:
  """The finished step folders of workdir/checkpoints (readable or not), in increasing order.

  The one place that decides what counts as a checkpoint on disk: a folder
  named by its step; an unfinished save (`<step>.orbax-checkpoint-tmp`) does not.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def has_checkpoint(workdir: str) -> bool:
  """Whether workdir/checkpoints has a finished step folder (readable or not)."""
  return bool(saved_steps(workdir))


def require_checkpoint(workdir: str) -> None:
  """Raises NoCheckpointError unless `workdir` has a checkpoint (sampling and evaluation)."""
  if not has_checkpoint(workdir):
    raise NoCheckpointError(
      f"no checkpoint in {checkpoint_dir(workdir)}; train first with the same workdir"
    )


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores checkpoint `step` (default: the newest readable one) into the
  structure, dtypes and shardings of `abstract_state` (e.g. from jax.eval_shape).

  With step=None an unreadable newer checkpoint is skipped with a warning and
  left where it is (this is the read-only path of sample and eval).
  """
  if step is not None:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  state, _ = restore_newest(mngr, abstract_state, set_aside=False, report=logging.warning)
  if state is None:
    raise NoCheckpointError(f"no readable checkpoint in {mngr.directory}; train first")
  return state


def restore_newest(
  mngr: ocp.CheckpointManager,
  abstract_state,
  set_aside: bool = True,
  report: Callable[[str], None] = print,
  is_writer: bool = True,
):
  """The newest checkpoint that restores completely, and its step: (state, step), or (None, None).

  Steps are tried newest first. A step whose restore raises, or whose arrays
  hold NaN/inf (no healthy run saves such a state), is reported in one line
  and passed over. If no step restores, nothing is touched and
  UnreadableCheckpointError is raised: then the cause is more likely a changed
  model or code than damaged files, and starting over must be the user's
  decision. With `set_aside` (training: the next save of that step
  number would otherwise collide with it), the writer process also
  * moves each passed-over step newer than the restored one to
    workdir/corrupt_checkpoints/<step>-<time>, and
  * deletes the `<step>.orbax-checkpoint-tmp` folders of interrupted saves,
  so the manager then sees only good steps. Every process takes the same
  decisions from the same files; in a multi-process run they meet at a barrier
  before the manager rereads the folder.
  """
  directory = str(mngr.directory)
  leftovers = (
    sorted(n for n in os.listdir(directory) if TMP_SUFFIX in n) if os.path.isdir(directory) else []
  )
  for name in leftovers:
    report(
      f"checkpoint: ignoring {os.path.join(directory, name)}, a save interrupted before "
      "it finished" + ("; deleting it" if set_aside and is_writer else "")
    )
  with _quiet_closed_event_loops():
    state, found, rejected, reasons = _restore_first_readable(
      directory, sorted(mngr.all_steps(), reverse=True), abstract_state
    )
  if rejected:  # their late callbacks arrive until the process exits, past the `with`
    _drop_closed_loop_errors()
  # Said once the outcome is known: when no step restores, nothing is set aside.
  action = ("setting it aside" if set_aside else "skipping it") if found is not None else None
  for step, reason in zip(rejected, reasons):
    report(
      f"checkpoint: step {step} in {directory} cannot be restored ({reason})"
      + (f"; {action}" if action else "")
    )
  first_reason = reasons[0] if reasons else None
  if rejected and found is None:
    raise UnreadableCheckpointError(
      f"none of the checkpoints in {directory} can be restored (steps "
      f"{', '.join(map(str, rejected))}; newest: {first_reason}); if the model, its config or "
      "gen_jax changed since they were written, train in a new workdir; if the files are "
      "damaged, move that folder away to start over"
    )
  if set_aside and (leftovers or rejected):
    if is_writer:
      for name in leftovers:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      stamp = time.strftime("%Y%m%d-%H%M%S")
      aside = os.path.join(os.path.dirname(directory), CORRUPT_DIR)
      for step in rejected:
        os.makedirs(aside, exist_ok=True)
        target = os.path.join(aside, f"{step}-{stamp}")
        os.replace(os.path.join(directory, str(step)), target)
        report(f"checkpoint: moved unreadable step {step} to {target}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("gen_jax:checkpoint_set_aside")
    mngr.reload()
  return state, found


def _restore_first_readable(directory, steps, abstract_state):
  """Tries `steps` in order: (state, step, rejected steps, their reasons); state None if none."""
  rejected, reasons = [], []
  for step in steps:
    # A throwaway manager per attempt: a failed restore can leave a manager unable to restore
    # anything else (seen: after an emptied step folder, every step fails the same way).
    trial = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    try:
      state = trial.restore(step, args=ocp.args.StandardRestore(abstract_state))
      _check_finite(state)
      return state, step, rejected, reasons
    except Exception as e:  # orbax and tensorstore raise many types
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
      # orbax's advice to restore with strict=False (truncating or padding arrays) is about its
      # API, not this command: a checkpoint of another shape is another model.
      first_line = re.split(r"\s*Truncating/padding is disabled", first_line)[0][:200]
      rejected.append(step)
      reasons.append(f"{type(e).__name__}: {first_line}")
    finally:
      trial.close()
  return None, None, rejected, reasons


def _is_closed_loop_error(error) -> bool:
  return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


def _drop_closed_loop_errors() -> None:
  """After a failed save or restore, tensorstore's callbacks keep arriving at orbax's closed asyncio loop
  for the rest of the process, each printed as a traceback (through sys.excepthook or
  sys.unraisablehook): drops those, and only those, from now on."""
  if getattr(sys.excepthook, "drops_closed_loop_errors", False):
    return
  unraisable, excepthook = sys.unraisablehook, sys.excepthook

  def unraisable_hook(u):
    if not _is_closed_loop_error(u.exc_value):
      unraisable(u)

  def except_hook(kind, value, traceback):
    if not _is_closed_loop_error(value):
      excepthook(kind, value, traceback)

  except_hook.drops_closed_loop_errors = True
  sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


@contextlib.contextmanager
def _quiet_closed_event_loops():
  """Drops the 'Event loop is closed' errors that tensorstore's late callbacks raise into orbax's
  closed asyncio loop after a failed restore; Python would print each as a stray traceback."""
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (
      isinstance(unraisable.exc_value, RuntimeError)
      and "Event loop is closed" in str(unraisable.exc_value)
    ):
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _check_finite(state) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if jax.dtypes.issubdtype(leaf.dtype, np.inexact) and not bool(jax.numpy.isfinite(leaf).all()):
      raise FloatingPointError(f"non-finite values in {jax.tree_util.keystr(path)}")


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a concrete or abstract pytree."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def save_params_npz(path: str, params) -> None:
  """Writes a nested dict of arrays as an .npz, one entry per leaf, named by
  its path joined with '/' (e.g. 'params/Dense_0/kernel')."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  with fileio.atomic_path(path) as tmp:
    np.savez(tmp, **{name: np.asarray(value) for name, value in flat.items()})


def load_params_npz(path: str) -> dict:
  """The nested dict of numpy arrays that `save_params_npz` wrote."""
  with np.load(path, allow_pickle=False) as f:
    flat = {name: f[name] for name in f.files}
  return traverse_util.unflatten_dict(flat, sep="/")
