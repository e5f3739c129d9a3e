"""Writing files so that a kill at any moment leaves the old file or the new one, never half of one.

Every file gen_jax writes outside orbax (config.json, metrics, eval.json, sample
grids, samples.npz, the evaluation classifier) goes through `atomic_path` or
`write_atomically`: the content is written to a temporary file beside the
target, then renamed over it (`os.replace` is atomic on POSIX file systems).
"""

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success it is renamed to `path`.

  The temporary name keeps the extension (`x.png` -> `x.png.tmp.png`), so
  writers that choose a format by extension (PIL, np.savez) work unchanged.
  If the block raises, the temporary file is removed and `path` is untouched.
  """
  _, extension = os.path.splitext(path)
  tmp = f"{path}.tmp{extension}"
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_atomically(path: str, content: str | bytes) -> None:
  """Writes `content` (text or bytes) to `path` atomically (see `atomic_path`)."""
  mode = "wb" if isinstance(content, bytes) else "w"
  with atomic_path(path) as tmp, open(tmp, mode) as f:
    f.write(content)
