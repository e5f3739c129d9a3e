"""One training per workdir: a lock taken at start-up, before anything in the workdir is touched.

  lock = acquire(workdir)   # WorkdirLockedError if another training holds it
  ...
  lock.release()            # also done by the kernel when the process dies

workdir/.lock       an empty file, locked with fcntl.flock while a training
                    runs. The kernel releases the lock when the process ends
                    in any way (kill -9 included), so no lock goes stale.
workdir/lock.json   who holds it: host, pid, the process' start time, the time
                    the lock was taken (written atomically, deleted on release;
                    only a killed process leaves it, and the next run reports
                    that it takes it over).

flock is sound on local file systems and on NFS as Linux mounts it by default
(since Linux 2.6.12 it is sent to the server as a POSIX lock), so it also
keeps out a second job on another host. A mount with `local_lock=flock` or
`nolock` (and some FUSE file systems) keeps locks to one host: there a job on
another host is not seen. Where flock is not supported at all (ENOLCK,
EOPNOTSUPP), lock.json alone decides: a lock of this host whose process is
gone, or whose pid now belongs to a process started later (a reused pid), is
stale and taken over; a lock of another host cannot be checked from here, so
it is refused and the message says how to clear it.
Multi-process runs: only process 0 takes the lock (its caller's condition).
"""

import datetime
import errno
import json
import os
import socket

try:
  import fcntl
except ImportError:  # Windows: no flock; lock.json alone decides
  fcntl = None

from gen_jax.configs import ConfigError
from gen_jax.runtime import fileio

LOCK_FILE = ".lock"
OWNER_FILE = "lock.json"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirLockedError(ConfigError):
  """Another training runs (or may run) in the same workdir; the message names it."""


def process_start_ticks(pid: int) -> int | None:
  """When process `pid` started, in clock ticks since boot (/proc/<pid>/stat field 22), or None
  where /proc cannot tell (no such process, not Linux). Tells a reused pid from the original."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  # The command name (field 2) is in parentheses and may hold spaces: count after its ')'.
  return int(stat.rsplit(")", 1)[1].split()[19])


def is_running(owner: dict) -> bool:
  """Whether the process `owner` (a lock.json of this host) still runs: its pid exists and, where
  /proc tells, started when the lock says (else the pid was reused)."""
  pid = owner.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's process: it exists
  recorded, now = owner.get("pid_start_ticks"), process_start_ticks(pid)
  return recorded is None or now is None or recorded == now


def describe(owner: dict | None) -> str:
  """'host H, pid P, started T' of a lock.json, for messages."""
  if not owner:
    return "a process that has not written lock.json yet (or whose lock.json is unreadable)"
  return f"host {owner.get('host')}, pid {owner.get('pid')}, started {owner.get('started')}"


class WorkdirLock:
  """The lock of one workdir, held by this process (see the module docstring)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.lock_path = os.path.join(workdir, LOCK_FILE)
    self.owner_path = os.path.join(workdir, OWNER_FILE)
    self._fd = None
    self.taken_over = None  # the stale lock.json taken over, if any

  def read_owner(self) -> dict | None:
    try:
      with open(self.owner_path) as f:
        owner = json.load(f)
      return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def acquire(self) -> "WorkdirLock":
    """Takes the lock or raises WorkdirLockedError naming its holder. Returns self.
    ConfigError naming the file if .lock or lock.json cannot be used (a folder, unreadable)."""
    for path in (self.lock_path, self.owner_path):
      if os.path.isdir(path):  # else an IsADirectoryError traceback from open or the rename
        raise ConfigError(
          f"{path} is a folder, not the workdir lock file gen_jax writes there; move it out of "
          f"workdir={self.workdir} and run again"
        )
    try:
      fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ConfigError(
        f"the workdir lock {self.lock_path} cannot be opened ({e.strerror or e}); make it a "
        "writable file (or remove it) and run again"
      ) from None
    try:
      kernel_lock = _flock(fd)
      if kernel_lock is False:
        raise self._in_use(self.read_owner())
      owner = self.read_owner()
      if owner is not None and kernel_lock is None:  # no flock here: lock.json alone decides
        self._check_stale(owner)
      self.taken_over = owner
      this = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start_ticks": process_start_ticks(os.getpid()),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      }
      try:
        fileio.write_atomically(self.owner_path, json.dumps(this, indent=2))
      except OSError as e:
        raise ConfigError(
          f"the workdir lock's {self.owner_path} cannot be written ({e.strerror or e}); make "
          f"workdir={self.workdir} writable and run again"
        ) from None
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    return self

  def _check_stale(self, owner: dict) -> None:
    if owner.get("host") != socket.gethostname():
      raise WorkdirLockedError(
        f"workdir={self.workdir} is locked by a training on another host ({describe(owner)}), "
        "which cannot be checked from here (this file system has no flock); if that job has "
        f"ended, delete {self.owner_path} and run again"
      )
    if is_running(owner):
      raise self._in_use(owner)

  def _in_use(self, owner) -> WorkdirLockedError:
    return WorkdirLockedError(
      f"workdir={self.workdir} is in use by another training ({describe(owner)}); wait for it "
      "to end or stop it, or use another workdir"
    )

  def release(self) -> None:
    """Deletes lock.json (if it is still this process') and releases the lock. Idempotent."""
    if self._fd is None:
      return
    owner = self.read_owner()
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
      try:
        os.remove(self.owner_path)
      except OSError:
        pass
    os.close(self._fd)  # releases the flock
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


def _flock(fd: int) -> bool | None:
  """True: locked; False: another process holds it; None: this file system has no flock."""
  if fcntl is None:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return False
    if e.errno in _UNSUPPORTED:
      return None
    raise


def acquire(workdir: str) -> WorkdirLock:
  """Locks `workdir` (which must exist) for this process; see WorkdirLock."""
  return WorkdirLock(workdir).acquire()


def stale_note(lock: WorkdirLock) -> str | None:
  """The line that says a killed training's lock was taken over, or None."""
  if lock.taken_over is None:
    return None
  return (
    f"workdir lock: taking over the lock of {describe(lock.taken_over)}, which has ended "
    "without releasing it"
  )
