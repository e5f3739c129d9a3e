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
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

# Programs that compile faster than this are not written (JAX's own default threshold is 1 s). Start-up is
# many programs: the training step (seconds to tens of seconds), the initialisation and the sampler's scan
# (a second or less), and dozens of tiny ones (milliseconds). 0.1 s keeps the middle group, whose compile
# times add up to seconds, and leaves out the tiny ones, which cost a file read each and save nothing.
MIN_COMPILE_SECONDS = 0.1
CACHE_FOLDER = os.path.join("gen_jax", "jax_compilation_cache")


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
  folder = str(cache_dir or jax.config.jax_compilation_cache_dir or default_cache_dir(environ))
  if (
    "://" not in folder
  ):  # a local folder; a bucket (gs://...) JAX opens itself, through etils.epath
    folder = os.path.abspath(os.path.expanduser(folder))
    try:
      os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as e:
      raise ValueError(f"cache_dir={folder} cannot be created ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
      raise ValueError(f"cache_dir={folder} is not a writable folder")
  jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return folder
