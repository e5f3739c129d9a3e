"""Resuming a workdir: whether it may be resumed with this config and data (and whether its
disk and the device's memory have room), and the state a training starts from.

  check_resume_config, check_resume_data, check_free_space, check_attention_memory
      open_run's start-up checks, before anything is written: a resumed run must
      continue the run its checkpoints came from (same model, data and optimizer),
      and a full disk must fail now, not at the first checkpoint
  restore_or_init(run, experiment, lock) -> (state, start_step)
      the newest checkpoint that restores, else a new state; and the workdir's
      records of this run (config.json, data_spec.json, experiment.txt), written
      only now, once the checks have compared against the old ones
"""

import functools
import json
import os
import shutil

import jax
from absl import logging

from gen_jax import configs
from gen_jax.configs import ConfigError
from gen_jax.train import checkpoint, rng, summary, workdir_lock
from gen_jax.train import step as step_lib
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
  "pretrained_scheduler",  # a diffusers folder's inference grid, kept only for an export
)
# Room for metrics.jsonl, TensorBoard events and sample pictures at start-up (a grid PNG of 64
# samples is tens of kB); checkpoints are counted exactly.
LOGS_ALLOWANCE = 2**20


def _added_defaults() -> dict:
  """Fields added to config sections after runs were saved (dotted path -> the value that trains
  as those runs did): config.diffusion's continuous-time fields (models.process_model), whose
  defaults are DDPM's discrete process."""
  import ml_collections

  from gen_jax.models import process_model

  fields = ml_collections.ConfigDict({"diffusion": process_model.process_fields()})
  return {
    key: after
    for key, _, after in configs.differences({}, json.loads(fields.to_json_best_effort()))
  }


def config_changes(saved: dict, config) -> list[str]:
  """'key: old -> new' for each key (dotted path) where `config` differs from
  the saved config.json contents `saved`, outside RESUMABLE_CHANGES; a field added since the run
  was saved (_added_defaults) at the value it was trained with is no change."""
  show = lambda v: v if v is configs.ABSENT else json.dumps(v)
  added = _added_defaults()
  return [
    f"{key}: {show(before)} -> {show(after)}"
    for key, before, after in configs.differences(saved, json.loads(config.to_json_best_effort()))
    if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_CHANGES)
    and not (before is configs.ABSENT and key in added and after == added[key])
  ]


def restore_or_init(
  run, experiment: str | None, lock, build=None
) -> tuple[step_lib.TrainState, int]:
  """The state a training in `run` starts from and its step: the newest checkpoint that restores
  completely (checkpoint.restore_newest sets aside and reports the others), else a new state at
  step 0 (the diffusers folder's weights with config.pretrained).

  Then the writing process records the run in the workdir: config.json, data_spec.json,
  experiment.txt (`experiment`, if given), builder.txt (the gen_jax.models builder `build`, so
  load_trained rebuilds the model from the workdir alone); deletes what a killed writer left
  half-written; drops the metrics of steps after `start_step`, which are about to be logged again. lock: the
  workdir_lock taken for this training (process 0), or None; a taken-over lock is reported.
  """
  config, workdir = run.config, run.workdir
  report = print if run.is_writer else (lambda message: None)
  if lock is not None and workdir_lock.stale_note(lock):
    report(workdir_lock.stale_note(lock))
  state, start_step = checkpoint.restore_newest(
    run.checkpoints, run.abstract_state, report=report, is_writer=run.is_writer
  )
  if start_step and start_step > config.train.num_steps:
    raise ConfigError(
      f"workdir={workdir} holds a checkpoint at step {start_step}, past config.train.num_steps="
      f"{config.train.num_steps}: nothing to train; raise num_steps to go on, or use another "
      "workdir"
    )
  if run.is_writer:  # Only now: the start-up checks compared against the old files.
    workdir_lib.remove_temporary_files(workdir, report)
    workdir_lib.write_config(workdir, config)
    workdir_lib.write_data_spec(workdir, run.dataset)
    if experiment:
      workdir_lib.write_experiment(workdir, experiment)
    if build is not None:
      from gen_jax.train.load import record_builder  # (here: load imports checkpoint, as we do)

      record_builder(workdir, build)
    summary.drop_records_after(workdir, start_step or 0)
  if state is None:
    init = jax.jit(
      functools.partial(step_lib.init_state, run.model, run.tx), out_shardings=run.state_shardings
    )
    if config.get("pretrained"):  # Fine-tuning: params and EMA start from the folder's weights.
      from gen_jax.train import from_pretrained  # (here: it imports run_setup, which imports us)

      init = lambda key: from_pretrained.pretrained_state(config, run.model, run.tx, run.mesh)
    state, start_step = init(rng.stream(config.seed, "init")), 0
  else:
    logging.info("Resuming from checkpoint at step %d", start_step)
    if run.is_writer:
      print(f"Resuming {workdir} from step {start_step}")
  logging.info("Parameters: %s", f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")
  return state, start_step


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
