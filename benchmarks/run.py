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
  * train: images/s of one whole optimizer step (jitted train_step of
    gen_jax.train, donated state) on random batches; first-call compile time;
    FLOPs per step from XLA's cost analysis of the compiled step; achieved
    FLOP/s and model-FLOPs utilisation (MFU) = achieved / peak; peak memory.
  * sample: images/s of the DDPM sampler (all T = 1000 steps) and of DDIM at 20
    and 50 steps. On CPU a 1000-step run of the CIFAR U-Net takes an hour, so
    the DDPM figure comes from a K-step run of the same compiled scan
    (K = --sample_steps, default 10), scaled by K / 1000; the table says so.
  * Each ours/peer pair alternates rounds (ours, peer, ours, ...) and reports
    medians, so load changes hit both sides.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gen_jax import cpu_flags  # pylint: disable=wrong-import-position
cpu_flags.set_default_cpu_flags()

import jax  # pylint: disable=wrong-import-position

from experiments import ddpm_cifar, ddpm_digits  # pylint: disable=wrong-import-position
from gen_jax import train  # pylint: disable=wrong-import-position

# Dense datasheet peaks in TFLOP/s (SXM parts), by the compute dtype.
GPU_PEAKS = {
    "H200": {"bfloat16": 989.0, "float32": 495.0},
    "H100": {"bfloat16": 989.0, "float32": 495.0},   # float32 matmuls run as TF32
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


def alternate(ours, theirs, rounds):
  """Medians of (ours, theirs), timed in alternating rounds; theirs may be None."""
  a, b = [], []
  for _ in range(rounds):
    a.append(timed(ours, 1))
    if theirs is not None:
      b.append(timed(theirs, 1))
  return statistics.median(a), (statistics.median(b) if b else None)


# ----------------------------------------------------------------------------
# The machine's limit
# ----------------------------------------------------------------------------

def cpu_peak(torch_mod, quick):
  """Best measured float32 FLOP/s of a large matmul and a large 3x3 conv."""
  out = {}
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n))
  matmul = jax.jit(lambda x: x @ x)
  block(matmul(a))
  out["xla_matmul"] = 2 * n**3 / timed(lambda: block(matmul(a)), 5)
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 256))
  w = jax.random.normal(jax.random.key(2), (3, 3, 256, 256))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  block(conv(x, w))
  conv_flops = 2 * 8 * 32 * 32 * 256 * 256 * 9
  out["xla_conv"] = conv_flops / timed(lambda: block(conv(x, w)), 3 if quick else 5)
  if torch_mod is not None:
    tx = torch_mod.randn(8, 256, 32, 32)
    tw = torch_mod.randn(256, 256, 3, 3)
    with torch_mod.no_grad():
      torch_mod.nn.functional.conv2d(tx, tw, padding=1)
      out["torch_conv"] = conv_flops / timed(
          lambda: torch_mod.nn.functional.conv2d(tx, tw, padding=1), 3 if quick else 5)
  return max(out.values()), out


def gpu_peak(compute_dtype):
  try:
    name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
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
  config.train.compute_dtype = compute_dtype
  return config


def ours_train(module, example_shape, batch, compute_dtype):
  """(step_fn, compile_seconds, flops_per_step, memory_bytes) for one experiment."""
  config = experiment_config(module, batch, compute_dtype)
  model = module.build(config, example_shape)
  tx = train.make_optimizer(config.optim, config.train.num_steps)
  state = jax.jit(lambda k: train.init_state(model, tx, k))(jax.random.key(0))
  step = jax.jit(train.make_train_step(model, tx, config.train.ema_decay,
                                       config.train.ema_warmup), donate_argnums=0)
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
    memory_bytes = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                       + memory.output_size_in_bytes)
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch_dict, key)
    block(metrics)
  run()  # warm-up
  return run, compile_seconds, flops, memory_bytes


def ours_sampler(module, example_shape, batch, sampler, num_steps, compute_dtype,
                 num_timesteps=None):
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
  from diffusers import UNet2DModel  # pylint: disable=import-outside-toplevel
  model = UNet2DModel(
      sample_size=32, in_channels=3, out_channels=3,
      block_out_channels=(128, 256, 256, 256), layers_per_block=2,
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      dropout=0.1, norm_num_groups=32)
  return model.to(device)


def peer_train(torch_mod, device, batch, compile_model, bf16):
  from diffusers import DDPMScheduler  # pylint: disable=import-outside-toplevel
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
  from diffusers import DDIMScheduler, DDPMScheduler  # pylint: disable=import-outside-toplevel
  model = peer_model(torch_mod, device).eval()
  forward = torch_mod.compile(model) if compile_model else model
  if ddim:
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
  else:  # a K-step DDPM, as ours in ours_sampler(num_timesteps=K)
    scheduler = DDPMScheduler(num_train_timesteps=num_steps, beta_schedule="linear")
  scheduler.set_timesteps(num_steps)

  def run():
    x = torch_mod.randn(batch, 3, 32, 32, device=device)
    with torch_mod.no_grad(), torch_mod.autocast(device_type=device, dtype=torch_mod.bfloat16,
                                                 enabled=bf16):
      for t in scheduler.timesteps:
        eps = forward(x, t).sample
        x = scheduler.step(eps.float(), t, x).prev_sample
    if device == "cuda":
      torch_mod.cuda.synchronize()
  run()
  return run


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller batches")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--out", default=None, help="write the figures to this JSON file")
  parser.add_argument("--no_peer", action="store_true", help="skip the PyTorch peer")
  parser.add_argument("--sample_steps", type=int, default=10,
                      help="CPU: steps run to time the DDPM-1000 sampler")
  args = parser.parse_args()

  on_gpu = args.device == "gpu"
  platform_name = jax.devices()[0].platform
  if on_gpu and platform_name != "gpu":
    raise SystemExit(f"--device=gpu but JAX sees {platform_name}: install jax[cuda12]")
  compute_dtype = "bfloat16" if on_gpu else "float32"
  rounds = 3 if args.quick else 5

  torch_mod = None
  if not args.no_peer:
    try:
      import torch  # pylint: disable=import-outside-toplevel
      import diffusers  # pylint: disable=import-outside-toplevel,unused-import
      torch_mod = torch
    except ImportError:
      raise SystemExit("the peer needs torch and diffusers: pip install -e '.[bench]' "
                       "(or pass --no_peer)") from None
  torch_device = "cuda" if on_gpu else "cpu"

  results = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
             "machine": f"{platform.processor() or platform.machine()}, "
                        f"{os.cpu_count()} cores, {jax.devices()[0].device_kind}",
             "jax": jax.__version__, "compute_dtype": compute_dtype, "rows": []}
  if torch_mod is not None:
    results["torch"] = torch_mod.__version__

  if on_gpu:
    peak, peak_detail = gpu_peak(compute_dtype)
  else:
    peak, peak_detail = cpu_peak(torch_mod, args.quick)
  results["peak_flops"] = peak
  results["peak_detail"] = peak_detail
  print(f"peak: {peak / 1e9:,.0f} GFLOP/s ({peak_detail})", flush=True)

  def add(row):
    results["rows"].append(row)
    ratio = row.get("ratio")
    print(f"{row['what']:<34} ours {row['ours']:>10.4g} {row['unit']:<9}"
          + (f" peer {row['peer']:>10.4g}  ours/peer {ratio:5.2f}x" if ratio else "")
          + (f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""), flush=True)

  # Training throughput.
  cifar_shape = (32, 32, 3)
  train_batches = (128, 256) if on_gpu else (8, 32)
  for batch in train_batches:
    run, compile_s, flops, memory = ours_train(ddpm_cifar, cifar_shape, batch, compute_dtype)
    peer_runs = []
    if torch_mod is not None:
      peer_runs.append(("eager", peer_train(torch_mod, torch_device, batch, False, on_gpu)))
      if on_gpu:
        peer_runs.append(("torch.compile", peer_train(torch_mod, torch_device, batch, True, True)))
    for label, peer in peer_runs or [(None, (None, None))]:
      ours_s, peer_s = alternate(run, peer[0], rounds)
      row = {"what": f"train ddpm_cifar b{batch}" + (f" vs {label}" if label else ""),
             "unit": "images/s", "ours": batch / ours_s, "compile_s": compile_s,
             "flops_per_step": flops, "achieved_flops": flops / ours_s,
             "mfu": flops / ours_s / peak, "memory_bytes": memory}
      if peer_s:
        row.update(peer=batch / peer_s, ratio=peer_s / ours_s, peer_params=peer[1])
      add(row)
      del row

  digits_batch = ddpm_digits.get_config().data.batch_size
  run, compile_s, flops, memory = ours_train(ddpm_digits, (8, 8, 1), digits_batch, "float32")
  seconds = timed(run, 20 if args.quick else 50)
  add({"what": f"train ddpm_digits b{digits_batch}", "unit": "images/s",
       "ours": digits_batch / seconds, "steps_per_s": 1 / seconds, "compile_s": compile_s,
       "flops_per_step": flops, "mfu": flops / seconds / peak, "memory_bytes": memory})

  # Sampling throughput.
  sample_batch = 256 if on_gpu else 16
  ddpm_steps = 1000 if on_gpu else args.sample_steps
  run, compile_s = ours_sampler(ddpm_cifar, cifar_shape, sample_batch, "ddpm", None,
                                compute_dtype, num_timesteps=ddpm_steps)
  peer = (peer_sampler(torch_mod, torch_device, sample_batch, ddpm_steps, False, on_gpu)
          if torch_mod is not None else None)
  ours_s, peer_s = alternate(run, peer, rounds)
  scale = 1000 / ddpm_steps
  row = {"what": f"sample ddpm-1000 b{sample_batch}", "unit": "images/s",
         "ours": sample_batch / (ours_s * scale), "compile_s": compile_s,
         "timed_steps": ddpm_steps, "seconds_per_1000_steps": ours_s * scale}
  if peer_s:
    row.update(peer=sample_batch / (peer_s * scale), ratio=peer_s / ours_s)
  add(row)
  for steps in (20, 50):
    if args.quick and not on_gpu and steps == 50:
      continue  # same per-step cost as 20 steps, at 2.5x the time
    run, compile_s = ours_sampler(ddpm_cifar, cifar_shape, sample_batch, "ddim", steps,
                                  compute_dtype)
    peer = (peer_sampler(torch_mod, torch_device, sample_batch, steps, False, on_gpu, ddim=True)
            if torch_mod is not None else None)
    ours_s, peer_s = alternate(run, peer, 1 if args.quick else 3)
    row = {"what": f"sample ddim-{steps} b{sample_batch}", "unit": "images/s",
           "ours": sample_batch / ours_s, "compile_s": compile_s}
    if peer_s:
      row.update(peer=sample_batch / peer_s, ratio=peer_s / ours_s)
    add(row)

  results["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
