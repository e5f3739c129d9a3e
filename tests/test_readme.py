"""The README's Python examples run as written, and its commands name real flags."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks(language):
  with open(README) as f:
    text = f.read()
  return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index):
  code = _blocks("python")[index]
  namespace = {}
  exec(compile(code, f"README.md python block {index}", "exec"), namespace)


def test_commands_use_known_experiments_and_flags():
  import run

  experiments = set(run.list_experiments())
  known_flags = {
    "experiment",
    "workdir",
    "mode",
    "num_samples",
    "sampler",
    "sampling_steps",
    "debug",
    "helpfull",
    "config",
    "distributed",
    "class_label",
    "guidance_scale",
    "inception_weights",
  }
  for block in _blocks("bash"):
    for line in block.splitlines():
      if "python run.py" not in line:
        continue
      line = line[line.index("python run.py") :]  # e.g. after `srun ...` or `--command="`
      for name in re.findall(r"--experiment=([a-z0-9_]+)", line):
        assert name in experiments, line
      for flag in re.findall(r"--([a-z_]+)", line):
        assert flag in known_flags, f"unknown flag --{flag} in README: {line}"
