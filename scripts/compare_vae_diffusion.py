"""VAE vs diffusion on the same data: trains vae_digits and ddpm_digits for the same wall-clock budget, evaluates both.

  python scripts/compare_vae_diffusion.py --budget_seconds=150 --workdir=runs/compare

The lecture says VAE samples tend to be blurry and diffusion samples sharp; this measures it on scikit-learn's 8x8
digits. Each model trains through run.py, one after the other, in its own process, with
--config.train.max_seconds=<budget> and a step count the budget cannot reach (so the budget ends training; sample
grids are drawn only at the end, so both spend the budget on training steps), then `run.py --mode=eval` evaluates its
EMA parameters. The two evaluations share one evaluation classifier (the first trains it, the second finds it in its
cache), so the sample-quality figures lie in one feature space, against the same real data and floors. Writes

  WORKDIR/vae_digits/, WORKDIR/ddpm_digits/  the two runs (checkpoints, eval.json, samples/, config.json)
  WORKDIR/compare.png  the final sample grids of training side by side: VAE | DDPM
  WORKDIR/compare.md   the table (also printed), every figure read from the two eval.json files

Overrides: --vae_override=PATH=VALUE and --ddpm_override=PATH=VALUE (repeatable) become --config.PATH=VALUE of that
model's run.py commands (train and eval); --override=PATH=VALUE applies to both.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gen_jax import images

RUN_PY = os.path.join(REPO, "run.py")
VAE, DDPM = "vae_digits", "ddpm_digits"
# Far more steps than any budget here reaches: the budget, not the count, ends training.
NUM_STEPS = 10**7
# Set by this script's own flags; an override of them is refused.
MANAGED = (
  "train.num_steps",
  "train.max_seconds",
  "train.sample_every",
  "eval.num_samples",
  "eval.num_examples",
  "eval.classifier_steps",
)


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--budget_seconds",
    type=float,
    default=150.0,
    help="wall-clock training budget of each model, seconds (train.max_seconds)",
  )
  parser.add_argument(
    "--workdir", default="runs/compare", help="folder for both runs and the outputs"
  )
  parser.add_argument(
    "--num_samples",
    type=int,
    default=1000,
    help="samples per model for the sample-quality figures (eval.num_samples)",
  )
  parser.add_argument(
    "--num_examples",
    type=int,
    default=0,
    help="likelihoods on the first N test examples (eval.num_examples); 0: all 360",
  )
  parser.add_argument(
    "--classifier_steps",
    type=int,
    default=1000,
    help="training steps of the shared evaluation classifier (eval.classifier_steps)",
  )
  for name, what in (("vae", VAE), ("ddpm", DDPM), ("", "both experiments")):
    flag = f"--{name}_override" if name else "--override"
    parser.add_argument(
      flag,
      action="append",
      default=[],
      metavar="PATH=VALUE",
      help=f"a config override for {what}: --config.PATH=VALUE (repeatable)",
    )
  args = parser.parse_args(argv)
  if not args.budget_seconds > 0 or math.isinf(args.budget_seconds):
    parser.error(
      f"--budget_seconds must be a positive number of seconds, got {args.budget_seconds}"
    )
  if args.num_samples < 2:
    parser.error(f"--num_samples must be at least 2, got {args.num_samples}")
  if args.num_examples < 0:
    parser.error(
      f"--num_examples must be 0 (the whole test split) or positive, got {args.num_examples}"
    )
  if args.classifier_steps < 1:
    parser.error(f"--classifier_steps must be positive, got {args.classifier_steps}")
  for override in args.override + args.vae_override + args.ddpm_override:
    path = override.split("=", 1)[0]
    if "=" not in override or not path or path.startswith("-"):
      parser.error(f"an override is PATH=VALUE, e.g. model.latent_dim=8; got {override!r}")
    if path in MANAGED:
      parser.error(
        f"{path} is set by this script (--budget_seconds, --num_samples, --num_examples, "
        f"--classifier_steps); got the override {override!r}"
      )
  return args


def experiment_overrides(parser, overrides, experiments, managed, managed_by="") -> dict:
  """{experiment: [--config.PATH=VALUE, ...]} from --override=[EXPERIMENT:]PATH=VALUE flags (every
  experiment, or the one named); parser.error for a malformed one, a PATH in `managed` (set by the
  script itself: `managed_by` names its flag) or an experiment not in `experiments`. The
  multi-experiment scripts (likelihood_table.py, nfe_table.py) share it."""
  out = {e: [] for e in experiments}
  for override in overrides:
    target, sep, rest = override.partition(":")
    if not sep or "=" in target:
      target, rest = None, override
    path = rest.split("=", 1)[0]
    if "=" not in rest or not path or path.startswith("-"):
      parser.error(f"an override is [EXPERIMENT:]PATH=VALUE, got {override!r}")
    if path in managed:
      parser.error(f"{path} is set by this script{managed_by}; got {override!r}")
    if target is not None and target not in experiments:
      parser.error(f"--override={override}: {target} is not in --experiments")
    for experiment in [target] if target else experiments:
      out[experiment].append(f"--config.{rest}")
  return out


def run_py(experiment, workdir, mode, flags) -> float:
  """Runs run.py in a child process (its output goes to ours); returns its wall time in seconds."""
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
  status = subprocess.run(command, check=False).returncode
  if status != 0:
    sys.exit(
      f"error: run.py --experiment={experiment} --mode={mode} failed with exit status {status}"
    )
  return time.time() - start


def read_json(path):
  with open(path) as f:
    return json.load(f)


# ------------------------------------------------------------------------------------------------------------------
# The table


def _number(value, digits):
  return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)


def describe_model(experiment, config) -> str:
  m = config["model"]
  if experiment == VAE:
    likelihood = m.get("likelihood", "bernoulli")
    decoder = {
      "bernoulli": "Bernoulli decoder",
      "discretized_gaussian": "discretized Gaussian decoder",
      "logistic_mixture": f"decoder: {m.get('num_mixtures')} discretized logistics",
    }[likelihood]
    return f"MLP VAE, hidden {tuple(m['hidden'])}, {m['latent_dim']}-d latent, {decoder}"
  return (
    f"DDPM, U-Net {m['ch']} channels x {tuple(m['ch_mult'])}, "
    f"T = {config['diffusion']['num_timesteps']}, {config['diffusion']['prediction']}-prediction"
  )


def vae_is_binarized(config) -> bool:
  return config["model"].get("likelihood", "bernoulli") == "bernoulli"


def likelihood_cell(experiment, likelihood, num_dims, config) -> str:
  """The likelihood as the model defines it, with its units and its data."""
  if experiment == VAE and vae_is_binarized(config):
    nll = likelihood["nll_iwae"]
    return (
      f"{_number(nll, 2)} nats/image = {_number(nll / (num_dims * math.log(2)), 3)} bits/dim "
      f"(IWAE bound; binarized test digits, {num_dims} binary pixels)"
    )
  if experiment == VAE:
    return (
      f"{_number(likelihood['bits_per_dim'], 3)} bits/dim (IWAE bound, K = "
      f"{config['model']['iwae_samples']:,}; 8-bit test digits, {num_dims} pixels of 256 levels)"
    )
  return (
    f"{_number(likelihood['bits_per_dim'], 3)} bits/dim (variational bound; 8-bit test digits, "
    f"{num_dims} pixels of 256 levels)"
  )


def table_rows(runs) -> list[tuple[str, str, str]]:
  """(label, VAE cell, DDPM cell) for each row; `runs` maps experiment -> the figures read from its workdir."""

  def row(label, cell):
    return (label, cell(runs[VAE]), cell(runs[DDPM]))

  def quality(key, digits=2):
    return lambda r: _number(r["eval"]["sample_quality"][key], digits)

  return [
    row("model", lambda r: describe_model(r["experiment"], r["config"])),
    row("parameters", lambda r: f"{r['eval']['num_parameters']:,}"),
    row("training steps reached in the budget", lambda r: f"{r['eval']['checkpoint_step']:,}"),
    row(
      "examples seen (steps x batch)",
      lambda r: f"{r['eval']['checkpoint_step'] * r['config']['data']['batch_size']:,}",
    ),
    row("training process wall time, s", lambda r: _number(r["train_seconds"], 1)),
    row(
      "likelihood (as each model defines it)",
      lambda r: likelihood_cell(
        r["experiment"], r["eval"]["likelihood"], r["num_dims"], r["config"]
      ),
    ),
    row(
      "likelihood evaluation: test examples, wall time s",
      lambda r: (
        f"{r['eval']['likelihood']['num_examples']}, {_number(r['eval']['seconds']['likelihood'], 1)}"
      ),
    ),
    row("sampler", lambda r: _sampler(r["eval"]["sample_quality"]["samples"])),
    row(
      "samples for the figures below",
      lambda r: f"{r['eval']['sample_quality']['samples']['num_samples']:,}",
    ),
    row(
      "sampling wall time, s (compilation included)",
      lambda r: _number(r["eval"]["sample_quality"]["samples"]["seconds"], 1),
    ),
    row("FD samples vs test (lower is better)", quality("fd_samples_vs_test")),
    row("FD samples vs train", quality("fd_samples_vs_train")),
    row("floor: FD real train vs test, as many examples", quality("fd_train_vs_test")),
    row("floor: FD test halves", quality("fd_test_halves")),
    row("IS-like score of the samples (higher is better, at most 10)", quality("is_samples")),
    row("IS-like score of the test data", quality("is_test")),
    row(
      "evaluation classifier test accuracy",
      lambda r: f"{100 * r['eval']['sample_quality']['feature_space']['test_accuracy']:.1f}%",
    ),
  ]


def _sampler(samples) -> str:
  steps = f", {samples['num_steps']} steps" if samples.get("num_steps") else ""
  return samples["sampler"] + steps


def same_classifier(runs) -> bool:
  """Whether both evaluations used one evaluation classifier (same description and test accuracy)."""
  spaces = [
    {k: v for k, v in runs[e]["eval"]["sample_quality"]["feature_space"].items() if k != "path"}
    for e in (VAE, DDPM)
  ]
  return spaces[0] == spaces[1]


def markdown(runs, budget_seconds, command) -> str:
  lines = [
    f"VAE vs diffusion on scikit-learn's 8x8 digits, {budget_seconds:g} s of training each "
    f"(`{command}`):",
    "",
    f"| | VAE (`{VAE}`) | DDPM (`{DDPM}`) |",
    "|---|---|---|",
  ]
  lines += [f"| {label} | {vae} | {ddpm} |" for label, vae, ddpm in table_rows(runs)]
  space = runs[VAE]["eval"]["sample_quality"]["feature_space"]
  lines += [
    "",
    "- The likelihoods are not comparable: the VAE models binarized digits (each pixel a Bernoulli draw, at most "
    "1 bit), DDPM the 8-bit digits; the same unit measures different data. Both are upper bounds on their "
    "model's negative log-likelihood."
    if vae_is_binarized(runs[VAE]["config"])
    else "- The likelihoods are comparable: both are -log P(x) of the same 8-bit test digits in bits/dim (each "
    "value's bin of width 2/255, the end bins to +-inf), upper bounds on each model's negative log-likelihood: "
    "the VAE's importance-weighted bound, DDPM's variational bound.",
    f"- The sample-quality figures are comparable: the same {space['num_classes']}-class evaluation classifier "
    f"(trained {space['num_steps']} steps on {space['data']}; Fréchet distance in its {space['feature_dim']}-d "
    f"penultimate layer, IS-like score from its softmax), the same real data and the same number of samples. "
    f"The floors are real data against real data: a model that reproduced the data would score about "
    f"'FD real train vs test'."
    if same_classifier(runs)
    else "- WARNING: the two evaluations used different evaluation classifiers (a different seed or setting), so "
    "their sample-quality figures are not in one feature space.",
    "- The VAE's samples are its decoder's means for z ~ N(0, I), as `vae_digits` draws "
    "them; DDPM's come from its sampler. Both models sample with their EMA parameters.",
    f"- The budget (`train.max_seconds`) counts each training loop from its first compiled step (logs and "
    f"checkpoints included, one sample grid at the end); the process wall time adds start-up, compilation and "
    f"that grid. The two runs ran one after the other on the same machine. `{DDPM}` decays its learning rate "
    f"on a cosine to num_steps = {NUM_STEPS:,}, so under the budget it stays near its peak.",
  ]
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------------
# The picture


def side_by_side(path, pictures, labels, gap=24) -> None:
  """Writes pictures (uint8 (H, W, C) arrays) next to each other, each with its label above it."""
  line_height = 14
  header = line_height * max(len(label.splitlines()) for label in labels) + 10
  height = max(p.shape[0] for p in pictures) + header
  width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
  canvas = Image.new("L", (width, height), 255)
  draw = ImageDraw.Draw(canvas)
  left = 0
  for picture, label in zip(pictures, labels):
    for i, line in enumerate(label.splitlines()):
      draw.text((left + 4, 4 + i * line_height), line, fill=0)
    canvas.paste(Image.fromarray(picture[..., 0] if picture.ndim == 3 else picture), (left, header))
    left += picture.shape[1] + gap
  images.save_png(path, np.asarray(canvas)[..., None])


def _grayscale(path) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("L"))


# ------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  workdir = args.workdir
  overrides = {VAE: args.override + args.vae_override, DDPM: args.override + args.ddpm_override}
  for experiment in (VAE, DDPM):
    if os.path.exists(os.path.join(workdir, experiment, "checkpoints")):
      sys.exit(
        f"error: {os.path.join(workdir, experiment)} already holds a run (training there again would resume "
        f"it with a second budget); choose a new --workdir"
      )
  os.makedirs(workdir, exist_ok=True)

  runs = {}
  for experiment in (VAE, DDPM):
    flags = [
      f"--config.train.num_steps={NUM_STEPS}",
      f"--config.train.max_seconds={args.budget_seconds}",
      f"--config.train.sample_every={NUM_STEPS}",
      *(f"--config.{o}" for o in overrides[experiment]),
    ]
    runs[experiment] = {
      "experiment": experiment,
      "workdir": os.path.join(workdir, experiment),
      "train_seconds": run_py(experiment, os.path.join(workdir, experiment), "train", flags),
    }
  eval_flags = [
    f"--config.eval.num_samples={args.num_samples}",
    f"--config.eval.num_examples={args.num_examples}",
    f"--config.eval.classifier_steps={args.classifier_steps}",
  ]
  for experiment in (VAE, DDPM):
    run = runs[experiment]
    if (
      experiment == DDPM
    ):  # The classifier the VAE's evaluation trained: one feature space for both.
      source = os.path.join(runs[VAE]["workdir"], "eval_classifier")
      target = os.path.join(run["workdir"], "eval_classifier")
      if os.path.isdir(source) and not os.path.exists(target):
        shutil.copytree(source, target)
    run["eval_seconds"] = run_py(
      experiment,
      run["workdir"],
      "eval",
      [*eval_flags, *(f"--config.{o}" for o in overrides[experiment])],
    )
    run["eval"] = read_json(os.path.join(run["workdir"], "eval.json"))
    run["config"] = read_json(os.path.join(run["workdir"], "config.json"))
    run["num_dims"] = math.prod(
      read_json(os.path.join(run["workdir"], "data_spec.json"))["example_shape"]
    )

  command = " ".join(
    ["python scripts/compare_vae_diffusion.py", *(sys.argv[1:] if argv is None else argv)]
  )
  table = markdown(runs, args.budget_seconds, command)
  with open(os.path.join(workdir, "compare.md"), "w") as f:
    f.write(table)
  pictures, labels = [], []
  for experiment, title in ((VAE, "VAE"), (DDPM, "DDPM")):
    run = runs[experiment]
    step = run["eval"]["checkpoint_step"]
    pictures.append(_grayscale(os.path.join(run["workdir"], "samples", f"step_{step:07d}.png")))
    labels.append(
      f"{title} ({experiment}), {step:,} steps in {args.budget_seconds:g} s\n"
      f"FD to test {run['eval']['sample_quality']['fd_samples_vs_test']:.1f}, "
      f"IS-like {run['eval']['sample_quality']['is_samples']:.2f}"
    )
  side_by_side(os.path.join(workdir, "compare.png"), pictures, labels)
  print("\n" + table)
  print(f"Wrote {os.path.join(workdir, 'compare.md')} and {os.path.join(workdir, 'compare.png')}")
  return runs


if __name__ == "__main__":
  main()
