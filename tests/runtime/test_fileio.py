"""gen_jax.runtime.fileio: atomic writes leave the old file or the new one, and no temporary file."""

import os

import numpy as np
import pytest

from gen_jax.runtime import fileio


def test_write_atomically_text_and_bytes(tmp_path):
  path = str(tmp_path / "a.json")
  fileio.write_atomically(path, "old")
  fileio.write_atomically(path, "new")
  assert open(path).read() == "new"
  fileio.write_atomically(path, b"\x00\x01")
  assert open(path, "rb").read() == b"\x00\x01"
  assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_path_keeps_the_extension_for_format_sniffing_writers(tmp_path):
  path = str(tmp_path / "samples.npz")
  with fileio.atomic_path(path) as tmp:
    assert tmp.endswith(".npz") and tmp != path
    np.savez(tmp, x=np.arange(3))
  np.testing.assert_array_equal(np.load(path)["x"], np.arange(3))
  assert os.listdir(tmp_path) == ["samples.npz"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "eval.json")
  fileio.write_atomically(path, "old")
  with pytest.raises(RuntimeError), fileio.atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write("half")
    raise RuntimeError("killed")
  assert open(path).read() == "old"
  assert os.listdir(tmp_path) == ["eval.json"]
