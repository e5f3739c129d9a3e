"""Fixtures shared by the test modules, and the suite's persistent compilation cache.

Tiers: `python -m pytest` is the full suite, which CI runs; `python -m pytest -m "not slow"` is the fast
tier, for iterating: the tests that cost under about half a second each (measured with --durations=0 on the
2-core machine; a test over that carries @pytest.mark.slow on its function, and the modules named below keep
only their first parametrized case). Every question is still asked by the full suite. Helpers shared by the
end-to-end tests (run.py in a subprocess, tiny configs) live in tests/support/.
"""

import os
import re
import signal

import jax
import pytest

# The optional peers (the `peers` extra and CI's no-deps installs). A test that needs one skips
# without it, saying which; with GEN_JAX_RECORD_PEER_SKIPS=FILE set, each such skip's test id is
# appended to FILE, and .ci/run's second step runs exactly those once the peers are installed.
_PEERS = ("torch", "diffusers", "k_diffusion", "flow_matching", "safetensors")


def _record_peer_skip(report):
  record = os.environ.get("GEN_JAX_RECORD_PEER_SKIPS")
  if not record or not report.skipped:
    return
  reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
  if any(re.search(rf"\b{peer}\b", reason) for peer in _PEERS):
    with open(record, "a", encoding="utf-8") as f:
      f.write(report.nodeid + "\n")


# Modules whose parametrized grids run whole only in the full suite: in the fast tier each of their
# parametrized tests keeps its first case (every question still asked once, its grid later).
_FIRST_CASE_IN_FAST_TIER = {
  "test_denoising.py",
  "test_process_ode.py",
  "test_process.py",
  "test_solvers.py",
  "test_preconditioning.py",
  "test_samplers_controls.py",
  "test_process_model.py",
}


def pytest_collection_modifyitems(config, items):
  seen = set()
  for item in items:
    if os.path.basename(str(item.fspath)) not in _FIRST_CASE_IN_FAST_TIER:
      continue
    if getattr(item, "callspec", None) is None:
      continue
    key = (str(item.fspath), item.originalname)
    if key in seen:
      item.add_marker(pytest.mark.slow)
    seen.add(key)


def pytest_runtest_logreport(report):
  _record_peer_skip(report)  # a test that skipped itself


def pytest_collectreport(report):
  _record_peer_skip(report)  # a module that skipped at import


def _sigint_for_children():
  """A suite started as a background job (`python -m pytest -q &` from a script, or nohup) inherits SIGINT
  ignored, and so would every run.py and script it starts; they rightly keep an ignored SIGINT, so the tests
  that send them Ctrl-C would wait for an end that never comes. A Python handler here means the children
  start with the default disposition (exec resets caught signals, not ignored ones)."""
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
  """Keeps XLA's compiled programs in pytest's cache folder (.pytest_cache), so a second run of the suite
  compiles only what changed: on a CPU, compiling the many tiny programs is most of the fast tier's time.

  Processes the tests start inherit it (run.py would otherwise use its default, in the user's home). Off with
  `-p no:cacheprovider` (for those processes too), and when JAX_COMPILATION_CACHE_DIR already names a cache;
  emptied with `--cache-clear` (it is never pruned: a size limit needs the `filelock` package).
  """
  _sigint_for_children()
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
