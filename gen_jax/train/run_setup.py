"""Opening a run: what train, sample and evaluate all start from.

  run = open_run(config, workdir, build, mode)   # "train" | "sample" | "eval"

validates the config (the one call of configs.validate), checks what the mode
needs (a resumable workdir with room for the checkpoints, or a checkpoint to
read), opens the data, builds the model, its optimizer and step
(step.train_step_for), the abstract train state and the checkpoint manager.
Nothing is written before every check has passed; what a training then writes,
and the state it starts from, are resume.restore_or_init's.
"""

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from gen_jax import configs, data
from gen_jax.configs import ConfigError
from gen_jax.data import validation
from gen_jax.train import checkpoint, resume, sharding, step
from gen_jax.train import workdir as workdir_lib

BuildFn = Callable[[ml_collections.ConfigDict, tuple], Any]
MODES = ("train", "sample", "eval")


@dataclasses.dataclass
class Run:
  """An open run. dataset: the train split (train), the test split (eval) or None (sample:
  kind and example_shape come from the workdir's data_spec.json)."""

  config: ml_collections.ConfigDict
  workdir: str
  mode: str
  mesh: jax.sharding.Mesh
  dataset: data.Dataset | None
  kind: str  # "image" or "points"
  example_shape: tuple
  model: Any
  tx: Any  # the optax optimizer
  train_step: Callable  # the pure step of step.train_step_for; jit with step.jit_train_step
  abstract_state: step.TrainState  # ShapeDtypeStructs with their shardings (state_shardings)
  checkpoints: Any  # orbax CheckpointManager of workdir/checkpoints
  is_writer: bool  # process 0: writes logs, pictures, config.json

  @property
  def replicated(self):
    return sharding.replicated(self.mesh)

  @property
  def state_shardings(self):
    """Where each array of the train state lives: replicated, or split by config.mesh.fsdp."""
    return jax.tree.map(lambda s: s.sharding, self.abstract_state)

  def restore(self) -> step.TrainState:
    """The newest readable checkpoint (sampling and evaluation: read-only)."""
    return checkpoint.restore(self.checkpoints, self.abstract_state)

  def make_sampler(self, *args, **kwargs):
    """Deprecated (goes in gen_jax 0.3): sampling.make_sampler(run, ...)."""
    warnings.warn(
      "Run.make_sampler moved to gen_jax.train.sampling.make_sampler(run, ...) in gen_jax 0.2; "
      "the method goes in 0.3",
      DeprecationWarning,
      stacklevel=2,
    )
    from gen_jax.train import sampling  # (sampling opens runs through this module)

    return sampling.make_sampler(self, *args, **kwargs)


def open_run(
  config,
  workdir: str,
  build: BuildFn,
  mode: str = "train",
  *,
  experiment: str | None = None,
  resume_unverified: bool = False,
) -> Run:
  """Opens `workdir` for `mode`; raises ConfigError, DataError or NoCheckpointError first.

  train: the train split; the workdir's config and data must be those of its
    checkpoints (resume.check_resume_config / check_resume_data), the model
    must sample with config.sample, the disk must hold the checkpoints; then
    the workdir is created.
  sample: needs a checkpoint; no data is read.
  eval: needs a checkpoint; the test split, config.eval.batch_size checked.
  experiment: the experiment's name, checked against the one the workdir
    records (workdir.check_experiment); resume_unverified: see
    resume.check_resume_config.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  configs.validate(config)
  workdir_lib.check_experiment(workdir, experiment)
  if mode == "train":
    resume.check_resume_config(config, workdir, unverified=resume_unverified)
  else:
    checkpoint.require_checkpoint(workdir)
  # Training lays its state out as config.mesh.fsdp says; sample and eval read it onto any layout.
  fsdp = config.mesh.fsdp if mode == "train" else sharding.reading_fsdp(config.mesh.fsdp)
  mesh = sharding.make_mesh(fsdp)
  sharding.check_batch_size(config.data.batch_size, mesh)
  if mode == "eval":
    sharding.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
  if mode == "sample":
    dataset = None
    kind, example_shape = workdir_lib.read_data_spec(workdir)
  else:
    dataset = data.load_dataset(config.data, "train" if mode == "train" else "test")
    kind, example_shape = dataset.kind, tuple(dataset.example_shape)
  model = build(config, example_shape)
  if config.get("pretrained"):
    from gen_jax import pretrained  # (safetensors, only for runs from a diffusers folder)

    pretrained.check_model_uses_it(config, model)
    if mode == "eval":
      pretrained.check_can_evaluate(config)
  if dataset is not None:  # before the model is traced on the data's shape, below
    where = f"config.data.path={config.data.path}" if config.data.path else dataset.name
    multiple, name = _size_multiple(model)
    validation.check_images_fit(
      dataset.kind, dataset.example_shape, where=where, size_multiple=multiple, model=name
    )
  else:  # a workdir trained before this check: its pictures could not be written either
    validation.check_images_fit(kind, example_shape, where=f"workdir={workdir} (data_spec.json)")
  if mode == "train":
    _check_classes(model, dataset)
    resume.check_resume_data(workdir, dataset)
    validation.check_points_dimension(dataset.kind, dataset.example_shape, where=where)
  tx, train_step = step.train_step_for(config, model)
  abstract = jax.eval_shape(
    functools.partial(step.init_state, model, tx), jax.random.key(config.seed)
  )
  abstract_state = jax.tree.map(
    lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
    abstract,
    sharding.state_shardings(abstract, mesh),
  )
  if mode == "train":  # The sample grids' sampler, before training, not at the first grid.
    sample = config.sample
    check_sampler(
      model,
      abstract_state,
      sample.sampler,
      sample.num_steps,
      sample.options,
      guidance_scale=sample.guidance_scale,
    )
    resume.check_free_space(workdir, abstract_state, config.train.keep_checkpoints)
    model_config = config.get("model", {})
    resume.check_attention_memory(
      model_config, example_shape, batch_size=config.data.batch_size, num_devices=mesh.size
    )
    workdir_lib.prepare_workdir(workdir)
  checkpoints = checkpoint.manager(workdir, config.train.keep_checkpoints, create=mode == "train")
  return Run(
    config=config,
    workdir=workdir,
    mode=mode,
    mesh=mesh,
    dataset=dataset,
    kind=kind,
    example_shape=example_shape,
    model=model,
    tx=tx,
    train_step=train_step,
    abstract_state=abstract_state,
    checkpoints=checkpoints,
    is_writer=jax.process_index() == 0,
  )


def check_sampler(
  model,
  abstract_state,
  sampler: str,
  num_steps: int | None,
  options,
  guidance_scale: float = 0.0,
) -> None:
  """Raises ConfigError now, naming the arguments, if the model cannot sample with these
  settings (an unknown sampler, a step count out of range, guidance without a null class),
  rather than after minutes of other work. options: the sampler's (config.sample.options).
  A class-conditional model is traced with labels, as the sample grids draw it (one row per
  class), so a network without a null class samples too. Traces the sampler on abstract
  values: no computation."""
  labels = jnp.zeros((2,), jnp.int32) if getattr(model, "num_classes", 0) else None
  draw = functools.partial(
    model.sample, num_samples=2, sampler=sampler, num_steps=num_steps, **(options or {})
  )
  try:
    jax.eval_shape(
      functools.partial(draw, labels=labels), abstract_state.ema_params, jax.random.key(0)
    )
  except ValueError as e:
    raise ConfigError(f"sampler={sampler} num_steps={num_steps}: {e}") from None
  if labels is None or not guidance_scale:
    return
  try:
    jax.eval_shape(
      functools.partial(draw, labels=labels, guidance_scale=guidance_scale),
      abstract_state.ema_params,
      jax.random.key(0),
    )
  except ValueError as e:
    raise ConfigError(f"config.sample.guidance_scale={guidance_scale}: {e}; set it to 0") from None


def _size_multiple(model) -> tuple[int, str]:
  """(2^k, a name) of a U-Net that halves its input k times: the data's height and width must be
  multiples of 2^k (its skip connections concatenate maps of equal size); (1, "") otherwise."""
  from gen_jax import nets  # (Flax modules, imported by the model already)
  from gen_jax.pretrained import diffusers_unet

  net = getattr(model, "net", None)
  if isinstance(net, nets.UNet):
    return 2 ** (len(net.ch_mult) - 1), f"the U-Net (config.model.ch_mult={tuple(net.ch_mult)})"
  if isinstance(net, diffusers_unet.DiffusersUNet):
    return 2 ** (len(net.spec.block_out_channels) - 1), "the diffusers U-Net"
  return 1, ""


def _check_classes(model, dataset) -> None:
  num_classes = getattr(model, "num_classes", 0)
  if num_classes and dataset.num_classes != num_classes:
    raise ConfigError(
      f"config.model.num_classes={num_classes} but the data {dataset.name!r} has "
      f"{dataset.num_classes or 'no'} classes"
    )
