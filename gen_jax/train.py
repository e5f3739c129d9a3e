"""The training system shared by every experiment: train, sample, evaluate.

An experiment supplies a config (ml_collections) and
`build(config, example_shape) -> model` (a gen_jax.models model); everything
else happens here once:

  train(config, workdir, build)     train with periodic logs, sample grids and
                                    checkpoints; resumes from workdir
  sample(config, workdir, build, …) samples.npz + PNG from the EMA parameters
  evaluate(config, workdir, build, …)  likelihood on the test split and
                                    sample quality; eval.json

The step is one jitted pure function `train_step(state, batch, key)`; the key
of step s is fold_in(key, s), and batch s is a pure function of (seed, s), so
a resumed run continues exactly as an uninterrupted one. How train() survives
signals, kills, NaNs and changed configs is in its docstring.
"""

import functools
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from gen_jax import checkpoint, data, evaluation, images, inception, sharding, summary

BuildFn = Callable[[ml_collections.ConfigDict, tuple], Any]


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds. A pytree; the optimizer itself is static."""

  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  ema_params: Any  # exponential moving average of params, used to sample


# ----------------------------------------------------------------------------
# Config checks
# ----------------------------------------------------------------------------


class ConfigError(ValueError):
  """A config value that cannot work; the message names the flag."""


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


def validate_config(config) -> None:
  """Checks the fields every experiment shares; raises ConfigError."""

  def positive_int(path):
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ConfigError(f"--config.{path} must be a positive integer, got {value!r}")

  for path in (
    "train.num_steps",
    "train.checkpoint_every",
    "train.log_every",
    "train.sample_every",
    "data.batch_size",
    "train.num_sample_images",
  ):
    positive_int(path)
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ConfigError(f"--config.train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
  if config.optim.learning_rate <= 0:
    raise ConfigError(f"--config.optim.learning_rate must be > 0, got {config.optim.learning_rate}")
  if config.optim.name not in ("adam", "adamw"):
    raise ConfigError(f"--config.optim.name must be 'adam' or 'adamw', got {config.optim.name!r}")
  if config.optim.schedule not in ("constant", "cosine"):
    raise ConfigError(
      f"--config.optim.schedule must be 'constant' or 'cosine', got {config.optim.schedule!r}"
    )
  if config.optim.warmup_steps < 0:
    raise ConfigError(f"--config.optim.warmup_steps must be >= 0, got {config.optim.warmup_steps}")
  max_seconds = config.train.get("max_seconds", 0.0)
  if (
    isinstance(max_seconds, bool)
    or not isinstance(max_seconds, (int, float))
    or not (0 <= max_seconds < float("inf"))
  ):
    raise ConfigError(
      f"--config.train.max_seconds must be a number of seconds >= 0 (0: no "
      f"limit), got {max_seconds!r}"
    )
  if not isinstance(config.train.get("skip_nonfinite", False), bool):
    raise ConfigError(
      f"--config.train.skip_nonfinite must be True or False, got {config.train.skip_nonfinite!r}"
    )


def _get(config, path):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


# ----------------------------------------------------------------------------
# Optimizer and step
# ----------------------------------------------------------------------------


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over optim.warmup_steps, then constant or cosine to 0."""
  warmup = optim.warmup_steps
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0,
      optim.learning_rate,
      max(warmup, 1) if warmup else 0,
      max(num_steps, warmup + 1),
      end_value=0.0,
    )
  if warmup == 0:
    return optax.constant_schedule(optim.learning_rate)
  return optax.linear_schedule(0.0, optim.learning_rate, warmup)


# With train.skip_nonfinite, this many non-finite gradients in a row stop training (NonFiniteError).
MAX_CONSECUTIVE_NONFINITE = 20


def make_optimizer(
  optim, num_steps: int, skip_nonfinite: bool = False
) -> optax.GradientTransformation:
  """Gradient clipping by global norm (if grad_clip_norm > 0), then Adam/AdamW,
  inside optax.apply_if_finite.

  With skip_nonfinite an update whose gradient has a NaN/inf is dropped (the
  parameters and the inner optimizer state stay as they were) and counted in
  the state's total_notfinite. Without it the wrapper lets every update through
  (max_consecutive_errors=0), so it only adds the counters: the optimizer
  state has the same structure either way and a run can be resumed with the
  switch changed.
  """
  lr = learning_rate_schedule(optim, num_steps)
  if optim.name == "adamw":
    opt = optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
  else:
    opt = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  if optim.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), opt)
  return optax.apply_if_finite(opt, MAX_CONSECUTIVE_NONFINITE if skip_nonfinite else 0)


def init_state(model, tx, key) -> TrainState:
  params = model.init(key)
  # The EMA starts as a copy: donating the state must not donate a buffer twice.
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    ema_params=jax.tree.map(jnp.copy, params),
  )


def make_train_step(
  model, tx, ema_decay: float, ema_warmup: bool, lr_schedule: optax.Schedule | None = None
):
  """Returns the pure step train_step(state, batch, key) -> (state, metrics).

  The step's randomness is fold_in(key, state.step). EMA:
  ema <- d ema + (1 - d) params with d = ema_decay, or, with ema_warmup,
  d = min(ema_decay, (1 + step) / (10 + step)) so early averages are not
  dominated by the initialisation.
  """

  def train_step(state: TrainState, batch, key):
    step_key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(model.loss, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, step_key, True)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = jnp.asarray(ema_decay, jnp.float32)
    if ema_warmup:
      n = state.step.astype(jnp.float32)
      decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    if lr_schedule is not None:
      metrics["learning_rate"] = lr_schedule(state.step)
    new_state = TrainState(
      step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
    )
    return new_state, metrics

  return train_step


# ----------------------------------------------------------------------------
# Shared set-up
# ----------------------------------------------------------------------------


def _keys(seed: int):
  """(init, train, sample) keys, all derived from the seed."""
  base = jax.random.key(seed)
  return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)


class _Setup:
  """What train, sample and evaluate all need: mesh, data, model, optimizer,
  the abstract train state and the checkpoint manager."""

  def __init__(self, config, workdir, build: BuildFn, split="train", create_workdir=True):
    validate_config(config)
    self.config = config
    self.workdir = workdir
    self.mesh = sharding.make_mesh()
    sharding.check_batch_size(config.data.batch_size, self.mesh)
    if split is None:  # Sampling: the data's kind and shape, not the data.
      self.dataset = None
      self.kind, self.example_shape = _read_data_spec(workdir)
    else:
      self.dataset = data.load_dataset(config.data, split)
      self.kind = self.dataset.kind
      self.example_shape = tuple(self.dataset.example_shape)
    self.model = build(config, self.example_shape)
    self.lr_schedule = learning_rate_schedule(config.optim, config.train.num_steps)
    self.tx = make_optimizer(
      config.optim, config.train.num_steps, config.train.get("skip_nonfinite", False)
    )
    self.init_key, self.train_key, self.sample_key = _keys(config.seed)
    self.replicated = sharding.replicated(self.mesh)
    abstract = jax.eval_shape(functools.partial(init_state, self.model, self.tx), self.init_key)
    self.abstract_state = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), abstract
    )
    self.is_writer = jax.process_index() == 0
    if create_workdir:
      _check_free_space(workdir, self.abstract_state, config.train.keep_checkpoints)
      _prepare_workdir(workdir)
    self.checkpoints = checkpoint.manager(
      workdir, config.train.keep_checkpoints, create=create_workdir
    )

  def restore(self) -> TrainState:
    return checkpoint.restore(self.checkpoints, self.abstract_state)

  def make_sampler(
    self,
    num_samples: int,
    sampler: str,
    num_steps: int | None,
    eta: float = 0.0,
    guidance_scale: float = 0.0,
  ):
    """A jitted (params, key, labels=None) -> samples (numpy) for a fixed num_samples.

    labels: (num_samples,) classes for a class-conditional model, sampled
    with classifier-free guidance `guidance_scale`.

    The samples are sharded over the devices along the batch axis (the count
    is rounded up to a multiple of the device count, the surplus dropped);
    the noise is drawn for the whole batch from one key, so the samples do
    not depend on the number of devices.
    """
    devices = self.mesh.devices.size
    padded = -(-num_samples // devices) * devices
    fn = functools.partial(
      self.model.sample,
      num_samples=padded,
      sampler=sampler,
      num_steps=num_steps,
      eta=eta,
      guidance_scale=guidance_scale,
    )
    draw = jax.jit(
      lambda params, key, labels: fn(params, key, labels=labels),
      out_shardings=sharding.data_sharded(self.mesh),
    )

    def sample(params, key, labels=None):
      if labels is not None:
        labels = np.resize(np.asarray(labels, np.int32), padded)
      return np.asarray(jax.device_get(draw(params, key, labels)))[:num_samples]

    return sample


def _require_checkpoint(workdir, what) -> None:
  directory = checkpoint.checkpoint_dir(workdir)
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise checkpoint.NoCheckpointError(
      f"{what}: no checkpoint in {directory}; train first with the same --workdir"
    )


DATA_SPEC = "data_spec.json"


def _write_data_spec(workdir, dataset) -> None:
  """Records the data's kind and example shape, so sampling needs no data."""
  _write_atomically(
    os.path.join(workdir, DATA_SPEC),
    json.dumps({"kind": dataset.kind, "example_shape": list(dataset.example_shape)}),
  )


def _write_atomically(path, text) -> None:
  """Writes a small file so that a kill leaves either the old or the new one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _read_data_spec(workdir):
  path = os.path.join(workdir, DATA_SPEC)
  if not os.path.exists(path):
    raise checkpoint.NoCheckpointError(
      f"no {DATA_SPEC} in --workdir={workdir}; train first with the same --workdir"
    )
  with open(path) as f:
    spec = json.load(f)
  return spec["kind"], tuple(spec["example_shape"])


def _reference_points(config):
  """Data points drawn under the samples of 2-D toy data, in scatter plots."""
  if config.data.source != "toy2d":
    return None
  return data.sample_toy2d(config.data.name, 2000, np.random.default_rng(config.seed + 1))


def _prepare_workdir(workdir):
  probe = os.path.join(workdir, ".write_test")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} is not writable: {e}") from e


def _save_samples_picture(path, samples, kind, reference=None, num_rows=None):
  if kind == "points":
    images.save_scatter(path, samples, reference)
  else:
    images.save_image_grid(path, samples, num_rows=num_rows)


def class_grid_labels(num_samples: int, num_classes: int):
  """Labels for a grid with one row per class: (labels (num_samples,), rows)."""
  per_class = -(-num_samples // num_classes)
  return np.repeat(np.arange(num_classes), per_class)[:num_samples], num_classes


# ----------------------------------------------------------------------------
# Resuming safely: config checks, disk space, signals
# ----------------------------------------------------------------------------

# Config keys a resumed run may change: they leave the model, the data and the
# optimizer's state as they were (train.remat only recomputes the same values to
# save memory). A key ending in "." covers its section. Every other difference
# would make the resumed run a different run.
RESUMABLE_CHANGES = (
  "train.num_steps",
  "train.max_seconds",
  "train.log_every",
  "train.sample_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.num_sample_images",
  "train.skip_nonfinite",
  "train.remat",
  "data.tfds_data_dir",
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


def check_resume_config(config, workdir) -> None:
  """Raises ConfigError if `workdir` holds checkpoints of a run whose
  config.json differs from `config` in a key outside RESUMABLE_CHANGES."""
  path = os.path.join(workdir, "config.json")
  if not (os.path.exists(path) and checkpoint.has_checkpoint(workdir)):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    logging.warning("cannot read %s (%s); resuming without comparing configs", path, e)
    return
  changes = config_changes(saved, config)
  if changes:
    shown = "; ".join(changes[:12])
    if len(changes) > 12:
      shown += f"; and {len(changes) - 12} more"
    allowed = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_CHANGES)
    raise ConfigError(
      f"--workdir={workdir} holds a run trained with a different config, so resuming it would "
      f"not continue that run: {shown}. Use a new --workdir, or drop these overrides (a resumed "
      f"run may change only {allowed})"
    )


def _check_resume_data(workdir, dataset) -> None:
  """The data's kind and example shape must be those the checkpoints were trained on."""
  path = os.path.join(workdir, DATA_SPEC)
  if not (os.path.exists(path) and checkpoint.has_checkpoint(workdir)):
    return
  kind, shape = _read_data_spec(workdir)
  now = (dataset.kind, tuple(dataset.example_shape))
  if (kind, shape) != now:
    raise ConfigError(
      f"--workdir={workdir} was trained on {kind} data of shape {shape}, but {dataset.name} has "
      f"{now[0]} data of shape {now[1]}; use a new --workdir for this data"
    )


def _check_free_space(workdir, abstract_state, keep_checkpoints) -> None:
  """Fails at start-up, not at the first checkpoint, when the disk cannot hold the checkpoints.

  A checkpoint is about the size of the train state (parameters, optimizer
  state, EMA); orbax writes a new one before it deletes the oldest, so the
  run needs room for keep_checkpoints + 1 of them, less those on disk already,
  and at least one.
  """
  directory = checkpoint.checkpoint_dir(workdir)
  num_saved = (
    sum(name.isdigit() for name in os.listdir(directory)) if os.path.isdir(directory) else 0
  )
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
  copies = max((keep_checkpoints or 1) + 1 - num_saved, 1)
  need = copies * state_bytes + 16 * 2**20  # + logs and sample pictures
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):  # The workdir may not exist yet: ask its nearest ancestor.
    existing = os.path.dirname(existing)
  free = shutil.disk_usage(existing).free
  if free < need:
    raise ConfigError(
      f"--workdir={workdir} has {_size(free)} free, but its checkpoints need about {_size(need)} "
      f"({copies} x the {_size(state_bytes)} train state, for --config.train.keep_checkpoints="
      f"{keep_checkpoints}); free some space, lower keep_checkpoints or choose another --workdir"
    )


def _size(num_bytes) -> str:
  if num_bytes < 1024:
    return f"{num_bytes:.0f} bytes"
  for unit in ("kB", "MB", "GB", "TB"):
    num_bytes /= 1024
    if num_bytes < 1024 or unit == "TB":
      return f"{num_bytes:.1f} {unit}"


class _StopOnSignal:
  """A context manager: the first SIGTERM or SIGINT only records itself in
  `signal_number`, so the training loop can finish its step, save and stop.

  A second one restores the previous handlers and hands the signal to its
  previous handler at once (Python's SIGINT handler raises KeyboardInterrupt;
  SIGTERM's default ends the process). The previous handlers come back on
  exit. Only the main thread can install handlers; elsewhere, and for a
  signal that is ignored (SIG_IGN) or handled outside Python, this does
  nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, announce: bool = True):
    self.signal_number = None
    self._announce = announce
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
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


def _reached_preemption(step: int) -> bool:
  """Multi-process runs: JAX's preemption service catches SIGTERM on any host
  and names a step at which all processes save (a local check per step)."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils

  try:
    return multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:  # the service is off (jax_enable_preemption_service=False)
    return False


def _out_of_time(elapsed: float, max_seconds: float, step: int, log_every: int) -> bool:
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


def _nonfinite_message(bad_step, pending, last_saved, workdir, skip_nonfinite) -> str:
  metrics = jax.device_get(dict(pending).get(bad_step, {}))
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
      "lower the learning rate or check the data; --config.train.skip_nonfinite=True "
      "skips such steps"
    )
  return f"{what}; stopped without saving it: {newest}. To go on, {hint}"


# ----------------------------------------------------------------------------
# Train
# ----------------------------------------------------------------------------


def train(config, workdir: str, build: BuildFn) -> TrainState:
  """Trains (or resumes) the experiment in `workdir`; returns the final state.

  Faults, and what each costs:
    * Resuming picks the newest checkpoint that restores completely
      (checkpoint.restore_newest): a save cut short by a kill -9 is deleted and
      an unreadable newer step set aside, both reported. So a kill at any
      moment loses only the steps since the last checkpoint.
    * SIGTERM or SIGINT (one process): the current step finishes, a checkpoint
      is saved at it and TrainingInterrupted is raised; a second signal goes to
      the previous handler at once; the previous handlers are restored on
      return. With several processes, JAX's preemption service turns SIGTERM
      on any host into a step at which all of them save and stop.
    * A NaN/inf loss or gradient raises NonFiniteError naming the step, and
      nothing after the last checkpoint is saved. The check is an on-device
      flag set inside the jitted step and read only where the loop syncs
      anyway (logs, samples, checkpoints). With train.skip_nonfinite, such an
      update is skipped instead (optax.apply_if_finite), counted in the
      metric skipped_nonfinite_steps, and only MAX_CONSECUTIVE_NONFINITE in a
      row stop training.
    * train.max_seconds > 0 is a wall-clock budget for this launch's training
      loop. The clock starts once the first step is compiled (so compiling it
      does not count; the loop's logs, checkpoints and sample grids do). Once
      it is spent, the step in flight finishes, is logged, checkpointed and
      sampled as a last step would be, and train() returns normally, saying
      so. The clock is read after the previous step has finished on the
      device, so at most one step runs past the budget. A resumed run gets a
      new budget.
    * A config that differs from the workdir's config.json outside
      RESUMABLE_CHANGES, data of another shape, a workdir that cannot be
      written or a disk too full for the checkpoints raise ConfigError at
      start-up, before anything is written.
  """
  validate_config(config)
  check_resume_config(config, workdir)
  setup = _Setup(config, workdir, build)
  mesh, tc = setup.mesh, config.train
  skip_nonfinite = tc.get("skip_nonfinite", False)
  if setup.is_writer:
    devices, processes = jax.device_count(), jax.process_count()
    print(
      f"Training on {devices} device{'s' * (devices > 1)} "
      f"({jax.devices()[0].platform}) in {processes} "
      f"process{'es' * (processes > 1)}; global batch {config.data.batch_size}"
    )
  num_classes = getattr(setup.model, "num_classes", 0)
  if num_classes and setup.dataset.num_classes != num_classes:
    raise ConfigError(
      f"--config.model.num_classes={num_classes} but the data "
      f"{setup.dataset.name!r} has {setup.dataset.num_classes or 'no'} classes"
    )
  _check_resume_data(workdir, setup.dataset)

  report = print if setup.is_writer else (lambda message: None)
  state, start_step = checkpoint.restore_newest(
    setup.checkpoints, setup.abstract_state, report=report, is_writer=setup.is_writer
  )
  if setup.is_writer:  # Only now: the checks above compare against the old ones.
    _write_atomically(
      os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True)
    )
    _write_data_spec(workdir, setup.dataset)
    # Steps logged after the checkpoint we resume from are about to be redone.
    summary.drop_records_after(workdir, start_step or 0)
  if state is None:
    init = jax.jit(
      functools.partial(init_state, setup.model, setup.tx), out_shardings=setup.replicated
    )
    state = init(setup.init_key)
    start_step = 0
  else:
    logging.info("Resuming from checkpoint at step %d", start_step)
    if setup.is_writer:
      print(f"Resuming {workdir} from step {start_step}")
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Parameters: %s", f"{num_params:,}")

  step_fn = make_train_step(setup.model, setup.tx, tc.ema_decay, tc.ema_warmup, setup.lr_schedule)

  def guarded_step(state, batch, key, first_bad_step):
    """train_step, plus first_bad_step: 0 while all is well, else the first
    step (1-based, as checkpoints count) that went non-finite."""
    new_state, metrics = step_fn(state, batch, key)
    if skip_nonfinite:
      ok = new_state.opt_state.notfinite_count < MAX_CONSECUTIVE_NONFINITE
      metrics = dict(metrics, skipped_nonfinite_steps=new_state.opt_state.total_notfinite)
    else:
      ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    first_bad_step = jnp.where((first_bad_step == 0) & ~ok, state.step + 1, first_bad_step)
    return new_state, metrics, first_bad_step

  batch_sharding = sharding.data_sharded(mesh)
  train_step = jax.jit(
    guarded_step,
    in_shardings=(setup.replicated, batch_sharding, setup.replicated, setup.replicated),
    out_shardings=(setup.replicated, setup.replicated, setup.replicated),
    donate_argnums=0,
  )
  first_bad_step = jax.device_put(np.int32(0), setup.replicated)
  sampler = setup.make_sampler(
    tc.num_sample_images,
    config.sample.sampler,
    config.sample.num_steps,
    config.sample.eta,
    config.sample.guidance_scale,
  )
  grid_labels, grid_rows = (
    class_grid_labels(tc.num_sample_images, num_classes) if num_classes else (None, None)
  )
  writer = None
  if setup.is_writer:
    writer = summary.MetricWriter(workdir)
  samples_dir = os.path.join(workdir, "samples")
  if setup.is_writer:
    os.makedirs(samples_dir, exist_ok=True)
  reference = _reference_points(config)

  batches = data.prefetch(
    data.train_iterator(
      setup.dataset,
      config.seed,
      config.data.batch_size,
      start_step,
      jax.process_index(),
      jax.process_count(),
    )
  )
  pending = []  # (step, metrics on device) since the last log
  progress = tqdm(
    total=tc.num_steps,
    initial=start_step,
    desc="train",
    disable=not setup.is_writer,
    dynamic_ncols=True,
    mininterval=1.0,
  )
  last = dict(time=time.time(), logged=start_step, saved=start_step)

  def check_finite():
    """Reads the on-device flag: a sync, so only where the loop syncs anyway."""
    bad_step = int(jax.device_get(first_bad_step))
    if bad_step:
      raise NonFiniteError(
        _nonfinite_message(bad_step, pending, last["saved"], workdir, skip_nonfinite)
      )

  def write_logs(step):
    host = jax.device_get([m for _, m in pending])
    pending.clear()
    summary_values = {}
    for k in host[0]:
      values = np.asarray([m[k] for m in host])
      if k == "skipped_nonfinite_steps":  # a running total
        summary_values[k] = float(values[-1])
      else:  # Skipped steps' NaNs are left out of the average.
        finite = values[np.isfinite(values)]
        summary_values[k] = float(np.mean(finite)) if finite.size else float("nan")
    now = time.time()
    summary_values["steps_per_sec"] = (step - last["logged"]) / max(now - last["time"], 1e-9)
    last.update(time=now, logged=step)
    progress.set_postfix(loss=f"{summary_values['loss']:.4f}")
    if writer:
      writer.write_scalars(step, summary_values)

  def save(step):
    checkpoint.save(setup.checkpoints, step, state)
    last["saved"] = step

  def draw_samples(step):
    samples = sampler(state.ema_params, jax.random.fold_in(setup.sample_key, step), grid_labels)
    if setup.is_writer:
      path = os.path.join(samples_dir, f"step_{step:07d}.png")
      _save_samples_picture(path, samples, setup.kind, reference, grid_rows)
      if setup.kind == "image":
        writer.write_image(step, "samples", images.grid(images.to_uint8(samples)))

  step, stopped_by, out_of_time = start_step, None, False
  max_seconds = float(tc.get("max_seconds", 0.0))
  signals = _StopOnSignal(announce=setup.is_writer) if jax.process_count() == 1 else _NoSignals()
  clock_start = None  # perf_counter() once the first step is compiled
  try:
    with signals:
      for step in range(start_step + 1, tc.num_steps + 1):
        batch = sharding.shard_batch(next(batches), mesh)
        previous_flag = first_bad_step
        state, metrics, first_bad_step = train_step(state, batch, setup.train_key, first_bad_step)
        if clock_start is None:  # The call compiled the step (the first one, and it runs on).
          clock_start = time.perf_counter()
        pending.append((step, metrics))
        progress.update(1)
        is_last = step == tc.num_steps
        if max_seconds and not is_last:
          # Wait for the previous step, not this one: the device stays busy, and the clock
          # counts finished work, so at most this step runs past the budget.
          previous_flag.block_until_ready()
          trained_seconds = time.perf_counter() - clock_start
          out_of_time = is_last = _out_of_time(trained_seconds, max_seconds, step, tc.log_every)
        stopping = not is_last and (signals.signal_number is not None or _reached_preemption(step))
        log_now = step % tc.log_every == 0 or is_last or stopping
        sample_now = (step % tc.sample_every == 0 or is_last) and not stopping
        save_now = step % tc.checkpoint_every == 0 or is_last or stopping
        if log_now or sample_now or save_now:  # Syncs with the device here, not every step.
          check_finite()
        if log_now:
          write_logs(step)
        if save_now:  # Before sampling: a kill during a long sampler then costs nothing.
          save(step)
        if sample_now:
          draw_samples(step)
        if not stopping and not is_last and signals.signal_number is not None:
          # The signal came while this step logged, saved or sampled: stop after it all the same.
          stopping = True
          check_finite()
          if pending:
            write_logs(step)
          if not save_now:
            save(step)
        if stopping:
          stopped_by = signals.signal_number or signal.SIGTERM  # (preemption: SIGTERM)
          break
        if out_of_time:
          break
  finally:
    progress.close()
    if writer:
      writer.close()
    setup.checkpoints.close()
  if stopped_by is not None:
    raise TrainingInterrupted(step, stopped_by, workdir)
  if setup.is_writer and step == tc.num_steps:
    final = os.path.join(samples_dir, f"step_{tc.num_steps:07d}.png")
    print(f"Done: {tc.num_steps} steps in {workdir}; samples: {final}")
  if setup.is_writer and out_of_time:
    final = os.path.join(samples_dir, f"step_{step:07d}.png")
    print(
      f"Stopped on the time budget (--config.train.max_seconds={max_seconds:g}) at step {step} "
      f"of {tc.num_steps} after {trained_seconds:.1f} s of training; checkpoint saved in "
      f"{checkpoint.checkpoint_dir(workdir)}; samples: {final}"
    )
  return state


class _NoSignals:
  """Stands in for _StopOnSignal where handlers are not installed."""

  signal_number = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


# ----------------------------------------------------------------------------
# Sample
# ----------------------------------------------------------------------------


def sample(
  config,
  workdir: str,
  build: BuildFn,
  num_samples: int,
  sampler: str | None = None,
  num_steps: int | None = None,
  out_dir: str | None = None,
  class_label: int | None = None,
  guidance_scale: float | None = None,
) -> str:
  """Draws num_samples from the latest checkpoint's EMA parameters.

  Writes out_dir/samples.npz ('images': uint8 NHWC in 0..255, or 'points':
  float32 (N, 2); 'labels' (N,) for a class-conditional model) and a PNG
  picture beside it; returns the npz path. A class-conditional model draws
  class `class_label`, or every class with one row each in the picture,
  with classifier-free guidance `guidance_scale` (default: the config's).
  """
  if num_samples <= 0:
    raise ConfigError(f"--num_samples must be positive, got {num_samples}")
  _require_checkpoint(workdir, "--mode=sample")
  setup = _Setup(config, workdir, build, split=None, create_workdir=False)
  num_classes = getattr(setup.model, "num_classes", 0)
  if guidance_scale is None:
    guidance_scale = config.sample.guidance_scale
  if not num_classes and (class_label is not None or guidance_scale):
    raise ConfigError(
      "--class_label and --guidance_scale need a class-conditional "
      "model: train with --config.model.num_classes=K"
    )
  if class_label is not None and not 0 <= class_label < num_classes:
    raise ConfigError(f"--class_label must be in [0, {num_classes}), got {class_label}")
  labels, rows = None, None
  if num_classes:
    if class_label is None:
      labels, rows = class_grid_labels(num_samples, num_classes)
    else:
      labels = np.full((num_samples,), class_label, np.int32)
  state = setup.restore()
  sampler = sampler or config.sample.sampler
  num_steps = num_steps or config.sample.num_steps
  batch = min(num_samples, config.sample.batch_size)
  draw = setup.make_sampler(batch, sampler, num_steps, config.sample.eta, guidance_scale)
  key = jax.random.fold_in(setup.sample_key, 10**9 + int(state.step))
  chunks = []
  for i in tqdm(
    range(-(-num_samples // batch)), desc=f"sample ({sampler})", disable=not setup.is_writer
  ):
    chunk_labels = None if labels is None else labels[i * batch : (i + 1) * batch]
    chunks.append(draw(state.ema_params, jax.random.fold_in(key, i), chunk_labels))
  samples = np.concatenate(chunks)[:num_samples]
  out_dir = out_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  npz_path = os.path.join(out_dir, "samples.npz")
  if setup.kind == "points":
    arrays = {"points": samples.astype(np.float32)}
  else:
    arrays = {"images": images.to_uint8(samples)}
  if labels is not None:
    arrays["labels"] = labels.astype(np.int32)
  tmp = npz_path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, npz_path)
  picture = os.path.join(out_dir, "samples.png")
  shown = samples if setup.kind == "points" else samples[:256]
  _save_samples_picture(
    picture,
    shown,
    setup.kind,
    _reference_points(config),
    rows if len(shown) == num_samples else None,
  )
  print(
    f"Wrote {num_samples} samples (checkpoint step {int(state.step)}, "
    f"sampler {sampler}) to {npz_path} and {picture}"
  )
  return npz_path


# ----------------------------------------------------------------------------
# Evaluate
# ----------------------------------------------------------------------------


def _validate_eval_config(config) -> None:
  num_samples = config.eval.num_samples
  if (
    isinstance(num_samples, bool)
    or not isinstance(num_samples, int)
    or (num_samples < 2 and num_samples != 0)
  ):
    raise ConfigError(
      f"--config.eval.num_samples must be 0 (no sample quality) or at least 2, got {num_samples!r}"
    )
  steps = config.eval.classifier_steps
  if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
    raise ConfigError(f"--config.eval.classifier_steps must be a positive integer, got {steps!r}")
  ode_steps = config.eval.ode_steps
  if isinstance(ode_steps, bool) or not isinstance(ode_steps, int) or ode_steps < 0:
    raise ConfigError(
      f"--config.eval.ode_steps must be 0 (no ODE likelihood) or positive, got {ode_steps!r}"
    )
  limit = config.eval.num_examples
  if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
    raise ConfigError(
      f"--config.eval.num_examples must be 0 (the whole split) or positive, got {limit!r}"
    )


def evaluate(
  config,
  workdir: str,
  build: BuildFn,
  sampler: str | None = None,
  num_steps: int | None = None,
  inception_weights: str | None = None,
) -> dict:
  """Evaluates the latest checkpoint's EMA parameters; writes workdir/eval.json.

  eval.json:
    checkpoint_step, parameters ('ema'), num_parameters (their count),
    seconds (wall time per part);
    likelihood: model.evaluate averaged over the test split (the first
      eval.num_examples, or all): diffusion L_simple and the full bound in
      bits/dim; VAE ELBO terms, IWAE NLL in nats (and bits/dim); with `setup`
      saying how each is computed;
    sample_quality: for image data with labels, eval.num_samples samples
      (sampler and steps from the arguments or config.sample) against real
      data in the feature space of the evaluation classifier
      (gen_jax.evaluation): Fréchet distances and IS-like scores with their
      real-data floors, the classifier's test accuracy and every setting
      (samples.seconds: the wall time of drawing them, compilation included);
    inception: the same with the FID Inception-v3 (RGB data): FID and IS when
      `inception_weights` (an .npz, see gen_jax.inception) is given, else
      {'skipped': why}.
  A part that cannot be computed holds {'skipped': why} instead.
  """
  _validate_eval_config(config)
  if inception_weights and not os.path.isfile(os.path.expanduser(inception_weights)):
    raise ConfigError(f"--inception_weights={inception_weights} is not a file")
  _require_checkpoint(workdir, "--mode=eval")
  setup = _Setup(config, workdir, build, split="test", create_workdir=False)
  sharding.check_batch_size(config.eval.batch_size, setup.mesh, "eval.batch_size")
  state = setup.restore()
  sampler = sampler or config.sample.sampler
  num_steps = num_steps or config.sample.num_steps
  if config.eval.num_samples and setup.kind == "image":
    # A bad sampler name or step count fails now, not after the likelihood.
    try:
      jax.eval_shape(
        functools.partial(
          setup.model.sample,
          num_samples=2,
          sampler=sampler,
          num_steps=num_steps,
          eta=config.sample.eta,
        ),
        state.ema_params,
        setup.sample_key,
      )
    except ValueError as e:
      raise ConfigError(f"--sampler={sampler} --sampling_steps={num_steps}: {e}") from None

  num_parameters = sum(x.size for x in jax.tree.leaves(state.ema_params))
  results = {
    "checkpoint_step": int(state.step),
    "parameters": "ema",
    "num_parameters": int(num_parameters),
    "seconds": {},
  }
  start = time.time()
  results["likelihood"] = _evaluate_likelihood(setup, state)
  results["seconds"]["likelihood"] = round(time.time() - start, 1)
  start = time.time()
  results.update(_evaluate_samples(setup, state, sampler, num_steps, inception_weights))
  results["seconds"]["sample_quality"] = round(time.time() - start, 1)
  if setup.is_writer:
    path = os.path.join(workdir, "eval.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    print(evaluation.summary(results, workdir))
  return results


def _evaluate_likelihood(setup: _Setup, state: TrainState) -> dict:
  """model.evaluate averaged over the test split (or its first eval.num_examples)."""
  config = setup.config
  batch_size = config.eval.batch_size
  batch_sharding = sharding.data_sharded(setup.mesh)
  options = {"ode_steps": config.eval.ode_steps}
  evaluate_fn = jax.jit(
    functools.partial(setup.model.evaluate, **options),
    in_shardings=(setup.replicated, batch_sharding, setup.replicated),
  )
  key = jax.random.fold_in(setup.sample_key, 2 * 10**9)
  totals, count = {}, 0
  limit = config.eval.num_examples or None
  wanted = min(setup.dataset.num_examples, limit or setup.dataset.num_examples)
  batches = setup.dataset.eval_batches(batch_size, jax.process_index(), jax.process_count())
  with jax.default_matmul_precision("highest"):
    for i, batch in enumerate(
      tqdm(
        batches,
        desc="eval: likelihood",
        total=-(-wanted // batch_size),
        disable=not setup.is_writer,
        dynamic_ncols=True,
      )
    ):
      mask = np.asarray(batch.pop("mask", np.ones(len(batch["x"]), bool)))
      values = jax.device_get(
        evaluate_fn(
          state.ema_params,
          sharding.shard_batch({"x": batch["x"]}, setup.mesh),
          jax.random.fold_in(key, i),
        )
      )
      for name, v in values.items():
        totals[name] = totals.get(name, 0.0) + float(np.sum(np.asarray(v)[mask]))
      count += int(mask.sum())
      if limit and count >= limit:
        break
  out = {name: total / max(count, 1) for name, total in totals.items()}
  describe = getattr(setup.model, "describe_evaluate", None)
  out.update(
    split="test",
    data=setup.dataset.name,
    num_examples=count,
    batch_size=batch_size,
    setup=describe(**options) if describe else {},
  )
  return out


def _read_images(dataset, limit: int | None = None) -> np.ndarray:
  """The first `limit` (default: all) examples of a split, in index order, (N, H, W, C) in [-1, 1]."""
  wanted = dataset.num_examples if limit is None else min(limit, dataset.num_examples)
  parts, count = [], 0
  for batch in dataset.eval_batches(256):
    parts.append(batch["x"][batch["mask"]])
    count += len(parts[-1])
    if count >= wanted:
      break
  return np.concatenate(parts)[:wanted]


def _draw_samples(
  setup: _Setup,
  params,
  num_samples: int,
  sampler: str,
  num_steps,
  eta: float,
  labels=None,
  guidance_scale: float = 0.0,
):
  """num_samples samples in chunks of at most sample.batch_size, rounded to the 8-bit grid
  (of classes `labels` (num_samples,) with guidance, for a class-conditional model)."""
  num_chunks = -(-num_samples // setup.config.sample.batch_size)
  per_chunk = -(-num_samples // num_chunks)
  draw = setup.make_sampler(per_chunk, sampler, num_steps, eta, guidance_scale)
  key = jax.random.fold_in(setup.sample_key, 3 * 10**9 + (labels is not None))
  chunk_labels = lambda i: None if labels is None else labels[i * per_chunk : (i + 1) * per_chunk]
  chunks = [
    draw(params, jax.random.fold_in(key, i), chunk_labels(i))
    for i in tqdm(
      range(num_chunks),
      desc=f"eval: {num_samples} samples ({sampler})",
      disable=not setup.is_writer,
      dynamic_ncols=True,
    )
  ]
  return evaluation.to_8bit_grid(np.concatenate(chunks)[:num_samples])


def _conditional_accuracy(
  setup: _Setup,
  state: TrainState,
  classifier_fn,
  classifier_params,
  sampler: str,
  num_steps,
  sample_setup: dict,
) -> dict:
  """Class-conditional models: the fraction of samples drawn for class c (every class
  equally often, guidance config.sample.guidance_scale) that the evaluation
  classifier labels c."""
  config = setup.config
  num_samples = config.eval.num_samples
  labels, _ = class_grid_labels(num_samples, setup.model.num_classes)
  guidance = config.sample.guidance_scale
  samples = _draw_samples(
    setup, state.ema_params, num_samples, sampler, num_steps, config.sample.eta, labels, guidance
  )
  probs = evaluation.map_batches(
    classifier_fn, classifier_params, samples, config.eval.batch_size, setup.mesh
  )["probs"]
  predicted = np.argmax(probs, axis=-1)
  per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(setup.model.num_classes)]
  sample_setup.update(guidance_scale=guidance, labels="every class equally often")
  return {
    "accuracy": float(np.mean(predicted == labels)),
    "accuracy_per_class": per_class,
    "samples": sample_setup,
  }


def _evaluate_samples(
  setup: _Setup, state: TrainState, sampler: str, num_steps, inception_weights: str | None
) -> dict:
  """The 'sample_quality' and 'inception' sections of eval.json."""
  config, mesh = setup.config, setup.mesh
  num_samples = config.eval.num_samples
  wants_inception = setup.kind == "image" and (
    bool(inception_weights) or setup.example_shape[-1] == 3
  )
  if not num_samples:
    return {"sample_quality": {"skipped": "--config.eval.num_samples=0"}}
  if setup.kind != "image":
    return {
      "sample_quality": {
        "skipped": f"sample quality is measured on images; {setup.dataset.name} holds {setup.kind}"
      }
    }
  train_dataset = data.load_dataset(config.data, "train")
  labelled = train_dataset.num_classes is not None
  if not labelled and not wants_inception:
    return {
      "sample_quality": {
        "skipped": f"{train_dataset.name} has no labels to train the evaluation classifier on"
      }
    }

  batch_size = config.eval.batch_size
  eta = config.sample.eta
  start = time.time()
  samples = _draw_samples(setup, state.ema_params, num_samples, sampler, num_steps, eta)
  sampling_seconds = round(time.time() - start, 1)
  test_images = _read_images(setup.dataset)
  train_images = _read_images(train_dataset, num_samples)
  half = len(test_images) // 2
  describe = getattr(setup.model, "describe_sample", None)
  sample_setup = dict(
    describe(sampler=sampler, num_steps=num_steps, eta=eta)
    if describe
    else {"sampler": sampler, "num_steps": num_steps, "eta": eta},
    num_samples=num_samples,
    checkpoint_step=int(state.step),
    parameters="ema",
    processing="rounded to the 8-bit grid, as saved images",
    seconds=sampling_seconds,
  )
  reference = {
    "test": f"all {len(test_images)} examples of {setup.dataset.name}",
    "train": f"the first {len(train_images)} examples of {train_dataset.name}",
    "test_halves": evaluation.split_description(len(test_images)),
  }
  out = {}

  def figures(fn, params, name, num_splits):
    outputs = [
      evaluation.map_batches(
        fn,
        params,
        images_,
        batch_size,
        mesh,
        desc=f"eval: {name} features of {what}" if setup.is_writer else None,
      )
      for what, images_ in (("samples", samples), ("test", test_images), ("train", train_images))
    ]
    return evaluation.sample_quality(*outputs, num_splits=num_splits)

  if labelled:
    net, params, info = evaluation.load_or_train_classifier(
      setup.workdir,
      train_dataset,
      setup.dataset,
      config.eval.classifier_steps,
      config.seed,
      mesh,
      batch_size,
      write=setup.is_writer,
    )
    fn = evaluation.jit_for_mesh(evaluation.classifier_outputs(net), mesh)
    out["sample_quality"] = dict(
      figures(fn, params, "classifier", 1),
      samples=sample_setup,
      reference=reference,
      feature_space=dict(
        info,
        network="gen_jax.nets.ImageClassifier",
        features=f"its penultimate layer ({info['feature_dim']}-d, after ReLU)",
        probabilities=f"its softmax over {info['num_classes']} classes (IS-like score, at most "
        f"{info['num_classes']})",
        path=os.path.join(setup.workdir, evaluation.CLASSIFIER_DIR),
      ),
    )
    num_classes = getattr(setup.model, "num_classes", 0)
    if num_classes:
      out["conditional"] = _conditional_accuracy(
        setup, state, fn, params, sampler, num_steps, dict(sample_setup)
      )
  else:
    out["sample_quality"] = {
      "skipped": f"{train_dataset.name} has no labels to train the evaluation classifier on"
    }

  if wants_inception:
    if not inception_weights:
      out["inception"] = {
        "skipped": "no --inception_weights=PATH given: FID and Inception score need "
        "the FID Inception-v3 weights (see the README)"
      }
    else:
      variables = jax.device_put(inception.load_variables(inception_weights), setup.replicated)
      fn = evaluation.jit_for_mesh(inception.outputs_fn(), mesh)
      with jax.default_matmul_precision("highest"):
        found = figures(fn, variables, "Inception", min(10, num_samples, half))
      out["inception"] = dict(
        {k.replace("fd_", "fid_", 1): v for k, v in found.items()},
        samples=sample_setup,
        reference=reference,
        weights=os.path.abspath(inception_weights),
        feature_space={
          "network": "FID Inception-v3 (gen_jax.inception, pytorch-fid's graph)",
          "features": "2048-d pool features",
          "probabilities": "softmax over 1008 logits",
          "is_splits": min(10, num_samples, half),
        },
      )
  return out
