"""Where the time of a ddpm_cifar training step and forward pass goes, ours and the peer's.

  python benchmarks/breakdown.py                 # batch 8 training, batch 16 forward, about 2 minutes
  python benchmarks/breakdown.py --batch=32 --no_peer --out=profile.json

Splits each side's time into convolutions (forward, and backward for both
inputs), the optimizer update and everything else (normalisation, attention,
element-wise work, copies, dispatch), so the convolution kernels' share, the
part no change to the model code can remove, is a number:

  ours: XLA's CPU convolutions run asynchronously and do not show in its
        profiler trace, so each convolution of the compiled step is timed on
        its own: every conv_general_dilated of the loss's jaxpr, forward and
        vjp, with its exact shapes. The optimizer update (Adam, clipping, EMA)
        is timed on its own too. "Everything else" is the step minus both.
  peer: torch.profiler over whole steps: the self time of every operator whose
        name contains "conv", and the AdamW step's and clipping's total time.

Runs each side in its own process (the peer with --peer), one after the other.
"""

import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gen_jax.runtime import cpu_flags

cpu_flags.set_default_cpu_flags()


def _bench_module():
  """benchmarks/run.py: its model builders and timer serve here too."""
  spec = importlib.util.spec_from_file_location(
    "bench_run", os.path.join(ROOT, "benchmarks", "run.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench = _bench_module()


# ----------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------


def conv_inventory(jaxpr):
  """Counter of (lhs shape, rhs shape, params) over every conv_general_dilated
  in a closed jaxpr, sub-jaxprs (remat, pjit, custom_vjp) included."""
  import jax
  import jax.extend

  found = collections.Counter()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        lhs, rhs = (v.aval for v in eqn.invars)
        key = (lhs.shape, rhs.shape, str(lhs.dtype), repr(sorted(eqn.params.items())))
        found[key] += 1
        params_of[key] = dict(eqn.params)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else [value]:
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)

  params_of = {}
  walk(jaxpr.jaxpr)
  return found, params_of


def time_convs(inventory, params_of, backward, repeats):
  """Seconds per step of the inventory's convolutions, each timed alone:
  (forward seconds, backward seconds, FLOPs of the forward)."""
  import jax
  import jax.numpy as jnp

  forward_s = backward_s = flops = 0.0
  for key, count in inventory.items():
    lhs_shape, rhs_shape, dtype, _ = key
    params = params_of[key]
    conv = lambda x, w, p=params: jax.lax.conv_general_dilated_p.bind(x, w, **p)
    x = jnp.ones(lhs_shape, dtype)
    w = jnp.ones(rhs_shape, dtype)
    fwd = jax.jit(conv)
    y = fwd(x, w).block_until_ready()
    out_elems = y.size
    # FLOPs: 2 x output elements x (kernel window x input features per group).
    dn = params["dimension_numbers"]
    rhs_spatial = [rhs_shape[d] for d in dn.rhs_spec[2:]]
    in_features = rhs_shape[dn.rhs_spec[1]]
    window = 1
    for s in rhs_spatial:
      window *= s
    flops += count * 2 * out_elems * window * in_features
    forward_s += count * bench.timed(lambda: fwd(x, w).block_until_ready(), repeats)
    if backward:
      bwd = jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy))
      dy = jnp.ones_like(y)
      jax.block_until_ready(bwd(x, w, dy))
      backward_s += count * bench.timed(lambda: jax.block_until_ready(bwd(x, w, dy)), repeats)
  return forward_s, backward_s, flops


def profile_ours(batch, forward_batch, repeats):
  import jax
  import jax.numpy as jnp
  import optax

  from experiments import ddpm_cifar
  from gen_jax import train

  shape = (32, 32, 3)
  out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__}

  # The training step.
  run, _, flops, _ = bench.ours_train(ddpm_cifar, shape, batch, "float32")
  step_s = bench.timed(run, repeats)
  config = bench.experiment_config(ddpm_cifar, batch, "float32")
  model = ddpm_cifar.build(config, shape)
  tx, _ = train.train_step_for(config, model)  # the optimizer train() runs
  state = jax.jit(lambda k: train.init_state(model, tx, k))(jax.random.key(0))
  x = jnp.zeros((batch,) + shape)
  inventory, params_of = conv_inventory(
    jax.make_jaxpr(lambda p: model.loss(p, {"x": x}, jax.random.key(0))[0])(state.params)
  )
  conv_fwd, conv_bwd, conv_flops = time_convs(inventory, params_of, True, repeats)

  def update(state, grads):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: 0.9999 * e + 1e-4 * p, state.ema_params, params)
    return state.replace(params=params, opt_state=opt_state, ema_params=ema)

  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), state.params)
  update = jax.jit(update, donate_argnums=0)
  holder = [update(state, grads)]

  def run_update():
    holder[0] = update(holder[0], grads)
    jax.block_until_ready(holder[0])

  optimizer_s = bench.timed(run_update, repeats)
  out["train"] = {
    "batch": batch,
    "step_s": step_s,
    "flops_per_step": flops,
    "conv_forward_s": conv_fwd,
    "conv_backward_s": conv_bwd,
    "conv_flops_forward": conv_flops,
    "optimizer_s": optimizer_s,
    "num_convs": sum(inventory.values()),
  }

  # One forward pass (a sampler's step), no dropout.
  params = holder[0].params  # `state` was donated to the update.
  t = jnp.full((forward_batch,), 500)
  xs = jnp.zeros((forward_batch,) + shape)
  forward = jax.jit(lambda p, x: model.eps_fn(p)(x, t))
  forward(params, xs).block_until_ready()
  forward_s = bench.timed(lambda: forward(params, xs).block_until_ready(), repeats)
  inventory, params_of = conv_inventory(
    jax.make_jaxpr(lambda p, x: model.eps_fn(p)(x, t))(params, xs)
  )
  conv_fwd, _, _ = time_convs(inventory, params_of, False, repeats)
  out["forward"] = {"batch": forward_batch, "step_s": forward_s, "conv_forward_s": conv_fwd}
  return out


# ----------------------------------------------------------------------------
# The peer
# ----------------------------------------------------------------------------


def profile_peer(batch, forward_batch, repeats):
  import torch
  from torch.profiler import ProfilerActivity, profile

  out = {"torch": torch.__version__}

  def split(fn, steps):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
      for _ in range(steps):
        fn()
    conv = optimizer = 0.0
    for event in prof.key_averages():
      if "conv" in event.key.lower():
        conv += event.self_cpu_time_total
      if (
        event.key.startswith("Optimizer.step")
        or event.key == "aten::_foreach_norm"
        or "clip_grad" in event.key
      ):
        optimizer += event.cpu_time_total
    return conv / 1e6 / steps, optimizer / 1e6 / steps

  run, _ = bench.peer_train(torch, "cpu", batch, False, False)
  step_s = bench.timed(run, repeats)
  conv_s, optimizer_s = split(run, 2)
  out["train"] = {"batch": batch, "step_s": step_s, "conv_s": conv_s, "optimizer_s": optimizer_s}

  model = bench.peer_model(torch, "cpu").eval()
  x = torch.zeros(forward_batch, 3, 32, 32)
  t = torch.full((forward_batch,), 500)

  def forward():
    with torch.no_grad():
      model(x, t)

  forward()
  forward_s = bench.timed(forward, repeats)
  conv_s, _ = split(forward, 2)
  out["forward"] = {"batch": forward_batch, "step_s": forward_s, "conv_s": conv_s}
  return out


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8, help="training batch")
  parser.add_argument("--forward_batch", type=int, default=16, help="forward-pass batch")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no_peer", action="store_true")
  parser.add_argument("--out", default=None, help="write the figures to this JSON file")
  parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peer:
    print(json.dumps(profile_peer(args.batch, args.forward_batch, args.repeats)))
    return

  ours = profile_ours(args.batch, args.forward_batch, args.repeats)
  peer = None
  if not args.no_peer:
    result = subprocess.run(
      [
        sys.executable,
        os.path.abspath(__file__),
        "--peer",
        f"--batch={args.batch}",
        f"--forward_batch={args.forward_batch}",
        f"--repeats={args.repeats}",
      ],
      stdout=subprocess.PIPE,
      text=True,
      check=False,
    )
    if result.returncode:
      raise SystemExit(
        "the peer's profile failed (it needs torch and diffusers: "
        "pip install -e '.[bench]'; or pass --no_peer)"
      )
    peer = json.loads(result.stdout.strip().splitlines()[-1])

  o, p = ours["train"], (peer or {}).get("train")
  print(f"XLA_FLAGS={ours['xla_flags']!r}")
  print(
    f"training step, ddpm_cifar batch {o['batch']} (seconds)   ours" + ("    peer" if p else "")
  )
  rows = [
    ("whole step", o["step_s"], p and p["step_s"]),
    (
      "convolutions, forward + backward",
      o["conv_forward_s"] + o["conv_backward_s"],
      p and p["conv_s"],
    ),
    ("optimizer update (ours: + EMA)", o["optimizer_s"], p and p["optimizer_s"]),
    (
      "everything else",
      o["step_s"] - o["conv_forward_s"] - o["conv_backward_s"] - o["optimizer_s"],
      p and p["step_s"] - p["conv_s"] - p["optimizer_s"],
    ),
  ]
  for name, a, b in rows:
    print(f"  {name:<40} {a:7.3f}" + (f" {b:7.3f}" if p else ""))
  print(
    f"  our convolutions alone: {o['num_convs']} convolutions, "
    f"{3 * o['conv_flops_forward'] / (o['conv_forward_s'] + o['conv_backward_s']) / 1e9:.0f} GFLOP/s "
    f"forward + backward"
  )
  o, p = ours["forward"], (peer or {}).get("forward")
  print(f"forward pass, batch {o['batch']} (seconds)")
  rows = [
    ("whole forward pass", o["step_s"], p and p["step_s"]),
    ("convolutions", o["conv_forward_s"], p and p["conv_s"]),
    ("everything else", o["step_s"] - o["conv_forward_s"], p and p["step_s"] - p["conv_s"]),
  ]
  for name, a, b in rows:
    print(f"  {name:<40} {a:7.3f}" + (f" {b:7.3f}" if p else ""))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"command": " ".join(sys.argv), "ours": ours, "peer": peer}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
