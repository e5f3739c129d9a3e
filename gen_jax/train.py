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
a resumed run continues exactly as an uninterrupted one.
"""

import functools
import json
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from gen_jax import checkpoint, data, evaluation, images, inception, sharding

BuildFn = Callable[[ml_collections.ConfigDict, tuple], Any]


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds. A pytree; the optimizer itself is static."""
  step: jax.Array      # int32 scalar: number of updates applied
  params: Any
  opt_state: Any
  ema_params: Any      # exponential moving average of params, used to sample


# ----------------------------------------------------------------------------
# Config checks
# ----------------------------------------------------------------------------

class ConfigError(ValueError):
  """A config value that cannot work; the message names the flag."""


def validate_config(config) -> None:
  """Checks the fields every experiment shares; raises ConfigError."""
  def positive_int(path):
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ConfigError(f"--config.{path} must be a positive integer, got {value!r}")
  for path in ("train.num_steps", "train.checkpoint_every", "train.log_every",
               "train.sample_every", "data.batch_size", "train.num_sample_images"):
    positive_int(path)
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ConfigError(f"--config.train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
  if config.optim.learning_rate <= 0:
    raise ConfigError(f"--config.optim.learning_rate must be > 0, got {config.optim.learning_rate}")
  if config.optim.name not in ("adam", "adamw"):
    raise ConfigError(f"--config.optim.name must be 'adam' or 'adamw', got {config.optim.name!r}")
  if config.optim.schedule not in ("constant", "cosine"):
    raise ConfigError(f"--config.optim.schedule must be 'constant' or 'cosine', "
                      f"got {config.optim.schedule!r}")
  if config.optim.warmup_steps < 0:
    raise ConfigError(f"--config.optim.warmup_steps must be >= 0, got {config.optim.warmup_steps}")


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
        0.0, optim.learning_rate, max(warmup, 1) if warmup else 0,
        max(num_steps, warmup + 1), end_value=0.0)
  if warmup == 0:
    return optax.constant_schedule(optim.learning_rate)
  return optax.linear_schedule(0.0, optim.learning_rate, warmup)


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """Gradient clipping by global norm (if grad_clip_norm > 0), then Adam/AdamW."""
  lr = learning_rate_schedule(optim, num_steps)
  if optim.name == "adamw":
    opt = optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay)
  else:
    opt = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  if optim.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), opt)
  return opt


def init_state(model, tx, key) -> TrainState:
  params = model.init(key)
  # The EMA starts as a copy: donating the state must not donate a buffer twice.
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params))


def make_train_step(model, tx, ema_decay: float, ema_warmup: bool,
                    lr_schedule: optax.Schedule | None = None):
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
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                              state.ema_params, params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    if lr_schedule is not None:
      metrics["learning_rate"] = lr_schedule(state.step)
    new_state = TrainState(step=state.step + 1, params=params,
                           opt_state=opt_state, ema_params=ema_params)
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

  def __init__(self, config, workdir, build: BuildFn, split="train",
               create_workdir=True):
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
    self.tx = make_optimizer(config.optim, config.train.num_steps)
    self.init_key, self.train_key, self.sample_key = _keys(config.seed)
    self.replicated = sharding.replicated(self.mesh)
    abstract = jax.eval_shape(functools.partial(init_state, self.model, self.tx),
                              self.init_key)
    self.abstract_state = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated),
        abstract)
    self.is_writer = jax.process_index() == 0
    if create_workdir:
      _prepare_workdir(workdir)
    self.checkpoints = checkpoint.manager(
        workdir, config.train.keep_checkpoints, create=create_workdir)

  def restore(self) -> TrainState:
    return checkpoint.restore(self.checkpoints, self.abstract_state)

  def make_sampler(self, num_samples: int, sampler: str, num_steps: int | None,
                   eta: float = 0.0):
    """A jitted (params, key) -> samples (numpy) for a fixed num_samples.

    The samples are sharded over the devices along the batch axis (the count
    is rounded up to a multiple of the device count, the surplus dropped);
    the noise is drawn for the whole batch from one key, so the samples do
    not depend on the number of devices.
    """
    devices = self.mesh.devices.size
    padded = -(-num_samples // devices) * devices
    fn = functools.partial(self.model.sample, num_samples=padded,
                           sampler=sampler, num_steps=num_steps, eta=eta)
    draw = jax.jit(lambda params, key: fn(params, key),
                   out_shardings=sharding.data_sharded(self.mesh))
    return lambda params, key: np.asarray(
        jax.device_get(draw(params, key)))[:num_samples]


def _require_checkpoint(workdir, what) -> None:
  directory = checkpoint.checkpoint_dir(workdir)
  if not os.path.isdir(directory) or not any(
      name.isdigit() for name in os.listdir(directory)):
    raise checkpoint.NoCheckpointError(
        f"{what}: no checkpoint in {directory}; train first with the same --workdir")


DATA_SPEC = "data_spec.json"


def _write_data_spec(workdir, dataset) -> None:
  """Records the data's kind and example shape, so sampling needs no data."""
  with open(os.path.join(workdir, DATA_SPEC), "w") as f:
    json.dump({"kind": dataset.kind,
               "example_shape": list(dataset.example_shape)}, f)


def _read_data_spec(workdir):
  path = os.path.join(workdir, DATA_SPEC)
  if not os.path.exists(path):
    raise checkpoint.NoCheckpointError(
        f"no {DATA_SPEC} in --workdir={workdir}; train first with the same --workdir")
  with open(path) as f:
    spec = json.load(f)
  return spec["kind"], tuple(spec["example_shape"])


def _reference_points(config):
  """Data points drawn under the samples of 2-D toy data, in scatter plots."""
  if config.data.source != "toy2d":
    return None
  return data.sample_toy2d(config.data.name, 2000, np.random.default_rng(config.seed + 1))


def _prepare_workdir(workdir):
  os.makedirs(workdir, exist_ok=True)
  probe = os.path.join(workdir, ".write_test")
  try:
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} is not writable: {e}") from e


def _save_samples_picture(path, samples, kind, reference=None):
  if kind == "points":
    images.save_scatter(path, samples, reference)
  else:
    images.save_image_grid(path, samples)


# ----------------------------------------------------------------------------
# Train
# ----------------------------------------------------------------------------

def train(config, workdir: str, build: BuildFn) -> TrainState:
  """Trains (or resumes) the experiment in `workdir`; returns the final state."""
  setup = _Setup(config, workdir, build)
  mesh, tc = setup.mesh, config.train
  if setup.is_writer:
    print(f"Training on {jax.device_count()} devices ({jax.devices()[0].platform}) "
          f"in {jax.process_count()} process(es); global batch {config.data.batch_size}")

  if setup.is_writer:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    _write_data_spec(workdir, setup.dataset)

  start_step = setup.checkpoints.latest_step()
  if start_step is None:
    init = jax.jit(functools.partial(init_state, setup.model, setup.tx),
                   out_shardings=setup.replicated)
    state = init(setup.init_key)
    start_step = 0
  else:
    state = setup.restore()
    logging.info("Resuming from checkpoint at step %d", start_step)
    print(f"Resuming {workdir} from step {start_step}")
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Parameters: %s", f"{num_params:,}")

  batch_sharding = sharding.data_sharded(mesh)
  train_step = jax.jit(
      make_train_step(setup.model, setup.tx, tc.ema_decay, tc.ema_warmup,
                      setup.lr_schedule),
      in_shardings=(setup.replicated, batch_sharding, setup.replicated),
      out_shardings=(setup.replicated, setup.replicated),
      donate_argnums=0)
  sampler = setup.make_sampler(tc.num_sample_images, config.sample.sampler,
                               config.sample.num_steps, config.sample.eta)
  writer = None
  if setup.is_writer:
    from gen_jax import summary  # tensorboardX only where logs are written.
    writer = summary.MetricWriter(workdir)
  samples_dir = os.path.join(workdir, "samples")
  if setup.is_writer:
    os.makedirs(samples_dir, exist_ok=True)
  reference = _reference_points(config)

  batches = data.prefetch(data.train_iterator(
      setup.dataset, config.seed, config.data.batch_size, start_step,
      jax.process_index(), jax.process_count()))
  pending = []
  progress = tqdm(total=tc.num_steps, initial=start_step, desc="train",
                  disable=not setup.is_writer, dynamic_ncols=True, mininterval=1.0)
  last_time, last_step = time.time(), start_step
  step = start_step
  for step in range(start_step + 1, tc.num_steps + 1):
    batch = sharding.shard_batch(next(batches), mesh)
    state, metrics = train_step(state, batch, setup.train_key)
    pending.append(metrics)
    progress.update(1)
    is_last = step == tc.num_steps

    if step % tc.log_every == 0 or is_last:
      summary_values = {k: float(np.mean([m[k] for m in jax.device_get(pending)]))
                        for k in pending[0]}
      pending = []
      now = time.time()
      summary_values["steps_per_sec"] = (step - last_step) / max(now - last_time, 1e-9)
      last_time, last_step = now, step
      if not np.isfinite(summary_values["loss"]):
        raise FloatingPointError(f"non-finite loss {summary_values['loss']} at step {step}")
      progress.set_postfix(loss=f"{summary_values['loss']:.4f}")
      if writer:
        writer.write_scalars(step, summary_values)

    if step % tc.sample_every == 0 or is_last:
      samples = sampler(state.ema_params, jax.random.fold_in(setup.sample_key, step))
      if setup.is_writer:
        path = os.path.join(samples_dir, f"step_{step:07d}.png")
        _save_samples_picture(path, samples, setup.kind, reference)
        if setup.kind == "image":
          writer.write_image(step, "samples", images.grid(images.to_uint8(samples)))

    if step % tc.checkpoint_every == 0 or is_last:
      checkpoint.save(setup.checkpoints, step, state)
  progress.close()
  if writer:
    writer.close()
  setup.checkpoints.close()
  if setup.is_writer and step == tc.num_steps:
    final = os.path.join(samples_dir, f"step_{tc.num_steps:07d}.png")
    print(f"Done: {tc.num_steps} steps in {workdir}; samples: {final}")
  return state


# ----------------------------------------------------------------------------
# Sample
# ----------------------------------------------------------------------------

def sample(config, workdir: str, build: BuildFn, num_samples: int,
           sampler: str | None = None, num_steps: int | None = None,
           out_dir: str | None = None) -> str:
  """Draws num_samples from the latest checkpoint's EMA parameters.

  Writes out_dir/samples.npz ('images': uint8 NHWC in 0..255, or 'points':
  float32 (N, 2)) and a PNG picture beside it; returns the npz path.
  """
  if num_samples <= 0:
    raise ConfigError(f"--num_samples must be positive, got {num_samples}")
  _require_checkpoint(workdir, "--mode=sample")
  setup = _Setup(config, workdir, build, split=None, create_workdir=False)
  state = setup.restore()
  sampler = sampler or config.sample.sampler
  num_steps = num_steps or config.sample.num_steps
  batch = min(num_samples, config.sample.batch_size)
  draw = setup.make_sampler(batch, sampler, num_steps, config.sample.eta)
  key = jax.random.fold_in(setup.sample_key, 10**9 + int(state.step))
  chunks = []
  for i in tqdm(range(-(-num_samples // batch)), desc=f"sample ({sampler})",
                disable=not setup.is_writer):
    chunks.append(draw(state.ema_params, jax.random.fold_in(key, i)))
  samples = np.concatenate(chunks)[:num_samples]
  out_dir = out_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  npz_path = os.path.join(out_dir, "samples.npz")
  if setup.kind == "points":
    arrays = {"points": samples.astype(np.float32)}
  else:
    arrays = {"images": images.to_uint8(samples)}
  tmp = npz_path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, npz_path)
  picture = os.path.join(out_dir, "samples.png")
  shown = samples if setup.kind == "points" else samples[:256]
  _save_samples_picture(picture, shown, setup.kind, _reference_points(config))
  print(f"Wrote {num_samples} samples (checkpoint step {int(state.step)}, "
        f"sampler {sampler}) to {npz_path} and {picture}")
  return npz_path


# ----------------------------------------------------------------------------
# Evaluate
# ----------------------------------------------------------------------------

def _validate_eval_config(config) -> None:
  num_samples = config.eval.num_samples
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or (
      num_samples < 2 and num_samples != 0):
    raise ConfigError(f"--config.eval.num_samples must be 0 (no sample quality) or at least 2, "
                      f"got {num_samples!r}")
  steps = config.eval.classifier_steps
  if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
    raise ConfigError(f"--config.eval.classifier_steps must be a positive integer, got {steps!r}")
  limit = config.eval.num_examples
  if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
    raise ConfigError(f"--config.eval.num_examples must be 0 (the whole split) or positive, got {limit!r}")


def evaluate(config, workdir: str, build: BuildFn, sampler: str | None = None,
             num_steps: int | None = None, inception_weights: str | None = None) -> dict:
  """Evaluates the latest checkpoint's EMA parameters; writes workdir/eval.json.

  eval.json:
    checkpoint_step, parameters ('ema'), seconds (wall time per part);
    likelihood: model.evaluate averaged over the test split (the first
      eval.num_examples, or all): diffusion L_simple and the full bound in
      bits/dim; VAE ELBO terms, IWAE NLL in nats (and bits/dim); with `setup`
      saying how each is computed;
    sample_quality: for image data with labels, eval.num_samples samples
      (sampler and steps from the arguments or config.sample) against real
      data in the feature space of the evaluation classifier
      (gen_jax.evaluation): Fréchet distances and IS-like scores with their
      real-data floors, the classifier's test accuracy and every setting;
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
      jax.eval_shape(functools.partial(setup.model.sample, num_samples=2, sampler=sampler,
                                       num_steps=num_steps, eta=config.sample.eta),
                     state.ema_params, setup.sample_key)
    except ValueError as e:
      raise ConfigError(f"--sampler={sampler} --sampling_steps={num_steps}: {e}") from None

  results = {"checkpoint_step": int(state.step), "parameters": "ema", "seconds": {}}
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
  evaluate_fn = jax.jit(setup.model.evaluate,
                        in_shardings=(setup.replicated, batch_sharding, setup.replicated))
  key = jax.random.fold_in(setup.sample_key, 2 * 10**9)
  totals, count = {}, 0
  limit = config.eval.num_examples or None
  wanted = min(setup.dataset.num_examples, limit or setup.dataset.num_examples)
  batches = setup.dataset.eval_batches(batch_size, jax.process_index(),
                                       jax.process_count())
  with jax.default_matmul_precision("highest"):
    for i, batch in enumerate(tqdm(batches, desc="eval: likelihood", total=-(-wanted // batch_size),
                                   disable=not setup.is_writer, dynamic_ncols=True)):
      mask = np.asarray(batch.pop("mask", np.ones(len(batch["x"]), bool)))
      values = jax.device_get(evaluate_fn(state.ema_params,
                                          sharding.shard_batch({"x": batch["x"]}, setup.mesh),
                                          jax.random.fold_in(key, i)))
      for name, v in values.items():
        totals[name] = totals.get(name, 0.0) + float(np.sum(np.asarray(v)[mask]))
      count += int(mask.sum())
      if limit and count >= limit:
        break
  out = {name: total / max(count, 1) for name, total in totals.items()}
  describe = getattr(setup.model, "describe_evaluate", None)
  out.update(split="test", data=setup.dataset.name, num_examples=count, batch_size=batch_size,
             setup=describe() if describe else {})
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


def _draw_samples(setup: _Setup, params, num_samples: int, sampler: str, num_steps, eta: float):
  """num_samples samples in chunks of at most sample.batch_size, rounded to the 8-bit grid."""
  num_chunks = -(-num_samples // setup.config.sample.batch_size)
  per_chunk = -(-num_samples // num_chunks)
  draw = setup.make_sampler(per_chunk, sampler, num_steps, eta)
  key = jax.random.fold_in(setup.sample_key, 3 * 10**9)
  chunks = [draw(params, jax.random.fold_in(key, i))
            for i in tqdm(range(num_chunks), desc=f"eval: {num_samples} samples ({sampler})",
                          disable=not setup.is_writer, dynamic_ncols=True)]
  return evaluation.to_8bit_grid(np.concatenate(chunks)[:num_samples])


def _evaluate_samples(setup: _Setup, state: TrainState, sampler: str, num_steps,
                      inception_weights: str | None) -> dict:
  """The 'sample_quality' and 'inception' sections of eval.json."""
  config, mesh = setup.config, setup.mesh
  num_samples = config.eval.num_samples
  wants_inception = setup.kind == "image" and (
      bool(inception_weights) or setup.example_shape[-1] == 3)
  if not num_samples:
    return {"sample_quality": {"skipped": "--config.eval.num_samples=0"}}
  if setup.kind != "image":
    return {"sample_quality": {"skipped": f"sample quality is measured on images; "
                                          f"{setup.dataset.name} holds {setup.kind}"}}
  train_dataset = data.load_dataset(config.data, "train")
  labelled = train_dataset.num_classes is not None
  if not labelled and not wants_inception:
    return {"sample_quality": {"skipped": f"{train_dataset.name} has no labels to train the "
                                          "evaluation classifier on"}}

  batch_size = config.eval.batch_size
  eta = config.sample.eta
  samples = _draw_samples(setup, state.ema_params, num_samples, sampler, num_steps, eta)
  test_images = _read_images(setup.dataset)
  train_images = _read_images(train_dataset, num_samples)
  half = len(test_images) // 2
  describe = getattr(setup.model, "describe_sample", None)
  sample_setup = dict(
      describe(sampler=sampler, num_steps=num_steps, eta=eta) if describe
      else {"sampler": sampler, "num_steps": num_steps, "eta": eta},
      num_samples=num_samples, checkpoint_step=int(state.step), parameters="ema",
      processing="rounded to the 8-bit grid, as saved images")
  reference = {"test": f"all {len(test_images)} examples of {setup.dataset.name}",
               "train": f"the first {len(train_images)} examples of {train_dataset.name}",
               "test_halves": evaluation.split_description(len(test_images))}
  out = {}

  def figures(fn, params, name, num_splits):
    outputs = [evaluation.map_batches(fn, params, images_, batch_size, mesh,
                                      desc=f"eval: {name} features of {what}" if setup.is_writer else None)
               for what, images_ in (("samples", samples), ("test", test_images),
                                     ("train", train_images))]
    return evaluation.sample_quality(*outputs, num_splits=num_splits)

  if labelled:
    net, params, info = evaluation.load_or_train_classifier(
        setup.workdir, train_dataset, setup.dataset, config.eval.classifier_steps, config.seed,
        mesh, batch_size, write=setup.is_writer)
    fn = evaluation.jit_for_mesh(evaluation.classifier_outputs(net), mesh)
    out["sample_quality"] = dict(
        figures(fn, params, "classifier", 1), samples=sample_setup, reference=reference,
        feature_space=dict(
            info, network="gen_jax.nets.ImageClassifier",
            features=f"its penultimate layer ({info['feature_dim']}-d, after ReLU)",
            probabilities=f"its softmax over {info['num_classes']} classes (IS-like score, at most "
                          f"{info['num_classes']})",
            path=os.path.join(setup.workdir, evaluation.CLASSIFIER_DIR)))
  else:
    out["sample_quality"] = {"skipped": f"{train_dataset.name} has no labels to train the "
                                        "evaluation classifier on"}

  if wants_inception:
    if not inception_weights:
      out["inception"] = {"skipped": "no --inception_weights=PATH given: FID and Inception score need "
                                     "the FID Inception-v3 weights (see the README)"}
    else:
      variables = jax.device_put(inception.load_variables(inception_weights), setup.replicated)
      fn = evaluation.jit_for_mesh(inception.outputs_fn(), mesh)
      with jax.default_matmul_precision("highest"):
        found = figures(fn, variables, "Inception", min(10, num_samples, half))
      out["inception"] = dict(
          {k.replace("fd_", "fid_", 1): v for k, v in found.items()},
          samples=sample_setup, reference=reference, weights=os.path.abspath(inception_weights),
          feature_space={"network": "FID Inception-v3 (gen_jax.inception, pytorch-fid's graph)",
                         "features": "2048-d pool features", "probabilities": "softmax over 1008 logits",
                         "is_splits": min(10, num_samples, half)})
  return out
