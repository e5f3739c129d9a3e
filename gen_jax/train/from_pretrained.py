"""Runs that start from a diffusers folder, and workdirs written back as one.

  config = use_pretrained(config, "ddpm-cifar10-32", keep=...)  # config.pretrained, config.diffusion
  import_pretrained(config, workdir, build)   # a step-0 checkpoint of its weights: sample, eval
  pretrained_state(config, model, tx, mesh)   # train(): step 0 (params and EMA) from its weights
  export_workdir(config, workdir, build, out_dir)  # the EMA parameters as a DDPMPipeline folder

A folder becomes a run like any other: its weights are the parameters and
the EMA parameters of step 0, its scheduler config is config.diffusion, and
train / sample / evaluate then read the workdir as they read a trained one.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp

from gen_jax import nets, pretrained
from gen_jax.configs import ConfigError
from gen_jax.pretrained import diffusers_unet
from gen_jax.train import checkpoint, sharding
from gen_jax.train import step as step_lib
from gen_jax.train import workdir as workdir_lib
from gen_jax.train.load import record_builder
from gen_jax.train.run_setup import BuildFn, open_run


def use_pretrained(config, path: str, keep=frozenset(), scheduler_config: str | None = None):
  """A copy of `config` with config.pretrained = path and config.diffusion set from the
  folder's scheduler config (`pretrained.diffusion_from_scheduler`), or from the file
  `scheduler_config` if given, except the dotted paths in `keep` (those overridden on the
  command line). Without either, the experiment's config.diffusion stays."""
  pretrained.check_config_can_use_it(config)
  config = config.copy_and_resolve_references()
  config.pretrained = path
  pretrained.load_spec(path)  # fails now, naming the folder, if it is not one
  scheduler_path = scheduler_config or pretrained.find_scheduler_config(
    pretrained.find_unet_dir(path)
  )
  if scheduler_path is not None:
    if not os.path.isfile(scheduler_path):
      raise ConfigError(f"scheduler_config={scheduler_path} is not a file")
    with open(scheduler_path) as f:
      fields = pretrained.diffusion_from_scheduler(json.load(f))
    for name, value in fields.items():
      if f"diffusion.{name}" not in keep:
        config.diffusion[name] = value
  return config


def pretrained_state(config, model, tx, mesh) -> step_lib.TrainState:
  """The train state of step 0 of a run from config.pretrained: the folder's weights as the
  parameters and the EMA, a fresh optimizer state, replicated over `mesh`.

  step.init_state with the weights in place of model.init's (which is never compiled: its
  random initialisers cost more to compile than the whole import).
  """
  loaded = pretrained.load(config.pretrained)
  abstract = jax.eval_shape(functools.partial(step_lib.init_state, model, tx), jax.random.key(0))
  shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)
  if shapes(loaded.params) != shapes(abstract.params):
    raise ConfigError(f"config.pretrained={config.pretrained}: its weights do not fit the model")

  def state_of(params):
    return step_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params),  # a copy: the step donates the state
    )

  replicated = sharding.replicated(mesh)
  return jax.jit(state_of, out_shardings=replicated)(jax.device_put(loaded.params, replicated))


def import_pretrained(config, workdir: str, build: BuildFn) -> bool:
  """Writes config.pretrained's weights into `workdir` as the checkpoint of step 0 (params and
  EMA), with config.json and data_spec.json, so sample and eval read it as a trained run.

  Does nothing, and returns False, if `workdir` has a checkpoint already (of the same folder:
  ConfigError if its config.json names another).
  """
  if checkpoint.has_checkpoint(workdir):
    saved = workdir_lib.read_saved_config(workdir) or {}
    if saved.get("pretrained", "") != config.pretrained:
      raise ConfigError(
        f"workdir={workdir} holds a run of pretrained={saved.get('pretrained') or '(none)'}, "
        f"not pretrained={config.pretrained}; use another workdir"
      )
    return False
  spec, _ = pretrained.load_spec(config.pretrained)
  height, width = spec.sample_size
  example_shape = (height, width, spec.in_channels)
  from gen_jax import configs

  configs.validate(config)
  model = build(config, example_shape)
  pretrained.check_model_uses_it(config, model)
  tx, _ = step_lib.train_step_for(config, model)
  state = pretrained_state(config, model, tx, sharding.make_mesh())
  workdir_lib.prepare_workdir(workdir)
  manager = checkpoint.manager(workdir, config.train.keep_checkpoints, create=True)
  try:
    checkpoint.save(manager, 0, state)
  finally:
    manager.close()
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config)
    workdir_lib.write_data_spec(workdir, _ImageSpec(example_shape))
    record_builder(workdir, build)  # so load_trained rebuilds the model from the workdir
    print(f"Imported {config.pretrained} into {workdir} (checkpoint step 0)")
  return True


class _ImageSpec:
  """What write_data_spec reads of a dataset: an image of this shape."""

  kind = "image"

  def __init__(self, example_shape):
    self.example_shape = example_shape


def export_workdir(config, workdir: str, build: BuildFn, out_dir: str) -> str:
  """Writes the EMA parameters of `workdir`'s latest checkpoint as a diffusers DDPMPipeline
  folder (`pretrained.save`); returns its path.

  The model must be a U-Net diffusion model: gen_jax's nets.UNet (mapped by
  `diffusers_unet.from_native_unet`) or a UNet2DModel it was loaded as.
  """
  run = open_run(config, workdir, build, mode="sample")
  net = getattr(run.model, "net", None)
  if not isinstance(net, (nets.UNet, diffusers_unet.DiffusersUNet)):
    raise ConfigError(
      f"only U-Net diffusion models export to diffusers; workdir={workdir} holds a "
      f"{type(net or run.model).__name__}"
    )
  if run.kind != "image":
    raise ConfigError(f"workdir={workdir} holds a model of {run.kind} data, not images")
  state = run.restore()
  run.checkpoints.close()
  params = jax.device_get(state.ema_params)
  if isinstance(net, nets.UNet):
    try:
      spec, params, null_label = diffusers_unet.from_native_unet(net, params, run.example_shape)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  else:
    spec, null_label = net.spec, net.null_label
  diffusion = {k: config.diffusion[k] for k in config.diffusion}
  path = pretrained.save(out_dir, spec, params, diffusion=diffusion, null_label=null_label)
  print(f"Exported the EMA parameters of step {int(state.step)} to {path}")
  return path
