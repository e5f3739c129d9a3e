"""Tests of gen_jax.configs: one schema, one validate() that refuses each bad field by its name."""

import math

import ml_collections
import pytest

from experiments import ddpm_digits
from gen_jax import configs

# path -> a value validate() must refuse. Every leaf of base_config() and of the model and
# diffusion fields the library reads appears here, except those listed in CHECKED_ELSEWHERE.
BAD = [
  ("seed", 1.5),
  ("seed", -1),
  ("pretrained", 3),
  ("data.batch_size", 0),
  ("data.random_flip", "yes"),
  ("train.num_steps", 0),
  ("train.num_steps", True),
  ("train.log_every", -1),
  ("train.sample_every", 0),
  ("train.checkpoint_every", 0),
  ("train.keep_checkpoints", 0),
  ("train.keep_checkpoints", -1),  # was orbax's "max_to_keep must be None or non-negative"
  ("train.ema_decay", 1.0),
  ("train.ema_warmup", 1),
  ("train.max_seconds", -1.0),
  ("train.max_seconds", math.inf),
  ("train.skip_nonfinite", "no"),
  ("optim.name", "sgd"),
  ("optim.learning_rate", 0.0),
  ("optim.warmup_steps", -1),
  ("optim.schedule", "linear"),
  ("optim.b1", 1.0),
  ("optim.b2", -0.1),
  ("optim.eps", 0.0),
  ("optim.weight_decay", -1.0),
  ("optim.grad_clip_norm", -1.0),
  ("optim.skip_grad_norm", -1.0),
  ("sample.num_steps", 0),
  ("sample.num_steps", 1001),  # more than T
  ("sample.sampler", "foo"),
  ("sample.eta", -0.5),
  ("sample.guidance_scale", math.nan),
  ("sample.batch_size", 0),
  ("sample.num_samples", 0),
  ("eval.batch_size", 0),
  ("eval.num_examples", -1),
  ("eval.num_samples", 1),
  ("eval.classifier_steps", 0),
  ("eval.ode_steps", -1),
  ("mesh.fsdp", 0),
  ("model.compute_dtype", "float16"),
  ("model.remat", "yes"),
  ("model.num_classes", -1),
  ("model.cond_drop_prob", 1.0),
  ("model.ch", 0),
  ("model.ch_mult", (1, 0)),
  ("model.num_res_blocks", 0),
  ("model.num_groups", 0),
  ("model.attn_resolutions", (-4,)),
  ("model.dropout", 1.0),
  ("diffusion.num_timesteps", 0),
  ("diffusion.beta_schedule", "quadratic"),
  ("diffusion.beta_start", -0.1),
  ("diffusion.beta_end", 1.0),
  ("diffusion.variance", "tiny"),
  ("diffusion.prediction", "score"),
  ("diffusion.clip", "no"),
  ("diffusion.zero_terminal_snr", "yes"),
]
# Read by gen_jax.data (DataError, which knows what is on disk) and by the model (the sampler).
CHECKED_ELSEWHERE = {
  "data.source",
  "data.name",
  "data.path",
  "data.tfds_data_dir",
  "data.num_workers",
}


def with_value(path, value):
  """ddpm_digits' config (it has model and diffusion sections) with one field set, any type."""
  config = ml_collections.ConfigDict(ddpm_digits.get_config().to_dict(), type_safe=False)
  *parents, last = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[last] = value
  return config


def leaves(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key


def test_every_experiment_config_as_shipped_is_valid():
  configs.validate(configs.base_config())
  configs.validate(ddpm_digits.get_config())


@pytest.mark.parametrize(("path", "value"), BAD)
def test_validate_refuses_each_bad_field_naming_it(path, value):
  with pytest.raises(configs.ConfigError) as info:
    configs.validate(with_value(path, value))
  message = str(info.value)
  assert message.startswith(f"config.{path} must be "), message
  assert repr(value) in message and "--" not in message  # the command line adds its own --


def test_every_field_of_the_schema_has_a_check():
  checked = {path for path, _ in BAD}
  schema = set(leaves(configs.base_config().to_dict()))
  assert schema - CHECKED_ELSEWHERE <= checked, sorted(schema - CHECKED_ELSEWHERE - checked)
  for section in ("model", "diffusion"):  # the fields of those sections the library reads
    assert {p for p in checked if p.startswith(section + ".")}


def test_model_settings_live_in_the_model_section():
  config = configs.base_config()
  for name in ("compute_dtype", "remat", "cond_drop_prob", "num_sample_images"):
    assert name not in config.train
  assert {"compute_dtype", "remat", "cond_drop_prob", "num_classes"} <= set(
    ddpm_digits.get_config().model
  )
  # One name for "how many samples": sample.num_samples (grid, --mode=sample), eval.num_samples.
  assert "num_samples" in config.sample and "num_samples" in config.eval


def test_check_path_names_unknown_keys_with_the_valid_ones():
  config = configs.base_config()
  configs.check_path(config, "train.num_steps")
  with pytest.raises(
    configs.ConfigError, match=r"config.train.num_stepz \(did you mean 'num_steps'"
  ):
    configs.check_path(config, "train.num_stepz")
  with pytest.raises(configs.ConfigError, match="config.seed is a value, not a section"):
    configs.check_path(config, "seed.x")


def test_zero_terminal_snr_needs_a_v_or_x0_predictor():
  config = with_value("diffusion.zero_terminal_snr", True)
  with pytest.raises(configs.ConfigError, match=r"config.diffusion.prediction must be 'v' or 'x0'"):
    configs.validate(config)
  config.diffusion.prediction = "v"
  configs.validate(config)


def test_linear_betas_may_be_left_to_scale_with_the_number_of_steps():
  config = with_value("diffusion.beta_start", None)
  config.diffusion.beta_end = None
  configs.validate(config)


@pytest.mark.parametrize(
  ("experiment", "path", "value"),
  [
    ("ddpm_toy2d", "model.width", 0),  # was a ZeroDivisionError inside Flax's initialiser
    ("ddpm_toy2d", "model.num_blocks", -1),
    ("vae_digits", "model.latent_dim", 0),
    ("vae_digits", "model.hidden", (256, 0)),
    ("vae_digits", "model.iwae_chunk", 0),
    ("vae_cifar", "model.channels", ()),
  ],
)
def test_the_other_models_sizes_are_checked_by_name(experiment, path, value):
  import importlib

  config = importlib.import_module(f"experiments.{experiment}").get_config()
  config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  config.model[path.split(".")[1]] = value
  with pytest.raises(configs.ConfigError, match=rf"^config\.{path} must be "):
    configs.validate(config)
  configs.validate(importlib.import_module(f"experiments.{experiment}").get_config())
