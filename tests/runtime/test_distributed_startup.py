"""Multi-process start-up as a user meets it: a missing peer, a taken port, no job at all, the
coordinator's bind address, a lost peer, and the private JAX APIs gen_jax relies on.

The processes are run.py subprocesses (tests/support/multiprocess.py: output to files, a hard
deadline, every child killed in a `finally`); some start only one process of a 2-process job, so
that it waits for a peer that never comes.
"""

import inspect
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import jax
import pytest

from gen_jax.runtime import distributed
from tests.support import multiprocess
from tests.support import runs as support

env = support.env_fixture()

TOY2D = {
  "model.width": 8,
  "model.num_blocks": 1,
  "diffusion.num_timesteps": 10,
  "data.batch_size": 4,
  "train.num_steps": 2,
  "train.log_every": 1,
  "train.checkpoint_every": 2,
  "train.sample_every": 1000,
  "sample.num_samples": 4,
  "sample.sampler": "ddim",
  "sample.num_steps": 2,
}


def toy2d(workdir) -> list[str]:
  return [*support.flags("ddpm_toy2d", TOY2D), f"--workdir={workdir}"]


def start_one(env, cwd, index, count, port, *args) -> multiprocess.Process:
  """Process `index` of a `count`-process job at 127.0.0.1:port, alone (its peers never start)."""
  logs = tempfile.mkdtemp(prefix="gen_jax_startup_")
  command = [
    sys.executable,
    support.RUN_PY,
    *args,
    "--distributed",
    f"--coordinator_address=127.0.0.1:{port}",
    f"--num_processes={count}",
    f"--process_id={index}",
  ]
  out, err = os.path.join(logs, f"{index}.out"), os.path.join(logs, f"{index}.err")
  with open(out, "w") as stdout, open(err, "w") as stderr:
    popen = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
  return multiprocess.Process(index, popen, out, err)


def answers(host: str, port: int) -> bool:
  try:
    with socket.create_connection((host, port), timeout=2):
      return True
  except OSError:
    return False


def other_addresses() -> list[str]:
  """Addresses of this machine other than 127.0.0.1, where a job bound to 127.0.0.1 must not
  answer: 127.0.0.2 (the loopback's, on Linux) and those of its other interfaces, if any."""
  found = ["127.0.0.2"] if sys.platform == "linux" else []
  try:
    listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    listed = ""
  found += [a for a in listed.split() if ":" not in a and not a.startswith("127.")]
  return found


def one_line(stderr: str) -> str:
  """The one line on stderr, besides the progress bar's."""
  lines = [
    line
    for line in stderr.replace("\r", "\n").splitlines()
    if line.strip() and not re.match(r"[\w ]+:\s*\d+%\|", line)
  ]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# No job, and experiments that run themselves


@pytest.mark.slow
def test_distributed_without_a_job_to_join_is_one_line(env, tmp_path):
  """Before: a 22-line traceback ending in JAX's `ValueError: coordinator_address should be
  defined.`"""
  result = support.run_py(env, tmp_path, *toy2d(tmp_path / "run"), "--distributed", check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  line = one_line(result.stderr)
  assert line.startswith("error: distributed: no job to join. Give --coordinator_address="), line
  assert "JAX_COORDINATOR_ADDRESS" in line and "SLURM" in line
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_experiment_that_runs_itself_refuses_distributed(env, tmp_path):
  """mle_toy's run() is one process. Before: started as 2 processes with a coordinator (even a
  closed port) each trained alone and exited 0, both writing the same workdir."""
  workdir = tmp_path / "mle"
  result = support.run_py(
    env,
    tmp_path,
    "--experiment=mle_toy",
    f"--workdir={workdir}",
    "--config.num_steps=2",
    "--distributed",
    "--coordinator_address=127.0.0.1:1",
    "--num_processes=2",
    "--process_id=1",
    check=False,
    timeout=120,
  )
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
  assert one_line(result.stderr) == (
    "error: --experiment=mle_toy runs in one process: start it once, without --distributed"
  )
  assert not workdir.exists()


def test_mle_toy_refuses_a_multi_process_job_when_called_as_a_library(monkeypatch, tmp_path):
  from experiments import mle_toy
  from gen_jax.configs import ConfigError

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ConfigError, match="runs in one process"):
    mle_toy.run(mle_toy.get_config(), str(tmp_path / "mle"))
  assert not (tmp_path / "mle").exists()


# ----------------------------------------------------------------------------------------------------------------
# Waiting for peers, a taken port, the bind address


@pytest.mark.slow
def test_a_process_whose_peer_never_comes_says_so_and_gives_up_in_one_line(env, tmp_path):
  """Process 1 alone (nothing at the coordinator's address) and process 0 alone (listening, its
  peer absent). Before: silence for 300 s, then exit 134 and a C++ stack ("another task died");
  --startup_timeout did not exist."""
  for index in (1, 0):
    port = multiprocess.free_port()
    job = [
      start_one(env, tmp_path, index, 2, port, *toy2d(tmp_path / "run"), "--startup_timeout=4")
    ]
    started = time.monotonic()
    try:
      [result] = multiprocess.wait(job, timeout=120)
    finally:
      multiprocess.kill(job)
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.output[-3000:]
    waiting = [line for line in result.stdout.splitlines() if "is waiting" in line]
    assert len(waiting) == 1, result.stdout
    assert waiting[0].startswith(
      f"Distributed: process {index} of 2 is waiting for the job's processes at 127.0.0.1:{port}"
    ), waiting[0]
    assert waiting[0].endswith("gives up after 4 s (--startup_timeout)"), waiting[0]
    line = one_line(result.stderr)
    assert line.startswith(f"error: process {index} of 2 gave up after 4 s waiting"), line
    if index == 0:
      assert f"(listening on 127.0.0.1:{port}; 1 of 2 connected)" in line, line
    else:
      assert "nothing answers there: is process 0 running" in line, line
    assert "--startup_timeout" in line
    assert seconds < 60, seconds  # imports, then 4 s
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_taken_coordinator_port_is_one_line(env, tmp_path):
  """Taken by a plain listener, and by one with SO_REUSEPORT (as another job's coordinator:
  gRPC would have shared the port with it). Before: a segmentation fault (139) in 2 of 7 tries,
  else a 24-line `Failed to start RPC server` traceback."""
  for reuse_port in (False, True):
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
      if reuse_port:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      taken.bind(("127.0.0.1", 0))
      taken.listen(1)
      port = taken.getsockname()[1]
      job = [start_one(env, tmp_path, 0, 2, port, *toy2d(tmp_path / "run"))]
      try:
        [result] = multiprocess.wait(job, timeout=60)
      finally:
        multiprocess.kill(job)
    finally:
      taken.close()
    assert result.returncode == 1, result.output[-3000:]
    assert one_line(result.stderr) == (
      f"error: distributed: the coordinator's port {port} is already in use on 127.0.0.1 "
      f"(127.0.0.1:{port}): another job, or an earlier run still ending, listens there. Pick "
      "another port in --coordinator_address (the same in every process)"
    )
    assert not (tmp_path / "run").exists()


def test_the_port_check_lets_a_relaunch_reuse_a_port_in_time_wait():
  """The connections of a job that just ended linger in TIME_WAIT on its port; gRPC (with
  SO_REUSEADDR) can listen there again, so the check must not refuse it."""
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  port = server.getsockname()[1]
  client = socket.create_connection(("127.0.0.1", port))
  accepted, _ = server.accept()
  accepted.close()  # the server side closes first: its end waits in TIME_WAIT
  server.close()
  client.close()
  distributed._check_can_listen(f"127.0.0.1:{port}", distributed._namer(None))
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    with pytest.raises(distributed.ConfigError, match="already in use"):
      distributed._check_can_listen(f"127.0.0.1:{busy.getsockname()[1]}", distributed._namer(None))


@pytest.mark.slow
def test_the_coordinator_listens_only_on_the_address_given(env, tmp_path):
  """--coordinator_address=127.0.0.1:P: nothing answers on this machine's other addresses.
  Before: JAX bound [::]:P, every interface. --coordinator_bind_address=0.0.0.0:P widens it."""
  others = other_addresses()
  if not others:
    pytest.skip("no address of this machine other than 127.0.0.1")
  for bind in (None, "0.0.0.0"):
    port = multiprocess.free_port()
    extra = [f"--coordinator_bind_address={bind}:{port}"] if bind else []
    job = [start_one(env, tmp_path, 0, 2, port, *toy2d(tmp_path / "run"), *extra)]
    try:
      deadline = time.monotonic() + 60
      while not answers("127.0.0.1", port):
        assert job[0].popen.poll() is None, "".join(job[0].output())[-3000:]
        assert time.monotonic() < deadline, "the coordinator never listened"
        time.sleep(0.1)
      reached = [address for address in others if answers(address, port)]
    finally:
      multiprocess.kill(job)
    assert reached == ([] if bind is None else others), (bind, reached)


# ----------------------------------------------------------------------------------------------------------------
# The private JAX APIs gen_jax uses: fail loudly when JAX changes them


def test_the_private_jax_apis_gen_jax_uses_are_still_there():
  """distributed._global_state() (the key-value store: check_same_config) and the arguments of
  jax.distributed.initialize that distributed.initialize passes."""
  from jax._src import distributed as jax_distributed
  from jax._src.lib import _jax

  state = jax_distributed.global_state
  for attribute in ("client", "service", "preemption_sync_manager"):
    assert hasattr(state, attribute), attribute
  assert distributed._global_state() is state
  for method in ("key_value_set", "blocking_key_value_get"):
    assert hasattr(_jax.DistributedRuntimeClient, method), method
  parameters = inspect.signature(jax.distributed.initialize).parameters
  assert hasattr(state, "coordinator_address")  # set by initialize: the liveness connection's host
  for argument in (
    "initialization_timeout",
    "coordinator_bind_address",
    "heartbeat_timeout_seconds",
    "shutdown_timeout_seconds",
  ):
    assert argument in parameters, argument


@pytest.mark.slow
def test_a_one_process_job_reads_and_writes_the_key_value_store(tmp_path):
  """The store through distributed._client(), in a real (one-process) job."""
  port = multiprocess.free_port()
  code = (
    "from gen_jax.runtime import distributed as d\n"
    f"d.initialize('127.0.0.1:{port}', 1, 0, startup_timeout_seconds=30)\n"
    "d._client().key_value_set('gen_jax/test', 'value')\n"
    "print(d._client().blocking_key_value_get('gen_jax/test', 10_000))\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=support.REPO,
    env=support.subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "value"


# ----------------------------------------------------------------------------------------------------------------
# How a job ends: each process's last line, a killed peer


def last_step(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = [line for line in f if line.endswith("\n")]
  return len(lines)


@pytest.mark.slow
def test_every_process_says_one_line_at_the_end(env, tmp_path):
  """Before: process 1 printed nothing about finishing."""
  workdir = tmp_path / "run"
  results = multiprocess.launch(env, tmp_path, 2, 1, *toy2d(workdir), timeout=240)
  assert f"Done: 2 steps in {workdir}" in results[0].stdout, results[0].stdout
  assert results[1].stdout.strip().splitlines()[-1] == (
    f"Process 1 of 2: done (--mode=train); process 0 wrote the outputs in {workdir}"
  ), results[1].stdout


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_ends_the_other_in_one_line_first(env, tmp_path, victim):
  """kill -9 of one process mid-training: the other prints gen_jax's line, nothing else on
  stderr, and exits 1 within seconds (long before --heartbeat_timeout=30). Before: exit 134
  after the heartbeat timeout (or about 1 s for a lost process 0) with ~100 lines of C++
  stack and a Python thread dump, the only message inside them."""
  workdir = tmp_path / "run"
  args = [
    *toy2d(workdir),
    "--config.train.num_steps=100000",
    "--config.train.checkpoint_every=1000",
  ]
  job = multiprocess.start(env, tmp_path, 2, 1, *args)
  try:
    deadline = time.monotonic() + 240
    while last_step(workdir) < 2:
      assert all(p.popen.poll() is None for p in job), [p.output() for p in job]
      assert time.monotonic() < deadline, "training never started"
      time.sleep(0.1)
    job[victim].popen.kill()
    killed = time.monotonic()
    survivor = multiprocess.wait([job[1 - victim]], timeout=60)[0]
    seconds = time.monotonic() - killed
  finally:
    multiprocess.kill(job)
  print(f"the survivor ended {seconds:.1f} s after kill -9 of process {victim}")
  assert survivor.returncode == 1, survivor.output[-3000:]
  who = f"process {victim} of 2" + (" (the coordinator)" if victim == 0 else "")
  line = (
    f"error: {who} ended without a word (killed, or crashed: see its output), so the job cannot "
    f"go on; process {1 - victim} stops here. Start every process again with the same command "
    "(training resumes from the newest checkpoint)"
  )
  if victim == 1:
    assert one_line(survivor.stderr) == line
  else:
    # JAX in process 1 sees process 0's connections close at the same moment as gen_jax, and
    # may log a few lines first (2 of 6 tries); gen_jax's line ends the process before JAX's
    # C++ stack and the thread dump.
    assert survivor.stderr.rstrip().endswith(line), survivor.stderr[-3000:]
    assert "Check failure stack trace" not in survivor.stderr
    assert "Fatal Python error" not in survivor.stderr
  assert seconds < 15, seconds


@pytest.mark.slow
def test_process_0_tells_the_others_which_process_died(env, tmp_path):
  """3 processes, kill -9 of process 2: process 0 sees it, tells process 1, and waits for it to
  end before ending itself (else JAX in process 1 would abort first, on losing the coordinator):
  both print gen_jax's line naming process 2, and nothing else."""
  workdir = tmp_path / "run"
  args = [*toy2d(workdir), "--config.train.num_steps=100000", "--config.data.batch_size=6"]
  job = multiprocess.start(env, tmp_path, 3, 1, *args)
  try:
    deadline = time.monotonic() + 300
    while last_step(workdir) < 2:
      assert all(p.popen.poll() is None for p in job), [p.output() for p in job]
      assert time.monotonic() < deadline, "training never started"
      time.sleep(0.1)
    job[2].popen.kill()
    survivors = multiprocess.wait(job[:2], timeout=60)
  finally:
    multiprocess.kill(job)
  for r in survivors:
    assert r.returncode == 1, r.output[-3000:]
    assert one_line(r.stderr) == (
      "error: process 2 of 3 ended without a word (killed, or crashed: see its output), so the "
      f"job cannot go on; process {r.index} stops here. Start every process again with the same "
      "command (training resumes from the newest checkpoint)"
    )
