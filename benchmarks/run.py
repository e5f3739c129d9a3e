"""Benchmarks: gen_jax against the PyTorch peer (diffusers) on the same machine, in the same run.

  python benchmarks/run.py --quick                 # CPU, about 10 minutes on 2 cores
  python benchmarks/run.py --device=gpu --out=gpu.json
  python benchmarks/run.py --no_peer               # gen_jax alone (no torch needed)

Prints a table and writes the same figures to JSON (--out). The peer is
diffusers' UNet2DModel configured as the DDPM CIFAR-10 U-Net, its
DDPMScheduler and one AdamW step per batch (`pip install -e '.[bench]'`).

What is measured:
  * peak: the machine's FLOP/s limit. CPU: the best of a large matmul and a
    large 3x3 convolution timed here (XLA, and torch's when present). GPU: the
    datasheet's dense peak for the compute dtype, from nvidia-smi's model name.
  * train: images/s of one whole optimizer step (the train step train() runs:
    gen_jax.train.train_step_for, jitted by jit_train_step, donated state,
    non-finite guard included) on random batches; first-call compile time;
    FLOPs per step from XLA's cost analysis of the compiled step; achieved
    FLOP/s and model-FLOPs utilisation (MFU) = achieved / peak; peak memory.
  * sample: images/s of the DDPM sampler (all T = 1000 steps) and of DDIM at 20
    and 50 steps. On CPU a 1000-step run of the CIFAR U-Net takes an hour, so
    the DDPM figure comes from a K-step run of the same compiled scan
    (K = --sample_steps, default 10), scaled by K / 1000; the table says so.
  * Each side runs in a process of its own (this file with --worker): the
    two runtimes slowed each other down in one process. Each ours/peer pair
    alternates rounds (ours, peer, ours, ...), one process running while the
    other waits, and reports medians, so load changes hit both sides.
  * XLA_FLAGS: gen_jax's CPU defaults (gen_jax/runtime/cpu_flags.py) are in effect
    unless GEN_JAX_CPU_FLAGS=0; the table's first line prints them.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gen_jax.runtime import cpu_flags

cpu_flags.set_default_cpu_flags()

import jax

from experiments import ddpm_cifar, ddpm_digits
from gen_jax import train
from gen_jax.train import sharding

# Dense datasheet peaks in TFLOP/s (SXM parts), by the compute dtype.
GPU_PEAKS = {
  "H200": {"bfloat16": 989.0, "float32": 495.0},
  "H100": {"bfloat16": 989.0, "float32": 495.0},  # float32 matmuls run as TF32
  "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def block(tree):
  jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)
  return tree


def timed(fn, repeats):
  """Median seconds of fn() over `repeats` calls (fn blocks until done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# ----------------------------------------------------------------------------
# The machine's limit
# ----------------------------------------------------------------------------


def cpu_peak(torch_mod, quick, xla=True):
  """Best measured float32 FLOP/s of a large matmul and a large 3x3 conv:
  (best, {what: FLOP/s}), XLA's unless xla=False, torch's when given."""
  out = {}
  conv_flops = 2 * 8 * 32 * 32 * 256 * 256 * 9
  if xla:
    out.update(_xla_peak(quick, conv_flops))
  if torch_mod is not None:
    tx = torch_mod.randn(8, 256, 32, 32)
    tw = torch_mod.randn(256, 256, 3, 3)
    with torch_mod.no_grad():
      torch_mod.nn.functional.conv2d(tx, tw, padding=1)
      out["torch_conv"] = conv_flops / timed(
        lambda: torch_mod.nn.functional.conv2d(tx, tw, padding=1), 3 if quick else 5
      )
  return max(out.values()), out


def _xla_peak(quick, conv_flops):
  out = {}
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n))
  matmul = jax.jit(lambda x: x @ x)
  block(matmul(a))
  out["xla_matmul"] = 2 * n**3 / timed(lambda: block(matmul(a)), 5)
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 256))
  w = jax.random.normal(jax.random.key(2), (3, 3, 256, 256))
  conv = jax.jit(
    lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  )
  block(conv(x, w))
  out["xla_conv"] = conv_flops / timed(lambda: block(conv(x, w)), 3 if quick else 5)
  return out


def gpu_peak(compute_dtype):
  try:
    name = (
      subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
      )
      .stdout.strip()
      .splitlines()[0]
    )
  except (OSError, subprocess.CalledProcessError):
    name = jax.devices()[0].device_kind
  for model, peaks in GPU_PEAKS.items():
    if model in name:
      return peaks[compute_dtype] * 1e12, {"gpu": name, "datasheet_tflops": peaks[compute_dtype]}
  raise SystemExit(f"unknown GPU {name!r}: add its datasheet peak to GPU_PEAKS")


# ----------------------------------------------------------------------------
# gen_jax
# ----------------------------------------------------------------------------


def experiment_config(module, batch, compute_dtype):
  config = module.get_config()
  config.data.batch_size = batch
  config.model.compute_dtype = compute_dtype
  return config


def ours_train(module, example_shape, batch, compute_dtype):
  """(step_fn, compile_seconds, flops_per_step, memory_bytes) for one experiment: the step
  train() runs (train.train_step_for, jitted by train.jit_train_step), guard included."""
  config = experiment_config(module, batch, compute_dtype)
  model = module.build(config, example_shape)
  tx, train_step = train.train_step_for(config, model)
  state = jax.jit(lambda k: train.init_state(model, tx, k))(jax.random.key(0))
  step = train.jit_train_step(train_step, sharding.make_mesh())
  x = jax.random.uniform(jax.random.key(1), (batch,) + example_shape, minval=-1, maxval=1)
  batch_dict = {"x": x}
  key = jax.random.key(2)
  start = time.perf_counter()
  compiled = step.lower(state, batch_dict, key).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  memory = compiled.memory_analysis()
  memory_bytes = None
  if memory is not None:
    memory_bytes = int(
      memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    )
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch_dict, key)
    block(metrics)

  run()  # warm-up
  return run, compile_seconds, flops, memory_bytes


def ours_sampler(
  module, example_shape, batch, sampler, num_steps, compute_dtype, num_timesteps=None
):
  """A blocking sampling call of the experiment's model with its (random) initial params."""
  config = experiment_config(module, batch, compute_dtype)
  if num_timesteps is not None:
    config.diffusion.num_timesteps = num_timesteps
  model = module.build(config, example_shape)
  params = jax.jit(model.init)(jax.random.key(0))
  draw = jax.jit(lambda p, k: model.sample(p, k, batch, sampler=sampler, num_steps=num_steps))
  start = time.perf_counter()
  compiled = draw.lower(params, jax.random.key(1)).compile()
  compile_seconds = time.perf_counter() - start
  run = lambda: block(compiled(params, jax.random.key(1)))
  run()
  return run, compile_seconds


# ----------------------------------------------------------------------------
# The PyTorch peer
# ----------------------------------------------------------------------------


def peer_model(torch_mod, device):
  from diffusers import UNet2DModel

  model = UNet2DModel(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    dropout=0.1,
    norm_num_groups=32,
  )
  return model.to(device)


def peer_train(torch_mod, device, batch, compile_model, bf16):
  from diffusers import DDPMScheduler

  model = peer_model(torch_mod, device).train()
  scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
  opt = torch_mod.optim.AdamW(model.parameters(), lr=2e-4)
  forward = torch_mod.compile(model) if compile_model else model
  x0 = torch_mod.rand(batch, 3, 32, 32, device=device) * 2 - 1

  def run():
    noise = torch_mod.randn_like(x0)
    t = torch_mod.randint(0, 1000, (batch,), device=device)
    x_t = scheduler.add_noise(x0, noise, t)
    with torch_mod.autocast(device_type=device, dtype=torch_mod.bfloat16, enabled=bf16):
      pred = forward(x_t, t).sample
    loss = torch_mod.nn.functional.mse_loss(pred.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch_mod.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if device == "cuda":
      torch_mod.cuda.synchronize()

  run()
  num_params = sum(p.numel() for p in model.parameters())
  return run, num_params


def peer_sampler(torch_mod, device, batch, num_steps, compile_model, bf16, ddim=False):
  """The plain sampling loop over scheduler.step: num_steps network calls."""
  from diffusers import DDIMScheduler, DDPMScheduler

  model = peer_model(torch_mod, device).eval()
  forward = torch_mod.compile(model) if compile_model else model
  if ddim:
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
  else:  # a K-step DDPM, as ours in ours_sampler(num_timesteps=K)
    scheduler = DDPMScheduler(num_train_timesteps=num_steps, beta_schedule="linear")
  scheduler.set_timesteps(num_steps)

  def run():
    x = torch_mod.randn(batch, 3, 32, 32, device=device)
    with (
      torch_mod.no_grad(),
      torch_mod.autocast(device_type=device, dtype=torch_mod.bfloat16, enabled=bf16),
    ):
      for t in scheduler.timesteps:
        eps = forward(x, t).sample
        x = scheduler.step(eps.float(), t, x).prev_sample
    if device == "cuda":
      torch_mod.cuda.synchronize()

  run()
  return run


# ----------------------------------------------------------------------------
# Workers: each measured thing runs in its own process
# ----------------------------------------------------------------------------
# Timed in one process, our step slowed by a third at batch 32 once torch had
# run beside it (3.62 images/s alone, 2.6-2.7 alternating), so each side gets a
# process of its own; they still alternate, one running while the other waits.


def build(spec):
  """(run, info) for a worker spec; run() does one blocking call."""
  side, kind = spec["side"], spec["kind"]
  on_gpu = spec["device"] == "gpu"
  if side == "ours":
    module = {"ddpm_cifar": ddpm_cifar, "ddpm_digits": ddpm_digits}[
      spec.get("experiment", "ddpm_cifar")
    ]
    shape = (8, 8, 1) if module is ddpm_digits else (32, 32, 3)
    info = {
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
      f"{jax.devices()[0].device_kind}",
      "jax": jax.__version__,
      "platform": jax.devices()[0].platform,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if on_gpu and info["platform"] != "gpu":
      raise SystemExit(f"--device=gpu but JAX sees {info['platform']}: install jax[cuda12]")
    if kind == "peak":
      info["peak"] = gpu_peak(spec["compute_dtype"]) if on_gpu else cpu_peak(None, spec["quick"])
      return (lambda: None), info
    if kind == "train":
      run, info["compile_s"], info["flops_per_step"], info["memory_bytes"] = ours_train(
        module, shape, spec["batch"], spec["compute_dtype"]
      )
    else:
      run, info["compile_s"] = ours_sampler(
        module,
        shape,
        spec["batch"],
        spec["sampler"],
        spec.get("num_steps"),
        spec["compute_dtype"],
        num_timesteps=spec.get("num_timesteps"),
      )
    return run, info
  import torch

  device = "cuda" if on_gpu else "cpu"
  info = {"torch": torch.__version__}
  if kind == "peak":
    info["peak"] = cpu_peak(torch, spec["quick"], xla=False)
    return (lambda: None), info
  if kind == "train":
    run, info["num_params"] = peer_train(torch, device, spec["batch"], spec["compile"], on_gpu)
  else:
    run = peer_sampler(
      torch,
      device,
      spec["batch"],
      spec["num_steps"],
      spec["compile"],
      on_gpu,
      ddim=spec["sampler"] == "ddim",
    )
  return run, info


def worker_main(spec):
  """Builds spec, prints its info as a JSON line, then answers each line
  "N W" on stdin with a JSON list of N call times, after W untimed calls."""
  run, info = build(spec)
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    n, warmup = map(int, line.split())
    for _ in range(warmup):
      run()
    times = []
    for _ in range(n):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    print(json.dumps(times), flush=True)


class Worker:
  """A benchmark process (this file with --worker), built and waiting."""

  def __init__(self, spec):
    env = dict(os.environ)
    if spec["device"] == "gpu":  # Share the GPU with the peer's process.
      env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    self.spec = spec
    self.proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
    )
    self.info = self._reply()

  def _reply(self):
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(
        f"benchmark worker {self.spec} failed (exit status {self.proc.wait()}); its error is above"
      )
    return json.loads(line)

  def times(self, n=1, warmup=0):
    self.proc.stdin.write(f"{n} {warmup}\n")
    self.proc.stdin.flush()
    return self._reply()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def alternate(ours, theirs, rounds, warmup):
  """Medians of (ours, theirs) seconds per call, timed in alternating rounds
  of `warmup` untimed calls and one timed; theirs may be None.

  The warm-up call matters: the first step of our process after the peer's
  ran about 30% slower, whatever the order (caches, memory, the OS), and the
  peer's after ours less so; one call per side and round absorbs it."""
  a, b = [], []
  for _ in range(rounds):
    a += ours.times(1, warmup)
    if theirs is not None:
      b += theirs.times(1, warmup)
  return statistics.median(a), (statistics.median(b) if b else None)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller batches")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--out", default=None, help="write the figures to this JSON file")
  parser.add_argument("--no_peer", action="store_true", help="skip the PyTorch peer")
  parser.add_argument(
    "--sample_steps", type=int, default=10, help="CPU: steps run to time the DDPM-1000 sampler"
  )
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker_main(json.loads(args.worker))
    return

  on_gpu = args.device == "gpu"
  compute_dtype = "bfloat16" if on_gpu else "float32"
  rounds = 3 if args.quick else 5
  common = {"device": args.device, "compute_dtype": compute_dtype, "quick": args.quick}
  with_peer = not args.no_peer
  if with_peer:
    # Only looked for here: the peer runs in processes of its own.
    if not all(importlib.util.find_spec(m) for m in ("torch", "diffusers")):
      raise SystemExit(
        "the peer needs torch and diffusers: pip install -e '.[bench]' (or pass --no_peer)"
      )

  def spawn(side, kind, **spec):
    return Worker(dict(common, side=side, kind=kind, **spec))

  ours_peak = spawn("ours", "peak")
  ours_peak.close()
  results = {
    "date": datetime.date.today().isoformat(),
    "command": " ".join(sys.argv),
    "machine": ours_peak.info["machine"],
    "jax": ours_peak.info["jax"],
    "xla_flags": ours_peak.info["xla_flags"],
    "compute_dtype": compute_dtype,
    "rows": [],
  }
  peak, peak_detail = ours_peak.info["peak"]
  if with_peer and not on_gpu:
    peer_peak = spawn("peer", "peak")
    peer_peak.close()
    results["torch"] = peer_peak.info["torch"]
    peak = max(peak, peer_peak.info["peak"][0])
    peak_detail.update(peer_peak.info["peak"][1])
  results["peak_flops"] = peak
  results["peak_detail"] = peak_detail
  print(
    f"peak: {peak / 1e9:,.0f} GFLOP/s ({peak_detail}); XLA_FLAGS={results['xla_flags']!r}",
    flush=True,
  )

  def add(row):
    results["rows"].append(row)
    ratio = row.get("ratio")
    print(
      f"{row['what']:<34} ours {row['ours']:>10.4g} {row['unit']:<9}"
      + (f" peer {row['peer']:>10.4g}  ours/peer {ratio:5.2f}x" if ratio else "")
      + (f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""),
      flush=True,
    )

  # Training throughput.
  for batch in (128, 256) if on_gpu else (8, 32):
    ours = spawn("ours", "train", batch=batch)
    peers = []
    if with_peer:
      peers.append(("eager", False))
      if on_gpu:
        peers.append(("torch.compile", True))
    for label, compile_model in peers or [(None, False)]:
      peer = spawn("peer", "train", batch=batch, compile=compile_model) if label else None
      ours_s, peer_s = alternate(ours, peer, rounds, 1)
      flops = ours.info["flops_per_step"]
      row = {
        "what": f"train ddpm_cifar b{batch}" + (f" vs {label}" if label else ""),
        "unit": "images/s",
        "ours": batch / ours_s,
        "compile_s": ours.info["compile_s"],
        "flops_per_step": flops,
        "achieved_flops": flops / ours_s,
        "mfu": flops / ours_s / peak,
        "memory_bytes": ours.info["memory_bytes"],
      }
      if peer is not None:
        row.update(peer=batch / peer_s, ratio=peer_s / ours_s, peer_params=peer.info["num_params"])
        peer.close()
      add(row)
    ours.close()

  digits_batch = ddpm_digits.get_config().data.batch_size
  ours = spawn(
    "ours", "train", experiment="ddpm_digits", batch=digits_batch, compute_dtype="float32"
  )
  seconds = statistics.median(ours.times(20 if args.quick else 50))
  ours.close()
  add(
    {
      "what": f"train ddpm_digits b{digits_batch}",
      "unit": "images/s",
      "ours": digits_batch / seconds,
      "steps_per_s": 1 / seconds,
      "compile_s": ours.info["compile_s"],
      "flops_per_step": ours.info["flops_per_step"],
      "mfu": ours.info["flops_per_step"] / seconds / peak,
      "memory_bytes": ours.info["memory_bytes"],
    }
  )

  # Sampling throughput.
  sample_batch = 256 if on_gpu else 16
  ddpm_steps = 1000 if on_gpu else args.sample_steps
  plans = [("ddpm", ddpm_steps, 2 if args.quick else rounds)]
  for steps in (20, 50):
    if not (args.quick and not on_gpu and steps == 50):  # 50 costs 2.5x 20, per step the same
      plans.append(("ddim", steps, 1 if args.quick else 3))
  for sampler, steps, sample_rounds in plans:
    if sampler == "ddpm":  # A K-step DDPM: the per-step cost of DDPM-1000.
      ours = spawn("ours", "sample", batch=sample_batch, sampler="ddpm", num_timesteps=steps)
    else:
      ours = spawn("ours", "sample", batch=sample_batch, sampler="ddim", num_steps=steps)
    peer = (
      spawn("peer", "sample", batch=sample_batch, sampler=sampler, num_steps=steps, compile=False)
      if with_peer
      else None
    )
    # A DDIM call is tens of network calls: one switch costs it little.
    warmup = 0 if sampler == "ddim" and args.quick else 1
    ours_s, peer_s = alternate(ours, peer, sample_rounds, warmup)
    scale = 1000 / steps if sampler == "ddpm" else 1
    what = "sample ddpm-1000" if sampler == "ddpm" else f"sample ddim-{steps}"
    row = {
      "what": f"{what} b{sample_batch}",
      "unit": "images/s",
      "ours": sample_batch / (ours_s * scale),
      "compile_s": ours.info["compile_s"],
    }
    if sampler == "ddpm":
      row.update(timed_steps=steps, seconds_per_1000_steps=ours_s * scale)
    if peer is not None:
      row.update(peer=sample_batch / (peer_s * scale), ratio=peer_s / ours_s)
      peer.close()
    ours.close()
    add(row)

  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
