"""Checkpoints of the whole train state with orbax (the one module that imports it),
and single parameter trees as .npz files (the evaluation classifier's cache).

Saves are atomic (orbax writes to a temporary directory and renames it; npz
files are written under a temporary name and renamed), so a crash mid-save
leaves the previous files intact.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util


class NoCheckpointError(FileNotFoundError):
  """Raised when a run needs a checkpoint and the workdir has none."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, max_to_keep: int | None = 3,
            create: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager for workdir/checkpoints, keeping the newest `max_to_keep`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` (a pytree) as checkpoint `step`; waits until it is on disk."""
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
  return mngr.latest_step()


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores checkpoint `step` (default: the latest) into the structure,
  dtypes and shardings of `abstract_state` (e.g. from jax.eval_shape)."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise NoCheckpointError(
        f"no checkpoint in {mngr.directory}; train first (--mode=train)")
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def abstract_like(state):
  """ShapeDtypeStructs (with shardings) of a concrete or abstract pytree."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def save_params_npz(path: str, params) -> None:
  """Writes a nested dict of arrays as an .npz, one entry per leaf, named by
  its path joined with '/' (e.g. 'params/Dense_0/kernel')."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  tmp = path + ".tmp.npz"
  np.savez(tmp, **{name: np.asarray(value) for name, value in flat.items()})
  os.replace(tmp, path)


def load_params_npz(path: str) -> dict:
  """The nested dict of numpy arrays that `save_params_npz` wrote."""
  with np.load(path, allow_pickle=False) as f:
    flat = {name: f[name] for name in f.files}
  return traverse_util.unflatten_dict(flat, sep="/")
