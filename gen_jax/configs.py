"""The config schema: every field gen_jax reads, its default, and the one check of all of them.

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
  sample   how samples are drawn: sampler, steps, guidance, how many
  eval     --mode=eval: likelihood and sample-quality settings
  mesh     how the devices are used: fsdp > 1 shards the train state (gen_jax.train.sharding)
  model    the network; the library reads compute_dtype, remat (U-Nets),
           num_classes and cond_drop_prob (class-conditional diffusion)
  diffusion  the diffusion process (models.diffusion_config; continuous time: models.process_model)
  vdm      a variational diffusion model's schedule and bound (models.vdm_config)
"""

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
  config.sample.eta = 0.0
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
  "sample.eta": (0.0, None, False),
  "sample.guidance_scale": (None, None, False),
}


def validate(config) -> None:
  """Checks every field the library reads; raises ConfigError naming the first bad one.

  Fields of sections an experiment adds (model, diffusion) are checked when
  present. The data's own fields (source, name, path) are checked where the
  data is opened (gen_jax.data, DataError), which also knows what is on disk.
  """
  if not checks.is_integer(config.seed) or config.seed < 0:
    _fail("seed", "an integer >= 0", config.seed)
  if not isinstance(config.get("pretrained", ""), str):
    _fail("pretrained", "a diffusers model folder, or '' for none", config.pretrained)
  for path in _POSITIVE_INTEGERS:
    value = _get(config, path)
    if not checks.is_integer(value) or value <= 0:
      _fail(path, "a positive integer", value)
  for path in _BOOLEANS:
    if not isinstance(_get(config, path), bool):
      _fail(path, "True or False", _get(config, path))
  for path, choices in _CHOICES.items():
    if _get(config, path) not in choices:
      _fail(path, " or ".join(repr(c) for c in choices), _get(config, path))
  for path, (low, high, open_high) in _REALS.items():
    _check_real(config, path, low, high, open_high)
  _check_optim(config.optim)
  _check_counts(config)
  if "model" in config:
    _check_model(config.model)
  if "diffusion" in config:
    from gen_jax.models import process_model  # config.diffusion.process: its family's check

    process_model.check_config(config)
    if config.diffusion.get("process", "discrete") == "discrete":
      _check_diffusion(config.diffusion)
      _check_sampler(config.sample, config.diffusion.num_timesteps)
  if "vdm" in config:
    _check_vdm(config.vdm)


def _check_optim(optim) -> None:
  if not checks.is_real(optim.learning_rate) or optim.learning_rate <= 0:
    _fail("optim.learning_rate", "a number > 0", optim.learning_rate)
  if not checks.is_real(optim.eps) or optim.eps <= 0:
    _fail("optim.eps", "a number > 0", optim.eps)
  if not checks.is_integer(optim.warmup_steps) or optim.warmup_steps < 0:
    _fail("optim.warmup_steps", "an integer >= 0", optim.warmup_steps)


def _check_counts(config) -> None:
  steps = config.sample.num_steps
  if steps is not None and (not checks.is_integer(steps) or steps <= 0):
    _fail("sample.num_steps", "a positive integer, or None for the sampler's default", steps)
  num_samples = config.eval.num_samples
  if not checks.is_integer(num_samples) or (num_samples < 2 and num_samples != 0):
    _fail("eval.num_samples", "0 (no sample quality) or at least 2", num_samples)
  if not checks.is_integer(config.eval.ode_steps) or config.eval.ode_steps < 0:
    _fail("eval.ode_steps", "0 (no ODE likelihood) or positive", config.eval.ode_steps)
  if not checks.is_integer(config.eval.num_examples) or config.eval.num_examples < 0:
    _fail("eval.num_examples", "0 (the whole split) or positive", config.eval.num_examples)


# Fields of the shipped models (MLP denoiser, U-Net, VAEs), checked where a model section has them:
# a 0 there fails deep inside Flax (a ZeroDivisionError in the initialiser) or makes an empty net.
_MODEL_POSITIVE_INTEGERS = (
  "width",
  "ch",
  "num_res_blocks",
  "num_groups",
  "latent_dim",
  "iwae_samples",
)
_MODEL_NON_NEGATIVE_INTEGERS = ("num_blocks",)
_MODEL_POSITIVE_TUPLES = ("ch_mult", "hidden", "channels", "attn_resolutions")


def _check_model_sizes(model) -> None:
  for name in _MODEL_POSITIVE_INTEGERS:
    if name in model and (not checks.is_integer(model[name]) or model[name] <= 0):
      _fail(f"model.{name}", "a positive integer", model[name])
  for name in _MODEL_NON_NEGATIVE_INTEGERS:
    if name in model and (not checks.is_integer(model[name]) or model[name] < 0):
      _fail(f"model.{name}", "an integer >= 0", model[name])
  for name in _MODEL_POSITIVE_TUPLES:
    value = model.get(name)
    if name in model and not (
      isinstance(value, tuple | list)
      and (value or name == "attn_resolutions")
      and all(checks.is_integer(v) and v > 0 for v in value)
    ):
      _fail(f"model.{name}", "a tuple of positive integers", value)
  if "iwae_chunk" in model and model.iwae_chunk is not None:
    chunk = model.iwae_chunk
    if not checks.is_integer(chunk) or chunk <= 0:
      _fail("model.iwae_chunk", "a positive integer (or None: all samples at once)", chunk)
  if "dropout" in model:
    _check_real(model, "dropout", 0.0, 1.0, True, prefix="model.")


def _check_sampler(sample, num_timesteps) -> None:
  """sample.sampler from the samplers' registry; sample.num_steps at most T (diffusion models)."""
  from gen_jax import diffusion

  if sample.sampler not in diffusion.SAMPLERS:
    _fail("sample.sampler", f"one of {tuple(diffusion.SAMPLERS)}", sample.sampler)
  steps = sample.num_steps
  if steps is not None and checks.is_integer(num_timesteps) and steps > num_timesteps:
    _fail(
      "sample.num_steps",
      f"at most config.diffusion.num_timesteps={num_timesteps} (or None for the sampler's default)",
      steps,
    )


def _check_model(model) -> None:
  from gen_jax import nets  # Flax: only for configs that have a model section.

  _check_model_sizes(model)
  if "compute_dtype" in model and model.compute_dtype not in nets.COMPUTE_DTYPES:
    _fail("model.compute_dtype", f"one of {nets.COMPUTE_DTYPES}", model.compute_dtype)
  if "remat" in model and not isinstance(model.remat, bool):
    _fail("model.remat", "True or False", model.remat)
  if "num_classes" in model and (not checks.is_integer(model.num_classes) or model.num_classes < 0):
    _fail("model.num_classes", "an integer >= 0 (0: unconditional)", model.num_classes)
  if "cond_drop_prob" in model:
    _check_real(model, "cond_drop_prob", 0.0, 1.0, True, prefix="model.")
  _check_vae_model(model)


def _check_vae_model(model) -> None:
  """The VAE and hierarchical-VAE fields (experiments vae_*, hvae_*), where present."""
  from gen_jax.vae import decoders

  if "likelihood" in model and model.likelihood not in decoders.LIKELIHOODS:
    _fail("model.likelihood", f"one of {decoders.LIKELIHOODS}", model.likelihood)
  if "num_mixtures" in model and (
    not checks.is_integer(model.num_mixtures) or model.num_mixtures < 1
  ):
    _fail("model.num_mixtures", "an integer >= 1", model.num_mixtures)
  if "binarize" in model and not isinstance(model.binarize, bool):
    _fail("model.binarize", "True or False", model.binarize)
  for name in ("iwae_samples", "width", "latent_channels", "encoder_blocks"):
    if name in model and (not checks.is_integer(model[name]) or model[name] < 1):
      _fail(f"model.{name}", "a positive integer", model[name])
  if "iwae_chunk" in model and model.iwae_chunk is not None:
    chunk = model.iwae_chunk
    if not checks.is_integer(chunk) or chunk < 1 or model.iwae_samples % chunk:
      _fail(
        "model.iwae_chunk", f"None or a divisor of model.iwae_samples={model.iwae_samples}", chunk
      )
  if "kl_warmup_steps" in model and (
    not checks.is_integer(model.kl_warmup_steps) or model.kl_warmup_steps < 0
  ):
    _fail("model.kl_warmup_steps", "an integer >= 0 (0: no warm-up)", model.kl_warmup_steps)
  if "free_bits" in model:
    _check_real(model, "free_bits", 0.0, None, False, prefix="model.")
  if "min_scale" in model:
    _check_real(model, "min_scale", 0.0, 1.0, True, prefix="model.")
    if model.min_scale <= 0:
      _fail("model.min_scale", "a number in (0, 1)", model.min_scale)
  if "temperature" in model:
    _check_real(model, "temperature", 0.0, None, False, prefix="model.")
  if "layers_per_resolution" in model and (
    not model.layers_per_resolution
    or any(not checks.is_integer(n) or n < 1 for n in model.layers_per_resolution)
  ):
    _fail("model.layers_per_resolution", "positive integers", model.layers_per_resolution)


def _check_diffusion(section) -> None:
  from gen_jax import diffusion

  if not checks.is_integer(section.num_timesteps) or section.num_timesteps <= 0:
    _fail("diffusion.num_timesteps", "a positive integer", section.num_timesteps)
  if section.beta_schedule not in ("linear", "cosine"):
    _fail("diffusion.beta_schedule", "'linear' or 'cosine'", section.beta_schedule)
  if section.beta_schedule == "linear":
    # None: improved-diffusion's scaling with T (DDPM's 1e-4 and 0.02 at T = 1000).
    for name in ("beta_start", "beta_end"):
      if section[name] is not None:
        _check_real(section, name, 0.0, 1.0, True, prefix="diffusion.")
  if not isinstance(section.zero_terminal_snr, bool):
    _fail("diffusion.zero_terminal_snr", "True or False", section.zero_terminal_snr)
  if section.zero_terminal_snr and section.prediction == "eps":
    _fail(
      "diffusion.prediction",
      "'v' or 'x0' with config.diffusion.zero_terminal_snr=True (an eps-predictor cannot give x0 "
      "where alphas_cumprod is 0)",
      section.prediction,
    )
  if section.variance not in diffusion.VARIANCES:
    _fail("diffusion.variance", f"one of {diffusion.VARIANCES}", section.variance)
  if section.prediction not in diffusion.PREDICTIONS:
    _fail("diffusion.prediction", f"one of {diffusion.PREDICTIONS}", section.prediction)
  if not isinstance(section.clip, bool):
    _fail("diffusion.clip", "True or False", section.clip)


def _check_vdm(section) -> None:
  from gen_jax.diffusion import vdm

  if section.schedule not in vdm.SCHEDULES:
    _fail("vdm.schedule", f"one of {vdm.SCHEDULES}", section.schedule)
  for name in ("gamma_min", "gamma_max"):
    _check_real(section, name, None, None, False, prefix="vdm.")
  if not section.gamma_min < section.gamma_max:
    _fail(
      "vdm.gamma_max", f"greater than config.vdm.gamma_min={section.gamma_min}", section.gamma_max
    )
  if not checks.is_integer(section.num_timesteps) or section.num_timesteps < 0:
    _fail("vdm.num_timesteps", "0 (continuous time) or a positive integer", section.num_timesteps)
  if section.interior not in ("variance", "bound"):
    _fail("vdm.interior", "'variance' or 'bound'", section.interior)
  if section.schedule == "learned" and section.interior == "variance" and section.num_timesteps:
    _fail(
      "vdm.interior",
      "'bound' with config.vdm.num_timesteps > 0 (the T-step bound depends on the schedule's "
      "interior; only the continuous one leaves it free for the variance)",
      section.interior,
    )
  if section.decoder not in vdm.DECODERS:
    _fail("vdm.decoder", f"one of {vdm.DECODERS}", section.decoder)
  if not isinstance(section.antithetic, bool):
    _fail("vdm.antithetic", "True or False", section.antithetic)
  for name in ("num_features", "eval_time_samples", "sample_steps"):
    if not checks.is_integer(section[name]) or section[name] <= 0:
      _fail(f"vdm.{name}", "a positive integer", section[name])


def _check_real(node, path, low, high, open_high, prefix="") -> None:
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
    _fail(prefix + path, want, value)


def _get(node, path):
  for part in path.split("."):
    node = node[part]
  return node


def _fail(path, want, value):
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
