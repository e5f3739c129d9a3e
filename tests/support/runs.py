"""What the end-to-end tests share: run.py in a subprocess, and the tiny configs that make a run take seconds.

A tiny config is written once, as {config path: value} overrides, and used either as run.py flags
(`flags(...)`) or on an experiment's ConfigDict (`config(...)`), so a subprocess test and an in-process test of
the same tiny model cannot drift apart. Overrides given later win, as repeated `--config.*` flags do.
"""

import importlib
import importlib.util
import os
import pkgutil
import shutil
import subprocess
import sys

import pytest

import experiments

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_PY = os.path.join(REPO, "run.py")
EXPERIMENTS = sorted(
  m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_")
)
TIMEOUT = 300  # seconds, for one run.py process

# ----------------------------------------------------------------------------------------------------------------
# Tiny configs

# ddpm_toy2d's MLP denoiser, 20 diffusion steps.
TOY2D = {
  "model.width": 16,
  "model.num_blocks": 1,
  "diffusion.num_timesteps": 20,
  "data.batch_size": 8,
  "sample.num_samples": 4,
  "train.log_every": 1,
}
# The U-Net of ddpm_digits / ddpm_mnist / ddpm_cifar: one level of 8 channels, no attention.
UNET = {
  "model.ch": 8,
  "model.ch_mult": (1,),
  "model.num_res_blocks": 1,
  "model.num_groups": 4,
  "model.attn_resolutions": (),
}
# ddpm_digits' U-Net with two levels and an attention block: a round trip through every kind of layer.
DIGITS_UNET = {**UNET, "model.ch_mult": (1, 2), "model.attn_resolutions": (4,)}
# The MLP VAE of vae_digits / vae_mnist.
MLP_VAE = {
  "model.hidden": (16,),
  "model.latent_dim": 2,
  "model.iwae_samples": 4,
  "model.iwae_chunk": 2,
}
# The convolutional VAE of vae_cifar.
CONV_VAE = {
  "model.channels": (4,),
  "model.latent_dim": 2,
  "model.iwae_samples": 4,
  "model.iwae_chunk": 2,
}
# The hierarchical VAE of hvae_digits / hvae_cifar: two stochastic layers (1x1, 4x4), two logistics.
HVAE = {
  "model.width": 8,
  "model.latent_channels": 2,
  "model.resolutions": (1, 4),
  "model.layers_per_resolution": (1, 1),
  "model.encoder_blocks": 1,
  "model.num_mixtures": 2,
  "model.kl_warmup_steps": 2,
  "model.iwae_samples": 4,
  "model.iwae_chunk": 2,
}
# Two training steps of any experiment, every output written, a 2-step DDIM sampler.
TWO_STEPS = {
  "data.batch_size": 4,
  "train.num_steps": 2,
  "train.log_every": 1,
  "train.checkpoint_every": 2,
  "train.sample_every": 2,
  "sample.num_samples": 4,
  "sample.sampler": "ddim",
  "sample.num_steps": 2,
  "sample.batch_size": 4,
  "eval.batch_size": 8,
  "eval.num_examples": 8,
}

# A VDM (vdm_digits, vdm_cifar): a small learned schedule, 2 ancestral steps, 2 times per example.
VDM = {
  "vdm.num_features": 8,
  "vdm.eval_time_samples": 2,
  "sample.sampler": "ddpm",
  "sample.num_steps": 2,
}


def merged(*overrides: dict) -> dict:
  """One {path: value} dict from several; later ones win."""
  out = {}
  for o in overrides:
    out.update(o)
  return out


def flags(experiment: str, *overrides: dict) -> list[str]:
  """run.py arguments: --experiment and one --config.<path>=<value> per override."""
  return [f"--experiment={experiment}"] + [
    f"--config.{path}={value}" for path, value in merged(*overrides).items()
  ]


# run.py flags of a tiny ddpm_digits run (DIGITS_UNET, 4 samples of 2 DDIM steps, 8 evaluation examples;
# T = 50, as docs/library.md's loading block draws with 50 DDIM steps): the run that trained_digits_workdir
# trains once per session, tests/test_docs.py loads and tests/test_run.py resumes.
DIGITS_RUN = flags(
  "ddpm_digits",
  DIGITS_UNET,
  {"diffusion.num_timesteps": 50},
  {"data.batch_size": 4, "sample.num_samples": 4, "sample.num_steps": 2},
  {"train.checkpoint_every": 2, "eval.batch_size": 8, "eval.num_examples": 8},
)


def apply(config, *overrides: dict):
  """Sets each override on ConfigDict `config` in place and returns it."""
  for path, value in merged(*overrides).items():
    *sections, field = path.split(".")
    node = config
    for section in sections:
      node = node[section]
    if field not in node:
      raise KeyError(f"tiny config: {path} is no field of the config")
    node[field] = value
  return config


def config(experiment: str, *overrides: dict):
  """experiments/<experiment>.get_config() with the overrides applied."""
  return apply(importlib.import_module(f"experiments.{experiment}").get_config(), *overrides)


def tiny(config, example_shape):
  """Shrinks any experiment's config in place to a model that compiles and trains two steps in seconds."""
  m = config.model
  if "ch" in m:  # U-Net
    apply(config, UNET, {"model.attn_resolutions": (example_shape[0],)})  # keep an attention block
  elif "resolutions" in m:  # hierarchical VAE (before "width", which it also has)
    apply(config, HVAE)
  elif "width" in m:  # MLP denoiser
    apply(config, {k: v for k, v in TOY2D.items() if k.startswith("model.")})
  elif "hidden" in m:
    apply(config, MLP_VAE)
  elif "channels" in m:
    apply(config, CONV_VAE)
  else:
    raise AssertionError(
      f"tiny(): unknown model config {sorted(m.keys())}; teach tests/support/runs.py the new experiment"
    )
  if "diffusion" in config:
    config.diffusion.num_timesteps = 20
  apply(config, TWO_STEPS)
  if "vdm" in config:
    apply(config, VDM)
  return config


def load_script(relative_path: str):
  """A script of the repository (e.g. "scripts/compare_vae_diffusion.py") imported as a module."""
  name = os.path.splitext(os.path.basename(relative_path))[0]
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relative_path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def data_config(**fields):
  """A `data` config section for gen_jax.data tests: the digits, batch 32, and `fields`."""
  import ml_collections

  base = dict(
    source="digits",
    name=None,
    path=None,
    tfds_data_dir=None,
    batch_size=32,
    random_flip=False,
  )
  return ml_collections.ConfigDict(dict(base, **fields))


# ----------------------------------------------------------------------------------------------------------------
# run.py in a subprocess


def subprocess_env(cache_dir: str | None = None, fast_compile: bool = True) -> dict[str, str]:
  """The environment of a run.py process: this one's, without XLA/JAX/TFDS settings, on the CPU.

  fast_compile skips XLA's optimisation passes (tiny models: compiling is the cost); cache_dir lets the runs of
  one module (train, resume, sample, eval) share compiled programs.
  """
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "TFDS_"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  if fast_compile:
    env.update(JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  if cache_dir:
    env.update(
      JAX_COMPILATION_CACHE_DIR=str(cache_dir),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
  else:  # run.py's default cache is in the user's home: a test never writes there
    env.update(JAX_ENABLE_COMPILATION_CACHE="false")
  return env


def env_fixture(fast_compile: bool = True, cache: bool = True):
  """A module-scoped fixture giving `subprocess_env`, with a persistent compilation cache.

  The cache is the test session's (tests/conftest.py: in .pytest_cache, so the next run of the suite reuses
  the programs), or one in the session's temporary folder under `-p no:cacheprovider`. Bind the fixture to a name in a test
  module, `env = runs.env_fixture()`, and tests take `env` as an argument.
  """

  @pytest.fixture(scope="module")
  def env(request, tmp_path_factory):
    cache_dir = None
    if cache and getattr(request.config, "cache", None) is not None:
      cache_dir = request.config.cache.mkdir("jax_compilation_cache")
    elif cache:  # one per session, so that modules sharing a trained workdir share its programs too
      cache_dir = tmp_path_factory.getbasetemp() / "jax_cache"
      cache_dir.mkdir(exist_ok=True)
    return subprocess_env(cache_dir, fast_compile)

  return env


def run_py(
  env: dict,
  cwd,
  *args: str,
  extra_env: dict | None = None,
  devices: int | None = None,
  check: bool = True,
  timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess:
  """`python run.py *args` in `cwd`, output captured as text; with check, a non-zero exit fails the test.

  devices: simulate that many CPU devices (XLA_FLAGS), so the test process keeps its one device.
  """
  env = dict(env, **(extra_env or {}))
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  result = subprocess.run(
    [sys.executable, RUN_PY, *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if check:
    assert result.returncode == 0, (
      f"run.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
  return result


# ----------------------------------------------------------------------------------------------------------------
# Trained workdirs shared by the tests of a session

_TRAINED: dict[tuple[str, ...], str] = {}


def trained_workdir(env: dict, tmp_path_factory, *args: str) -> str:
  """The workdir of `python run.py *args --workdir=...`, trained once per test session (whichever module
  asks first) and shared by the tests that only read it. A test that writes into it (a resume, --mode=sample
  or eval) works on a copy (`copy_workdir`)."""
  if args not in _TRAINED:
    base = tmp_path_factory.mktemp("trained")
    workdir = str(base / "wd")
    run_py(env, base, *args, f"--workdir={workdir}")
    _TRAINED[args] = workdir
  return _TRAINED[args]


def trained_digits_workdir(env: dict, tmp_path_factory) -> str:
  """`trained_workdir` of DIGITS_RUN trained 2 steps: a checkpoint and a sample grid at step 2."""
  return trained_workdir(env, tmp_path_factory, *DIGITS_RUN, "--config.train.num_steps=2")


def copy_workdir(workdir: str, destination) -> str:
  """A copy of a (shared) workdir at `destination`, for a test to write into."""
  shutil.copytree(workdir, destination)
  return str(destination)
