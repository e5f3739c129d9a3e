"""Several JAX processes as one job (jax.distributed): start-up, the one-line summary, the
deliberate timeouts, and the check that every process runs the same config.

  initialize(coordinator_address, num_processes, process_id)   # before any JAX computation
  print(summary())        # "Distributed: process 0 of 2, 2 local / 4 global devices (cpu)"
  check_same_config(config, job)        # ConfigError in all if a peer differs

Where the peers come from: explicit arguments (run.py's --coordinator_address,
--num_processes, --process_id), else the environment variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, else JAX's own
detection of a TPU pod slice, SLURM or Open MPI job (all three left None).

When a process dies. JAX's coordination service (hosted by process 0) expects
a heartbeat from every process; once one has been silent for
`heartbeat_timeout_seconds`, the service tells the survivors, and JAX ends
each of them at once (an abort, exit status 134 on Linux) with a message
naming the lost process ("The following tasks are unhealthy (stopped sending
heartbeats): 1"; task N is process N). If process 0 itself dies, the others
abort too, at once when its connection closes (measured: 1 s on one machine),
else when their heartbeats go unanswered. So a job that loses a process ends
everywhere within about the heartbeat timeout (measured: 3.2-5.8 s with 5 s,
2 processes on one machine), rather than waiting in a collective forever, and
relaunching it resumes from the newest checkpoint. `shutdown_timeout_seconds`
bounds how long a finishing process waits at exit for its peers to finish
as well.
"""

import hashlib
import json
import os

import jax

from gen_jax import configs
from gen_jax.configs import ConfigError

# Lower than JAX's defaults (100 s, 300 s): a lost process is noticed in half a minute. The
# heartbeat runs on its own thread, so long steps or long compilations do not trip it.
HEARTBEAT_TIMEOUT_SECONDS = 30
SHUTDOWN_TIMEOUT_SECONDS = 60
INITIALIZATION_TIMEOUT_SECONDS = 300
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# How long a process waits for its peers' configs at start-up.
_CONFIG_WAIT_MS = 120_000


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
  initialization_timeout_seconds: int = INITIALIZATION_TIMEOUT_SECONDS,
) -> None:
  """jax.distributed.initialize with gen_jax's timeouts; call it before any JAX computation.

  On CPU the cross-process collectives go through gloo (JAX's CPU backend has
  none by default); GPU and TPU backends ignore that setting.
  """
  coordinator_address, num_processes, process_id = launch_settings(
    coordinator_address, num_processes, process_id
  )
  if heartbeat_timeout_seconds < 1 or shutdown_timeout_seconds < 1:
    raise ConfigError(
      f"heartbeat_timeout={heartbeat_timeout_seconds} and shutdown_timeout="
      f"{shutdown_timeout_seconds} must be at least 1 second"
    )
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address,
    num_processes,
    process_id,
    initialization_timeout=int(initialization_timeout_seconds),
    heartbeat_timeout_seconds=int(heartbeat_timeout_seconds),
    shutdown_timeout_seconds=int(shutdown_timeout_seconds),
  )


def summary() -> str:
  """One line: this process, the process count, local and global devices and their platform."""
  local, total = jax.local_device_count(), jax.device_count()
  return (
    f"Distributed: process {jax.process_index()} of {jax.process_count()}, "
    f"{local} local / {total} global devices ({jax.devices()[0].platform})"
  )


def _client():
  from jax._src import distributed  # The runtime's key-value store has no public API.

  return distributed.global_state.client


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
