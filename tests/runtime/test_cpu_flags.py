"""gen_jax.runtime.cpu_flags: which XLA flags are added, when, and that XLA accepts them."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gen_jax.runtime import cpu_flags
from tests.support import runs

YNN = "--xla_cpu_experimental_ynn_fusion_type"


def test_flags_only_where_measured():
  assert cpu_flags.default_cpu_flags("", "x86_64", (0, 10)) == [f"{YNN}=-individual_convolution"]
  assert cpu_flags.default_cpu_flags("", "arm64", (0, 10)) == []
  assert cpu_flags.default_cpu_flags("", "x86_64", (0, 11)) == []


def test_user_setting_wins():
  user = f"--xla_force_host_platform_device_count=2 {YNN}=+individual_convolution"
  assert cpu_flags.default_cpu_flags(user, "x86_64", (0, 10)) == []


def test_opt_out_and_no_change_after_backend_start():
  environ = {"GEN_JAX_CPU_FLAGS": "0", "XLA_FLAGS": "--foo"}
  assert cpu_flags.set_default_cpu_flags(environ) == []
  assert environ["XLA_FLAGS"] == "--foo"
  jax.devices()  # The backends of this process have started.
  if cpu_flags.default_cpu_flags(""):
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    with pytest.warns(UserWarning, match="before the first JAX computation"):
      assert cpu_flags.set_default_cpu_flags(environ) == []
    assert environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


@pytest.mark.slow
def test_installed_jaxlib_accepts_the_flags_and_convolves_correctly():
  """A fresh process sets the flags, then checks a convolution against the
  one computed here (an unknown flag would abort XLA)."""
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
  w = np.random.default_rng(1).normal(size=(3, 3, 3, 4)).astype(np.float32)
  reference = jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  code = f"""
import os, sys, numpy as np
sys.path.insert(0, {runs.REPO!r})
from gen_jax.runtime import cpu_flags
added = cpu_flags.set_default_cpu_flags()
import jax
x = np.asarray({x.tolist()!r}, np.float32)
w = np.asarray({w.tolist()!r}, np.float32)
y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
print(repr(added), os.environ.get("XLA_FLAGS", ""))
np.save(sys.argv[1], np.asarray(y))
"""
  out_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cpu_flags_{os.getpid()}.npy")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GEN_JAX_CPU_FLAGS")}
  result = subprocess.run(
    [sys.executable, "-c", code, out_file],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  for flag in cpu_flags.default_cpu_flags(""):
    assert flag in result.stdout
  np.testing.assert_allclose(np.load(out_file), np.asarray(reference), rtol=1e-5, atol=1e-5)
  os.remove(out_file)
