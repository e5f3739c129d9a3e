"""Fixtures shared by the test modules."""

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compile():
  """Skips XLA's optimisation passes for a module: tiny models run in
  microseconds, and those passes are what cost time on a CPU. A module asks
  for it with `pytestmark = pytest.mark.usefixtures("fast_compile")`."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture
def x64():
  """Enables float64 for one test and restores the previous flag."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)
