"""Writing files so that a kill at any moment leaves the old file or the new one, never half of one.

Every file gen_jax writes outside orbax (config.json, metrics, eval.json, sample
grids, samples.npz, the evaluation classifier) goes through `atomic_path` or
`write_atomically`: the content is written to a temporary file beside the
target, then renamed over it (`os.replace` is atomic on POSIX file systems).
The temporary name is hidden (`.x.png.<pid>.tmp.png`), so no glob for `*.png`
ever sees half a picture; a kill -9 can leave one behind, and
`remove_temporary_files` (run at start-up under the workdir lock) deletes it.
A full disk raises DiskFullError (an OSError with errno ENOSPC) naming the
file, after the temporary file is removed.
"""

import contextlib
import errno
import os
import re
from collections.abc import Iterator

from gen_jax.runtime import interrupts

# `.<name>.<pid>.tmp<ext>` (this module), and `<name><ext>.tmp<ext>` (gen_jax before 2026-11-30).
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp(\.[^.]+)?$|^.+(\.[^.]+)\.tmp\3$")


class DiskFullError(OSError):
  """The disk (or a quota) has no room for a file gen_jax writes; the message names it."""

  def __init__(self, message: str):
    super().__init__(errno.ENOSPC, message)

  def __str__(self) -> str:
    return self.args[1]


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, says the disk is full (ENOSPC, EDQUOT).

  orbax and TensorStore wrap the OSError in their own types, sometimes only as text.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def temporary_path(path: str) -> str:
  """The hidden temporary name beside `path` that `atomic_path` writes first (keeps the extension)."""
  directory, name = os.path.split(path)
  _, extension = os.path.splitext(name)
  return os.path.join(directory, f".{name}.{os.getpid()}.tmp{extension}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success it is renamed to `path`.

  The temporary name keeps the extension (`x.png` -> `.x.png.<pid>.tmp.png`), so
  writers that choose a format by extension (PIL, np.savez) work unchanged.
  If the block raises, or a signal ends the process (gen_jax.runtime.interrupts), the
  temporary file is removed and `path` is untouched. ENOSPC becomes DiskFullError.
  """
  tmp = temporary_path(path)
  interrupts.register_temporary(tmp)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, Exception) and not isinstance(e, DiskFullError) and is_disk_full(e):
      raise DiskFullError(f"the disk is full: cannot write {path} ({e})") from e
    raise
  finally:
    interrupts.unregister_temporary(tmp)


def write_atomically(path: str, content: str | bytes) -> None:
  """Writes `content` (text or bytes) to `path` atomically (see `atomic_path`)."""
  mode = "wb" if isinstance(content, bytes) else "w"
  with atomic_path(path) as tmp, open(tmp, mode) as f:
    f.write(content)


def remove_temporary_files(directory: str) -> list[str]:
  """Deletes the temporary files that writers no longer running left in `directory` (not
  recursive); returns them. A file named by a live process' pid (a --mode=sample writing into a
  training's workdir) is that process' and stays.
  """
  if not os.path.isdir(directory):
    return []
  removed = []
  for name in sorted(os.listdir(directory)):
    path, match = os.path.join(directory, name), _TEMPORARY.match(name)
    if not match or not os.path.isfile(path):
      continue
    if match["pid"] and int(match["pid"]) != os.getpid() and _is_running(int(match["pid"])):
      continue
    with contextlib.suppress(OSError):
      os.remove(path)
      removed.append(path)
  return removed


def _is_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True
