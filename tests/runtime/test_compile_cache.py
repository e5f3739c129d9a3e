"""Start-up: gen_jax/runtime/compile_cache.py and run.py's persistent compilation cache (where it lives, what wins over
what, and that a second run.py of the same configuration loads its compiled programs instead of compiling
them), and the imports a run pays for.
"""

import importlib.util
import os
import re
import subprocess
import sys

import jax
import pytest

from gen_jax.runtime import compile_cache
from tests.support import runs

_SETTINGS = (
  "jax_enable_compilation_cache",
  "jax_compilation_cache_dir",
  "jax_persistent_cache_min_compile_time_secs",
)


@pytest.fixture
def jax_cache_settings():
  """Restores this process's cache settings (the suite's own cache, tests/conftest.py) after the test."""
  saved = {name: getattr(jax.config, name) for name in _SETTINGS}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


def test_default_cache_dir_follows_xdg():
  assert compile_cache.default_cache_dir({"XDG_CACHE_HOME": "/x/cache"}) == (
    "/x/cache/gen_jax/jax_compilation_cache"
  )
  home = os.path.expanduser("~")
  expected = os.path.join(home, ".cache", "gen_jax", "jax_compilation_cache")
  assert compile_cache.default_cache_dir({}) == expected
  assert compile_cache.default_cache_dir({"XDG_CACHE_HOME": ""}) == expected  # empty means unset


def test_configure_precedence(tmp_path, jax_cache_settings):
  environ = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
  # JAX_COMPILATION_CACHE_DIR (here: the suite's own cache, set by conftest) wins over the default ...
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "from_env"))
  assert compile_cache.configure(environ=environ) == str(tmp_path / "from_env")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_SECONDS
  # ... and an explicit folder wins over both; it is created, private to the user.
  folder = compile_cache.configure(cache_dir=str(tmp_path / "flag" / "cache"), environ=environ)
  assert folder == jax.config.jax_compilation_cache_dir == str(tmp_path / "flag" / "cache")
  assert os.stat(folder).st_mode & 0o777 == 0o700
  # A bucket is passed to JAX as it is (JAX opens it through etils.epath, at the first compilation).
  assert compile_cache.configure(cache_dir="gs://bucket/jax_cache") == "gs://bucket/jax_cache"
  # With no setting at all: the user cache folder.
  jax.config.update("jax_compilation_cache_dir", None)
  assert compile_cache.configure(environ=environ) == str(
    tmp_path / "xdg" / compile_cache.CACHE_FOLDER
  )
  # A minimum compile time the user set in the environment is kept.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 7.0)
  compile_cache.configure(environ={**environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "7"})
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 7.0


def test_configure_off_and_bad_folders(tmp_path, jax_cache_settings):
  assert compile_cache.configure(enabled=False, cache_dir=str(tmp_path)) is None
  assert not jax.config.jax_enable_compilation_cache
  # Off stays off: JAX_ENABLE_COMPILATION_CACHE=false (what the tests' run.py processes get) beats a folder.
  assert compile_cache.configure(cache_dir=str(tmp_path)) is None
  jax.config.update("jax_enable_compilation_cache", True)
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  with pytest.raises(ValueError, match=r"cache_dir=.*a_file.* cannot be created"):
    compile_cache.configure(cache_dir=str(a_file / "cache"))
  with pytest.raises(ValueError, match="cache_dir is empty"):
    compile_cache.configure(cache_dir=" ")


@pytest.mark.slow
def test_second_run_loads_the_compiled_programs(tmp_path):
  """Two trainings of the same tiny config, fresh workdirs, nothing but XDG_CACHE_HOME set: the first writes
  the default cache folder, the second finds the initialisation, the training step and the sampler there."""
  env = runs.subprocess_env()
  del env["JAX_ENABLE_COMPILATION_CACHE"]  # run.py's default, as a user gets it
  env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_LOG_COMPILES="1")
  args = runs.flags("ddpm_toy2d", runs.TOY2D, {"train.num_steps": 1, "sample.num_steps": 2})
  args += ["--config.sample.sampler=ddim"]
  first = runs.run_py(env, tmp_path, *args, "--workdir=first")
  folder = tmp_path / "xdg" / compile_cache.CACHE_FOLDER
  written = sorted(f.split("-")[0] for f in os.listdir(folder) if f.endswith("-cache"))
  assert {"jit_init_state", "jit_train_step"} <= set(written), written
  assert "cache hit" not in first.stderr

  second = runs.run_py(env, tmp_path, *args, "--workdir=second")
  hits = set(re.findall(r"Persistent compilation cache hit for '(\w+)'", second.stderr))
  assert {"jit_init_state", "jit_train_step"} <= hits, second.stderr[-3000:]
  assert (
    set(written) <= hits
  )  # every program written by the first run was loaded, none compiled again
  assert sorted(f.split("-")[0] for f in os.listdir(folder) if f.endswith("-cache")) == written


def test_jax_private_decompression_api_is_pinned():
  """remove_damaged_entries reads entries through jax._src.compilation_cache's own (de)compression: if a
  JAX upgrade moves it, this fails instead of every entry being judged damaged."""
  from jax._src import compilation_cache as jax_cache

  payload = b"\x00\x00\x00\x01" + bytes(range(256)) * 10
  assert jax_cache.decompress_executable(jax_cache.compress_executable(payload)) == payload


def _entry(folder, key, payload=b"\x00\x00\x00\x02" + b"executable" * 100):
  from jax._src import compilation_cache as jax_cache

  path = folder / f"{key}-cache"
  path.write_bytes(jax_cache.compress_executable(payload))
  return path


def test_damaged_entries_are_removed_once(tmp_path):
  """A truncated entry (kill -9 or a full disk while JAX wrote it), an empty one and one overwritten with
  garbage are removed with their -atime files; a whole entry stays; entries older than the last check are
  not read again."""
  good = _entry(tmp_path, "jit_good-1")
  truncated = _entry(tmp_path, "jit_cut-2")
  truncated.write_bytes(truncated.read_bytes()[:-7])
  (tmp_path / "jit_cut-2-atime").write_bytes(b"12345678")
  (tmp_path / "jit_empty-3-cache").write_bytes(b"")
  (tmp_path / "jit_garbage-4-cache").write_bytes(os.urandom(500))
  removed = compile_cache.remove_damaged_entries(str(tmp_path))
  assert sorted(removed) == ["jit_cut-2-cache", "jit_empty-3-cache", "jit_garbage-4-cache"]
  assert sorted(os.listdir(tmp_path)) == [compile_cache.CHECKED_MARKER, good.name]
  # Checked once: an entry older than the marker is not read again (start-up reads only new entries).
  old = _entry(tmp_path, "jit_old-5")
  old.write_bytes(b"not checked again")
  past = os.stat(tmp_path / compile_cache.CHECKED_MARKER).st_mtime - 10
  os.utime(old, (past, past))
  assert compile_cache.remove_damaged_entries(str(tmp_path)) == []
  assert old.exists()


def test_configure_checks_the_cache_it_opens(tmp_path, jax_cache_settings):
  jax.config.update("jax_enable_compilation_cache", True)
  (tmp_path / "jit_cut-1-cache").write_bytes(b"\x28\xb5")
  assert compile_cache.configure(cache_dir=str(tmp_path)) == str(tmp_path)
  assert not (tmp_path / "jit_cut-1-cache").exists()


def test_an_unusable_default_folder_means_no_cache_and_one_line(
  tmp_path, jax_cache_settings, capsys
):
  """A read-only home or XDG_CACHE_HOME naming a file: the run goes on without a cache, after one line that
  names the folder and the two flags; a folder the user named is still refused (above)."""
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", None)
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  assert compile_cache.configure(environ={"XDG_CACHE_HOME": str(a_file)}) is None
  assert not jax.config.jax_enable_compilation_cache
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert str(a_file) in lines[0] and "--compilation_cache_dir" in lines[0]
  assert "--nocompilation_cache" in lines[0]


@pytest.mark.slow
def test_a_damaged_entry_is_rewritten_without_a_warning(tmp_path):
  """Real JAX: a program is compiled into the cache, its entry cut short; the next process warns nothing,
  compiles it again and writes a whole entry (before the fix: a warning and a recompilation at every run,
  forever, since JAX never rewrites a key)."""
  code = (
    "import sys, jax, jax.numpy as jnp; from gen_jax.runtime import compile_cache; "
    "compile_cache.configure(cache_dir=sys.argv[1]); "
    "f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + jnp.tanh(x).sum()); "
    "print(float(f(jnp.ones((64, 64))).sum()))"
  )
  env = dict(os.environ, PYTHONPATH=runs.REPO, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.pop("JAX_ENABLE_COMPILATION_CACHE", None)

  def run():
    result = subprocess.run(
      [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result

  first = run()
  entries = sorted(p for p in tmp_path.iterdir() if p.name.endswith("-cache"))
  assert entries
  whole = {p: p.read_bytes() for p in entries}
  for p in entries:
    p.write_bytes(whole[p][: len(whole[p]) // 2])
  second = run()
  assert "Error reading persistent compilation cache" not in second.stderr, second.stderr
  assert second.stdout == first.stdout
  for p in entries:
    compile_cache._decompress(p.read_bytes())  # whole again
  third = run()
  assert "Error reading" not in third.stderr


@pytest.mark.slow
def test_the_metric_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch when it is installed (seconds of start-up); summary.py blocks that import,
  and only for that moment: torch stays importable."""
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed: nothing to block")
  code = (
    "import sys; from gen_jax import summary; summary.MetricWriter(sys.argv[1]).close(); "
    "assert 'torch' not in sys.modules, 'torch was imported'; "
    "import importlib.util; assert importlib.util.find_spec('torch') is not None"
  )
  env = dict(os.environ, PYTHONPATH=runs.REPO)
  result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True)
  assert result.returncode == 0, result.stderr.decode()
  assert os.listdir(tmp_path / "tensorboard")
