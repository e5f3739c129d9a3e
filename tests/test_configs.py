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
  ("sample.options.eta", -0.5),  # ddpm_digits samples with ddim, which takes eta
  ("sample.options.s_churn", 10.0),  # ... and not Heun's churn
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
  ("diffusion.num_timesteps", 1),  # was an 11-frame traceback from the builder
  ("diffusion.beta_schedule", "quadratic"),
  ("diffusion.beta_start", -0.1),
  ("diffusion.beta_end", 1.0),
  ("diffusion.variance", "tiny"),
  ("diffusion.prediction", "score"),
  ("diffusion.clip", "no"),
  ("diffusion.zero_terminal_snr", "yes"),
]
# Read by gen_jax.data (DataError, which knows what is on disk); the sampler options have their
# own test below, from the samplers' registry.
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
  schema = {
    p for p in leaves(configs.base_config().to_dict()) if not p.startswith("sample.options.")
  }
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


# ----------------------------------------------------------------------------
# config.sample.options: from the samplers' registry
# ----------------------------------------------------------------------------


def test_sample_options_are_the_registry_s_with_the_sampler_s_defaults():
  from gen_jax import diffusion

  options = configs.base_config().sample.options
  registered = {o for spec in diffusion.SAMPLERS.values() for o in spec.options}
  assert set(options) == registered and {"eta", "variance", "s_churn", "rho"} <= registered
  assert all(value is None for value in options.values())  # None: the sampler's own default


def sampler_config(sampler, **options):
  config = with_value("sample.sampler", sampler)
  config.diffusion.num_timesteps = 50
  config.sample.num_steps = None
  for name, value in options.items():
    config.sample.options[name] = value
  return config


def _registered_options():
  from gen_jax import diffusion

  return [(n, o) for n, spec in diffusion.SAMPLERS.items() for o in spec.options]


@pytest.mark.parametrize(("sampler", "option"), _registered_options())
def test_each_sampler_option_is_taken_and_its_values_checked(sampler, option):
  from gen_jax import diffusion

  default = diffusion.SAMPLERS[sampler].options[option]
  configs.validate(sampler_config(sampler, **{option: default}))
  bad = "tiny" if isinstance(default, str) else -1.0
  with pytest.raises(configs.ConfigError) as info:
    configs.validate(sampler_config(sampler, **{option: bad}))
  assert str(info.value).startswith(f"config.sample.options.{option} must be "), info.value
  assert repr(bad) in str(info.value)


def test_an_option_the_sampler_does_not_take_is_refused_by_name():
  with pytest.raises(configs.ConfigError) as info:
    configs.validate(sampler_config("ddim", s_churn=10.0))
  assert str(info.value) == (
    "config.sample.options.s_churn must be None: config.sample.sampler='ddim' does not take it "
    "(its options: eta), got 10.0"
  )
  with pytest.raises(configs.ConfigError, match=r"its options: none\), got 0.5"):
    configs.validate(sampler_config("dpm++2m", eta=0.5))
  configs.validate(sampler_config("heun", s_churn=10.0, s_tmax=math.inf, rho=3.0))


def test_sample_eta_is_refused_with_its_new_name():
  config = with_value("sample.eta", 0.5)
  with pytest.raises(
    configs.ConfigError, match=r"^config.sample.eta is now config.sample.options.eta"
  ):
    configs.validate(config)


def test_a_saved_config_from_before_the_options_is_read_with_them():
  old = {"seed": 0, "sample": {"sampler": "ddim", "eta": 0.5, "num_steps": 10}}
  assert configs.upgrade_saved_config(old) == {
    "seed": 0,
    "sample": {"sampler": "ddim", "num_steps": 10, "options": {"eta": 0.5}},
  }
  assert old["sample"]["eta"] == 0.5  # a copy, the argument as it was
  # eta never applied to the other samplers: dropped, not refused by validate afterwards.
  assert configs.upgrade_saved_config({"sample": {"sampler": "ddpm", "eta": 0.0}}) == {
    "sample": {"sampler": "ddpm"}
  }
  new = {"sample": {"sampler": "heun", "options": {"s_churn": 1.0}}}
  assert configs.upgrade_saved_config(new) == new


# ----------------------------------------------------------------------------
# The diffusion section against the sampler: refused at start-up, not in the builder
# ----------------------------------------------------------------------------


def test_one_timestep_is_refused_by_validate_not_by_the_builder():
  """T = 1 is no diffusion: one level cannot be both the data's (the decoder's small variance)
  and the prior's N(0, I). validate refuses it, so run.py shows one line (tests/test_cli.py)."""
  config = with_value("diffusion.num_timesteps", 1)
  config.sample.num_steps = 1
  with pytest.raises(configs.ConfigError) as info:
    configs.validate(config)
  assert str(info.value) == "config.diffusion.num_timesteps must be an integer >= 2, got 1"


def test_a_sampler_default_steps_above_t_are_refused():
  config = sampler_config("dpm++2m")  # 20 steps by default
  config.diffusion.num_timesteps = 10
  with pytest.raises(configs.ConfigError, match=r"^config.sample.num_steps must be set to at most"):
    configs.validate(config)
  config.sample.num_steps = 10
  configs.validate(config)
  config.sample.sampler = "ddpm"  # all T whatever num_steps, but num_steps > T is still refused
  config.sample.num_steps = 11
  with pytest.raises(configs.ConfigError, match=r"^config.sample.num_steps must be at most"):
    configs.validate(config)


def test_linear_betas_out_of_order_are_refused_naming_the_field():
  config = with_value("diffusion.beta_start", 0.1)
  config.diffusion.beta_end = 0.01
  with pytest.raises(configs.ConfigError, match=r"^config.diffusion.beta_start must be in \(0, "):
    configs.validate(config)
  config = with_value("diffusion.beta_schedule", "cosine")
  config.diffusion.beta_start = 1e-4
  with pytest.raises(configs.ConfigError, match=r"^config.diffusion.beta_start must be None"):
    configs.validate(config)


@pytest.mark.parametrize(
  ("experiment", "path", "value"),
  [
    ("vdm_digits", "vdm.gamma_max", -20.0),
    ("vdm_digits", "model.ch", 0),
    ("vdm_digits", "sample.sampler", "respaced"),  # ddim: its process view
    ("vdm_digits", "sample.options.variance", "large"),
    ("hvae_digits", "model.layers_per_resolution", (1, 0, 2)),
    ("hvae_digits", "model.min_scale", 0.0),
    ("hvae_digits", "model.iwae_chunk", 7),
    ("vae_digits", "model.likelihood", "poisson"),
  ],
)
def test_each_model_family_checks_its_own_sections(experiment, path, value):
  import importlib

  config = importlib.import_module(f"experiments.{experiment}").get_config()
  config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  *parents, last = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[last] = value
  with pytest.raises(configs.ConfigError, match=rf"^config\.{path} must be "):
    configs.validate(config)


def test_the_builders_share_validate_s_check():
  """One check per field: diffusion_betas (the builders' way in) runs validate's, ConfigError."""
  from gen_jax import models

  section = models.diffusion_config(num_timesteps=1)
  with pytest.raises(configs.ConfigError, match="num_timesteps must be an integer >= 2"):
    models.diffusion_betas(section)


def test_unet_config_holds_the_shared_fields():
  model = configs.unet_config(
    ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, num_groups=8
  )
  assert model.to_dict() == dict(
    ch=32,
    ch_mult=(1, 1),
    num_res_blocks=1,
    attn_resolutions=(4,),
    dropout=0.0,
    num_groups=8,
    num_classes=0,
    cond_drop_prob=0.1,
    compute_dtype="float32",
    remat=False,
  )
  no_labels = configs.unet_config(
    ch=32,
    ch_mult=[1],
    num_res_blocks=1,
    attn_resolutions=[],
    dropout=0.0,
    num_groups=8,
    num_classes=None,
  )
  assert "num_classes" not in no_labels and "cond_drop_prob" not in no_labels
  assert no_labels.ch_mult == (1,)


def test_a_workdir_written_before_the_options_samples_with_its_eta(tmp_path):
  """config.json of 0.1 has sample.eta: sampling and resuming read it as sample.options.eta."""
  import json

  from gen_jax.train import workdir as workdir_lib

  saved = json.loads(ddpm_digits.get_config().to_json())
  del saved["sample"]["options"]
  saved["sample"]["eta"] = 0.7
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = workdir_lib.with_saved_config(ddpm_digits.get_config(), str(tmp_path))
  assert config.sample.options.eta == 0.7 and "eta" not in config.sample
  configs.validate(config)


def test_another_sampler_on_the_command_line_leaves_the_saved_sampler_s_options(tmp_path):
  """Saved: ddim with eta 0.5. --config.sample.sampler=heun must not inherit eta (which heun
  does not take, and which the command line cannot unset); an option given with it stays."""
  from gen_jax.train import workdir as workdir_lib

  saved = ddpm_digits.get_config()
  saved.sample.options.eta = 0.5
  (tmp_path / "config.json").write_text(saved.to_json())
  config = ddpm_digits.get_config()
  config.sample.sampler = "heun"
  config.sample.options.s_churn = 1.0
  keep = frozenset({"sample.sampler", "sample.options.s_churn"})
  merged = workdir_lib.with_saved_config(config, str(tmp_path), keep=keep)
  assert merged.sample.options.eta is None and merged.sample.options.s_churn == 1.0
  configs.validate(merged)
  same = workdir_lib.with_saved_config(ddpm_digits.get_config(), str(tmp_path))
  assert same.sample.sampler == "ddim" and same.sample.options.eta == 0.5
  # A process sampler's name (the DDPM's process view) sheds eta too; a churn it takes stays.
  config = ddpm_digits.get_config()
  config.sample.sampler = "process_heun"
  config.sample.options.s_churn = 1.0
  merged = workdir_lib.with_saved_config(config, str(tmp_path), keep=keep)
  assert merged.sample.options.eta is None and merged.sample.options.s_churn == 1.0
  configs.validate(merged)
