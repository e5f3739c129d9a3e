"""The commands of README.md and docs/*.md name real flags and fields.

The flags are run.py's own (`python run.py --helpxml`, once), the config fields each experiment's
get_config(): removing a flag from run.py, or renaming a field, fails here until the pages follow.
test_the_checker_catches_* shows that the checks can fail. The pages' Python snippets run in
tests/test_docs.py; a region between `<!-- not-executed -->` and `<!-- /not-executed -->` is
skipped by both (tests/support/pages.py).
"""

import os
import re
import xml.etree.ElementTree as ET

import pytest

import run
from tests.support import pages, runs

# `python run.py` and its arguments, up to the end of the line, a comment, a closing quote or backtick.
COMMAND = re.compile(r"python run\.py\b([^#\"`\n]*)")


def _texts():
  """Every page's executed text, README first."""
  return [pages.executed(pages.read(path)) for path in pages.PAGES]


def _text():
  return "\n".join(_texts())


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


@pytest.mark.slow
def test_commands_use_known_experiments_flags_and_config_fields(run_py_flags, experiment_configs):
  commands = [command for text in _texts() for command in _commands(text)]
  assert len(commands) > 20, commands  # the pages' commands were found
  wrong = {c: found for c in commands if (found := problems(c, run_py_flags, experiment_configs))}
  assert not wrong, wrong


def test_every_config_field_the_prose_names_exists(experiment_configs):
  """`--config.<path>` outside a command (prose, other scripts' flags) names a field of some experiment."""
  paths = set(re.findall(r"--(?:no)?config\.([a-z0-9_.]*[a-z0-9_])", _text()))
  assert paths, "no --config.<path> found in the pages"
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


def test_commands_are_read_from_every_page_but_not_from_not_executed_regions():
  """The README keeps its first run; each docs page that shows commands is read; a pending one is not."""
  assert " --mode=sample --num_samples=1000" in _commands(pages.read(pages.README))
  for page in ("experiments", "samplers", "likelihoods", "pretrained", "scaling", "interruptions"):
    assert _commands(pages.read(f"{pages.DOCS}/{page}.md")), page
  pending = (
    "`python run.py --config.no.such=1`\n<!-- not-executed -->\n```bash\npython run.py --x\n```\n"
  )
  assert _commands(pages.executed(pending + "<!-- /not-executed -->")) == [" --config.no.such=1"]


def test_ci_runs_the_readmes_install_and_test_commands_before_any_peer():
  """.ci/run's first step is exactly what a new user runs: the README's install line for the test
  tools and its test command, before the peers (which bring packages along, e.g. mpmath with
  torch) are installed: a package missing from the `test` extra fails CI, as it fails a user."""
  with open(os.path.join(runs.REPO, ".ci", "run")) as f:
    ci = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
  readme = pages.read(pages.README)
  assert "pip install -e '.[test]'" in readme and "python -m pytest -q" in readme
  install = ci.index("python -m pip install --quiet -e '.[test]'")
  test = ci.index("python -m pytest -q")
  peers = min(i for i, line in enumerate(ci) if "peers" in line or "torch" in line)
  assert install < test < peers, ci
  assert not any("peers" in line for line in ci[:test]), ci
