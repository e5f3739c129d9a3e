"""The README's Python examples run and give what they say, and its commands name real flags and fields.

The flags are run.py's own (`python run.py --helpxml`, once), the config fields each experiment's
get_config(): removing a flag from run.py, or renaming a field, fails here until the README follows.
test_the_checker_catches_* shows that the checks can fail.
"""

import functools
import math
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import run
from tests.support import runs

README = os.path.join(runs.REPO, "README.md")
# `python run.py` and its arguments, up to the end of the line, a comment, a closing quote or backtick.
COMMAND = re.compile(r"python run\.py\b([^#\"`\n]*)")


def _text():
  with open(README) as f:
    return f.read()


def _blocks(language):
  return re.findall(rf"```{language}\n(.*?)```", _text(), flags=re.S)


def _commands(text):
  """The arguments of every `python run.py` in `text`: in bash blocks (`\\` joins lines) and in inline code."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    commands += COMMAND.findall(block.replace("\\\n", " "))
  prose = re.sub(r"```.*?```", "", text, flags=re.S)
  for span in re.findall(r"`([^`]*)`", prose):
    commands += COMMAND.findall(span.replace("\n", " "))
  return commands


@pytest.fixture(scope="module")
def run_py_flags():
  """run.py's flags as absl defines them: name -> the allowed values of an enum, else None."""
  result = runs.run_py(runs.subprocess_env(), runs.REPO, "--helpxml", check=False)
  flags = {}
  for flag in ET.fromstring(result.stdout).iter("flag"):
    flags[flag.findtext("name")] = [e.text for e in flag.iter("enum_value")] or None
    if flag.findtext("type") == "bool":
      flags["no" + flag.findtext("name")] = None
  assert {"experiment", "workdir", "mode", "config", "helpfull"} <= set(flags), sorted(flags)
  return flags


@pytest.fixture(scope="module")
def experiment_configs():
  return {name: runs.config(name) for name in run.list_experiments()}


def _has_field(config, path):
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _is_placeholder(value):
  """NAME, DIR, PATH, <value>: the README's stand-ins for what the user types."""
  return "<" in value or value.isupper()


def problems(command, flags, configs):
  """What is wrong in one command's arguments: unknown flags, enum values, experiments and config fields."""
  tokens = [t.strip("[]") for t in re.findall(r"--\S+", command)]
  experiment = run.DEFAULT_EXPERIMENT
  found = []
  for token in tokens:
    name, _, value = token[2:].partition("=")
    if name == "experiment" and not _is_placeholder(value):
      experiment = value
      if value not in configs:
        found.append(f"unknown --experiment={value}")
  for token in tokens:
    name, _, value = token[2:].partition("=")
    if name.startswith(("config.", "noconfig.")):
      path = name.split("config.", 1)[1]
      if experiment in configs and "<" not in path and not _has_field(configs[experiment], path):
        found.append(f"--{name}: no field {path} in experiments/{experiment}.get_config()")
    elif name not in flags:
      found.append(f"unknown flag --{name}")
    elif flags[name] and value and not _is_placeholder(value):
      found += [
        f"--{name}={v}: not one of {flags[name]}" for v in value.split("|") if v not in flags[name]
      ]
  return found


def test_commands_use_known_experiments_flags_and_config_fields(run_py_flags, experiment_configs):
  commands = _commands(_text())
  assert len(commands) > 20, commands  # the README's commands were found
  wrong = {c: found for c in commands if (found := problems(c, run_py_flags, experiment_configs))}
  assert not wrong, wrong


def test_every_config_field_the_prose_names_exists(experiment_configs):
  """`--config.<path>` outside a command (prose, other scripts' flags) names a field of some experiment."""
  paths = set(re.findall(r"--(?:no)?config\.([a-z0-9_.]*[a-z0-9_])", _text()))
  assert paths, "no --config.<path> found in the README"
  unknown = [p for p in paths if not any(_has_field(c, p) for c in experiment_configs.values())]
  assert not unknown, unknown


def test_the_checker_catches_a_misspelled_field_a_removed_flag_and_a_bad_value(
  run_py_flags, experiment_configs
):
  check = lambda command, flags=run_py_flags: problems(command, flags, experiment_configs)
  assert check(" --experiment=ddpm_toy2d --config.train.num_steps=3 --mode=train|sample") == []
  assert check(" --experiment=ddpm_toy2d --config.train.num_stepz=3") == [
    "--config.train.num_stepz: no field train.num_stepz in experiments/ddpm_toy2d.get_config()"
  ]
  assert check(" --config.foo.bar=1") == [
    "--config.foo.bar: no field foo.bar in experiments/ddpm_digits.get_config()"
  ]
  without_sampler = {k: v for k, v in run_py_flags.items() if k != "sampler"}
  assert check(" --mode=sample --sampler=ddim", without_sampler) == ["unknown flag --sampler"]
  assert check(" --mode=sample|infer") == ["--mode=infer: not one of ['train', 'sample', 'eval']"]
  assert check(" --experiment=ddpm_toy3d") == ["unknown --experiment=ddpm_toy3d"]
  assert _commands("```bash\npython run.py --a \\\n  --b  # c\n```\nor `python run.py\n--d`") == [
    " --a    --b  ",
    " --d",
  ]


# ----------------------------------------------------------------------------------------------------------------
# The Python blocks, and what their comments promise


@functools.cache
def _run_block(index):
  """The names a block defines, once per session."""
  namespace = {}
  exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), namespace)
  return namespace


def _block_with(text):
  """The names defined by the one block that contains `text`."""
  (index,) = [i for i, block in enumerate(_blocks("python")) if text in block]
  return _run_block(index)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
@pytest.mark.slow
def test_python_block_runs(index):
  _run_block(index)


@pytest.mark.slow
def test_math_core_block_gives_the_shapes_and_values_it_names():
  out = _block_with("vae.iwae_bound")
  assert out["x_t"].shape == out["x0"].shape == (16, 8, 8, 1)
  assert out["losses"].shape == (16,) and out["v_losses"].shape == (16,)
  assert out["samples"].shape == (16, 8, 8, 1) and np.all(np.isfinite(out["samples"]))
  assert out["log_p"].shape == (4,) and np.all(np.isfinite(out["log_p"]))
  # The encoder is the prior N(0, I) itself, so KL = 0; the decoder's x = (z1 + z2) 1 + noise makes
  # x ~ N(0, I + 2 11^T), so log p(1) = -1.5 log 2pi - 0.5 log 7 - 3 / 14, which K = 1000 nearly attains.
  np.testing.assert_array_equal(out["terms"].kl, np.zeros(4))
  log_px = -1.5 * math.log(2 * math.pi) - 0.5 * math.log(7.0) - 3.0 / 14.0
  np.testing.assert_allclose(out["nll"], np.full(4, -log_px), atol=0.05)


def test_evaluation_block_gives_the_values_its_comments_promise():
  out = _block_with("evaluation.frechet_distance")
  assert out["fd"] == pytest.approx(8 * 0.5**2, abs=0.2)  # "about 8 * 0.5**2 = 2"
  assert out["score"] == pytest.approx(10.0, abs=0.1)  # "confident, varied: about 10"
