"""Data parallelism over every visible device with jax.sharding (the one module
that builds meshes and shardings).

The batch is split along the mesh's 'data' axis; parameters, optimizer state
and EMA are replicated. With one device everything degenerates to plain jit.
`map_batches` applies a jitted network to host arrays in such batches
(evaluation's feature extraction).
"""

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from gen_jax.configs import ConfigError

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes.

  Auto axes, not jax.make_mesh's default Explicit ones: with Explicit axes every array's type carries its
  sharding, and an op that mixes a batch-sharded array with one it creates (Flax's dropout mask, which
  `jax.random.bernoulli` makes unsharded) fails to trace. The jit shardings here fix inputs and outputs;
  XLA places everything in between.
  """
  return jax.make_mesh(
    (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  """Shards the leading (batch) axis over the 'data' axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


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
