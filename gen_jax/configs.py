"""The config schema: every field gen_jax reads, its default, and validate(), which checks them all.

An experiment's get_config() starts from base_config() and adds what its
model needs (`config.model`, and `config.diffusion` for diffusion models);
every field can then be overridden (on the command line as
--config.<path>=value). `validate(config)` checks every field the library
reads, the experiment's sections included, and raises ConfigError naming the
field as `config.<path>`; train, sample and evaluate call it once, first.

Sections and the fields an experiment may add:
  data     where the examples come from (gen_jax.data reads it)
  train    the training loop: length, intervals, EMA, time budget, faults
  optim    optimizer and learning-rate schedule
  sample   how samples are drawn: sampler, steps, guidance, how many; sample.options holds
           every option of the registered samplers (diffusion.SAMPLERS), None for the
           sampler's default: --config.sample.options.s_churn=10 with sampler heun
  eval     --mode=eval: likelihood and sample-quality settings
  mesh     how the devices are used: fsdp > 1 shards the train state (gen_jax.train.sharding)
  model    the network; the library reads compute_dtype, remat (U-Nets),
           num_classes and cond_drop_prob (class-conditional diffusion); a U-Net's
           fields come from unet_config()
  diffusion  the diffusion process (models.diffusion_config; continuous time, config.diffusion.process:
             models.process_model)
  vdm      a variational diffusion model's schedule and bound (models.vdm_config)

validate checks the sections of base_config() here and hands model, diffusion and vdm to
the model family that owns them (gen_jax.models.check_config: each family's check_config).

Longer than the house's ~400 lines: the schema and its one validate() read best together; the
model sections' checks already live with their families (gen_jax.models.*.check_config).
"""

import copy
from typing import NoReturn

import ml_collections

from gen_jax import checks


class ConfigError(ValueError):
  """A config value or argument that cannot work; the message names it as `config.<path>`
  (or by the argument's name) and says what would."""


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # A diffusers UNet2DModel folder whose network and weights a U-Net diffusion experiment
  # starts from (gen_jax.pretrained; run.py --pretrained=DIR); "" for the experiment's own.
  config.pretrained = ""

  config.data = ml_collections.ConfigDict()
  config.data.source = "digits"  # tfds | digits | toy2d | npz | folder
  config.data.name = ""  # TFDS name, or the toy2d data set
  config.data.path = ""  # .npz file or image folder
  config.data.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.batch_size = 128  # global, over all devices
  config.data.random_flip = False
  config.data.num_workers = 0  # tfds: processes that read and decode records; 0: none

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 10_000
  config.train.max_seconds = 0.0  # wall-clock budget of the training loop (per launch); 0: none
  config.train.log_every = 100
  config.train.sample_every = 5_000
  config.train.checkpoint_every = 5_000
  config.train.keep_checkpoints = 3
  config.train.ema_decay = 0.999
  config.train.ema_warmup = True  # decay min(ema_decay, (1+n)/(10+n))
  config.train.skip_nonfinite = False  # skip (and count) updates with NaN/inf gradients

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"  # adam | adamw
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 0
  config.optim.schedule = "constant"  # constant | cosine (to 0 at num_steps)
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 1.0  # 0 disables clipping
  config.optim.skip_grad_norm = 0.0  # skip updates whose gradient norm reaches this (VDVAE); 0: off

  config.sample = ml_collections.ConfigDict()
  config.sample.sampler = "ddpm"  # ddpm | ddim | respaced | dpm++2m | heun
  config.sample.num_steps = ml_collections.FieldReference(None, field_type=int)
  config.sample.options = sampler_options()
  config.sample.guidance_scale = 0.0  # classifier-free guidance w (conditional models)
  config.sample.batch_size = 256  # samples drawn per jitted call
  config.sample.num_samples = 64  # the grid drawn while training; --mode=sample's default

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 128
  config.eval.num_examples = 0  # likelihood on the first N test examples; 0: all
  config.eval.num_samples = 1000  # sample quality from N samples; 0: skip it
  config.eval.classifier_steps = 2000  # training steps of the evaluation classifier
  config.eval.ode_steps = 100  # diffusion on images: ODE likelihood steps; 0: skip it

  config.mesh = ml_collections.ConfigDict()
  config.mesh.fsdp = (
    1  # shard params, grads, optimizer state, EMA this many ways (gen_jax.train.sharding)
  )
  return config


def sampler_options() -> ml_collections.ConfigDict:
  """config.sample.options: every option particular to a registered sampler
  (`diffusion.SAMPLERS[name].options`), each None (the sampler's own default) and typed as
  that default, so that --config.sample.options.s_churn=10 parses as a float. validate
  refuses a set option that config.sample.sampler does not take."""
  from gen_jax.diffusion import samplers  # JAX, not Flax

  options = ml_collections.ConfigDict()
  for spec in samplers.SAMPLERS.values():
    for name, default in spec.options.items():
      if name not in options:
        options[name] = ml_collections.config_dict.placeholder(type(default))
  return options


def unet_config(
  *,
  ch: int,
  ch_mult: tuple[int, ...],
  num_res_blocks: int,
  attn_resolutions: tuple[int, ...],
  dropout: float,
  num_groups: int,
  num_classes: int | None = 0,
  cond_drop_prob: float = 0.1,
  compute_dtype: str = "float32",
  remat: bool = False,
) -> ml_collections.ConfigDict:
  """The `config.model` section of a U-Net experiment (nets.unet_from_config reads it).

  ch: base channels, multiplied per resolution by ch_mult (len(ch_mult) resolutions, each
  halving the last's); num_res_blocks per resolution; attention at the resolutions (image
  sizes) of attn_resolutions; dropout in the residual blocks; num_groups of GroupNorm.
  num_classes: K > 0 makes a DDPM class-conditional with classifier-free guidance, the label
  dropped to the null class with cond_drop_prob in training; None leaves both fields out (a
  network that takes no labels, the VDM's). compute_dtype: "float32" or "bfloat16"
  (convolutions and matmuls; params stay float32); remat: jax.checkpoint the blocks (less
  memory, more compute).
  """
  model = ml_collections.ConfigDict(
    dict(
      ch=ch,
      ch_mult=tuple(ch_mult),
      num_res_blocks=num_res_blocks,
      attn_resolutions=tuple(attn_resolutions),
      dropout=dropout,
      num_groups=num_groups,
    )
  )
  if num_classes is not None:
    model.num_classes = num_classes
    model.cond_drop_prob = cond_drop_prob
  model.compute_dtype = compute_dtype
  model.remat = remat
  return model


# Fields renamed in 0.2, old dotted path -> new: a workdir's config.json written before is read
# with the new names (upgrade_saved_config); run.py takes the old flag for one release.
RENAMED = {"sample.eta": "sample.options.eta"}


def upgrade_saved_config(saved: dict) -> dict:
  """A workdir's config.json contents (nested dicts) as this version names its fields.

  sample.eta (before 0.2) becomes sample.options.eta where the saved sampler takes eta (ddim);
  for the others it never applied and is dropped, so that validate does not refuse it.
  """
  from gen_jax.diffusion import samplers

  saved = copy.deepcopy(saved)
  sample = saved.get("sample")
  if isinstance(sample, dict) and "eta" in sample:
    eta = sample.pop("eta")
    spec = samplers.SAMPLERS.get(sample.get("sampler"))
    if spec is not None and "eta" in spec.options and isinstance(sample.get("options", {}), dict):
      sample.setdefault("options", {}).setdefault("eta", eta)
  return saved


def unset_options_not_taken(sample, keep=frozenset()) -> None:
  """Sets each of sample.options that sample.sampler does not take to None (its default),
  except the paths in keep ("sample.options.eta": set on the command line). For a workdir's
  saved options when the command line asks for another sampler (workdir.with_saved_config):
  ddim's eta does not follow to --config.sample.sampler=heun, where validate would refuse it;
  nor to a process sampler's name (euler, process_heun: diffusion.solvers.PROCESS_SAMPLERS)."""
  from gen_jax.diffusion import samplers, solvers

  spec = samplers.SAMPLERS.get(sample.sampler)
  if spec is None:
    try:
      name = solvers.process_sampler_name(sample.sampler, own=samplers.SAMPLERS)
    except ValueError:  # unknown: validate names it
      name = None
    spec = solvers.PROCESS_SAMPLERS.get(name)
  for name in sample.get("options", {}):
    if spec is not None and name not in spec.options and f"sample.options.{name}" not in keep:
      sample.options[name] = None


# ----------------------------------------------------------------------------
# validate
# ----------------------------------------------------------------------------

_POSITIVE_INTEGERS = (
  "data.batch_size",
  "train.num_steps",
  "train.log_every",
  "train.sample_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "sample.batch_size",
  "sample.num_samples",
  "eval.batch_size",
  "eval.classifier_steps",
  "mesh.fsdp",
)
_BOOLEANS = ("data.random_flip", "train.ema_warmup", "train.skip_nonfinite")
_CHOICES = {"optim.name": ("adam", "adamw"), "optim.schedule": ("constant", "cosine")}
# path -> (low, high, whether high is excluded): finite reals in that range.
_REALS = {
  "train.ema_decay": (0.0, 1.0, True),
  "train.max_seconds": (0.0, None, False),
  "optim.b1": (0.0, 1.0, True),
  "optim.b2": (0.0, 1.0, True),
  "optim.weight_decay": (0.0, None, False),
  "optim.grad_clip_norm": (0.0, None, False),
  "optim.skip_grad_norm": (0.0, None, False),
  "sample.guidance_scale": (None, None, False),
}


def validate(config) -> None:
  """Checks every field the library reads; raises ConfigError naming the first bad one.

  The sections of base_config() are checked here; model, diffusion and vdm by the model
  family that owns them (gen_jax.models.check_config), when present. The data's own fields
  (source, name, path) are checked where the data is opened (gen_jax.data, DataError), which
  also knows what is on disk; whether the batch sizes divide over the devices where the
  devices are known (train.sharding.check_batch_size).
  """
  if not checks.is_integer(config.seed) or config.seed < 0:
    fail("seed", "an integer >= 0", config.seed)
  if not isinstance(config.get("pretrained", ""), str):
    fail("pretrained", "a diffusers model folder, or '' for none", config.pretrained)
  for path in _POSITIVE_INTEGERS:
    value = _get(config, path)
    if not checks.is_integer(value) or value <= 0:
      fail(path, "a positive integer", value)
  for path in _BOOLEANS:
    if not isinstance(_get(config, path), bool):
      fail(path, "True or False", _get(config, path))
  for path, choices in _CHOICES.items():
    if _get(config, path) not in choices:
      fail(path, " or ".join(repr(c) for c in choices), _get(config, path))
  for path, (low, high, open_high) in _REALS.items():
    check_real(config, path, low, high, open_high=open_high)
  _check_optim(config.optim)
  _check_counts(config)
  _check_sample_options(config)
  if any(section in config for section in ("model", "diffusion", "vdm")):
    from gen_jax import models  # Flax: only for configs that have a model

    models.check_config(config)


def _check_optim(optim) -> None:
  if not checks.is_real(optim.learning_rate) or optim.learning_rate <= 0:
    fail("optim.learning_rate", "a number > 0", optim.learning_rate)
  if not checks.is_real(optim.eps) or optim.eps <= 0:
    fail("optim.eps", "a number > 0", optim.eps)
  if not checks.is_integer(optim.warmup_steps) or optim.warmup_steps < 0:
    fail("optim.warmup_steps", "an integer >= 0", optim.warmup_steps)


def _check_counts(config) -> None:
  steps = config.sample.num_steps
  if steps is not None and (not checks.is_integer(steps) or steps <= 0):
    fail("sample.num_steps", "a positive integer, or None for the sampler's default", steps)
  num_samples = config.eval.num_samples
  if not checks.is_integer(num_samples) or (num_samples < 2 and num_samples != 0):
    fail("eval.num_samples", "0 (no sample quality) or at least 2", num_samples)
  if not checks.is_integer(config.eval.ode_steps) or config.eval.ode_steps < 0:
    fail("eval.ode_steps", "0 (no ODE likelihood) or positive", config.eval.ode_steps)
  if not checks.is_integer(config.eval.num_examples) or config.eval.num_examples < 0:
    fail("eval.num_examples", "0 (the whole split) or positive", config.eval.num_examples)


def _check_sample_options(config) -> None:
  """Each set (not None) config.sample.options.<name> must be an option of config.sample.sampler
  and one of the values its registry row allows (`domains`), in the registry the config's model
  samples with: a continuous config.diffusion.process, diffusion.solvers.PROCESS_SAMPLERS; a
  DDPM, samplers.SAMPLERS, or PROCESS_SAMPLERS for a name only that has (euler,
  "process_heun": `solvers.process_sampler_name`); a VDM, PROCESS_SAMPLERS for those names (its
  ancestral "ddpm" takes no option: models.vdm_model checks it)."""
  from gen_jax.diffusion import samplers, solvers

  sample = config.sample
  for old, new in RENAMED.items():
    if old.startswith("sample.") and old.split(".", 1)[1] in sample:
      raise ConfigError(f"config.{old} is now config.{new} (renamed in gen_jax 0.2); set that")
  if "diffusion" in config and config.diffusion.get("process", "discrete") != "discrete":
    own = ()
  elif "vdm" in config and "diffusion" not in config:
    own = ("ddpm",)
  else:
    own = samplers.SAMPLERS
  try:
    name = solvers.process_sampler_name(sample.sampler, own=own)
  except ValueError:  # an unknown sampler: refused where a model samples (models.check_config)
    return
  if name is not None:
    spec = solvers.PROCESS_SAMPLERS[name]
  elif sample.sampler in samplers.SAMPLERS and "vdm" not in config:
    spec = samplers.SAMPLERS[sample.sampler]
  else:
    return
  for option, value in sample.get("options", {}).items():
    if value is None:
      continue
    if option not in spec.options:
      takes = ", ".join(spec.options) or "none"
      fail(
        f"sample.options.{option}",
        f"None: config.sample.sampler={sample.sampler!r} does not take it (its options: {takes})",
        value,
      )
    want, allows = spec.domains.get(option, ("", lambda _: True))
    if not allows(value):
      fail(f"sample.options.{option}", want, value)


def check_real(node, path, low=None, high=None, *, open_high=False, prefix="") -> None:
  """ConfigError naming config.{prefix}{path} unless node's value at `path` is a finite real
  in [low, high] ([low, high) with open_high; None: no bound)."""
  value = _get(node, path)
  if (
    not checks.is_real(value)
    or (low is not None and value < low)
    or (high is not None and (value >= high if open_high else value > high))
  ):
    if low is not None and high is not None:
      want = f"a number in [{low:g}, {high:g}{')' if open_high else ']'}"
    elif low is not None:
      want = f"a finite number >= {low:g}"
    else:
      want = "a finite number"
    fail(prefix + path, want, value)


def _get(node, path):
  for part in path.split("."):
    node = node[part]
  return node


def fail(path: str, want: str, value) -> NoReturn:
  """Raises ConfigError("config.{path} must be {want}, got {value!r}"): every check's message."""
  raise ConfigError(f"config.{path} must be {want}, got {value!r}")


def check_path(config, path: str) -> None:
  """Raises ConfigError, with the valid keys and a close match, unless `path` (dotted, without
  the leading "config.") names a field of `config`: an override that names no field."""
  import difflib

  node, walked = config, "config"
  for part in path.split("."):
    if not hasattr(node, "keys"):
      raise ConfigError(f"unknown config key {walked}.{part}: {walked} is a value, not a section")
    if part not in node:
      valid = sorted(node.keys())
      close = difflib.get_close_matches(part, valid, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(
        f"unknown config key {walked}.{part}{hint}; valid keys of {walked}: {', '.join(valid)}"
      )
    node, walked = node[part], f"{walked}.{part}"


ABSENT = "<absent>"


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
  """(dotted key, old value, new value), sorted by key, for each leaf where two configs as JSON
  trees (nested dicts) differ; ABSENT on a side without the key. The one config diff: resumes
  against config.json (train.resume), processes against their peers (runtime.distributed)."""

  def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        out.update(flatten(value, f"{prefix}{key}."))
      else:
        out[f"{prefix}{key}"] = value
    return out

  before, after = flatten(old), flatten(new)
  return [
    (key, before.get(key, ABSENT), after.get(key, ABSENT))
    for key in sorted(set(before) | set(after))
    if before.get(key, ABSENT) != after.get(key, ABSENT)
  ]
