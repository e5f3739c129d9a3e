"""XLA flags that make gen_jax's convolutional models faster on a CPU.

XLA reads the XLA_FLAGS environment variable once, when its backend starts
(at the first computation, not at `import jax`), so `set_default_cpu_flags()`
must run before that: run.py and benchmarks/run.py call it first thing.

A flag is added only
  * when XLA_FLAGS does not already name it (the user's setting wins),
  * on the jaxlib versions and machines where it was measured (XLA aborts
    on a flag it does not know, and a kernel choice measured on one CPU is a
    guess on another),
  * unless GEN_JAX_CPU_FLAGS=0 is set (to measure without them).

The flags, and what they gave on 2 AMD Zen-4 cores with jaxlib 0.10.2
(`python benchmarks/run.py --quick`, and the commands in the README's
performance section):

  --xla_cpu_experimental_ynn_fusion_type=-individual_convolution
      Runs convolutions in XLA's Eigen kernels instead of YNNPACK's: the
      ddpm_cifar training step is about 6% faster at batch 8 and 14% at
      batch 32, a forward pass at batch 16 about 7%. Matmuls and element-wise
      fusions stay in YNNPACK, where they are faster.

GPU and TPU backends ignore these flags.

Simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) are
not a flag here but a mode the training loop must know: see
`steps_must_not_overlap()`.
"""

import os
import platform
import warnings

# (flag name, value, jaxlib (major, minor) versions it was measured on).
_FLAGS = (("xla_cpu_experimental_ynn_fusion_type", "-individual_convolution", {(0, 10)}),)
_MACHINES = ("x86_64", "AMD64")


def _jaxlib_version() -> tuple[int, int]:
  import jaxlib

  major, minor = jaxlib.__version__.split(".")[:2]
  return int(major), int(minor)


def default_cpu_flags(
  xla_flags: str = "", machine: str | None = None, jaxlib_version: tuple[int, int] | None = None
) -> list[str]:
  """The flags set_default_cpu_flags() would add to an XLA_FLAGS of
  `xla_flags` on this machine (or the given one), as `--name=value` strings."""
  machine = platform.machine() if machine is None else machine
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  if machine not in _MACHINES:
    return []
  return [
    f"--{name}={value}"
    for name, value, versions in _FLAGS
    if version in versions and f"--{name}" not in xla_flags
  ]


def _backends_started() -> bool:
  try:  # jax has no public API for this; without it, trust the caller.
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def set_default_cpu_flags(environ=None) -> list[str]:
  """Adds default_cpu_flags() to XLA_FLAGS in `environ` (os.environ).

  Returns the flags added. If XLA's backends have already started (run.py
  imported by a running program, say), the flags could no longer take
  effect: it warns and changes nothing.
  """
  environ = os.environ if environ is None else environ
  if environ.get("GEN_JAX_CPU_FLAGS", "1") == "0":
    return []
  current = environ.get("XLA_FLAGS", "")
  added = default_cpu_flags(current)
  if not added:
    return []
  if _backends_started():
    warnings.warn(
      "gen_jax.runtime.cpu_flags: XLA has already started, so its CPU flags "
      f"{added} are not set; call set_default_cpu_flags() before the "
      "first JAX computation",
      stacklevel=2,
    )
    return []
  environ["XLA_FLAGS"] = " ".join([current] + added).strip()
  return added


def steps_must_not_overlap() -> bool:
  """Whether the training loop must wait for each step before dispatching the next: on several
  CPU devices of one process (simulated with --xla_force_host_platform_device_count).

  There XLA:CPU runs every device's part of a program on a thread of one pool (as many threads
  as devices) that stays blocked until that part ends, and an all-reduce holds its threads until
  every device has joined. With the next step dispatched while one runs, the two steps' parts
  share the pool, an all-reduce can be left waiting for a device whose part finds no free
  thread, and after 40 s XLA aborts the process (exit 134; jaxlib 0.10.2, 9 of 13 cold 8-device
  ddpm_toy2d runs on 2 loaded cores). Waiting for each step: 0 of 5, and faster there.
  """
  import jax

  return jax.default_backend() == "cpu" and jax.local_device_count() > 1
