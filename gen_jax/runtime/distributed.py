"""Several JAX processes as one job (jax.distributed): start-up, the one-line summary, the
deliberate timeouts, and the check that every process runs the same config.

  initialize(coordinator_address, num_processes, process_id)   # before any JAX computation
  print(summary())        # "Distributed: process 0 of 2, 2 local / 4 global devices (cpu)"
  check_same_config(config, job)        # ConfigError in all if a peer differs

Where the peers come from: explicit arguments (run.py's --coordinator_address,
--num_processes, --process_id), else the environment variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, else JAX's own
detection of a TPU pod slice, SLURM or Open MPI job (all three left None).

Start-up. Process 0 checks that it can listen on the coordinator's address
(a taken port is one line, not gRPC's crash) and binds JAX's coordination
service to that address only, not every interface (`coordinator_bind_address`
or JAX_COORDINATOR_BIND_ADDRESS widens it on purpose). A process whose peers
have not all joined after WAITING_NOTICE_SECONDS says once what it waits for,
and after `startup_timeout_seconds` ends in one line (exit status 1), before
JAX's own deadline would abort it with a C++ stack.

When a process dies. JAX's coordination service (hosted by process 0) expects
a heartbeat from every process; once one has been silent for
`heartbeat_timeout_seconds` JAX aborts every survivor (exit status 134) with
~100 lines of C++ stack and a thread dump. gen_jax sees a death sooner and says
it in one line: see _Liveness (a killed process's connection to process 0
closes at once; measured: the survivor ends 0.2-0.3 s after a kill -9). The
heartbeat stays the safety net for a host that goes silent.
`shutdown_timeout_seconds` bounds how long a finishing process waits at exit
for its peers to finish as well.

Longer than the house's ~400 lines: start-up, the waiting and lost-peer watch (its own TCP
connections) and the config agreement are one concern, a job of several processes.
"""

import atexit
import errno
import hashlib
import json
import os
import secrets
import select
import socket
import sys
import threading
import time
from typing import ClassVar

import jax

from gen_jax import configs
from gen_jax.configs import ConfigError

# Lower than JAX's defaults (100 s, 300 s): a lost process is noticed in half a minute. The
# heartbeat runs on its own thread, so long steps or long compilations do not trip it.
HEARTBEAT_TIMEOUT_SECONDS = 30
SHUTDOWN_TIMEOUT_SECONDS = 60
STARTUP_TIMEOUT_SECONDS = 300
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_BIND_ADDRESS = "JAX_COORDINATOR_BIND_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# How long a process waits for its peers' configs at start-up.
_CONFIG_WAIT_MS = 120_000
# A process still waiting for its peers after this long says once what it waits for.
WAITING_NOTICE_SECONDS = 5.0
# JAX's own start-up deadline is set this much later than gen_jax's, so that the watchdog's one
# line, not JAX's abort with a C++ stack, ends a job whose processes never all arrive.
_JAX_DEADLINE_MARGIN_SECONDS = 30


def launch_settings(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  environ=None,
) -> tuple[str | None, int | None, int | None]:
  """(coordinator_address, num_processes, process_id): the arguments, else the JAX_* environment
  variables, else None (JAX then detects a TPU pod, SLURM or Open MPI job). Raises ConfigError
  for a partial or malformed explicit setting."""
  environ = os.environ if environ is None else environ
  if coordinator_address is None:
    coordinator_address = environ.get(ENV_COORDINATOR) or None
  if num_processes is None:
    num_processes = _env_int(environ, ENV_NUM_PROCESSES, "num_processes")
  if process_id is None:
    process_id = _env_int(environ, ENV_PROCESS_ID, "process_id")
  given = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  if any(v is not None for v in given.values()):
    if num_processes is not None and num_processes < 1:
      raise ConfigError(f"num_processes={num_processes} must be at least 1")
    if process_id is not None and num_processes is not None:
      if not 0 <= process_id < num_processes:
        raise ConfigError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    if coordinator_address is not None and ":" not in coordinator_address:
      raise ConfigError(
        f"coordinator_address={coordinator_address!r} must be host:port (process 0's address)"
      )
    if coordinator_address is not None and None in (num_processes, process_id):
      missing = [k for k, v in given.items() if v is None]
      raise ConfigError(
        f"an explicit coordinator also needs {' and '.join(missing)} "
        f"(or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})"
      )
  return coordinator_address, num_processes, process_id


def _env_int(environ, name: str, argument: str) -> int | None:
  value = environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name}={value!r} ({argument}) must be an integer") from None


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_SECONDS,
  shutdown_timeout_seconds: int = SHUTDOWN_TIMEOUT_SECONDS,
  startup_timeout_seconds: float = STARTUP_TIMEOUT_SECONDS,
  coordinator_bind_address: str | None = None,
  names: dict[str, str] | None = None,
) -> None:
  """jax.distributed.initialize with gen_jax's timeouts; call it before any JAX computation.

  Process 0 listens on `coordinator_bind_address`, else $JAX_COORDINATOR_BIND_ADDRESS, else the
  coordinator address itself (JAX's own default is every interface, "[::]:port"), after checking
  that the port is free. A process whose peers have not all arrived after
  WAITING_NOTICE_SECONDS prints once what it waits for; after `startup_timeout_seconds` it
  prints one line on stderr and ends the process (exit status 1). Every other start-up failure
  raises ConfigError. `names` renames the arguments in messages (run.py: its flags).

  On CPU the cross-process collectives go through gloo (JAX's CPU backend has
  none by default); GPU and TPU backends ignore that setting.
  """
  name = _namer(names)
  coordinator_address, num_processes, process_id = launch_settings(
    coordinator_address, num_processes, process_id
  )
  if min(heartbeat_timeout_seconds, shutdown_timeout_seconds, startup_timeout_seconds) < 1:
    raise ConfigError(
      f"{name('heartbeat_timeout_seconds')}={heartbeat_timeout_seconds}, "
      f"{name('shutdown_timeout_seconds')}={shutdown_timeout_seconds} and "
      f"{name('startup_timeout_seconds')}={startup_timeout_seconds:g} must be at least 1 second"
    )
  bind = coordinator_bind_address or os.environ.get(ENV_BIND_ADDRESS) or coordinator_address
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  watch = _StartupWatch(
    coordinator_address, bind, num_processes, process_id, startup_timeout_seconds, name
  )
  watch.start()
  try:
    if process_id == 0 and bind is not None:
      # Last before JAX binds the port: jaxlib crashes (segfault, 2 runs in 12) when it cannot.
      _check_can_listen(bind, name)
    jax.distributed.initialize(
      coordinator_address,
      num_processes,
      process_id,
      # JAX's deadline comes after the watchdog's, which ends the process in one line.
      initialization_timeout=int(startup_timeout_seconds) + _JAX_DEADLINE_MARGIN_SECONDS,
      heartbeat_timeout_seconds=int(heartbeat_timeout_seconds),
      shutdown_timeout_seconds=int(shutdown_timeout_seconds),
      coordinator_bind_address=bind,
    )
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    if coordinator_address is None:  # JAX found no TPU pod slice, SLURM or Open MPI job either
      raise ConfigError(
        f"distributed: no job to join. Give {name('coordinator_address')}=HOST:PORT (process 0's), "
        f"{name('num_processes')}=N and {name('process_id')}=I, or {ENV_COORDINATOR}, "
        f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}, or run in a TPU pod slice, SLURM or Open MPI "
        "job"
      ) from None
    raise ConfigError(f"distributed: {_first_line(e)}") from None
  except Exception as e:  # JAX's runtime errors (e.g. gRPC could not listen after all)
    _abandon()
    raise ConfigError(
      f"distributed: could not start the job at {coordinator_address or 'the detected address'}"
      f": {_first_line(e)}"
    ) from None
  finally:
    watch.stop()
  if jax.process_count() > 1:
    _Liveness.start(bind)


def _namer(names: dict[str, str] | None):
  """name("startup_timeout_seconds") -> that, or the caller's name for it ("--startup_timeout")."""
  names = names or {}
  return lambda argument: names.get(argument, argument)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _split_address(address: str) -> tuple[str, int]:
  """("host", port) of "host:port", "[v6]:port" or "v4:port"."""
  host, _, port = address.rpartition(":")
  if not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f"{address!r} must be host:port, with a port in 1..65535")
  return host.strip("[]"), int(port)


def _check_can_listen(bind_address: str, name) -> None:
  """ConfigError in one line unless this process can listen on `bind_address`, as the
  coordination service is about to: the port may be taken (another job, an earlier run still
  ending) or the address none of this machine's. Without this check gRPC fails with a long
  traceback, sometimes a segmentation fault, and the other processes wait in silence."""
  host, port = _split_address(bind_address)
  try:
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
  except socket.gaierror as e:
    raise ConfigError(
      f"distributed: cannot listen on {bind_address} (the coordinator, process 0): "
      f"{host!r} is no name this machine knows ({e.strerror})"
    ) from None
  for family, kind, proto, _, sockaddr in found:
    with socket.socket(family, kind, proto) as probe:
      # As gRPC binds: SO_REUSEADDR on, so that the TIME_WAIT connections of a job that just
      # ended do not block a relaunch on its port; SO_REUSEPORT off, so that a port another
      # coordinator listens on (gRPC sets SO_REUSEPORT: it would share the port) is refused.
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      if family == socket.AF_INET6 and sockaddr[0] == "::":
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as gRPC's [::]
      try:
        probe.bind(sockaddr)
        probe.listen(1)
      except OSError as e:
        if e.errno == errno.EADDRINUSE:
          raise ConfigError(
            f"distributed: the coordinator's port {port} is already in use on {host or 'this machine'}"
            f" ({bind_address}): another job, or an earlier run still ending, listens there. "
            f"Pick another port in {name('coordinator_address')} (the same in every process)"
          ) from None
        if e.errno == errno.EADDRNOTAVAIL:
          raise ConfigError(
            f"distributed: cannot listen on {bind_address}: no interface of this machine has "
            f"that address. Start process 0 on the host that {name('coordinator_address')} "
            f"names, or set {name('coordinator_bind_address')} to an address of this one"
          ) from None
        raise ConfigError(
          f"distributed: cannot listen on {bind_address} (the coordinator): {e.strerror}"
        ) from None


def _connected_count(port: int) -> int | None:
  """How many processes are connected to `port` on this machine (process 0: its peers and
  itself, one connection each); None where /proc/net does not say (not Linux). The least of a
  few looks: a waiting peer's probe (_answers) is a connection for a moment."""
  looks = []
  for look in range(3):
    if look:
      time.sleep(0.3)
    looks.append(_established(port))
  return None if None in looks else min(looks)


def _established(port: int) -> int | None:
  """How many TCP connections with local port `port` are established now."""
  count, seen = 0, False
  for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
      with open(table) as f:
        rows = f.read().splitlines()[1:]
    except OSError:
      continue
    seen = True
    for row in rows:
      fields = row.split()
      # local_address is HEXIP:HEXPORT; state 01 is ESTABLISHED.
      if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
        count += 1
  return count if seen else None


def _answers(address: str) -> bool:
  """Whether something accepts a TCP connection at host:port now."""
  try:
    host, port = _split_address(address)
    with socket.create_connection((host, port), timeout=2):
      return True
  except (OSError, ConfigError):
    return False


class _StartupWatch:
  """While jax.distributed.initialize waits for the job's processes: after
  WAITING_NOTICE_SECONDS one line saying what it waits for; at the deadline one line on
  stderr and os._exit(1) (the main thread is inside JAX's blocking connect: nothing to unwind,
  and JAX would otherwise abort later with a C++ stack)."""

  def __init__(self, address, bind, count, index, timeout, name):
    self.address, self.bind, self.count, self.index = address, bind, count, index
    self.timeout, self.name = float(timeout), name
    self._done = threading.Event()
    self._lock = threading.Lock()
    self._thread = threading.Thread(target=self._run, name="gen_jax-startup", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    with self._lock:  # After this the watchdog can no longer end the process.
      self._done.set()

  def _who(self) -> str:
    if self.index is None or self.count is None:
      return "this process"
    return f"process {self.index} of {self.count}"

  def _situation(self, final: bool = False) -> str:
    if self.address is None:
      return "at the address JAX detected"
    if self.index == 0:
      port = _split_address(self.bind or self.address)[1]
      connected = _connected_count(port)
      joined = (
        "" if connected is None else f"; {min(connected, self.count)} of {self.count} connected"
      )
      return f"at {self.address} (listening on {self.bind}{joined})"
    there = (
      "something listens there"  # process 0, or whatever holds its port: no telling which
      if _answers(self.address)
      else f"nothing answers there{'' if final else ' yet'}: is process 0 running, on that host "
      "and port?"
    )
    return f"at {self.address} ({there})"

  def _run(self) -> None:
    started = time.monotonic()
    if self._done.wait(min(WAITING_NOTICE_SECONDS, self.timeout / 2)):
      return
    situation = self._situation()
    with self._lock:
      if self._done.is_set():
        return
      print(
        f"Distributed: {self._who()} is waiting for the job's processes {situation}; gives up "
        f"after {self.timeout:g} s ({self.name('startup_timeout_seconds')})",
        flush=True,
      )
    if self._done.wait(max(0.0, self.timeout - (time.monotonic() - started))):
      return
    situation = self._situation(final=True)
    with self._lock:
      if self._done.is_set():
        return
      message = (
        f"error: {self._who()} gave up after {self.timeout:g} s waiting for the job's processes "
        f"{situation}. Start all of them with the same {self.name('coordinator_address')} and "
        f"{self.name('num_processes')}, or wait longer with {self.name('startup_timeout_seconds')}"
      )
      _say_and_exit(message)


class _Liveness:
  """Ends this process in one line as soon as a peer process of the job dies.

  JAX's coordination service notices a dead process only when its heartbeats stop (after
  --heartbeat_timeout), then aborts every survivor with ~100 lines of C++ stack and a Python
  thread dump; a survivor inside a collective gets gloo's "Connection reset by peer" traceback
  first, then waits for the heartbeat in JAX's exit handler. JAX's one hook, jaxlib's
  `missed_heartbeat_callback`, cannot call Python (the status it passes has no Python type:
  std::bad_cast, then std::terminate). A killed process's TCP connections, though, close at once.
  So process 0 listens on an ephemeral port (on the coordinator's bind address; published, with
  a random token, in the coordination service's key-value store) and every other process keeps
  one connection to it. A process that ends through Python's exit (done, an error line, a
  signal's graceful stop) says "bye" first (atexit, before JAX's own exit handler); a connection
  that closes without it is a death: the survivor prints gen_jax's line and exits with status 1
  (an exception in the meantime, such as gloo's, waits for that verdict: sys.excepthook), and
  process 0 tells the others which process died. Where that connection cannot be made (a
  firewall between hosts) or a whole host goes silent (no close), JAX's heartbeat remains the
  safety net.
  """

  KEY = "gen_jax/liveness"
  # Process 0 waits this long before ending on a peer's death, which may have the same cause as
  # its own coming end (SIGTERM to all at start-up): then its own line wins. The others end at
  # once when process 0 dies: JAX aborts them as soon as its connection closes too.
  GRACE_SECONDS = 1.0
  RELAY_SECONDS = 2.0  # process 0, at most, for the others to end on its news first

  _lock = threading.Lock()
  _exiting = False  # this process is ending through Python: peers' deaths are no news
  _dead: ClassVar[list[str]] = []  # who died ("process 1 of 2")
  _verdict = threading.Event()  # set once a death is known
  _sockets: ClassVar[list[socket.socket]] = []

  @classmethod
  def start(cls, bind: str | None) -> None:
    count, me = jax.process_count(), jax.process_index()
    try:
      if me == 0:
        try:
          listener, token = cls._listen(bind), secrets.token_hex(16)
        except OSError:
          _client().key_value_set(cls.KEY, "none")  # the others must not wait for it
          raise
        _client().key_value_set(cls.KEY, f"{listener.getsockname()[1]} {token}")
        cls._sockets.append(listener)
        target, args = cls._watch_peers, (listener, token, count)
      else:
        port, token = _client().blocking_key_value_get(cls.KEY, _CONFIG_WAIT_MS).split()
        host = _split_address(_global_state().coordinator_address)[0]
        connection = socket.create_connection((host, int(port)), timeout=10)
        connection.settimeout(None)
        connection.sendall(f"hello {token} {me}\n".encode())
        cls._sockets.append(connection)
        target, args = cls._watch_coordinator, (connection, count)
    except Exception:  # e.g. a firewall: JAX's heartbeat still ends the job
      return
    atexit.register(cls._bye)
    os.register_at_fork(after_in_child=cls._forget)
    sys.excepthook = cls._excepthook(sys.excepthook)
    threading.Thread(target=target, args=args, name="gen_jax-liveness", daemon=True).start()

  @staticmethod
  def _listen(bind: str | None) -> socket.socket:
    host = _split_address(bind)[0] if bind else ""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
      host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    if family == socket.AF_INET6 and sockaddr[0] == "::":
      listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(sockaddr)
    listener.listen(64)
    return listener

  @classmethod
  def _excepthook(cls, previous):
    def hook(kind, value, traceback):
      # An uncaught exception may be a peer's death seen first by a collective: the liveness
      # connection tells within moments, and then gen_jax's line replaces the traceback.
      if not issubclass(kind, KeyboardInterrupt):
        cls._verdict.wait(2 * cls.GRACE_SECONDS)
      if cls._dead:
        cls._end()
      previous(kind, value, traceback)

    return hook

  @classmethod
  def _bye(cls) -> None:
    """At a Python exit of this process: tell the peers it is no death, unless a peer's death
    is what ends it (then gen_jax's line, rather than JAX's exit handler waiting out the
    heartbeat for the dead peer and aborting)."""
    if cls._dead:
      cls._end()
    with cls._lock:
      cls._exiting = True
      for connection in cls._sockets:
        try:
          connection.sendall(b"bye\n")
        except OSError:
          pass

  @classmethod
  def _forget(cls) -> None:
    """In a forked child: its copies of the sockets must not keep a dead parent's open."""
    for connection in cls._sockets:
      connection.close()
    cls._sockets.clear()
    cls._exiting = True

  @classmethod
  def _watch_peers(cls, listener: socket.socket, token: str, count: int) -> None:
    """Process 0: accepts each peer's connection and watches it close."""
    peers: dict[socket.socket, int] = {}
    pending: dict[socket.socket, bytes] = {}
    while True:
      readable, _, _ = select.select([listener, *peers, *pending], [], [], 1.0)
      for connection in readable:
        if connection is listener:
          accepted, _ = listener.accept()
          pending[accepted] = b""
          continue
        try:
          data = connection.recv(4096)
        except OSError:
          data = b""
        if connection in pending:  # "hello TOKEN INDEX": a stranger's connection is dropped
          pending[connection] += data
          if data and b"\n" not in pending[connection]:
            continue
          words = pending.pop(connection).decode(errors="replace").split()
          if len(words) == 3 and words[:2] == ["hello", token] and words[2].isdigit():
            peers[connection] = int(words[2])
            with cls._lock:
              cls._sockets.append(connection)
          else:
            connection.close()
          continue
        peer = peers[connection]
        if b"bye" in data or not data:
          del peers[connection]
          connection.close()
        if not data:
          cls._record(f"process {peer} of {count}", f"lost {peer}\n".encode())
          time.sleep(cls.GRACE_SECONDS)
          # The others end on the news; were this process gone first, JAX in each of them would
          # abort at once on losing the coordinator, with its C++ stack before gen_jax's line.
          cls._await_close(list(peers), cls.RELAY_SECONDS)
          cls._end()
          return

  @staticmethod
  def _await_close(connections: list[socket.socket], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while connections and time.monotonic() < deadline:
      readable, _, _ = select.select(connections, [], [], max(0.0, deadline - time.monotonic()))
      for connection in readable:
        try:
          ended = not connection.recv(4096)
        except OSError:
          ended = True
        if ended:
          connections.remove(connection)

  @classmethod
  def _watch_coordinator(cls, connection: socket.socket, count: int) -> None:
    """Any other process: watches its connection to process 0 close."""
    who = f"process 0 of {count} (the coordinator)"
    received = b""
    while True:
      try:
        data = connection.recv(4096)
      except OSError:
        data = b""
      received += data
      if b"bye" in received:
        return
      relayed = received.split(b"lost ", 1)[1] if b"lost " in received else b""
      if b"\n" in relayed or not data:  # process 0 tells which peer died, or it died itself
        if relayed:
          peer = relayed.split(b"\n")[0].decode(errors="replace")
          who = f"process {peer} of {count}"
        cls._record(who)
        cls._end()
        return

  @classmethod
  def _record(cls, who: str, relay: bytes = b"") -> None:
    """A peer died: remembered (for the exit paths) and, by process 0, told to the others."""
    with cls._lock:
      if cls._exiting:
        return
      cls._dead.append(who)
      for connection in cls._sockets:
        try:
          connection.sendall(relay)
        except OSError:
          pass
    cls._verdict.set()

  @classmethod
  def _end(cls) -> None:
    """gen_jax's line, then os._exit(1): no exit handler, so not JAX's, which would wait out the
    heartbeat of the dead process and then abort with a C++ stack."""
    with cls._lock:
      if cls._exiting or not cls._dead:
        return
      cls._exiting = True
      message = (
        f"error: {cls._dead[0]} ended without a word (killed, or crashed: see its output), so the "
        f"job cannot go on; process {jax.process_index()} stops here. Start every process again "
        "with the same command (training resumes from the newest checkpoint)"
      )
      _say_and_exit(message)


def _say_and_exit(message: str) -> None:
  """gen_jax's one line on stderr (on a line of its own), then os._exit(1): no exit handler runs."""
  try:
    sys.stdout.flush()
  except Exception:  # a closed stdout: the line below still goes out
    pass
  os.write(2, (_fresh_line() + message + "\n").encode())
  os._exit(1)


def _fresh_line() -> str:
  """A newline when a progress bar is on stderr: its line has no end yet (tqdm redraws it with \\r), and
  the error must not be glued to it."""
  try:
    import tqdm

    return "\n" if getattr(tqdm.tqdm, "_instances", None) else ""
  except Exception:  # no tqdm, or a tqdm without the set of live bars: no bar to end
    return ""


def _abandon() -> None:
  """Drops a half-started JAX client and service, so that JAX's exit handler does not print a
  traceback about them after gen_jax's one line."""
  state = _global_state()
  for attribute in ("preemption_sync_manager", "client", "service"):
    setattr(state, attribute, None)


def summary() -> str:
  """One line: this process, the process count, local and global devices and their platform."""
  local, total = jax.local_device_count(), jax.device_count()
  return (
    f"Distributed: process {jax.process_index()} of {jax.process_count()}, "
    f"{local} local / {total} global devices ({jax.devices()[0].platform})"
  )


def _global_state():
  """JAX's distributed state: its client is the only way to the coordination service's key-value
  store (no public API). Pinned by tests/runtime/test_distributed_startup.py."""
  from jax._src import distributed

  return distributed.global_state


def _client():
  return _global_state().client


def config_fingerprint(config, job: str) -> str:
  """The canonical JSON of what every process must agree on: the job (experiment, mode,
  workdir: any string) and the whole config."""
  return json.dumps(
    {"job": job, "config": json.loads(config.to_json_best_effort())}, sort_keys=True
  )


def differences(mine: str, theirs: str) -> list[str]:
  """'path is THEIRS there, MINE here' for each leaf where two config_fingerprint()s differ."""
  show = lambda v: v if v == configs.ABSENT else json.dumps(v)
  return [
    f"{key} is {show(there)} there, {show(here)} here"
    for key, there, here in configs.differences(json.loads(theirs), json.loads(mine))
  ]


def check_same_config(config, job: str) -> None:
  """Raises ConfigError in every process unless all processes run the same `job` (e.g.
  "ddpm_digits --mode=train --workdir=/shared/run") with the same config.

  Each process publishes its config in the coordination service's key-value
  store and reads every peer's, so all of them reach the same verdict before
  any collective could pair mismatched programs. With one process it does nothing.
  """
  count = jax.process_count()
  if count == 1:
    return
  client, me = _client(), jax.process_index()
  mine = config_fingerprint(config, job)
  digest = hashlib.sha256(mine.encode()).hexdigest()[:16]
  client.key_value_set(f"gen_jax/config/{me}", mine)
  bad = []
  for peer in range(count):
    theirs = client.blocking_key_value_get(f"gen_jax/config/{peer}", _CONFIG_WAIT_MS)
    if theirs != mine:
      bad.append((peer, differences(mine, theirs)))
  if bad:
    peer, changes = bad[0]
    shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    raise ConfigError(
      f"process {me} of {count} was started differently from process {peer}: "
      f"{shown or 'the same values of other types'}. Start every process with the same command "
      f"(differing from this one: process {', '.join(str(p) for p, _ in bad)}; config digest "
      f"here {digest})"
    )
