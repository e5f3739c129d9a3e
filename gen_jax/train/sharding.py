"""Data parallelism, and optionally sharded parameters (FSDP), with jax.sharding: the one
module that builds meshes and shardings.

The mesh has two axes, ('data', 'fsdp'), of sizes (devices / fsdp, fsdp),
over every device of every process. The batch is split along both axes
(every device sees its own examples). With config.mesh.fsdp = 1 (the default)
parameters, optimizer state and EMA are replicated: pure data parallelism.
With fsdp = k > 1 each array of the train state is split k ways along its
largest axis that k divides (`fsdp_spec`); arrays smaller than
MIN_SHARDED_SIZE elements, or with no such axis, stay replicated. XLA then
gathers each weight where the step uses it and reduce-scatters its gradient,
so parameters, gradients, Adam moments and EMA cost about 1/k of the memory
per device. With one device everything degenerates to plain jit.
`map_batches` applies a jitted network to host arrays in such batches
(evaluation's feature extraction).
"""

import math
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from gen_jax.configs import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# The batch is split over every device: along both mesh axes.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
# Arrays with fewer elements stay replicated under FSDP (64 KiB in float32): biases, norms,
# scalars; sharding them saves nothing and adds a collective each.
MIN_SHARDED_SIZE = 2**14


def make_mesh(fsdp: int = 1) -> jax.sharding.Mesh:
  """A (devices / fsdp, fsdp) mesh, axes ('data', 'fsdp'), over all devices of all processes.

  Raises ConfigError naming config.mesh.fsdp unless it divides the device count.
  """
  devices = jax.device_count()
  if not isinstance(fsdp, int) or isinstance(fsdp, bool) or fsdp < 1 or devices % fsdp:
    raise ConfigError(
      f"config.mesh.fsdp={fsdp!r} must be a positive divisor of the number of devices ({devices})"
    )
  # Auto axes: jit's shardings are annotations that XLA propagates. (jax.make_mesh's default,
  # Explicit, puts shardings into the types, and then e.g. flax's Dropout fails to trace.)
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((devices // fsdp, fsdp), BATCH_AXES, axis_types=auto)


def reading_fsdp(fsdp) -> int:
  """The fsdp for sample and eval, which read a checkpoint onto any layout: config.mesh.fsdp
  (usually the training's, from the workdir's config.json) reduced to its greatest common
  divisor with this device count, so a run trained with fsdp=4 on 4 devices samples on 1.
  A value that is no positive integer is returned as it is, for make_mesh to name."""
  if isinstance(fsdp, int) and not isinstance(fsdp, bool) and fsdp >= 1:
    return math.gcd(fsdp, jax.device_count())
  return fsdp


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  """Shards the leading (batch) axis over all devices ('data' and 'fsdp')."""
  return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple, fsdp: int, min_size: int = MIN_SHARDED_SIZE) -> P:
  """The PartitionSpec of one train-state array under `fsdp`-way sharding: 'fsdp' on its
  largest axis that fsdp divides (the first such on ties), or P() (replicated) when
  fsdp == 1, the array has fewer than `min_size` elements, or no axis divides."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [(size, -axis) for axis, size in enumerate(shape) if size % fsdp == 0]
  if not candidates:
    return P()
  axis = -max(candidates)[1]
  return P(*([None] * axis), FSDP_AXIS)


def state_shardings(abstract_state, mesh):
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) on `mesh`: fsdp_spec of each."""
  fsdp = mesh.shape[FSDP_AXIS]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp)), abstract_state
  )


def check_batch_size(batch_size: int, mesh, name: str = "config.data.batch_size") -> None:
  """Raises ConfigError (a ValueError) naming `name` unless batch_size divides evenly over the
  devices."""
  devices = mesh.devices.size
  if batch_size <= 0 or batch_size % devices:
    raise ConfigError(
      f"{name}={batch_size} must be a positive multiple of the number of devices ({devices})"
    )


def shard_batch(batch: dict, mesh) -> dict:
  """Turns this process' slice of the global batch (numpy) into global arrays."""
  sharding = data_sharded(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def to_host(tree):
  """The global values of a pytree of jax.Arrays as numpy arrays, in every process.

  An array sharded over several processes' devices is gathered
  (multihost_utils.process_allgather); one this process holds whole is copied.
  """

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)


def jit_for_mesh(fn: Callable, mesh) -> Callable:
  """jax.jit(fn) with params replicated, the batch sharded and the output replicated."""
  return jax.jit(
    fn,
    in_shardings=(replicated(mesh), data_sharded(mesh)),
    out_shardings=replicated(mesh),
  )


def map_batches(
  fn: Callable, params, inputs: np.ndarray, batch_size: int, mesh, desc: str | None = None
):
  """Applies jitted `fn(params, x) -> pytree of (B, ...)` to `inputs` (N, ...) in batches
  sharded over the mesh's devices (params replicated); returns the outputs of
  all N rows as numpy arrays. The last batch is padded by repeating its last
  row and the padding dropped, so every batch has one shape (one compile).

  Every process passes the same `inputs` and builds its own slice of each batch.
  """
  check_batch_size(batch_size, mesh, "config.eval.batch_size")
  count = len(inputs)
  process_count, process_index = jax.process_count(), jax.process_index()
  local = batch_size // process_count
  outputs = []
  for start in tqdm(
    range(0, count, batch_size),
    desc=desc,
    disable=desc is None or process_index,
    leave=False,
    dynamic_ncols=True,
  ):
    rows = np.minimum(np.arange(start, start + batch_size), count - 1)
    rows = rows[process_index * local : (process_index + 1) * local]
    batch = shard_batch({"x": np.asarray(inputs[rows], np.float32)}, mesh)
    outputs.append(jax.device_get(fn(params, batch["x"])))
  stacked = jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
  return jax.tree.map(lambda a: a[:count], stacked)
