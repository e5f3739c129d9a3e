"""Converts pytorch-fid's Inception weights (.pth) to the .npz that --inception_weights reads, without PyTorch.

  python scripts/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth pt_inception-2015-12-05.npz

The .pth is pytorch-fid's port of TensorFlow's FID Inception graph (see the README for where to download it). The
.npz holds the state dict unchanged: one float32 array per PyTorch name (e.g. 'Mixed_6b.branch7x7_2.conv.weight',
PyTorch layout); gen_jax.evaluation.inception transposes it into Flax's layout when loading, and checks every name and shape
(this script checks them too, when gen_jax is importable).

PyTorch files are pickles that point at raw tensor storage. They are read here with a restricted unpickler that
builds only ordered dicts and numpy arrays (any other class in the file is refused), in both of PyTorch's formats:
the zip archive of torch >= 1.6 (`<name>/data.pkl` + `<name>/data/<key>`) and the older "legacy" stream (magic
number, protocol, system info, the pickled object, the storage keys, then each storage as an int64 element count and
its bytes).
"""

import argparse
import collections
import hashlib
import io
import os
import pickle
import sys
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
EXPECTED_SHA256_PREFIX = (
  "6726825d"  # pytorch-fid's file name carries its sha256's first 8 hex digits
)

_STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class _StorageType:
  def __init__(self, name):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A storage whose bytes may arrive after the pickle (legacy format)."""

  def __init__(self, dtype, numel):
    self.dtype, self.numel, self.array = dtype, numel, None


class _Tensor:
  """A tensor to build once its storage is read: storage[offset:] viewed with size and stride (elements)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def build(self) -> np.ndarray:
    data = self.storage.array
    if data is None:
      raise ValueError("a tensor refers to a storage that the file does not contain")
    if not self.size:
      return np.array(data[self.offset])
    needed = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if any(n == 0 for n in self.size):
      return np.zeros(self.size, data.dtype)
    if needed > len(data):
      raise ValueError(f"a tensor of size {self.size} reads past the end of its storage")
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(
      data[self.offset :], self.size, [s * item for s in self.stride]
    )
    return np.array(view)  # a contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  """Builds ordered dicts, storages and tensors; refuses every other global (no code runs from the file)."""

  def __init__(self, file, persistent_load):
    super().__init__(file)
    self._persistent_load = persistent_load

  def persistent_load(self, pid):
    return self._persistent_load(pid)

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
      f"refusing {module}.{name}: not part of a plain state dict of tensors"
    )


def _storage_dtype(storage_type) -> np.dtype:
  if not isinstance(storage_type, _StorageType):
    raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
  return storage_type.dtype


def _read_zip(path: str):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ValueError(f"{path}: a PyTorch zip file has one data.pkl, found {pickles}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = (
      archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
    )
    storages = {}

    def persistent_load(pid):
      kind, storage_type, key, _location, numel = pid[:5]
      if kind != "storage":
        raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
      if key not in storages:
        dtype = _storage_dtype(storage_type).newbyteorder("<" if byteorder == "little" else ">")
        storage = _Storage(dtype, numel)
        storage.array = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype).astype(
          dtype.newbyteorder("=")
        )
        storages[key] = storage
      return storages[key]

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), persistent_load).load()


def _read_legacy(path: str):
  with open(path, "rb") as f:
    load = lambda: pickle.Unpickler(f).load()
    magic = load()
    if magic != LEGACY_MAGIC:
      raise ValueError(
        f"{path} is neither a zip archive nor a legacy PyTorch file (magic {magic!r})"
      )
    load()  # protocol version
    sys_info = load()
    if not sys_info.get("little_endian", True):
      raise ValueError(f"{path} was written on a big-endian machine; not supported")
    storages = {}

    def persistent_load(pid):
      kind = pid[0]
      if kind == "module":
        return None
      if kind != "storage":
        raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
      storage_type, key, _location, numel, view_metadata = pid[1:6]
      if key not in storages:
        storages[key] = _Storage(_storage_dtype(storage_type), numel)
      if view_metadata is not None:
        raise pickle.UnpicklingError("storage views (pre-1.0 PyTorch files) are not supported")
      return storages[key]

    result = _Unpickler(f, persistent_load).load()
    keys = load()
    for key in keys:
      storage = storages[key]
      numel = int(np.frombuffer(f.read(8), "<i8")[0])
      data = f.read(numel * storage.dtype.itemsize)
      if len(data) != numel * storage.dtype.itemsize:
        raise ValueError(f"{path} is truncated")
      storage.array = np.frombuffer(data, storage.dtype.newbyteorder("<")).astype(storage.dtype)
    return result


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict file as {name: numpy array}, without PyTorch."""
  obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, _Tensor):
      raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
    out[name] = value.build()
  return out


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("pth", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("npz", help="output .npz, for --inception_weights")
  args = parser.parse_args(argv)
  digest = sha256(args.pth)
  print(f"sha256 {digest}")
  if not digest.startswith(EXPECTED_SHA256_PREFIX):
    print(
      f"warning: pytorch-fid's file has a sha256 starting with {EXPECTED_SHA256_PREFIX}; this one does not, "
      "so figures made with it are not the published FID",
      file=sys.stderr,
    )
  state_dict = {
    k: v for k, v in read_state_dict(args.pth).items() if not k.endswith("num_batches_tracked")
  }
  state_dict = {
    k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
    for k, v in state_dict.items()
  }
  try:  # Check names and shapes against the Flax network when gen_jax is importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from gen_jax.evaluation import inception
  except ImportError:
    print("gen_jax not importable: names and shapes not checked")
  else:
    inception.variables_from_state_dict(state_dict, source=args.pth)
    print("names and shapes fit gen_jax.evaluation.inception.FIDInceptionV3")
  # Written under a temporary name, then renamed; by hand, not with gen_jax.runtime.fileio: this script
  # also runs where gen_jax is not importable (numpy alone).
  tmp = args.npz + ".tmp.npz"
  np.savez(tmp, **state_dict)
  os.replace(tmp, args.npz)
  total = sum(v.size for v in state_dict.values())
  print(f"wrote {len(state_dict)} arrays ({total:,} numbers) to {args.npz}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
