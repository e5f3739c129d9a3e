"""Runs that start from a diffusers folder, and workdirs written back as one.

  config = use_pretrained(config, "ddpm-cifar10-32", keep=...)  # config.pretrained, config.diffusion
  config = scale_sample_grid(config, keep)    # a fine-tune's sample grid, scaled to its steps
  import_pretrained(config, workdir, build, mode)  # a step-0 checkpoint of its weights: sample, eval
  pretrained_state(config, model, tx, mesh)   # train(): step 0 (params and EMA) from its weights
  export_workdir(config, workdir, build, out_dir)  # the EMA parameters as a DDPMPipeline folder

A folder becomes a run like any other: its weights are the parameters and
the EMA parameters of step 0, its scheduler config is config.diffusion, and
train / sample / evaluate then read the workdir as they read a trained one.
use_pretrained checks all that a run reads from the folder (config.json, whole
weights that fit it, a scheduler config) before anything is written.
"""

import functools
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

# config.model's fields that a network from a diffusers folder uses (make_pretrained_diffusion):
# every other one (ch, dropout, ...) describes gen_jax's own U-Net and would be ignored.
MODEL_FIELDS_USED = ("num_classes", "cond_drop_prob", "compute_dtype", "remat")


def use_pretrained(
  config, path: str, keep=frozenset(), scheduler_config: str | None = None, report=None
):
  """A copy of `config` with config.pretrained = path and config.diffusion set from the
  folder's scheduler config (`pretrained.diffusion_from_scheduler`), or from the file
  `scheduler_config` if given, except the dotted paths in `keep` (those overridden on the
  command line); config.pretrained_scheduler keeps the scheduler's inference-only fields
  (timestep_spacing, ...) for an export.

  Checks everything a run reads from the folder before anything is written: its config.json,
  that its weights are whole and fit it (`pretrained.check_weights`), and its scheduler config.
  A folder without one is refused (the experiment's schedule would be a guess, and the network
  would sample wrongly without a word): `scheduler_config` names the schedule it was trained
  with. An override in `keep` of a config.model field the folder's network does not use is
  refused too. report: called with one line naming the schedule used (run.py: print).
  """
  pretrained.check_config_can_use_it(config)
  ignored = sorted(
    p for p in keep if p.startswith("model.") and p.split(".")[1] not in MODEL_FIELDS_USED
  )
  if ignored:
    raise ConfigError(
      f"config.{ignored[0]} does not apply with pretrained={path}: the folder's config.json "
      f"decides the network (only the model fields {', '.join(MODEL_FIELDS_USED)} apply); drop "
      "the override"
    )
  config = config.copy_and_resolve_references()
  config.pretrained = path
  pretrained.check_weights(path)  # fails now, naming the file, before anything is written
  unet_dir = pretrained.find_unet_dir(path)
  scheduler_path = scheduler_config or pretrained.find_scheduler_config(unet_dir)
  if scheduler_path is None:
    raise ConfigError(
      f"pretrained={path} has no {pretrained.SCHEDULER_CONFIG} (looked beside {unet_dir} and in "
      "scheduler/), so the schedule its network was trained with is unknown; pass "
      "scheduler_config=PATH, the scheduler config it was trained with"
    )
  if not os.path.isfile(scheduler_path):
    raise ConfigError(f"scheduler_config={scheduler_path} is not a file")
  scheduler = pretrained.read_scheduler_config(scheduler_path)
  fields = pretrained.diffusion_from_scheduler(scheduler)
  for name, value in fields.items():
    if f"diffusion.{name}" not in keep:
      config.diffusion[name] = value
  with config.unlocked():
    config.pretrained_scheduler = pretrained.inference_fields(scheduler)
  if report is not None:
    report(f"Schedule of {path}: {describe_schedule(config.diffusion)} (from {scheduler_path})")
  return config


# A scaled grid: DDIM, at least this many steps (a recognisable picture), at least this many samples.
GRID_MIN_STEPS, GRID_MIN_SAMPLES = 10, 4


def scale_sample_grid(config, keep=frozenset(), report=None):
  """A copy of `config` whose sample grid (config.sample) costs no more network calls than the
  training's examples (train.num_steps x data.batch_size), when the experiment's grid would and
  no sample.* field is in `keep` (set on the command line). A fine-tune of a few steps from a
  large folder would otherwise spend most of its time on the experiment's grid (ddpm_cifar: 64
  samples of 1000-step DDPM, over 10 minutes at 64x64 on a CPU). The scaled grid is DDIM with
  min(T, max(GRID_MIN_STEPS, budget / samples)) steps and budget / steps samples (at least
  GRID_MIN_SAMPLES, at most the experiment's). report: called with one line saying so."""
  from gen_jax import configs
  from gen_jax.diffusion import samplers

  sample, num_timesteps = config.sample, config.diffusion.num_timesteps
  if any(p == "sample" or p.startswith("sample.") for p in keep):
    return config
  options = {k: v for k, v in (sample.get("options") or {}).items() if v is not None}
  before = samplers.describe_sampler(
    sample.sampler, sample.num_steps, num_timesteps, sample.guidance_scale, **options
  )
  budget = config.train.num_steps * config.data.batch_size
  if sample.num_samples * before["network_calls"] <= budget:
    return config
  calls_per_step = 2 if sample.guidance_scale else 1
  steps = min(num_timesteps, max(GRID_MIN_STEPS, budget // (sample.num_samples * calls_per_step)))
  num_samples = min(sample.num_samples, max(GRID_MIN_SAMPLES, budget // (steps * calls_per_step)))
  config = config.copy_and_resolve_references()
  config.sample.sampler, config.sample.num_steps, config.sample.num_samples = (
    "ddim",
    steps,
    num_samples,
  )
  configs.unset_options_not_taken(config.sample)
  if report is not None:
    report(
      f"Sample grids: {num_samples} samples of {steps}-step DDIM, scaled to this "
      f"{config.train.num_steps}-step run (the experiment's {sample.num_samples} samples of "
      f"{before['num_steps']}-step {sample.sampler} cost more than its training); set "
      "config.sample.* to choose"
    )
  return config


def describe_schedule(diffusion) -> str:
  """'linear betas 1e-4..0.02, T=1000, eps-prediction, variance small, x0 clipped' of a
  config.diffusion section."""
  if diffusion.beta_schedule == "linear":
    from gen_jax.diffusion import linear_betas

    betas = linear_betas(diffusion.num_timesteps, diffusion.beta_start, diffusion.beta_end)
    schedule = f"linear betas {float(betas[0]):g}..{float(betas[-1]):g}"
  else:
    schedule = f"{diffusion.beta_schedule} betas"
  parts = [
    schedule,
    f"T={diffusion.num_timesteps}",
    f"{diffusion.prediction}-prediction",
    f"variance {diffusion.variance}",
  ]
  if diffusion.get("zero_terminal_snr"):
    parts.append("zero terminal SNR")
  parts.append("x0 clipped" if diffusion.clip else "x0 not clipped")
  return ", ".join(parts)


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


def import_pretrained(config, workdir: str, build: BuildFn, mode: str = "sample") -> bool:
  """Writes config.pretrained's weights into `workdir` as the checkpoint of step 0 (params and
  EMA), with config.json and data_spec.json, so sample and eval read it as a trained run.
  mode: the run's ("sample" or "eval"), checked first (`pretrained.check_can_evaluate`).

  Does nothing, and returns False, if `workdir` has a checkpoint already (of the same folder:
  ConfigError if its config.json names another).
  """
  if mode == "eval":
    pretrained.check_can_evaluate(config)
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
  # The source folder's inference grid (timestep_spacing, ...), as its import recorded it.
  saved = workdir_lib.read_saved_config(workdir) or {}
  extras = saved.get("pretrained_scheduler") or {}
  path = pretrained.save(
    out_dir, spec, params, diffusion=diffusion, null_label=null_label, scheduler_extras=extras
  )
  version, installed = pretrained.diffusers_version()
  follows = "" if installed else f" (diffusers {version}'s format; diffusers is not installed)"
  print(f"Exported the EMA parameters of step {int(state.step)} to {path}{follows}")
  return path
