"""JAX's persistent compilation cache, as run.py turns it on: where it lives and what it keeps.

With the cache on, the second `python run.py` of the same configuration loads its compiled programs (the
training step, the initialisation, the samplers) from disk instead of compiling them again; the README's
performance section gives the measured start-up times, first run against second.

Where: `$XDG_CACHE_HOME/gen_jax/jax_compilation_cache` (`~/.cache/...` when XDG_CACHE_HOME is unset), one cache
per user rather than one per workdir's parent, because
  * a compiled program depends on the program, the devices and the jax/jaxlib version, never on the workdir: a
    fresh `runs/<experiment>-<time>` (every training launch without --workdir) reuses what the last one compiled,
    and so do `--mode=sample|eval` on any workdir;
  * JAX loads and runs what it finds in the cache (its own warning: the cache is trusted), so it belongs in a
    folder only its user writes (created with mode 0700), not beside a workdir on a shared disk.
On several hosts (--distributed) JAX writes entries from process 0 only, expecting one folder that every host
reads: there, pass a shared folder (`--compilation_cache_dir=/mnt/shared/jax_cache`, or a gs:// path with
etils[epath] installed), or only host 0 ever loads anything.
JAX's own settings win over the default: JAX_COMPILATION_CACHE_DIR names another folder,
JAX_ENABLE_COMPILATION_CACHE=false turns it off (the tests do, so run.py never writes to their user's home),
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS and JAX_COMPILATION_CACHE_MAX_SIZE (which needs the `filelock`
package) tune it. The cache is never pruned unless that size limit is set; deleting the folder is always safe.

Damaged entries: JAX writes an entry in place and never rewrites an existing key, so an entry cut short by a
kill -9 or a full disk (or overwritten with anything else) would make every later run warn and recompile,
forever. `configure` checks the entries written since its last check (their compressed frames must
decompress whole) and removes the damaged ones, quietly, so the next compilation writes them again.
When the default folder cannot be made (a read-only home, XDG_CACHE_HOME naming a file), the run goes on
without a cache after one line on stderr; a folder the user named is refused instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

import jax

# Programs that compile faster than this are not written (JAX's own default threshold is 1 s). Start-up is
# many programs: the training step (seconds to tens of seconds), the initialisation and the sampler's scan
# (a second or less), and dozens of tiny ones (milliseconds). 0.1 s keeps the middle group, whose compile
# times add up to seconds, and leaves out the tiny ones, which cost a file read each and save nothing.
MIN_COMPILE_SECONDS = 0.1
CACHE_FOLDER = os.path.join("gen_jax", "jax_compilation_cache")
# JAX's entry files (jax/_src/lru_cache.py): <key>-cache, and <key>-atime when a size limit is set.
ENTRY_SUFFIX, ATIME_SUFFIX = "-cache", "-atime"
# Its mtime is when the entries were last checked: only newer ones are read again.
CHECKED_MARKER = ".gen_jax_checked"


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> str:
  """`$XDG_CACHE_HOME/gen_jax/jax_compilation_cache`, or `~/.cache/gen_jax/jax_compilation_cache`."""
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, CACHE_FOLDER)


def configure(
  *, enabled: bool = True, cache_dir: str | None = None, environ: Mapping[str, str] = os.environ
) -> str | None:
  """Turns the persistent compilation cache on (or off) for this process; returns its folder, or None if off.

  Call before the first compilation (JAX opens the cache once, at the first compiled program that finds a
  folder set). Precedence: enabled=False, or JAX_ENABLE_COMPILATION_CACHE=false, turns it off; else the
  folder is `cache_dir` if given, else JAX_COMPILATION_CACHE_DIR if set, else `default_cache_dir()`.
  A minimum compile time set through JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS is kept; otherwise
  MIN_COMPILE_SECONDS applies.

  Raises ValueError naming `cache_dir` when the folder cannot be created or written.
  """
  if not enabled or not jax.config.jax_enable_compilation_cache:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  if cache_dir is not None and not str(cache_dir).strip():
    raise ValueError("cache_dir is empty; give a folder, or turn the compilation cache off")
  chosen = cache_dir or jax.config.jax_compilation_cache_dir
  folder = str(chosen or default_cache_dir(environ))
  if (
    "://" not in folder
  ):  # a local folder; a bucket (gs://...) JAX opens itself, through etils.epath
    folder = os.path.abspath(os.path.expanduser(folder))
    problem = _unusable(folder)
    if problem and chosen:
      raise ValueError(f"cache_dir={folder} {problem}")
    if problem:  # the default folder: a cache is an optimisation, never a reason to refuse a run
      print(
        f"gen_jax: no compilation cache: its default folder {folder} {problem} "
        "(--compilation_cache_dir=DIR picks another; --nocompilation_cache silences this)",
        file=sys.stderr,
        flush=True,
      )
      jax.config.update("jax_enable_compilation_cache", False)
      return None
    remove_damaged_entries(folder)
  jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return folder


def _unusable(folder: str) -> str | None:
  """Why `folder` cannot hold the cache (created here, private to the user), or None."""
  try:
    os.makedirs(folder, mode=0o700, exist_ok=True)
  except OSError as e:
    return f"cannot be created ({e.strerror})"
  if not os.access(folder, os.W_OK | os.X_OK):
    return "is not a writable folder"
  return None


def _decompress(data: bytes) -> bytes:
  """An entry's payload, decompressed as JAX wrote it: zstd where JAX found it, else zlib."""
  from jax._src import (
    compilation_cache,
  )  # pinned: tests/runtime/test_compile_cache.py checks this API

  return compilation_cache.decompress_executable(data)


def remove_damaged_entries(folder: str) -> list[str]:
  """Removes the cache entries written since the last check that do not decompress whole; returns them.

  A truncated or overwritten entry fails to decompress (zlib and zstd frames carry their length and a
  checksum); JAX would otherwise warn about it at every start and never write it again. Entries are
  checked once: a marker file's mtime records when, so a start-up reads only what the last runs wrote.
  """
  marker = os.path.join(folder, CHECKED_MARKER)
  try:
    checked_at = os.stat(marker).st_mtime
  except OSError:
    checked_at = 0.0
  started = time.time()
  removed = []
  try:
    names = os.listdir(folder)
  except OSError:
    return removed
  for name in names:
    if not name.endswith(ENTRY_SUFFIX):
      continue
    path = os.path.join(folder, name)
    try:
      if os.stat(path).st_mtime < checked_at:
        continue
      with open(path, "rb") as f:
        data = f.read()
      _decompress(data)
      continue
    except OSError:
      continue  # gone meanwhile, or unreadable: JAX will say so itself
    except Exception:  # any decoding error means the entry is damaged
      pass
    for damaged in (path, path[: -len(ENTRY_SUFFIX)] + ATIME_SUFFIX):
      try:
        os.remove(damaged)
      except OSError:
        pass
    removed.append(name)
  try:
    with open(marker, "a"):
      pass
    os.utime(marker, (started, started))
  except OSError:
    pass
  return removed
