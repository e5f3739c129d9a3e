"""One bits/dim table for every model on the 8-bit digits: likelihood, training budget, size, sampling cost, sample quality.

  python scripts/likelihood_table.py --budget_seconds=600 --workdir=runs/table
  python scripts/likelihood_table.py --workdir=runs/table --run=vae_digits=runs/vae --run=ddpm_digits=runs/digits

Each experiment (--experiments, default: vae_digits, hvae_digits, ddpm_digits and vdm_digits where it exists)
either trains through run.py for the same wall-clock budget (--config.train.max_seconds, a step count the budget
cannot reach; one sample grid at the end) into WORKDIR/<experiment>, or, given --run=EXPERIMENT=PATH, is taken
as trained. Then `run.py --mode=eval` evaluates each one's EMA parameters on the same test split: the first
evaluation trains the evaluation classifier, the others reuse it (copied into their workdirs), so FD and the
IS-like score lie in one feature space. Every likelihood is -log P(x) of the 8-bit data in bits/dim, the
convention of DDPM's bound (the value's bin of width 2/255, end bins to +-inf; the ODE's uniform dequantisation
bounds the same number). Writes

  WORKDIR/table.md    the table (also printed), every figure read from the eval.json files
  WORKDIR/table.json  the rows, with the path of each eval.json
  WORKDIR/samples.png the final training sample grid of each model, side by side

Overrides: --override=PATH=VALUE (every experiment) or --override=EXPERIMENT:PATH=VALUE (one) become
--config.PATH=VALUE of its run.py commands (train and eval).
"""

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_vae_diffusion import RUN_PY, _grayscale, experiment_overrides, read_json, side_by_side

from gen_jax.runtime import fileio, interrupts

EXPERIMENTS_DIR = os.path.join(REPO, "experiments")
DEFAULT_EXPERIMENTS = ("vae_digits", "hvae_digits", "ddpm_digits", "vdm_digits")
NUM_STEPS = 10**7  # far beyond any budget here: the budget ends training
MANAGED = ("train.num_steps", "train.max_seconds", "train.sample_every")
# What each likelihood figure of eval.json is, by experiment family (the prefix before "_").
FIGURES = {
  ("vae", "bits_per_dim"): "VAE, discretized decoder: IWAE bound",
  ("hvae", "bits_per_dim"): "hierarchical VAE: IWAE bound",
  ("ddpm", "bits_per_dim"): "DDPM: variational bound",
  ("ddpm", "ode_bits_per_dim"): "DDPM: probability-flow ODE",
  ("vdm", "bits_per_dim"): "VDM: variational bound",
  ("fm", "bits_per_dim"): "flow matching: continuous-time ELBO",
  ("fm", "ode_bits_per_dim"): "flow matching: probability-flow ODE",
  ("edm", "bits_per_dim"): "EDM: continuous-time ELBO",
  ("edm", "ode_bits_per_dim"): "EDM: probability-flow ODE",
}


def available_experiments() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(EXPERIMENTS_DIR) if f.endswith(".py") and f[0] != "_")


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--workdir", default="runs/table", help="folder for the runs and outputs")
  parser.add_argument(
    "--experiments",
    default=None,
    help="comma-separated experiments (default: those of "
    f"{', '.join(DEFAULT_EXPERIMENTS)} that exist)",
  )
  parser.add_argument(
    "--budget_seconds",
    type=float,
    default=600.0,
    help="wall-clock training budget of each experiment trained here (train.max_seconds)",
  )
  parser.add_argument(
    "--run",
    action="append",
    default=[],
    metavar="EXPERIMENT=PATH",
    help="a trained workdir of EXPERIMENT: evaluated, not trained (repeatable)",
  )
  parser.add_argument("--num_samples", type=int, default=1000, help="eval.num_samples")
  parser.add_argument("--num_examples", type=int, default=0, help="eval.num_examples; 0: all")
  parser.add_argument("--classifier_steps", type=int, default=1000, help="eval.classifier_steps")
  parser.add_argument("--override", action="append", default=[], metavar="[EXPERIMENT:]PATH=VALUE")
  args = parser.parse_args(argv)
  known = available_experiments()
  if args.experiments is None:
    args.experiments = [e for e in DEFAULT_EXPERIMENTS if e in known]
  else:
    args.experiments = [e for e in args.experiments.split(",") if e]
  for experiment in args.experiments:
    if experiment not in known:
      parser.error(f"--experiments: unknown experiment {experiment!r}; known: {', '.join(known)}")
    _refuse_non_images(experiment)
  if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
    _refuse(f"--workdir={args.workdir} is a file, not a folder; choose a folder")
  args.trained = {}
  for item in args.run:
    experiment, _, path = item.partition("=")
    if experiment not in args.experiments or not path:
      parser.error(f"--run must be EXPERIMENT=PATH with EXPERIMENT in --experiments, got {item!r}")
    if not os.path.isdir(os.path.join(path, "checkpoints")):
      parser.error(f"--run={item}: {path} holds no checkpoints/; train it first")
    if _newest_grid(path) is None:  # said now, not after the evaluations
      print(f"note: --run={item}: {path} has no samples/step_*.png; it is left out of samples.png")
    args.trained[experiment] = path
  if not args.budget_seconds > 0 or math.isinf(args.budget_seconds):
    parser.error(f"--budget_seconds must be a positive number, got {args.budget_seconds}")
  if args.num_samples < 2 or args.num_examples < 0 or args.classifier_steps < 1:
    parser.error("--num_samples must be >= 2, --num_examples >= 0, --classifier_steps >= 1")
  args.overrides = experiment_overrides(
    parser, args.override, args.experiments, MANAGED, " (--budget_seconds)"
  )
  return args


# ------------------------------------------------------------------------------------------------------------------
# The table


def _family(experiment: str) -> str:
  return experiment.split("_", 1)[0]


def figure_rows(experiment: str, results: dict, train: dict) -> list[dict]:
  """One row per bits/dim figure of one eval.json (DDPM: the bound and the ODE)."""
  likelihood = results["likelihood"]
  quality = results.get("sample_quality", {})
  samples = quality.get("samples", {})
  rows = []
  for key in sorted(k for k in likelihood if k.endswith("bits_per_dim")):
    rows.append(
      dict(
        experiment=experiment,
        figure=key,
        model=FIGURES.get((_family(experiment), key), f"{experiment}: {key}"),
        bits_per_dim=likelihood[key],
        setup=likelihood.get("setup", {}).get(key, ""),
        num_examples=likelihood["num_examples"],
        data=likelihood["data"],
        steps=results["checkpoint_step"],
        train_seconds=train.get("seconds"),
        num_parameters=results["num_parameters"],
        likelihood_seconds=results.get("seconds", {}).get("likelihood"),
        sampler=samples.get("sampler"),
        network_calls=samples.get("network_calls"),
        sample_seconds=samples.get("seconds"),
        num_samples=samples.get("num_samples"),
        fd=quality.get("fd_samples_vs_test"),
        is_like=quality.get("is_samples"),
        feature_space={k: v for k, v in quality.get("feature_space", {}).items() if k != "path"},
      )
    )
  return rows


def _cell(value, fmt):
  return "—" if value is None else format(value, fmt)


def markdown(rows: list[dict], command: str) -> str:
  lines = [
    f"Every model on scikit-learn's 8x8 digits, 8-bit, test split (`{command}`):",
    "",
    "| model | bits/dim | training | parameters | sampling: network calls per sample, "
    "seconds per 1000 | FD to test | IS-like |",
    "|---|---:|---|---:|---|---:|---:|",
  ]
  for r in rows:
    seconds = "" if r["train_seconds"] is None else f", {r['train_seconds']:.0f} s"
    per_1000 = (
      None if r["sample_seconds"] is None else 1000 * r["sample_seconds"] / r["num_samples"]
    )
    lines.append(
      f"| {r['model']} (`{r['experiment']}`) | {r['bits_per_dim']:.3f} | {r['steps']:,} steps"
      f"{seconds} | {r['num_parameters']:,} | {_cell(r['network_calls'], ',')}, "
      f"{_cell(per_1000, '.1f')} s | {_cell(r['fd'], '.2f')} | {_cell(r['is_like'], '.2f')} |"
    )
  spaces = {json.dumps(r["feature_space"], sort_keys=True) for r in rows if r["feature_space"]}
  space = rows[0]["feature_space"] if rows else {}
  lines += [
    "",
    f"- bits/dim: -log P(x) / (D ln 2) on the first {rows[0]['num_examples'] if rows else 0} "
    "test digits, P the probability of the 8-bit values (each value's bin of width 2/255, "
    "end bins to +-inf): an upper bound for every row (IWAE with K samples, the variational "
    "bounds, and the ODE's uniform dequantisation, which bounds the same discrete "
    "likelihood). Each row's eval.json says how it was computed (`likelihood.setup`).",
    "- training: the steps reached and, for runs trained by this script, the wall time of the "
    "training process at equal `train.max_seconds` budgets (start-up and compilation included).",
    "- FD and IS-like score: the samples of each model (seconds per 1000 include compilation) "
    "against the test split in the features of one evaluation classifier "
    f"({space.get('feature_dim', '?')}-d penultimate layer, trained {space.get('num_steps', '?')} "
    f"steps)."
    if len(spaces) <= 1
    else "- WARNING: the evaluations used different evaluation classifiers; FD and IS-like "
    "scores are not in one feature space.",
  ]
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------------


def _refuse(message: str):
  """One line on stderr and exit status 2, as argparse's errors (without its usage lines)."""
  print(f"error: {message}", file=sys.stderr)
  raise SystemExit(2)


def _refuse_non_images(experiment: str) -> None:
  """The table is of image models: an experiment of 2-D points (or no data) would give an empty
  table that exits 0."""
  import importlib

  data = importlib.import_module(f"experiments.{experiment}").get_config().get("data")
  if data is None or data.get("source") == "toy2d":
    kind = "2-D points" if data is not None else "no image data"
    _refuse(
      f"--experiments: {experiment} trains on {kind}, not images; this table compares image "
      f"models' bits/dim (e.g. {', '.join(DEFAULT_EXPERIMENTS)})"
    )


# The run.py child running now, and the signal that stopped this script while it ran.
_child = {"proc": None, "starting": False, "signal": None}


def _on_signal(signum, frame=None):
  """SIGINT/SIGTERM: handed to the run.py child, which finishes its step, saves and exits; this
  script then exits 128 + signum in one line. Without a child: interrupts.handle (one line, the
  temporary file being written removed, exit at once)."""
  proc = _child["proc"]
  if _child["starting"]:  # between fork and `proc` being known: handed over by run_py
    _child["signal"] = _child["signal"] or signum
    return
  if proc is None or proc.poll() is not None:
    interrupts.handle(signum)
  _child["signal"] = _child["signal"] or signum
  proc.send_signal(signum)  # a second signal ends run.py at once, as it does run.py alone


def install_signals() -> None:
  """Run as a command: signals end the run.py child first (it is in its own session, so a
  Ctrl-C at the terminal reaches it once, through this handler, not twice)."""
  interrupts.set_message(
    "likelihood_table: {name} received: stopped; what was written is whole (finished runs keep "
    "their checkpoints and eval.json)"
  )
  for signum in interrupts.SIGNALS:
    if signal.getsignal(signum) != signal.SIG_IGN:
      signal.signal(signum, _on_signal)


def run_py(experiment, workdir, mode, flags) -> float:
  """run.py in a child process (its output goes to ours); its wall time in seconds. A signal
  stops it (see _on_signal) and then this script, with exit status 128 + the signal."""
  command = [
    sys.executable,
    RUN_PY,
    f"--experiment={experiment}",
    f"--workdir={workdir}",
    f"--mode={mode}",
    *flags,
  ]
  print(f"\n$ {' '.join(command[1:])}", flush=True)
  start = time.time()
  _child["starting"] = True
  try:
    _child["proc"] = subprocess.Popen(command, start_new_session=True)
  finally:
    _child["starting"] = False
  try:
    if _child["signal"] is not None:  # it came while the child started
      _child["proc"].send_signal(_child["signal"])
    status = _child["proc"].wait()
  finally:
    proc = _child["proc"]
    if proc.poll() is None:  # an exception here: never leave run.py training on its own
      proc.kill()
      proc.wait()
    _child["proc"] = None
  if _child["signal"] is not None:
    name = signal.Signals(_child["signal"]).name
    print(
      f"likelihood_table: {name} received: run.py --experiment={experiment} --mode={mode} "
      f"stopped (exit status {status}); {workdir} keeps what it saved"
      + (f"; evaluate it with --run={experiment}={workdir}" if mode == "train" else ""),
      file=sys.stderr,
    )
    raise SystemExit(128 + _child["signal"])
  if status != 0:
    sys.exit(
      f"error: run.py --experiment={experiment} --mode={mode} failed with exit status {status}"
    )
  return time.time() - start


def _copy_folder(source: str, target: str) -> None:
  """shutil.copytree under a temporary name, then renamed: a kill leaves no half-copied target
  (which the next run would take as copied)."""
  partial = target + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  shutil.copytree(source, partial)
  os.replace(partial, target)


def _newest_grid(workdir):
  folder = os.path.join(workdir, "samples")
  if not os.path.isdir(folder):  # e.g. a run imported with --pretrained and never sampled
    return None
  grids = sorted(f for f in os.listdir(folder) if f.startswith("step_") and f.endswith(".png"))
  return os.path.join(folder, grids[-1]) if grids else None


def main(argv=None) -> list[dict]:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  try:
    os.makedirs(args.workdir, exist_ok=True)
  except OSError as e:
    _refuse(f"--workdir={args.workdir} cannot be created ({e.strerror or e}); choose another")
  workdirs, train_info = {}, {}
  for experiment in args.experiments:
    if experiment in args.trained:
      workdirs[experiment], train_info[experiment] = args.trained[experiment], {}
      continue
    workdir = os.path.join(args.workdir, experiment)
    if os.path.exists(os.path.join(workdir, "checkpoints")):
      sys.exit(
        f"error: {workdir} already holds a run (training again would resume it with a second "
        f"budget); pass --run={experiment}={workdir} to evaluate it, or choose a new --workdir"
      )
    flags = [
      f"--config.train.num_steps={NUM_STEPS}",
      f"--config.train.max_seconds={args.budget_seconds}",
      f"--config.train.sample_every={NUM_STEPS}",
      *args.overrides[experiment],
    ]
    workdirs[experiment] = workdir
    train_info[experiment] = {"seconds": run_py(experiment, workdir, "train", flags)}

  eval_flags = [
    f"--config.eval.num_samples={args.num_samples}",
    f"--config.eval.num_examples={args.num_examples}",
    f"--config.eval.classifier_steps={args.classifier_steps}",
  ]
  rows, first = [], None
  for experiment in args.experiments:
    workdir = workdirs[experiment]
    target = os.path.join(workdir, "eval_classifier")
    if first is not None and not os.path.exists(target):  # one feature space for every row
      _copy_folder(os.path.join(first, "eval_classifier"), target)
    start = time.time()
    run_py(experiment, workdir, "eval", [*eval_flags, *args.overrides[experiment]])
    train_info[experiment]["eval_seconds"] = time.time() - start
    first = first or workdir
    results = read_json(os.path.join(workdir, "eval.json"))
    for row in figure_rows(experiment, results, train_info[experiment]):
      rows.append(dict(row, eval_json=os.path.join(workdir, "eval.json")))

  command = " ".join(["python scripts/likelihood_table.py", *argv])
  table = markdown(rows, command)
  fileio.write_atomically(os.path.join(args.workdir, "table.md"), table)
  fileio.write_atomically(os.path.join(args.workdir, "table.json"), json.dumps(rows, indent=2))
  pictures, labels = [], []
  for experiment in args.experiments:
    grid = _newest_grid(workdirs[experiment])
    if grid:
      pictures.append(_grayscale(grid))
      labels.append(experiment)
  if pictures:
    side_by_side(os.path.join(args.workdir, "samples.png"), pictures, labels)
  print("\n" + table)
  print(f"Wrote {os.path.join(args.workdir, 'table.md')}, table.json and samples.png")
  return rows


if __name__ == "__main__":
  install_signals()
  main()
