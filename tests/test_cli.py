"""run.py as the one place that speaks command line: it adds the `--` to the library's
`config.x` / `name=value`, shows only the library's own errors in one line (a bug keeps its
traceback), and finds its experiments beside itself, not as an installed package."""

import configparser
import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import pytest
import setuptools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(REPO, "run.py")


@pytest.fixture(scope="module")
def run_py():
  """run.py imported as a module (its CPU flags left alone)."""
  previous = os.environ.get("GEN_JAX_CPU_FLAGS")
  os.environ["GEN_JAX_CPU_FLAGS"] = "0"
  try:
    spec = importlib.util.spec_from_file_location("run_py_under_test", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.define_command_flags()  # as_flags derives the flags' names from their definitions
  finally:
    if previous is None:
      del os.environ["GEN_JAX_CPU_FLAGS"]
    else:
      os.environ["GEN_JAX_CPU_FLAGS"] = previous
  return module


@pytest.mark.parametrize(
  ("library", "command_line"),
  [
    ("config.train.num_steps must be a positive integer, got -3", None),
    ("workdir=runs/x is not writable", "--workdir=runs/x is not writable"),
    ("num_samples=0 must be positive", "--num_samples=0 must be positive"),
    ("sampler=ddim num_steps=50: too many", "--sampler=ddim --sampling_steps=50: too many"),
    ("trained with config.sample.num_steps=5", "trained with --config.sample.num_steps=5"),
    ("no config.json in runs/a/config.json", "no config.json in runs/a/config.json"),
    ("--config.data.name is already a flag", "--config.data.name is already a flag"),
    ("the sampler and the workdir", "the sampler and the workdir"),
    ("or pass resume_unverified=True to", "or pass --resume_unverified=True to"),
    ("pass experiment=ddpm_toy2d to go on", "pass --experiment=ddpm_toy2d to go on"),
    ("choose where it goes with out_dir=DIR", "choose where it goes with --out_dir=DIR"),
  ],
)
def test_the_error_line_adds_the_dashes(run_py, library, command_line):
  assert run_py.as_flags(library) == (command_line or "--" + library)


def test_only_the_renamed_arguments_are_listed(run_py):
  """Every other library argument is named as its flag: the flags' definitions say which."""
  assert all(name != flag for name, flag in run_py.ARGUMENT_FLAGS.items())
  for name in ("class_label", "guidance_scale", "inception_weights", "pretrained", "process_id"):
    assert run_py.as_flags(f"{name}=1") == f"--{name}=1"
  assert run_py.as_flags("cache_dir=/x") == "--compilation_cache_dir=/x"


def test_the_old_eta_flag_is_the_new_option_with_a_warning(run_py, capsys):
  argv = ["run.py", "--config.sample.eta=0.5", "--config.sample.num_steps=3"]
  assert run_py.renamed_config_flags(argv) == [
    "run.py",
    "--config.sample.options.eta=0.5",
    "--config.sample.num_steps=3",
  ]
  assert capsys.readouterr().err == (
    "warning: --config.sample.eta is deprecated, use --config.sample.options.eta (the old name "
    "goes in gen_jax 0.3)\n"
  )
  assert run_py.renamed_config_flags(["run.py", "--config.sample.eta", "1"])[1:] == [
    "--config.sample.options.eta",
    "1",
  ]


def run(cwd, *args, env=None):
  env = dict(env or os.environ, JAX_PLATFORMS="cpu", GEN_JAX_CPU_FLAGS="0")
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
  )


@pytest.mark.slow
def test_a_library_config_error_is_one_line_with_the_flag(tmp_path):
  result = run(tmp_path, RUN_PY, "--config.model.compute_dtype=float16", "--workdir=wd")
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert errors == [
    "error: --config.model.compute_dtype must be one of ('float32', 'bfloat16'), got 'float16'"
  ]
  assert not os.path.exists(tmp_path / "wd")


@pytest.mark.slow
@pytest.mark.parametrize(
  ("args", "error"),
  [
    (  # was an 11-frame traceback from the model's builder
      ["--config.diffusion.num_timesteps=1", "--config.sample.num_steps=1"],
      "error: --config.diffusion.num_timesteps must be an integer >= 2, got 1",
    ),
    (
      ["--config.sample.sampler=ddim", "--config.sample.options.s_churn=10"],
      "error: --config.sample.options.s_churn must be None: --config.sample.sampler='ddim' does "
      "not take it (its options: eta), got 10.0",
    ),
    (  # the old name, forwarded to the new one
      ["--config.sample.eta=-1"],
      "error: --config.sample.options.eta must be a number in [0, 1], got -1.0",
    ),
  ],
)
def test_sampler_and_diffusion_mistakes_are_one_line_at_start_up(tmp_path, args, error):
  result = run(tmp_path, RUN_PY, "--experiment=ddpm_digits", "--workdir=wd", *args)
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert errors == [error]
  assert not os.path.exists(tmp_path / "wd")


BUGGY_EXPERIMENT = '''"""An experiment with a bug: build() hits a ValueError inside jax.numpy."""

import jax.numpy as jnp

from gen_jax import configs


def get_config():
  return configs.base_config()


def build(config, example_shape):
  return jnp.split(jnp.ones(3), 2)  # 3 does not split in 2: a bug, not an input error
'''


@pytest.mark.slow
def test_a_genuine_bug_keeps_its_traceback(tmp_path):
  """run.py shows the library's own errors in one line; a ValueError from anywhere else is a
  bug and must not be dressed up as an input error."""
  shutil.copy(RUN_PY, tmp_path / "run.py")
  (tmp_path / "experiments").mkdir()
  (tmp_path / "experiments" / "__init__.py").write_text("")
  (tmp_path / "experiments" / "buggy.py").write_text(BUGGY_EXPERIMENT)
  env = dict(os.environ, PYTHONPATH=REPO)  # gen_jax from this checkout
  result = run(tmp_path, "run.py", "--experiment=buggy", "--workdir=wd", env=env)
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "ValueError" in result.stderr, result.stderr
  assert not any(line.startswith("error: ") for line in result.stderr.splitlines())


@pytest.mark.slow
def test_experiments_come_from_beside_run_py_not_from_the_working_directory(tmp_path):
  (tmp_path / "experiments").mkdir()
  (tmp_path / "experiments" / "__init__.py").write_text("")
  (tmp_path / "experiments" / "users_own.py").write_text('"""Not gen_jax\'s."""\n')
  result = run(tmp_path, RUN_PY, "--helpfull")
  out = result.stdout + result.stderr
  assert "ddpm_digits" in out and "users_own" not in out


def test_the_experiments_folder_is_not_installed_as_a_package():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, "setup.cfg"))
  include = parser["options.packages.find"]["include"].split()
  packages = setuptools.find_packages(where=REPO, include=include)
  assert "gen_jax" in packages and "gen_jax.train" in packages
  assert all(p == "gen_jax" or p.startswith("gen_jax.") for p in packages), packages


def test_importing_run_py_leaves_the_signal_handlers_alone(run_py):
  """Only `python run.py` ends the process on Ctrl-C (gen_jax.runtime.interrupts); an importer (these
  tests) keeps its own handlers."""
  assert signal.getsignal(signal.SIGINT) is not run_py.interrupts.handle
  assert signal.getsignal(signal.SIGTERM) is not run_py.interrupts.handle
