"""How samples are drawn from a run and saved: sample(), the training's sample grid, and the
pieces train and evaluate share.

  sample(config, workdir, build, num_samples=None, ...)  samples.npz + PNG
  SampleGrid(run, writer).draw(params, step)             training: samples/step_N.png
  draw_samples(run, params, num_samples, key, ...)       in chunks, on the mesh
  make_sampler(run, num_samples, sampler, ...)           one jitted, sharded draw
  class_grid_labels(num_samples, num_classes)            one row per class
  save_samples_picture(path, samples, kind, ...)         grid or scatter plot

(run_setup.check_sampler makes a bad sampler fail before any work.)
"""

import functools
import os

import jax
import numpy as np
from tqdm import tqdm

from gen_jax import checks, data, images
from gen_jax.configs import ConfigError
from gen_jax.runtime import fileio
from gen_jax.train import faults, rng, sharding
from gen_jax.train import workdir as workdir_lib
from gen_jax.train.run_setup import BuildFn, Run, check_sampler, open_run


def class_grid_labels(num_samples: int, num_classes: int):
  """Labels for a grid with one row per class: (labels (num_samples,), rows)."""
  per_class = -(-num_samples // num_classes)
  return np.repeat(np.arange(num_classes), per_class)[:num_samples], num_classes


def reference_points(config):
  """Data points drawn under the samples of 2-D toy data, in scatter plots (else None)."""
  if config.data.source != "toy2d":
    return None
  return data.sample_toy2d(
    config.data.name, 2000, rng.numpy_stream(config.seed, "reference_points")
  )


def save_samples_picture(path, samples, kind, reference=None, num_rows=None) -> None:
  if kind == "points":
    images.save_scatter(path, samples, reference)
  else:
    images.save_image_grid(path, samples, num_rows=num_rows)


def make_sampler(
  run: Run,
  num_samples: int,
  sampler: str,
  num_steps: int | None,
  options=None,
  guidance_scale: float = 0.0,
):
  """A jitted (params, key, labels=None) -> samples (numpy) for a fixed num_samples.

  labels: (num_samples,) classes for a class-conditional model, sampled
  with classifier-free guidance `guidance_scale`. options: the sampler's
  (config.sample.options), passed to model.sample as keywords.

  The samples are sharded over the devices along the batch axis (the count
  is rounded up to a multiple of the device count, the surplus dropped);
  the noise is drawn for the whole batch from one key, so the samples do
  not depend on the number of devices.
  """
  devices = run.mesh.devices.size
  padded = -(-num_samples // devices) * devices
  fn = functools.partial(
    run.model.sample,
    num_samples=padded,
    sampler=sampler,
    num_steps=num_steps,
    guidance_scale=guidance_scale,
    **(options or {}),
  )
  draw = jax.jit(
    lambda params, key, labels: fn(params, key, labels=labels),
    out_shardings=sharding.data_sharded(run.mesh),
  )

  def sample(params, key, labels=None):
    if labels is not None:
      labels = np.resize(np.asarray(labels, np.int32), padded)
    return sharding.to_host(draw(params, key, labels))[:num_samples]

  return sample


class SampleGrid:
  """The picture of config.sample.num_samples samples drawn while training: one row per
  class for a class-conditional model; a scatter plot over data points for 2-D data."""

  def __init__(self, run: Run, writer):
    config = run.config
    self.run, self.writer = run, writer
    self.directory = os.path.join(run.workdir, "samples")
    num_samples, num_classes = config.sample.num_samples, getattr(run.model, "num_classes", 0)
    self.labels, self.rows = (
      class_grid_labels(num_samples, num_classes) if num_classes else (None, None)
    )
    self.draw_fn = make_sampler(
      run,
      num_samples,
      config.sample.sampler,
      config.sample.num_steps,
      config.sample.options,
      config.sample.guidance_scale,
    )
    self.reference = reference_points(config)
    if run.is_writer:
      os.makedirs(self.directory, exist_ok=True)

  def path(self, step: int) -> str:
    return os.path.join(self.directory, f"step_{step:07d}.png")

  def named(self, step: int) -> str:
    """'; samples: <path>' if the grid of `step` is on disk, else ''."""
    return f"; samples: {self.path(step)}" if os.path.exists(self.path(step)) else ""

  def draw_if_missing(self, params, step: int) -> None:
    """The last step's grid, which a run killed while drawing it left undrawn."""
    if not os.path.exists(self.path(step)):
      if self.run.is_writer:
        print(f"Drawing the sample grid of step {step}, which the last run did not finish")
      self.draw(params, step)

  def draw(self, params, step: int) -> None:
    """Draws and writes the grid of `step`; non-finite samples are reported, not drawn."""
    key = rng.stream(self.run.config.seed, "sample_grid", step)
    samples = self.draw_fn(params, key, self.labels)
    bad = int(np.sum(~np.all(np.isfinite(samples.reshape(len(samples), -1)), axis=1)))
    if bad and self.run.is_writer:
      print(
        f"The sample grid of step {step} is not written: {bad} of {len(samples)} samples hold "
        f"NaN/inf (config.sample: sampler {self.run.config.sample.sampler}, guidance "
        f"{self.run.config.sample.guidance_scale})"
      )
    elif self.run.is_writer:
      save_samples_picture(self.path(step), samples, self.run.kind, self.reference, self.rows)
      if self.run.kind == "image":
        self.writer.write_image(step, "samples", images.grid(images.to_uint8(samples)))


def draw_samples(
  run: Run,
  params,
  num_samples: int,
  key,
  sampler: str,
  num_steps: int | None,
  labels=None,
  guidance_scale: float = 0.0,
  desc: str = "sample",
) -> np.ndarray:
  """num_samples samples (numpy) in equal chunks of at most config.sample.batch_size;
  chunk i from fold_in(key, i). labels: (num_samples,) classes of a class-conditional model."""
  num_chunks = -(-num_samples // run.config.sample.batch_size)
  per_chunk = -(-num_samples // num_chunks)
  draw = make_sampler(run, per_chunk, sampler, num_steps, run.config.sample.options, guidance_scale)
  chunks = []
  for i in tqdm(range(num_chunks), desc=desc, disable=not run.is_writer, dynamic_ncols=True):
    chunk_labels = None if labels is None else labels[i * per_chunk : (i + 1) * per_chunk]
    chunks.append(draw(params, jax.random.fold_in(key, i), chunk_labels))
  return np.concatenate(chunks)[:num_samples]


def sample(
  config,
  workdir: str,
  build: BuildFn,
  num_samples: int | None = None,
  sampler: str | None = None,
  num_steps: int | None = None,
  out_dir: str | None = None,
  class_label: int | None = None,
  guidance_scale: float | None = None,
  *,
  experiment: str | None = None,
) -> str:
  """Draws num_samples (default config.sample.num_samples) from the latest checkpoint's EMA
  parameters, with `sampler` and `num_steps` (default: config.sample's).

  Writes out_dir/samples.npz ('images': uint8 NHWC in 0..255, or 'points':
  float32 (N, 2); 'labels' (N,) for a class-conditional model) and a PNG
  picture beside it; returns the npz path. A class-conditional model draws
  class `class_label`, or every class with one row each in the picture,
  with classifier-free guidance `guidance_scale` (default: the config's).
  The key of chunk i is rng.stream(seed, "sample", checkpoint step, i).
  Before any work: out_dir (default: the workdir) must be writable and every
  setting finite. Samples holding NaN/inf raise NonFiniteError and nothing is
  written; a full disk or memory raises a one-line error (faults.resource_errors).
  experiment: the experiment's name, checked against the workdir's.
  """
  num_samples = config.sample.num_samples if num_samples is None else num_samples
  if num_samples <= 0:
    raise ConfigError(f"num_samples={num_samples} must be positive")
  if guidance_scale is not None and not checks.is_real(guidance_scale):
    raise ConfigError(f"guidance_scale={guidance_scale} must be a finite number")
  run = open_run(config, workdir, build, mode="sample", experiment=experiment)
  out_dir = workdir_lib.output_dir(workdir, out_dir, is_writer=run.is_writer)
  with faults.resource_errors("drawing samples"):
    return _sample(
      run,
      num_samples=num_samples,
      sampler=sampler,
      num_steps=num_steps,
      out_dir=out_dir,
      class_label=class_label,
      guidance_scale=guidance_scale,
    )


def _sample(run, *, num_samples, sampler, num_steps, out_dir, class_label, guidance_scale) -> str:
  config = run.config
  num_classes = getattr(run.model, "num_classes", 0)
  if guidance_scale is None:
    guidance_scale = config.sample.guidance_scale
  if not num_classes and (class_label is not None or guidance_scale):
    raise ConfigError(
      "class_label and guidance_scale need a class-conditional model: train with "
      "config.model.num_classes=K"
    )
  if class_label is not None and not 0 <= class_label < num_classes:
    raise ConfigError(f"class_label={class_label} must be in [0, {num_classes})")
  sampler = sampler or config.sample.sampler
  num_steps = num_steps or config.sample.num_steps
  check_sampler(run.model, run.abstract_state, sampler, num_steps, config.sample.options)
  labels, rows = None, None
  if num_classes:
    if class_label is None:
      labels, rows = class_grid_labels(num_samples, num_classes)
    else:
      labels = np.full((num_samples,), class_label, np.int32)
  state = run.restore()
  run.checkpoints.close()
  key = rng.stream(config.seed, "sample", int(state.step))
  samples = draw_samples(
    run,
    state.ema_params,
    num_samples,
    key,
    sampler,
    num_steps,
    labels,
    guidance_scale,
    desc=f"sample ({sampler})",
  )
  bad = int(np.sum(~np.all(np.isfinite(samples.reshape(num_samples, -1)), axis=1)))
  if bad:
    raise faults.NonFiniteError(
      f"{bad} of {num_samples} samples hold NaN/inf (checkpoint step {int(state.step)}, sampler "
      f"{sampler}, num_steps={num_steps}, guidance_scale={guidance_scale}); nothing was written"
    )
  npz_path = os.path.join(out_dir, "samples.npz")
  if not run.is_writer:  # every process drew the samples; process 0 writes them
    return npz_path
  os.makedirs(out_dir, exist_ok=True)
  if run.kind == "points":
    arrays = {"points": samples.astype(np.float32)}
  else:
    arrays = {"images": images.to_uint8(samples)}
  if labels is not None:
    arrays["labels"] = labels.astype(np.int32)
  with fileio.atomic_path(npz_path) as tmp:
    np.savez(tmp, **arrays)
  picture = os.path.join(out_dir, "samples.png")
  shown = samples if run.kind == "points" else samples[:256]
  save_samples_picture(
    picture,
    shown,
    run.kind,
    reference_points(config),
    rows if len(shown) == num_samples else None,
  )
  print(
    f"Wrote {num_samples} samples (checkpoint step {int(state.step)}, "
    f"sampler {sampler}) to {npz_path} and {picture}"
  )
  return npz_path
