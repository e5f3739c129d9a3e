"""Data parallelism over every visible device with jax.sharding (the one module
that builds meshes and shardings).

The batch is split along the mesh's 'data' axis; parameters, optimizer state
and EMA are replicated. With one device everything degenerates to plain jit.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  """Shards the leading (batch) axis over the 'data' axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh, name: str = "data.batch_size") -> None:
  """Raises ValueError unless batch_size divides evenly over the devices."""
  devices = mesh.devices.size
  if batch_size <= 0 or batch_size % devices:
    raise ValueError(
      f"--config.{name}={batch_size} must be a positive multiple of the "
      f"number of devices ({devices})"
    )


def shard_batch(batch: dict, mesh) -> dict:
  """Turns this process' slice of the global batch (numpy) into global arrays."""
  sharding = data_sharded(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }
