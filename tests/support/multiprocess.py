"""Several `python run.py --distributed` processes on localhost, as one JAX job: the helper every
multi-process test uses.

  procs = start(env, cwd, 2, 2, *args)       # 2 processes x 2 CPU devices, a fresh coordinator port
  results = wait(procs, timeout=300)         # [Finished(returncode, stdout, stderr)], in process order
  results = launch(env, cwd, 2, 2, *args)    # both at once; any non-zero exit fails the test

Every process gets the same arguments plus --distributed, --coordinator_address,
--num_processes and --process_id (and `per_process[i]`, if given). Output goes
to files, never pipes (a full pipe would stall a process and with it the job).
`wait` has a hard deadline: past it every process is killed and the test fails
with their output, so a hang fails CI instead of hanging it.
"""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tests.support.runs import RUN_PY

TIMEOUT = 300  # seconds for a whole job


@dataclasses.dataclass
class Process:
  """A started run.py process and the files its output goes to."""

  index: int
  popen: subprocess.Popen
  stdout_path: str
  stderr_path: str

  @property
  def pid(self) -> int:
    return self.popen.pid

  def output(self) -> tuple[str, str]:
    with open(self.stdout_path) as out, open(self.stderr_path) as err:
      return out.read(), err.read()


@dataclasses.dataclass
class Finished:
  index: int
  returncode: int
  stdout: str
  stderr: str
  seconds: float  # from wait()'s call to this process' exit

  @property
  def output(self) -> str:
    return self.stdout + self.stderr


def free_port() -> int:
  """A TCP port nobody listens on now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(
  env: dict,
  cwd,
  num_processes: int,
  devices_per_process: int,
  *args: str,
  per_process: list[list[str]] | None = None,
  heartbeat_timeout: int | None = None,
  via_environment: bool = False,
) -> list[Process]:
  """Starts `num_processes` run.py processes of one job, each with `devices_per_process` CPU
  devices; returns at once. The coordinator, process count and index go in as flags, or with
  `via_environment` as JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
  port = free_port()
  env = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  logs = tempfile.mkdtemp(prefix="gen_jax_multiprocess_")
  processes = []
  for i in range(num_processes):
    peers = {
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "JAX_NUM_PROCESSES": str(num_processes),
      "JAX_PROCESS_ID": str(i),
    }
    command = [
      sys.executable,
      RUN_PY,
      *args,
      "--distributed",
      *([] if via_environment else [f"--{k[4:].lower()}={v}" for k, v in peers.items()]),
      *([f"--heartbeat_timeout={heartbeat_timeout}"] if heartbeat_timeout else []),
      *(per_process[i] if per_process else []),
    ]
    process_env = dict(env, **peers) if via_environment else env
    out, err = os.path.join(logs, f"{i}.out"), os.path.join(logs, f"{i}.err")
    with open(out, "w") as stdout, open(err, "w") as stderr:
      popen = subprocess.Popen(command, cwd=cwd, env=process_env, stdout=stdout, stderr=stderr)
    processes.append(Process(i, popen, out, err))
  return processes


def wait(processes: list[Process], timeout: float = TIMEOUT) -> list[Finished]:
  """Waits for every process; past `timeout` seconds kills them all and fails with their output."""
  start_time = time.monotonic()
  deadline = start_time + timeout
  ended = {}
  while len(ended) < len(processes):
    for p in processes:
      if p.index not in ended and p.popen.poll() is not None:
        ended[p.index] = time.monotonic() - start_time
    if time.monotonic() > deadline:
      kill(processes)
      shown = "\n".join(f"--- process {p.index}:\n{''.join(p.output())[-3000:]}" for p in processes)
      raise AssertionError(f"the job did not end within {timeout} s; killed it\n{shown}")
    time.sleep(0.05)
  return [Finished(p.index, p.popen.returncode, *p.output(), ended[p.index]) for p in processes]


def kill(processes: list[Process], signum: int = signal.SIGKILL) -> None:
  """Sends `signum` to every process still running (each by its own pid)."""
  for p in processes:
    if p.popen.poll() is None:
      p.popen.send_signal(signum)
  if signum == signal.SIGKILL:
    for p in processes:
      p.popen.wait()


def launch(
  env: dict,
  cwd,
  num_processes: int,
  devices_per_process: int,
  *args: str,
  check: bool = True,
  timeout: float = TIMEOUT,
  **kwargs,
) -> list[Finished]:
  """start() then wait(); with check, a non-zero exit of any process fails with all outputs."""
  results = wait(start(env, cwd, num_processes, devices_per_process, *args, **kwargs), timeout)
  if check and any(r.returncode for r in results):
    shown = "\n".join(f"--- process {r.index} (exit {r.returncode}):\n{r.output}" for r in results)
    raise AssertionError(f"run.py {' '.join(args)} failed:\n{shown}")
  return results
