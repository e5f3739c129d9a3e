"""Fréchet distance against network calls per sample (NFE) for DDPM, EDM and flow matching on the 8-bit digits.

  python scripts/nfe_table.py --num_steps=2400 --workdir=runs/nfe
  python scripts/nfe_table.py --budget_seconds=600 --workdir=runs/nfe
  python scripts/nfe_table.py --workdir=runs/nfe --run=ddpm_digits=runs/digits --run=fm_digits=runs/fm

Each experiment (--experiments, default ddpm_digits, edm_digits, fm_digits: one U-Net, one data set, one
optimizer) trains through run.py for the same number of steps (--num_steps) or the same wall-clock budget
(--budget_seconds: --config.train.max_seconds and a step count the budget cannot reach; fair only on an idle
machine) into WORKDIR/<experiment>, or, given --run=EXPERIMENT=PATH, is taken as trained. The table says the
steps each model trained. Then:

  1. `run.py --mode=eval` on each, as shipped: the likelihoods in bits/dim on the 8-bit test digits (DDPM: its
     bound and the ODE; EDM and flow matching: the continuous-time ELBO and the ODE) and sample quality with its
     own sampler. The first evaluation trains the evaluation classifier; the others get a copy of it, so every
     FD lies in one feature space.
  2. For each sampler of the experiment (SAMPLERS below) and each NFE (--nfe, default 5,10,20,50,100):
     `run.py --mode=eval --out_dir=WORKDIR/<experiment>/nfe/<sampler>-<NFE>` with that sampler and the most
     steps whose network calls do not exceed the NFE (Heun: 2N - 1 calls for N steps, so NFE 10 runs 5 steps, 9
     calls; the table shows the calls that ran), the likelihood cut to one batch (eval.num_examples=1,
     eval.ode_steps=0: its figures are step 1's).

Writes WORKDIR/nfe_table.md (also printed: FD of samples to the test split per sampler and NFE, and the bits/dim)
and WORKDIR/nfe_table.json (every cell with the eval.json it came from). Overrides: --override=PATH=VALUE (every
experiment) or --override=EXPERIMENT:PATH=VALUE (one) become --config.PATH=VALUE of its run.py commands.
"""

import argparse
import json
import math
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_vae_diffusion import experiment_overrides, read_json, run_py

from gen_jax.runtime import fileio

DEFAULT_EXPERIMENTS = ("ddpm_digits", "edm_digits", "fm_digits")
# The samplers measured per experiment: DDPM's best few-step samplers, EDM's Heun, flow matching's Euler
# and Heun. An experiment not listed is measured with its config's sampler.
SAMPLERS = {
  "ddpm_digits": ("ddim", "dpm++2m"),
  "edm_digits": ("heun",),
  "fm_digits": ("euler", "heun"),
}
NUM_STEPS = 10**7  # far beyond any budget here: the budget ends training
MANAGED = (
  "train.num_steps",
  "train.max_seconds",
  "train.sample_every",
  "sample.sampler",
  "sample.num_steps",
  "eval.num_samples",
  "eval.classifier_steps",
)


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--workdir", default="runs/nfe", help="folder for the runs and outputs")
  parser.add_argument(
    "--experiments",
    default=",".join(DEFAULT_EXPERIMENTS),
    help="comma-separated experiments",
  )
  budget = parser.add_mutually_exclusive_group()
  budget.add_argument(
    "--num_steps", type=int, default=None, help="training steps of each (train.num_steps)"
  )
  budget.add_argument(
    "--budget_seconds",
    type=float,
    default=None,
    help="training budget of each in seconds (train.max_seconds; default 600 without --num_steps)",
  )
  parser.add_argument("--nfe", default="5,10,20,50,100", help="comma-separated network calls")
  parser.add_argument(
    "--run", action="append", default=[], metavar="EXPERIMENT=PATH", help="a trained workdir"
  )
  parser.add_argument("--num_samples", type=int, default=1000, help="eval.num_samples per cell")
  parser.add_argument("--classifier_steps", type=int, default=1000, help="eval.classifier_steps")
  parser.add_argument("--override", action="append", default=[], metavar="[EXPERIMENT:]PATH=VALUE")
  args = parser.parse_args(argv)
  args.experiments = [e for e in args.experiments.split(",") if e]
  for experiment in args.experiments:
    if not os.path.isfile(os.path.join(REPO, "experiments", f"{experiment}.py")):
      parser.error(f"--experiments: unknown experiment {experiment!r}")
  try:
    args.nfe = sorted({int(n) for n in args.nfe.split(",") if n})
  except ValueError:
    parser.error(f"--nfe must be comma-separated integers, got {args.nfe!r}")
  if not args.nfe or args.nfe[0] < 1:
    parser.error("--nfe must name network-call counts >= 1")
  args.trained = {}
  for item in args.run:
    experiment, _, path = item.partition("=")
    if experiment not in args.experiments or not path:
      parser.error(f"--run must be EXPERIMENT=PATH with EXPERIMENT in --experiments, got {item!r}")
    if not os.path.isdir(os.path.join(path, "checkpoints")):
      parser.error(f"--run={item}: {path} holds no checkpoints/; train it first")
    args.trained[experiment] = path
  if args.num_steps is None and args.budget_seconds is None:
    args.budget_seconds = 600.0
  if args.num_steps is not None and args.num_steps < 1:
    parser.error(f"--num_steps must be a positive integer, got {args.num_steps}")
  if args.budget_seconds is not None and (
    not args.budget_seconds > 0 or math.isinf(args.budget_seconds)
  ):
    parser.error(f"--budget_seconds must be a positive number, got {args.budget_seconds}")
  if args.num_samples < 2 or args.classifier_steps < 1:
    parser.error("--num_samples must be >= 2 and --classifier_steps >= 1")
  args.overrides = experiment_overrides(parser, args.override, args.experiments, MANAGED)
  return args


# ------------------------------------------------------------------------------------------------------------------
# Steps for a budget of network calls


def network_calls_fn(experiment: str, sampler: str):
  """N -> network calls per sample of `sampler` in the experiment's family (the registries' own counts)."""
  from gen_jax import diffusion
  from gen_jax.diffusion import solvers

  config = _config(experiment)
  continuous = config.diffusion.get("process", "discrete") != "discrete"
  spec = (solvers.PROCESS_SAMPLERS if continuous else diffusion.SAMPLERS)[sampler]
  return spec.network_calls


def steps_for(calls_fn, nfe: int) -> int | None:
  """The most steps N with calls_fn(N) <= nfe (None: not even one step fits)."""
  best = None
  for n in range(1, nfe + 1):
    if calls_fn(n) <= nfe:
      best = n
  return best


def latest_step(workdir: str) -> int | None:
  """The newest checkpoint step in workdir/checkpoints (orbax's step folders are named by the step)."""
  folder = os.path.join(workdir, "checkpoints")
  steps = (
    [int(name) for name in os.listdir(folder) if name.isdigit()] if os.path.isdir(folder) else []
  )
  return max(steps, default=None)


def _config(experiment: str):
  import importlib

  return importlib.import_module(f"experiments.{experiment}").get_config()


# ------------------------------------------------------------------------------------------------------------------
# The table


def markdown(
  cells: list[dict],
  likelihoods: dict,
  nfes: list[int],
  command: str,
  *,
  num_samples: int,
  trained_steps: dict,
) -> str:
  """One row per (experiment, sampler): steps trained, FD at each NFE (the calls that ran when fewer), bits/dim."""
  rows = sorted({(c["experiment"], c["sampler"]) for c in cells}, key=lambda r: (r[0], r[1]))
  head = " | ".join(f"NFE {n}" for n in nfes)
  lines = [
    f"Fréchet distance of {num_samples}-sample sets to the test digits against network calls per sample "
    f"(`{command}`):",
    "",
    f"| experiment | sampler | steps trained | {head} | bits/dim: bound | bits/dim: ODE |",
    "|---|---|---:|" + "---:|" * len(nfes) + "---:|---:|",
  ]
  for experiment, sampler in rows:
    found = {c["nfe"]: c for c in cells if (c["experiment"], c["sampler"]) == (experiment, sampler)}
    row = []
    for n in nfes:
      c = found.get(n)
      if c is None or c.get("fd") is None:
        row.append("—")
      elif c["network_calls"] != n:
        row.append(f"{c['fd']:.2f} ({c['network_calls']})")
      else:
        row.append(f"{c['fd']:.2f}")
    like = likelihoods.get(experiment, {})
    bound, ode = like.get("bits_per_dim"), like.get("ode_bits_per_dim")
    lines.append(
      f"| {experiment} | {sampler} | {trained_steps.get(experiment, '—')} | {' | '.join(row)} | "
      f"{'—' if bound is None else f'{bound:.3f}'} | {'—' if ode is None else f'{ode:.3f}'} |"
    )
  lines += [
    "",
    "- FD: in the evaluation classifier's features (one classifier for every cell), samples rounded to the "
    "8-bit grid; the real-data floor is each eval.json's fd_test_halves. A number in parentheses is the "
    "network calls that ran where the sampler cannot hit the NFE exactly (Heun: 2N - 1).",
    "- bits/dim: on the 8-bit test digits from each model's full `--mode=eval` (DDPM: its variational bound; "
    "EDM and flow matching: the continuous-time ELBO; ODE: the probability-flow likelihood, dequantized).",
  ]
  return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  workdirs = {}
  for experiment in args.experiments:
    if experiment in args.trained:
      workdirs[experiment] = args.trained[experiment]
      continue
    workdir = os.path.join(args.workdir, experiment)
    if os.path.exists(os.path.join(workdir, "checkpoints")):
      sys.exit(
        f"error: {workdir} already holds a run; pass --run={experiment}={workdir} to evaluate it, or "
        "choose a new --workdir"
      )
    steps = args.num_steps or NUM_STEPS
    flags = [
      f"--config.train.num_steps={steps}",
      f"--config.train.max_seconds={args.budget_seconds or 0}",
      f"--config.train.sample_every={NUM_STEPS}",
      *args.overrides[experiment],
    ]
    run_py(experiment, workdir, "train", flags)
    workdirs[experiment] = workdir

  quality = [
    f"--config.eval.num_samples={args.num_samples}",
    f"--config.eval.classifier_steps={args.classifier_steps}",
  ]
  likelihoods, first = {}, None

  def share_classifier(out_dir):  # one feature space for every cell
    target = os.path.join(out_dir, "eval_classifier")
    if first is not None and not os.path.exists(target):
      shutil.copytree(os.path.join(first, "eval_classifier"), target)

  for experiment in args.experiments:
    workdir = workdirs[experiment]
    share_classifier(workdir)
    run_py(experiment, workdir, "eval", [*quality, *args.overrides[experiment]])
    first = first or workdir
    likelihoods[experiment] = read_json(os.path.join(workdir, "eval.json"))["likelihood"]

  cells = []
  for experiment in args.experiments:
    samplers = SAMPLERS.get(experiment) or (_config(experiment).sample.sampler,)
    for sampler in samplers:
      calls_fn = network_calls_fn(experiment, sampler)
      for nfe in args.nfe:
        steps = steps_for(calls_fn, nfe)
        if steps is None:
          continue
        out_dir = os.path.join(workdirs[experiment], "nfe", f"{sampler}-{nfe}")
        os.makedirs(out_dir, exist_ok=True)
        share_classifier(out_dir)
        flags = [
          *quality,
          f"--config.sample.sampler={sampler}",
          f"--config.sample.num_steps={steps}",
          "--config.eval.num_examples=1",
          "--config.eval.ode_steps=0",
          f"--out_dir={out_dir}",
          *args.overrides[experiment],
        ]
        run_py(experiment, workdirs[experiment], "eval", flags)
        path = os.path.join(out_dir, "eval.json")
        section = read_json(path).get("sample_quality", {})
        samples = section.get("samples", {})
        cells.append(
          dict(
            experiment=experiment,
            sampler=sampler,
            nfe=nfe,
            num_steps=steps,
            network_calls=samples.get("network_calls", calls_fn(steps)),
            fd=section.get("fd_samples_vs_test"),
            fd_test_halves=section.get("fd_test_halves"),
            eval_json=path,
          )
        )

  command = " ".join(["python scripts/nfe_table.py", *argv])
  trained_steps = {e: latest_step(w) for e, w in workdirs.items()}
  table = markdown(
    cells,
    likelihoods,
    args.nfe,
    command,
    num_samples=args.num_samples,
    trained_steps=trained_steps,
  )
  fileio.write_atomically(os.path.join(args.workdir, "nfe_table.md"), table)
  fileio.write_atomically(
    os.path.join(args.workdir, "nfe_table.json"),
    json.dumps(
      {"cells": cells, "likelihood": likelihoods, "trained_steps": trained_steps}, indent=2
    ),
  )
  print("\n" + table)
  print(f"Wrote {os.path.join(args.workdir, 'nfe_table.md')} and nfe_table.json")
  return cells


if __name__ == "__main__":
  main()
