"""Ctrl-C and SIGTERM at any moment: the process ends promptly, in one line, with 128 + the signal.

  interrupts.install()   # run.py, first thing, before JAX is imported

Python's own SIGINT handler raises KeyboardInterrupt at whatever bytecode the
main thread runs next, and that may be inside a callback from XLA or
TensorStore (a garbage-collection hook, an asyncio task): there the exception
is printed as "Exception ignored in ..." and lost (the run goes on), or it
unwinds through C++ frames, and the interpreter's shutdown with XLA threads
still running can end in a segmentation fault (seen with --mode=eval). So no
exception is raised at all:
the handler writes one line, removes the temporary files being written
(gen_jax.runtime.fileio registers them) and ends the process with os._exit, which
runs no destructors. That is safe because every file gen_jax writes is
atomic (a temporary name, then a rename; orbax saves likewise) or, for the
appended metrics.jsonl, read back without a last line cut short, so a
process ended between two instructions leaves only whole files behind.

The Python-level handler runs only when the main thread next executes
bytecode, which may be minutes away while it waits inside one long XLA call.
So a watcher thread also wakes on every signal (signal.set_wakeup_fd) and
ends the process itself when this module's handler is the one installed.
The training loop installs its own handler for a graceful stop
(gen_jax.train.faults.StopOnSignal: finish the step, save, exit 130/143);
while that one is installed the watcher leaves the first signal to it and
ends the process on the second, as StopOnSignal itself would.
"""

import os
import signal
import socket
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"message": "{name} received: stopped at once; nothing half-written was left"}
_temporary_files: set[str] = set()
_deferred = {"count": 0}
_wakeup: list[socket.socket] = []  # the socket pair of the wakeup fd, kept open
_ending = threading.Lock()  # held by the thread that ends the process


def install(message: str | None = None) -> None:
  """Makes SIGINT and SIGTERM end the process at once (see the module docstring).

  message: the line printed to stderr, with `{name}` for the signal's name.
  Call from the main thread; a signal that is ignored (nohup) stays ignored.
  """
  if message is not None:
    _state["message"] = message
  for signum in SIGNALS:
    if signal.getsignal(signum) != signal.SIG_IGN:
      signal.signal(signum, handle)
  if not any(t.name == "gen_jax-interrupts" for t in threading.enumerate()):
    receive, send = socket.socketpair()
    send.setblocking(False)
    _wakeup[:] = [receive, send]
    signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(receive,), name="gen_jax-interrupts", daemon=True).start()


def set_message(message: str) -> None:
  """The line printed on a signal from now on (`{name}`: the signal's name)."""
  _state["message"] = message


def handle(signum, frame=None) -> None:
  """The signal handler: one line on stderr, temporary files removed, os._exit(128 + signum)."""
  # The main thread's handler and the watcher thread both see one signal: the first one ends the
  # process, the other waits for that (else the line was printed twice).
  if not _ending.acquire(blocking=False):
    threading.Event().wait()
  name = signal.Signals(signum).name
  try:
    os.write(2, ("\n" + _state["message"].format(name=name) + "\n").encode())
  except OSError:
    pass
  for path in list(_temporary_files):
    try:
      os.remove(path)
    except OSError:
      pass
  # Python's buffered output, from the main thread only: the watcher thread could wait forever
  # on a buffer's lock that a blocked main thread holds (the one line above is out already).
  if threading.current_thread() is threading.main_thread():
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # a closed stream: the line above is out all the same
        pass
  os._exit(128 + signum)


def register_temporary(path: str) -> None:
  """`path` is being written under a temporary name: removed if a signal ends the process."""
  _temporary_files.add(path)


def unregister_temporary(path: str) -> None:
  _temporary_files.discard(path)


def _watch(receive: socket.socket) -> None:
  """Wakes on each signal (its number arrives as one byte); see the module docstring."""
  while True:
    try:
      received = receive.recv(64)
    except OSError:
      return
    for signum in received:
      if signum not in SIGNALS:
        continue
      if signal.getsignal(signum) is handle:
        handle(signum)
      _deferred["count"] += 1  # a graceful handler has it: the second one ends the process
      if _deferred["count"] >= 2:
        handle(signum)
