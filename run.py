"""gen_jax: train, sample from and evaluate generative models.

  python run.py                                   # ddpm_digits, offline, minutes on a CPU
  python run.py --mode=sample --num_samples=1000  # from the latest run of that experiment
  python run.py --experiment=ddpm_cifar --workdir=runs/cifar
  python run.py --experiment=ddpm_toy2d --config.train.num_steps=2000

--experiment picks a module of experiments/; every field of its config can be
overridden as --config.<path>=<value>. Running again with the same --workdir
resumes from its latest checkpoint. An experiment runs through the shared
trainer (gen_jax.train) with its build(), or, if it defines run(config,
workdir) instead, through that function (mle_toy, which fits 1-D densities).

Exit status: 0 done; 1 an error (one line on stderr: `error: ...`);
128 + the signal number (143 for SIGTERM, 130 for SIGINT / Ctrl-C) when
training was stopped by a signal after saving a checkpoint: run the printed
command to resume.
"""

import datetime
import glob
import importlib
import os
import pkgutil
import shlex
import sys

from absl import app, flags, logging

# Runs from a checkout without installation, too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Before any JAX computation: XLA reads its flags once (see gen_jax/cpu_flags.py).
from gen_jax import cpu_flags

cpu_flags.set_default_cpu_flags()

import experiments

DEFAULT_EXPERIMENT = "ddpm_digits"


def list_experiments() -> dict[str, str]:
  """Experiment name -> the first line of its module docstring."""
  names = sorted(
    m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_")
  )
  out = {}
  for name in names:
    spec = importlib.util.find_spec(f"experiments.{name}")
    with open(spec.origin) as f:
      source = f.read()
    doc = source.split('"""')[1] if source.startswith('"""') else ""
    out[name] = doc.strip().splitlines()[0] if doc.strip() else ""
  return out


def experiments_help() -> str:
  width = max(len(n) for n in list_experiments())
  return "\n".join(f"  {n:<{width}}  {d}" for n, d in list_experiments().items())


def _experiment_from_argv(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--experiment="):
      return arg.split("=", 1)[1]
    if arg == "--experiment" and i + 1 < len(argv):
      return argv[i + 1]
  return DEFAULT_EXPERIMENT


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _check_config_keys(argv, config) -> None:
  """Fails with the valid keys when a --config.<path> override names no field.

  (config_flags would raise a KeyError with a traceback while defining the flag.)
  """
  import difflib
  import re

  for arg in argv[1:]:
    match = re.match(r"^--?(?:no)?config\.([^=]*)", arg)
    if not match:
      continue
    node, walked = config, "config"
    for part in match.group(1).split("."):
      if not hasattr(node, "keys"):
        _fail(f"unknown config key --{walked}.{part}: --{walked} is a value, not a section")
      if part not in node:
        valid = sorted(node.keys())
        close = difflib.get_close_matches(part, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(
          f"unknown config key --{walked}.{part}{hint}; valid keys of "
          f"--{walked}: {', '.join(valid)}"
        )
      node, walked = node[part], f"{walked}.{part}"


def define_flags(argv):
  """Defines the flags; --config comes from the chosen experiment's get_config()."""
  from ml_collections import config_flags

  from gen_jax import diffusion

  name = _experiment_from_argv(argv)
  known = list_experiments()
  if name not in known:
    _fail(f"unknown --experiment={name!r}; the experiments are:\n{experiments_help()}")
  module = importlib.import_module(f"experiments.{name}")
  flags.DEFINE_string(
    "experiment", DEFAULT_EXPERIMENT, "Experiment to run, one of:\n" + experiments_help()
  )
  flags.DEFINE_string(
    "workdir",
    None,
    "Directory for checkpoints, logs and samples; default: a new "
    "runs/<experiment>-<time> for training, the newest one for "
    "sample and eval. The same workdir again resumes.",
  )
  flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "What to do.")
  flags.DEFINE_integer("num_samples", 64, "--mode=sample: number of samples.")
  flags.DEFINE_enum(
    "sampler",
    None,
    list(diffusion.SAMPLERS),
    "--mode=sample|eval, diffusion models: "
    + " | ".join(f"{name} ({spec.summary})" for name, spec in diffusion.SAMPLERS.items())
    + "; default: the config's sample.sampler.",
  )
  flags.DEFINE_integer(
    "sampling_steps",
    None,
    "--mode=sample|eval: number of steps (default: the config's sample.num_steps, else "
    + ", ".join(
      f"{name} {spec.default_steps or 'T'}"
      for name, spec in diffusion.SAMPLERS.items()
      if spec.takes_num_steps
    )
    + "; ddpm always runs all T).",
  )
  flags.DEFINE_integer(
    "class_label",
    None,
    "--mode=sample, class-conditional models: draw this class "
    "(default: every class, one row each).",
  )
  flags.DEFINE_float(
    "guidance_scale",
    None,
    "--mode=sample, class-conditional models: classifier-free "
    "guidance w, eps = (1 + w) eps(x, c) - w eps(x, null) "
    "(default: the config's sample.guidance_scale).",
  )
  flags.DEFINE_string(
    "inception_weights",
    None,
    "--mode=eval: .npz of the FID Inception-v3 weights (pytorch-fid's, "
    "converted with scripts/convert_inception_weights.py; see the README) "
    "for FID and Inception score on RGB images.",
  )
  flags.DEFINE_bool("debug", False, "Show the full traceback on errors.")
  flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host: call jax.distributed.initialize() first (on a TPU "
    "pod slice or a SLURM/Open MPI GPU cluster it finds its peers).",
  )
  config = module.get_config()
  _check_config_keys(argv, config)
  config_flags.DEFINE_config_dict(
    "config",
    config,
    "The experiment's config; override fields as --config.<path>=<value>.",
    lock_config=True,
  )
  return module


def _default_workdir(experiment: str, mode: str) -> str:
  if mode == "train":
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join("runs", f"{experiment}-{stamp}")
    suffix = 1
    while os.path.exists(path):  # Never resume someone else's run by accident.
      suffix += 1
      path = os.path.join("runs", f"{experiment}-{stamp}-{suffix}")
    return path
  found = sorted(glob.glob(os.path.join("runs", f"{experiment}-*")), key=os.path.getmtime)
  if not found:
    _fail(f"--mode={mode}: no runs/{experiment}-* workdir; train first or pass --workdir")
  print(f"Using the newest workdir: {found[-1]}")
  return found[-1]


def _resume_command(argv, workdir: str) -> str:
  """The command that continues this run: argv, with --workdir made explicit
  (a default workdir is a new folder each time)."""
  args = list(argv[1:])
  if not any(a == "--workdir" or a.startswith("--workdir=") for a in args):
    args.append(f"--workdir={workdir}")
  return shlex.join(["python", argv[0], *args])


def _overridden_paths(argv) -> set[str]:
  paths = set()
  for arg in argv[1:]:
    if arg.startswith(("--config.", "--noconfig.")):
      paths.add(arg.split("config.", 1)[1].split("=", 1)[0])
  return paths


def _with_saved_config(config, workdir, argv):
  """The config a run was trained with (workdir/config.json), so sampling and
  evaluation need no repeated overrides; --config.* flags still win."""
  import json

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return config
  with open(path) as f:
    saved = json.load(f)
  overridden = _overridden_paths(argv)
  config = config.copy_and_resolve_references()

  def merge(node, values, prefix):
    for key, value in values.items():
      name = f"{prefix}{key}"
      if key not in node or name in overridden:
        continue
      if isinstance(value, dict) and hasattr(node[key], "keys"):
        merge(node[key], value, name + ".")
      elif isinstance(node[key], tuple) and isinstance(value, list):
        node[key] = tuple(value)
      else:
        node[key] = value

  merge(config, saved, "")
  return config


def _run_itself(module, FLAGS) -> None:
  """An experiment that is no model for the shared trainer (a toy
  demonstration) defines run(config, workdir) and runs as a whole."""
  if FLAGS.mode != "train":
    _fail(
      f"--mode={FLAGS.mode} does not apply to --experiment={FLAGS.experiment}: "
      "it runs as a whole with --mode=train (the default)"
    )
  workdir = FLAGS.workdir or _default_workdir(FLAGS.experiment, FLAGS.mode)
  try:
    module.run(FLAGS.config, workdir)
  except ValueError as e:
    if FLAGS.debug:
      raise
    _fail(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))


def main(argv, module):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  if hasattr(module, "run"):
    _run_itself(module, FLAGS)
    return
  from gen_jax import checkpoint, data, train

  if FLAGS.distributed:
    import jax

    jax.distributed.initialize()
  config = FLAGS.config
  workdir = FLAGS.workdir or _default_workdir(FLAGS.experiment, FLAGS.mode)
  if FLAGS.mode != "train" and not os.path.isdir(workdir):
    _fail(f"--workdir={workdir} does not exist; train first")
  if FLAGS.mode != "train":
    config = _with_saved_config(config, workdir, sys.argv)
  try:
    if FLAGS.mode == "train":
      train.train(config, workdir, module.build)
    elif FLAGS.mode == "sample":
      train.sample(
        config,
        workdir,
        module.build,
        FLAGS.num_samples,
        FLAGS.sampler,
        FLAGS.sampling_steps,
        class_label=FLAGS.class_label,
        guidance_scale=FLAGS.guidance_scale,
      )
    else:
      train.evaluate(
        config, workdir, module.build, FLAGS.sampler, FLAGS.sampling_steps, FLAGS.inception_weights
      )
  except train.TrainingInterrupted as e:
    import jax

    if jax.process_index() == 0:
      print(
        f"{e}. To resume, run the same command:\n  {_resume_command(sys.argv, workdir)}", flush=True
      )
    sys.exit(128 + e.signal_number)
  except (
    train.ConfigError,
    data.DataError,
    checkpoint.NoCheckpointError,
    train.NonFiniteError,
    ValueError,
  ) as e:
    if FLAGS.debug:
      raise
    _fail(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  # absl shows the main module's docstring for --help/--helpfull.
  __doc__ += "\nExperiments:\n" + experiments_help() + "\n"
  experiment_module = define_flags(sys.argv)
  app.run(lambda argv: main(argv, experiment_module))
