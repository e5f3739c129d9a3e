"""Whether a workdir may be resumed with this config and data, and whether its disk (and the
device's memory) have room.

Run at start-up, before anything is written: a resumed run must continue the
run its checkpoints came from (same model, data and optimizer), and a full
disk must fail now, not at the first checkpoint.
"""

import json
import os
import shutil

import jax

from gen_jax.configs import ConfigError
from gen_jax.train import checkpoint
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
  "mesh.",  # how the state is laid out over devices; checkpoints restore onto any layout
)
_ABSENT = "<absent>"
# Room for metrics.jsonl, TensorBoard events and sample pictures at start-up (a grid PNG of 64
# samples is tens of kB); checkpoints are counted exactly.
LOGS_ALLOWANCE = 2**20


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _added_defaults() -> dict:
  """Fields added to config sections after runs were saved, flattened, at the value that trains
  as those runs did: config.diffusion's continuous-time fields (models.process_model), whose
  defaults are DDPM's discrete process."""
  import ml_collections

  from gen_jax.models import process_model

  fields = ml_collections.ConfigDict({"diffusion": process_model.process_fields()})
  return _flatten(json.loads(fields.to_json_best_effort()))


def config_changes(saved: dict, config) -> list[str]:
  """'key: old -> new' for each key (dotted path) where `config` differs from
  the saved config.json contents `saved`, outside RESUMABLE_CHANGES."""
  old = _flatten(saved)
  new = _flatten(json.loads(config.to_json_best_effort()))
  added = _added_defaults()
  changes = []
  for key in sorted(set(old) | set(new)):
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_CHANGES):
      continue
    before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if before is _ABSENT and key in added and after == added[key]:
      continue  # a field added since the run was saved, at the value it was trained with
    if before != after:
      show = lambda v: v if v is _ABSENT else json.dumps(v)
      changes.append(f"{key}: {show(before)} -> {show(after)}")
  return changes


def check_resume_config(config, workdir: str, *, unverified: bool = False) -> None:
  """Raises ConfigError if `workdir` holds checkpoints of a run whose
  config.json differs from `config` in a key outside RESUMABLE_CHANGES, or
  whose config.json is missing or damaged (unless `unverified`: then this
  config is taken as theirs, and a line says so)."""
  if not checkpoint.has_checkpoint(workdir):
    return
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  try:
    saved = workdir_lib.read_saved_config(workdir)
    problem = None if saved is not None else f"{path} is missing"
  except (OSError, ConfigError) as e:
    saved, problem = None, str(e)
  if problem and unverified:
    print(
      f"Resuming without comparing configs: {problem}; this command's config is taken as theirs"
    )
    return
  if problem:
    raise ConfigError(
      f"workdir={workdir} holds checkpoints, but {problem}, so this config cannot be compared "
      "with the one they were trained with (a resumed run could silently differ); put the run's "
      "config.json back, or pass resume_unverified=True to resume with this command's config"
    )
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
  except ConfigError:  # damaged: train() writes it again from the data
    path = os.path.join(workdir, workdir_lib.DATA_SPEC)
    print(f"{path} is damaged; writing it again from the data")
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
  state_bytes = checkpoint.state_bytes(abstract_state)
  copies = max(keep_checkpoints + 1 - num_saved, 1)
  need = copies * state_bytes + LOGS_ALLOWANCE
  free = shutil.disk_usage(workdir_lib.nearest_existing(workdir)).free
  if free >= need:
    return
  size = checkpoint.format_size
  # Advise what would make room: fewer copies only where the copies are most of the need.
  if copies > 1 and copies * state_bytes > LOGS_ALLOWANCE:
    advice = (
      f"free {size(need - free)}, lower config.train.keep_checkpoints (each copy is "
      f"{size(state_bytes)}) or choose another workdir"
    )
  else:
    advice = f"free {size(need - free)} or choose another workdir"
  raise ConfigError(
    f"workdir={workdir} has {size(free)} free, but the run needs about {size(need)}: "
    f"{copies} x the {size(state_bytes)} train state (config.train.keep_checkpoints="
    f"{keep_checkpoints}, and one being written) and {size(LOGS_ALLOWANCE)} for logs and "
    f"sample pictures; {advice}"
  )


def check_attention_memory(
  model_config, example_shape, *, batch_size: int, num_devices: int
) -> None:
  """U-Nets (a config.model with ch_mult): refuses images too large for the model before any
  memory is allocated (was XLA's out-of-memory error at the first step, asking for petabytes).

  The middle block attends over every position of the lowest resolution, H / 2^(L-1) by
  W / 2^(L-1) for L = len(ch_mult) levels: its scores alone are b x P^2 float32 for P positions
  and b = the batch per device. If that one array exceeds the device's memory (the host's RAM on
  a CPU), no setting of this run can train.
  """
  if "ch_mult" not in model_config or len(example_shape) != 3:
    return
  levels = len(model_config.ch_mult)
  height, width = (max(n >> (levels - 1), 1) for n in example_shape[:2])
  positions = height * width
  per_device = -(-batch_size // num_devices)
  scores = per_device * positions**2 * 4
  memory = device_memory()
  if memory and scores > memory:
    size = checkpoint.format_size
    raise ConfigError(
      f"images of {example_shape[0]}x{example_shape[1]} are too large for this U-Net: the "
      f"self-attention of its middle block at {height}x{width} (the lowest of "
      f"config.model.ch_mult's {levels} levels) needs at least {per_device} x {positions}^2 "
      f"scores, {size(scores)}, more than the {size(memory)} of memory; resize the images (the data of "
      "config.data), add levels to config.model.ch_mult or lower config.data.batch_size"
    )


def device_memory() -> int | None:
  """Bytes of memory of this process' first device (an accelerator's limit, or the host's RAM), or
  None. A local device: memory_stats() refuses the devices of other processes."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None
