"""Whether a workdir may be resumed with this config and data, and whether its disk has room.

Run at start-up, before anything is written: a resumed run must continue the
run its checkpoints came from (same model, data and optimizer), and a full
disk must fail now, not at the first checkpoint.
"""

import json
import shutil

import jax
from absl import logging

from gen_jax import checkpoint
from gen_jax.configs import ConfigError
from gen_jax.train import workdir as workdir_lib

# Config keys a resumed run may change: they leave the model, the data and the
# optimizer's state as they were (model.remat only recomputes the same values to
# save memory). A key ending in "." covers its section. Every other difference
# would make the resumed run a different run.
RESUMABLE_CHANGES = (
  "train.num_steps",
  "train.max_seconds",
  "train.log_every",
  "train.sample_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.skip_nonfinite",
  "model.remat",
  "data.tfds_data_dir",
  "data.num_workers",
  "sample.",
  "eval.",
)
_ABSENT = "<absent>"


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_changes(saved: dict, config) -> list[str]:
  """'key: old -> new' for each key (dotted path) where `config` differs from
  the saved config.json contents `saved`, outside RESUMABLE_CHANGES."""
  old = _flatten(saved)
  new = _flatten(json.loads(config.to_json_best_effort()))
  changes = []
  for key in sorted(set(old) | set(new)):
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_CHANGES):
      continue
    before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if before != after:
      show = lambda v: v if v is _ABSENT else json.dumps(v)
      changes.append(f"{key}: {show(before)} -> {show(after)}")
  return changes


def check_resume_config(config, workdir: str) -> None:
  """Raises ConfigError if `workdir` holds checkpoints of a run whose
  config.json differs from `config` in a key outside RESUMABLE_CHANGES."""
  if not checkpoint.has_checkpoint(workdir):
    return
  try:
    saved = workdir_lib.read_saved_config(workdir)
  except (OSError, ValueError) as e:
    logging.warning(
      "cannot read the config.json of %s (%s); resuming without comparing", workdir, e
    )
    return
  if saved is None:
    return
  changes = config_changes(saved, config)
  if changes:
    shown = "; ".join(changes[:12])
    if len(changes) > 12:
      shown += f"; and {len(changes) - 12} more"
    allowed = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_CHANGES)
    raise ConfigError(
      f"workdir={workdir} holds a run trained with a different config, so resuming it would "
      f"not continue that run: {shown}. Use a new workdir, or drop these overrides (a resumed "
      f"run may change only {allowed})"
    )


def check_resume_data(workdir: str, dataset) -> None:
  """The data's kind and example shape must be those the checkpoints were trained on."""
  if not checkpoint.has_checkpoint(workdir):
    return
  try:
    kind, shape = workdir_lib.read_data_spec(workdir)
  except checkpoint.NoCheckpointError:  # trained before data specs were written
    return
  now = (dataset.kind, tuple(dataset.example_shape))
  if (kind, shape) != now:
    raise ConfigError(
      f"workdir={workdir} was trained on {kind} data of shape {shape}, but {dataset.name} has "
      f"{now[0]} data of shape {now[1]}; use a new workdir for this data"
    )


def check_free_space(workdir: str, abstract_state, keep_checkpoints: int) -> None:
  """Fails at start-up, not at the first checkpoint, when the disk cannot hold the checkpoints.

  A checkpoint is about the size of the train state (parameters, optimizer
  state, EMA); orbax writes a new one before it deletes the oldest, so the
  run needs room for keep_checkpoints + 1 of them, less those on disk already,
  and at least one.
  """
  num_saved = len(checkpoint.saved_steps(workdir))
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
  copies = max(keep_checkpoints + 1 - num_saved, 1)
  need = copies * state_bytes + 16 * 2**20  # + logs and sample pictures
  existing = workdir_lib.nearest_existing(workdir)
  free = shutil.disk_usage(existing).free
  if free < need:
    raise ConfigError(
      f"workdir={workdir} has {_size(free)} free, but its checkpoints need about {_size(need)} "
      f"({copies} x the {_size(state_bytes)} train state, for config.train.keep_checkpoints="
      f"{keep_checkpoints}); free some space, lower keep_checkpoints or choose another workdir"
    )


def _size(num_bytes) -> str:
  if num_bytes < 1024:
    return f"{num_bytes:.0f} bytes"
  for unit in ("kB", "MB", "GB", "TB"):
    num_bytes /= 1024
    if num_bytes < 1024 or unit == "TB":
      return f"{num_bytes:.1f} {unit}"
