"""The package's shape: every folder of gen_jax/ is a package that a non-editable install ships,
and the library never imports experiments/ or the command line."""

import os
import re

from setuptools import find_packages

from tests.support import runs

LIBRARY = os.path.join(runs.REPO, "gen_jax")


def test_every_folder_of_the_library_is_a_package_an_install_ships():
  """A folder without __init__.py imports in an editable install (a namespace package) but is
  left out of a wheel (setup.cfg's find:): gen_jax/runtime/ was, until this test."""
  folders = sorted(
    os.path.relpath(root, runs.REPO).replace(os.sep, ".")
    for root, _, files in os.walk(LIBRARY)
    if "__pycache__" not in root and any(f.endswith(".py") for f in files)
  )
  shipped = set(find_packages(runs.REPO, include=["gen_jax", "gen_jax.*"]))
  assert [f for f in folders if f not in shipped] == []


def test_the_library_never_imports_experiments_or_the_command_line():
  pattern = re.compile(r"^\s*(from|import)\s+(experiments|run|scripts|benchmarks)\b", re.M)
  offenders = []
  for root, _, files in os.walk(LIBRARY):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        with open(path, encoding="utf-8") as f:
          if pattern.search(f.read()):
            offenders.append(os.path.relpath(path, runs.REPO))
  assert offenders == []
