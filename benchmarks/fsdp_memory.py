"""Per-device memory of ddpm_cifar's train step with and without FSDP, from XLA's memory analysis.

  python benchmarks/fsdp_memory.py                     # 8 simulated CPU devices, fsdp 1, 2, 4, 8
  python benchmarks/fsdp_memory.py --fsdp=1,8 --batch=64 --out=fsdp.json

Compiles (never runs) the train step that train() runs (train.train_step_for,
jitted by train.jit_train_step with the state laid out by
sharding.state_shardings on a (8 / fsdp, fsdp) mesh), on abstract inputs, and
reads `compiled.memory_analysis()`: the bytes of the step's arguments (the
train state and this device's share of the batch), outputs and temporaries,
per device. The train state is params + Adam's two moments + EMA, four copies
of the parameters, so with FSDP the argument bytes should fall by about the
fsdp factor and the temporaries by less (each layer's weights and gradient are
gathered whole, one layer at a time, and activations are per example).
On a GPU or TPU host run it with the real devices: --devices=0 keeps them.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiment", default="ddpm_cifar")
  parser.add_argument("--fsdp", default="1,2,4,8", help="comma-separated fsdp sizes")
  parser.add_argument("--batch", type=int, default=64, help="global batch")
  parser.add_argument(
    "--devices", type=int, default=8, help="simulated CPU devices (0: the real ones)"
  )
  parser.add_argument("--out", default=None, help="also write the figures as JSON here")
  return parser.parse_args()


def main():
  args = parse()
  if args.devices:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
  import importlib

  import jax

  from gen_jax import train
  from gen_jax.train import sharding

  module = importlib.import_module(f"experiments.{args.experiment}")
  config = module.get_config()
  config.data.batch_size = args.batch
  example_shape = (32, 32, 3) if "cifar" in args.experiment else (28, 28, 1)
  model = module.build(config, example_shape)
  tx, train_step = train.train_step_for(config, model)
  abstract = jax.eval_shape(lambda k: train.init_state(model, tx, k), jax.random.key(0))
  num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  print(
    f"{args.experiment}: {num_params:,} parameters, train state {state_bytes / 2**20:.1f} MiB; "
    f"global batch {args.batch} on {jax.device_count()} {jax.devices()[0].platform} devices"
  )
  rows = []
  for fsdp in (int(f) for f in args.fsdp.split(",")):
    mesh = sharding.make_mesh(fsdp)
    shardings = sharding.state_shardings(abstract, mesh)
    state = jax.tree.map(
      lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), abstract, shardings
    )
    batch = {
      "x": jax.ShapeDtypeStruct(
        (args.batch, *example_shape), jax.numpy.float32, sharding=sharding.data_sharded(mesh)
      )
    }
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    step = train.jit_train_step(train_step, mesh, shardings)
    start = time.perf_counter()
    memory = step.lower(state, batch, key).compile().memory_analysis()
    seconds = time.perf_counter() - start
    row = {
      "fsdp": fsdp,
      "mesh": dict(mesh.shape),
      "argument_mib": memory.argument_size_in_bytes / 2**20,
      "output_mib": memory.output_size_in_bytes / 2**20,
      "temp_mib": memory.temp_size_in_bytes / 2**20,
      "alias_mib": memory.alias_size_in_bytes / 2**20,
      "compile_seconds": round(seconds, 1),
    }
    # Donated state: outputs alias the arguments, so the peak is arguments + temporaries +
    # the outputs that alias nothing.
    row["total_mib"] = row["argument_mib"] + row["temp_mib"] + row["output_mib"] - row["alias_mib"]
    rows.append(row)
    print(
      f"  fsdp {fsdp} (data {mesh.shape['data']} x fsdp {fsdp}): per device arguments "
      f"{row['argument_mib']:.1f} MiB, temporaries {row['temp_mib']:.1f} MiB, outputs "
      f"{row['output_mib']:.1f} MiB ({row['alias_mib']:.1f} aliased), total "
      f"{row['total_mib']:.1f} MiB (compiled in {seconds:.0f} s)",
      flush=True,
    )
  base = rows[0]
  for row in rows[1:]:
    print(
      f"  fsdp {row['fsdp']} / fsdp {base['fsdp']}: arguments x"
      f"{row['argument_mib'] / base['argument_mib']:.3f}, total x"
      f"{row['total_mib'] / base['total_mib']:.3f}"
    )
  if args.out:
    from gen_jax.runtime import fileio

    fileio.write_atomically(args.out, json.dumps(rows, indent=2))


if __name__ == "__main__":
  main()
