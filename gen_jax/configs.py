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
  model    the network; the library reads compute_dtype, remat (U-Nets),
           num_classes and cond_drop_prob (class-conditional diffusion)
  diffusion  the diffusion process (models.diffusion_config)
"""

import ml_collections

from gen_jax import checks


class ConfigError(ValueError):
  """A config value or argument that cannot work; the message names it as `config.<path>`
  (or by the argument's name) and says what would."""


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

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
  "sample.eta": (0.0, None, False),
  "sample.guidance_scale": (None, None, False),
}


def validate(config) -> None:
  """Checks every field the library reads; raises ConfigError naming the first bad one.

  Fields of sections an experiment adds (model, diffusion) are checked when
  present. The data's own fields (source, name, path) are checked where the
  data is opened (gen_jax.data, DataError), which also knows what is on disk.
  """
  if not checks.is_integer(config.seed):
    _fail("seed", "an integer", config.seed)
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
    _check_diffusion(config.diffusion)


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


def _check_model(model) -> None:
  from gen_jax import nets  # Flax: only for configs that have a model section.

  if "compute_dtype" in model and model.compute_dtype not in nets.COMPUTE_DTYPES:
    _fail("model.compute_dtype", f"one of {nets.COMPUTE_DTYPES}", model.compute_dtype)
  if "remat" in model and not isinstance(model.remat, bool):
    _fail("model.remat", "True or False", model.remat)
  if "num_classes" in model and (not checks.is_integer(model.num_classes) or model.num_classes < 0):
    _fail("model.num_classes", "an integer >= 0 (0: unconditional)", model.num_classes)
  if "cond_drop_prob" in model:
    _check_real(model, "cond_drop_prob", 0.0, 1.0, True, prefix="model.")


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
