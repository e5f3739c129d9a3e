"""A trained model from its workdir, in one call: load_trained.

  trained = load_trained("runs/ddpm_digits-20261205-101500")   # EMA parameters, newest step
  model = trained.model
  x = diffusion.ddim_sample(key, trained.model_fn, model.schedule, (16, 8, 8, 1), num_steps=50,
                            clip=model.clip, prediction=model.prediction)

The model is rebuilt by the gen_jax.models builder that trained it: training records its name in
workdir/builder.txt (record_builder); a workdir written before gen_jax 0.2 has only
experiment.txt, whose shipped experiments map to their builders here (EXPERIMENT_BUILDERS). The
config is the workdir's config.json, the example shape its data_spec.json, and the parameters come
from the checkpoint through gen_jax.train.checkpoint, restored onto one CPU device whatever mesh
the run trained on. No experiments/ module and no sys.path change is needed.
"""

import dataclasses
import numbers
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections

from gen_jax.configs import ConfigError
from gen_jax.train import checkpoint
from gen_jax.train import step as step_lib
from gen_jax.train import workdir as workdir_lib

MODELS = "gen_jax.models"
PARAMS = ("ema", "raw")

# The shipped experiments (experiments/<name>.py) -> the gen_jax.models builder each binds as its
# `build`: how load_trained rebuilds the model of a workdir that has experiment.txt and no
# builder.txt (trained before gen_jax 0.2). mle_toy runs itself and has no builder.
EXPERIMENT_BUILDERS = {
  "ddpm_cifar": "make_unet_diffusion",
  "ddpm_digits": "make_unet_diffusion",
  "ddpm_mnist": "make_unet_diffusion",
  "ddpm_toy2d": "make_mlp_diffusion",
  "edm_cifar": "make_unet_diffusion",
  "edm_digits": "make_unet_diffusion",
  "fm_cifar": "make_unet_diffusion",
  "fm_digits": "make_unet_diffusion",
  "fm_toy2d": "make_mlp_diffusion",
  "hvae_cifar": "make_hvae",
  "hvae_digits": "make_hvae",
  "vae_cifar": "make_conv_vae",
  "vae_digits": "make_mlp_vae",
  "vae_mnist": "make_mlp_vae",
  "vdm_cifar": "make_unet_vdm",
  "vdm_digits": "make_unet_vdm",
}


class VAEFunctions(NamedTuple):
  """A one-layer VAE's networks with bound parameters, as gen_jax.vae's bounds take them:
  `vae.elbo(key, x, *fns)`, `vae.iwae_bound(key, x, *fns, num_samples)`.

  encode(x (B, *example_shape)) -> (mean, logvar), each (B, latent_dim);
  log_likelihood(x (B, *example_shape), z (B, latent_dim)) -> log p(x | z), (B,).
  """

  encode: Callable
  log_likelihood: Callable


@dataclasses.dataclass(frozen=True)
class Trained:
  """A trained model, its parameters and how it was trained (what load_trained returns).

  Attributes:
    model: the gen_jax.models model (DiffusionModel, VDMModel, VAEModel, HVAEModel).
    params: its EMA or raw parameters (load_trained's `params`), on one CPU device.
    config: the workdir's config.json, the config the run was trained with (lists as tuples).
    step: the checkpoint's step (updates applied).
    workdir: where they were read.
  """

  model: Any
  params: Any
  config: ml_collections.ConfigDict
  step: int
  workdir: str

  @property
  def model_fn(self):
    """The network with `params` bound, as the model family's math takes it:

    DiffusionModel: model_fn(x_t (B, ...), t (B,) int32) -> the prediction of
      `model.prediction` (eps | x0 | v), what the samplers take (`diffusion.ddim_sample(key,
      model_fn, model.schedule, shape, prediction=model.prediction, clip=model.clip)`); for a
      class-conditional model, the null class (`model.guided_model_fn` guides).
    ProcessDiffusionModel (a continuous config.diffusion.process): model_fn(x_t (B, ...), t (B,))
      -> the prediction of `model.prediction` at the process's time t, what
      `diffusion.solvers`' samplers take with `model.process`.
    VDMModel: eps_fn(z_t (B, ...), gamma_t (B,)) -> eps_hat, what `diffusion.vdm.sample` and
      `vdm_terms` take.
    VAEModel: VAEFunctions(encode, log_likelihood), what `vae.elbo` and `vae.iwae_bound` take.
    HVAEModel: posterior_pass(x (B, ...), key) -> (log p(x | z) (B,), layers): one top-down
      pass through the posterior, what `vae.hvae.elbo` and `log_importance_weight` take.
    """
    from gen_jax import models  # the networks only where they are used

    model, params = self.model, self.params
    if isinstance(model, (models.DiffusionModel, models.ProcessDiffusionModel)):
      return model.model_fn(params)
    if isinstance(model, models.VDMModel):
      return model.eps_fn(params)
    # A VAE's own closures, the ones its loss and evaluate call: exactly the model's networks.
    if isinstance(model, models.VAEModel):
      return VAEFunctions(model._encode_fn(params), model._log_likelihood_fn(params))
    if isinstance(model, models.HVAEModel):
      return lambda x, key: model._pass(params, x, key)
    raise TypeError(
      f"model_fn: no network function is known for {type(model).__name__}; use trained.model "
      "with trained.params"
    )


def load_trained(
  workdir: str | os.PathLike,
  *,
  params: str = "ema",
  step: int | None = None,
  build: Callable[[ml_collections.ConfigDict, tuple], Any] | None = None,
) -> Trained:
  """The model trained in `workdir`, with its parameters and config.

  params: "ema" (the exponential moving average, what sampling and evaluation use) or "raw"
    (the optimizer's parameters).
  step: the checkpoint to read (one of workdir/checkpoints/<step>); None: the newest readable
    one (an unreadable newer step is skipped with a warning, as --mode=sample does).
  build: build(config, example_shape) -> model, for a workdir that records no gen_jax.models
    builder (a model of your own, or a run trained before gen_jax 0.2 outside the shipped
    experiments); default: the builder the workdir records (builder.txt, else experiment.txt).

  Raises NoCheckpointError (no such workdir, no checkpoint, no such step), ConfigError (no
  config.json, a builder that cannot be resolved: pass build=), UnreadableCheckpointError,
  ValueError for `params` or `step` out of range.
  """
  if params not in PARAMS:
    raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
  if step is not None and (
    isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0
  ):
    raise ValueError(f"step must be None (the newest) or an integer >= 0, got {step!r}")
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise checkpoint.NoCheckpointError(f"workdir={workdir} does not exist; train first")
  checkpoint.require_checkpoint(workdir)
  saved = workdir_lib.read_saved_config(workdir)
  if saved is None:
    raise ConfigError(
      f"workdir={workdir} has no {workdir_lib.CONFIG_FILE}: the config its model was trained "
      "with is unknown; train with gen_jax.train.train, which writes it"
    )
  config = ml_collections.ConfigDict(_lists_as_tuples(saved))
  _, example_shape = workdir_lib.read_data_spec(workdir)
  model = (build or resolve_builder(workdir))(config, example_shape)
  if step is not None and int(step) not in checkpoint.saved_steps(workdir):
    raise checkpoint.NoCheckpointError(
      f"step={step}: workdir={workdir} has checkpoints at steps {checkpoint.saved_steps(workdir)}"
    )
  state = _restore(workdir, config, model, None if step is None else int(step))
  return Trained(
    model=model,
    params=state.ema_params if params == "ema" else state.params,
    config=config,
    step=int(state.step),
    workdir=workdir,
  )


def _restore(workdir: str, config, model, step: int | None) -> step_lib.TrainState:
  """The train state of checkpoint `step` (None: the newest readable) on one CPU device."""
  tx, _ = step_lib.train_step_for(config, model)  # the optimizer state's structure
  abstract = jax.eval_shape(lambda key: step_lib.init_state(model, tx, key), jax.random.key(0))
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=cpu), abstract)
  manager = checkpoint.manager(workdir, max_to_keep=None, create=False)
  try:
    return checkpoint.restore(manager, abstract, step)
  finally:
    manager.close()


def _lists_as_tuples(value):
  """config.json's lists back as the tuples the configs hold (JSON has no tuples)."""
  if isinstance(value, dict):
    return {key: _lists_as_tuples(v) for key, v in value.items()}
  if isinstance(value, list):
    return tuple(_lists_as_tuples(v) for v in value)
  return value


def builder_name(build) -> str | None:
  """What builder.txt records of `build`: "gen_jax.models.<name>" for a gen_jax.models builder,
  else "<module>.<qualname>" (recorded, but load_trained refuses it), None if it has no name."""
  from gen_jax import models

  name, module = getattr(build, "__qualname__", None), getattr(build, "__module__", None)
  if name is None or module is None:
    return None
  if name in models.__all__ and getattr(models, name) is build:
    return f"{MODELS}.{name}"
  return f"{module}.{name}"


def record_builder(workdir: str, build) -> None:
  """Writes workdir/builder.txt, the name of the builder that made the run's model."""
  name = builder_name(build)
  if name is not None:
    workdir_lib.write_builder(workdir, name)


def resolve_builder(workdir: str) -> Callable:
  """The gen_jax.models builder that `workdir` records (builder.txt, else the shipped
  experiment of experiment.txt); ConfigError saying to pass build= if there is none. Only names
  in gen_jax.models are imported."""
  from gen_jax import models

  recorded = _read_line(workdir, workdir_lib.BUILDER_FILE)
  if recorded is None:
    experiment = _read_line(workdir, workdir_lib.EXPERIMENT_FILE)
    if experiment not in EXPERIMENT_BUILDERS:
      where = f"its experiment {experiment!r} is no shipped one" if experiment else "none"
      raise ConfigError(
        f"workdir={workdir} records no gen_jax.models builder ({workdir_lib.BUILDER_FILE}: none; "
        f"{workdir_lib.EXPERIMENT_FILE}: {where}); pass build=, e.g. "
        "build=gen_jax.models.make_unet_diffusion"
      )
    recorded = f"{MODELS}.{EXPERIMENT_BUILDERS[experiment]}"
  prefix, _, name = recorded.rpartition(".")
  if prefix != MODELS or name not in models.__all__ or not name.startswith("make_"):
    raise ConfigError(
      f"workdir={workdir} records the builder {recorded!r}, which is no gen_jax.models builder; "
      "pass build= (the function that built its model)"
    )
  return getattr(models, name)


def _read_line(workdir: str, filename: str) -> str | None:
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return f.read().strip() or None
