"""Fixtures shared by the test modules, and the suite's persistent compilation cache.

Tiers: `python -m pytest -m "not slow"` is the fast tier (math, data and property tests, one run.py round
trip, the evaluation metrics); `python -m pytest` is the full suite, which CI runs. Helpers shared by the
end-to-end tests (run.py in a subprocess, tiny configs) live in tests/support/.
"""

import os
import pathlib

import jax
import pytest

# A test module that imports one of these needs the `peers` extra; without it the module skips
# (pytest.importorskip) with the reason, and .ci/run's second step reruns exactly these (-m peers).
_PEER_MARKS = ('importorskip("torch")', 'importorskip("diffusers")', 'importorskip("k_diffusion")')


def pytest_collection_modifyitems(config, items):
  """Marks every test of a module that needs a peer with `peers`."""
  needs_peers = {}
  for item in items:
    path = pathlib.Path(str(item.fspath))
    if path not in needs_peers:
      source = path.read_text(encoding="utf-8") if path.suffix == ".py" else ""
      needs_peers[path] = any(mark in source for mark in _PEER_MARKS)
    if needs_peers[path]:
      item.add_marker(pytest.mark.peers)


def pytest_configure(config):
  """Keeps XLA's compiled programs in pytest's cache folder (.pytest_cache), so a second run of the suite
  compiles only what changed: on a CPU, compiling the many tiny programs is most of the fast tier's time.

  Processes the tests start inherit it (run.py would otherwise use its default, in the user's home). Off with
  `-p no:cacheprovider` (for those processes too), and when JAX_COMPILATION_CACHE_DIR already names a cache;
  emptied with `--cache-clear` (it is never pruned: a size limit needs the `filelock` package).
  """
  cache = getattr(config, "cache", None)
  if jax.config.jax_compilation_cache_dir:
    return
  if cache is None:  # and run.py processes started by a test must not fill the user's own cache
    os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")
    return
  folder = str(cache.mkdir("jax_compilation_cache"))
  jax.config.update("jax_compilation_cache_dir", folder)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = folder  # run.py processes too: never the user's home
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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
