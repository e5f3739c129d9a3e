"""gen_jax: train, sample from and evaluate generative models.

  python run.py                                   # ddpm_digits, offline, minutes on a CPU
  python run.py --mode=sample --num_samples=1000  # from the latest run of that experiment
  python run.py --experiment=ddpm_cifar --workdir=runs/cifar
  python run.py --experiment=ddpm_toy2d --config.train.num_steps=2000

--experiment picks a module of the experiments/ folder beside this file (the
experiments are not installed with the library); every field of its config
can be overridden as --config.<path>=<value>. Running again with the same
--workdir resumes from its latest checkpoint. An experiment runs through the
shared trainer (gen_jax.train) with its build(), or, if it defines
run(config, workdir) instead, through that function (mle_toy, which fits
1-D densities).

Exit status: 0 done; 1 an error in the input (one line on stderr: `error: ...`;
--debug shows the traceback; any other exception is a bug and shows its own),
and with --distributed a job that could not start or lost a process (one line
too: docs/scaling.md);
128 + the signal number (143 for SIGTERM, 130 for SIGINT / Ctrl-C) when
training was stopped by a signal after saving a checkpoint: run the printed
command to resume; the same, with one line, for a signal at any other moment
(start-up, sampling, evaluation), which ends the process at once.

Longer than the house's ~400 lines: the flags, their help and the one-line error mapping of every
mode; the multi-process start-up is the next piece to move into gen_jax.runtime.
"""

import os
import sys

# The experiments are the modules of experiments/ beside this file; gen_jax too, without installing.
REPO = os.path.dirname(os.path.abspath(__file__))
EXPERIMENTS_DIR = os.path.join(REPO, "experiments")
sys.path.insert(0, REPO)

# First of all: Ctrl-C or SIGTERM at any moment ends the process in one line (gen_jax/runtime/interrupts.py);
# only as a command, not when imported (the tests import this file).
from gen_jax.runtime import interrupts

if __name__ == "__main__":
  interrupts.install()

import importlib
import pkgutil
import re
import shlex

from absl import app, flags, logging

# Before any JAX computation: XLA reads its flags once (see gen_jax/runtime/cpu_flags.py).
from gen_jax.runtime import cpu_flags

cpu_flags.set_default_cpu_flags()

DEFAULT_EXPERIMENT = "ddpm_digits"
# The library names its arguments in error messages ("num_samples=0") as this command names its
# flags (--num_samples), except these: library name -> flag. The others are derived: every flag
# that define_flags defines besides --config (_COMMAND_FLAGS).
ARGUMENT_FLAGS = {"num_steps": "sampling_steps", "cache_dir": "compilation_cache_dir"}
_COMMAND_FLAGS: set[str] = set()


def list_experiments() -> dict[str, str]:
  """Experiment name -> the first line of its module docstring."""
  out = {}
  for module in sorted(pkgutil.iter_modules([EXPERIMENTS_DIR]), key=lambda m: m.name):
    if not module.name.startswith("_"):
      with open(os.path.join(EXPERIMENTS_DIR, f"{module.name}.py")) as f:
        source = f.read()
      doc = source.split('"""')[1].strip() if source.startswith('"""') else ""
      out[module.name] = doc.splitlines()[0] if doc else ""
  return out


def experiments_help() -> str:
  width = max(len(n) for n in list_experiments())
  return "\n".join(f"  {n:<{width}}  {d}" for n, d in list_experiments().items())


def as_flags(message: str) -> str:
  """The library names config fields `config.x` and arguments `name=value`; here they are flags."""
  # config.pretrained is set by --pretrained (run.py has no --config.pretrained users type).
  message = re.sub(r"(?<![\w./-])config\.pretrained\b(?!\.)", "--pretrained", message)
  message = re.sub(r"(?<![\w./-])config\.(?!json\b)(?=\w)", "--config.", message)
  argument_flags = {**{name: name for name in _COMMAND_FLAGS}, **ARGUMENT_FLAGS}
  names = "|".join(sorted(argument_flags))
  return re.sub(rf"(?<![\w./-])({names})=", lambda m: f"--{argument_flags[m[1]]}=", message)


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def define_flags(argv):
  """Defines the flags; --config comes from the chosen experiment's get_config()."""
  from ml_collections import config_flags

  from gen_jax import configs

  name = DEFAULT_EXPERIMENT
  for i, arg in enumerate(argv):
    if arg.startswith("--experiment="):
      name = arg.split("=", 1)[1]
    elif arg == "--experiment" and i + 1 < len(argv):
      name = argv[i + 1]
  if name not in list_experiments():
    _fail(f"unknown --experiment={name!r}; the experiments are:\n{experiments_help()}")
  module = importlib.import_module(f"experiments.{name}")
  define_command_flags()
  config = module.get_config()
  for path in _overridden_paths(argv):  # config_flags would raise a KeyError with a traceback
    try:
      configs.check_path(config, path)
    except configs.ConfigError as e:
      _fail(as_flags(str(e)))
  config_flags.DEFINE_config_dict(
    "config",
    config,
    "The experiment's config; override fields as --config.<path>=<value>.",
    lock_config=True,
  )
  return module


def define_command_flags() -> None:
  """Defines every flag but --config, and records their names (as_flags)."""
  from gen_jax import diffusion

  before = set(flags.FLAGS)
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
  flags.DEFINE_string(
    "pretrained",
    None,
    "A diffusers UNet2DModel / DDPMPipeline folder (e.g. google/ddpm-cifar10-32, downloaded "
    "with `huggingface-cli download google/ddpm-cifar10-32 --local-dir DIR`) to start from: "
    "its network, weights and scheduler; --mode=train fine-tunes it, sample and eval use it "
    "as it is (imported into the workdir as step 0).",
  )
  flags.DEFINE_string(
    "scheduler_config",
    None,
    "With --pretrained: a diffusers scheduler_config.json to map onto --config.diffusion "
    "instead of the one in the folder (required when the folder has none).",
  )
  flags.DEFINE_integer(
    "num_samples",
    None,
    "--mode=sample: number of samples (default: the config's sample.num_samples).",
  )
  # Continuous-time processes (config.diffusion.process) sample with diffusion.solvers' own.
  from gen_jax.diffusion import solvers

  flags.DEFINE_enum(
    "sampler",
    None,
    list(solvers.sampler_names(own=diffusion.SAMPLERS)),
    "--mode=sample|eval, diffusion models: "
    + " | ".join(f"{name} ({spec.summary})" for name, spec in diffusion.SAMPLERS.items())
    + "; continuous processes: "
    + " | ".join(solvers.PROCESS_SAMPLERS)
    + " (a DDPM or VDM samples with these through its process view, at real t: euler, "
    + "euler_maruyama, or process_<name>, e.g. process_heun, unsnapped)"
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
  flags.DEFINE_string(
    "out_dir",
    None,
    "--mode=sample|eval: where samples.npz / eval.json go (default: the workdir), e.g. when the "
    "workdir is read-only.",
  )
  flags.DEFINE_bool(
    "resume_unverified",
    False,
    "Resume a workdir whose config.json is missing or damaged, taking this command's config as "
    "the one its checkpoints were trained with.",
  )
  flags.DEFINE_bool("debug", False, "Show the full traceback on errors.")
  flags.DEFINE_bool(
    "distributed",
    False,
    "Several processes (hosts): start jax.distributed first. The peers come from "
    "--coordinator_address/--num_processes/--process_id, else JAX_COORDINATOR_ADDRESS/"
    "JAX_NUM_PROCESSES/JAX_PROCESS_ID, else a TPU pod slice or SLURM/Open MPI job.",
  )
  flags.DEFINE_string(
    "coordinator_address", None, "--distributed: process 0's host:port, the same for all."
  )
  flags.DEFINE_integer("num_processes", None, "--distributed: how many processes the job has.")
  flags.DEFINE_integer("process_id", None, "--distributed: this process' index, 0 .. N-1.")
  flags.DEFINE_integer(
    "heartbeat_timeout",
    30,
    "--distributed: seconds after which a silent (dead) process ends the whole job; "
    "see gen_jax/runtime/distributed.py.",
  )
  flags.DEFINE_integer(
    "startup_timeout",
    300,
    "--distributed: seconds a process waits for all the job's processes to join before it gives "
    "up (exit status 1, one line); after 5 s it says once what it waits for.",
  )
  flags.DEFINE_string(
    "coordinator_bind_address",
    None,
    "--distributed: where process 0's coordination service listens; default: "
    "$JAX_COORDINATOR_BIND_ADDRESS, else --coordinator_address itself (only that interface). "
    "'[::]:PORT' listens on every interface, on purpose (see docs/scaling.md).",
  )
  flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Keep XLA's compiled programs on disk, so the next run of the same configuration "
    "starts without compiling them again (JAX's persistent compilation cache; see "
    "gen_jax/runtime/compile_cache.py). --nocompilation_cache turns it off.",
  )
  flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "Folder of the compilation cache; default: $JAX_COMPILATION_CACHE_DIR if set, else "
    "$XDG_CACHE_HOME/gen_jax/jax_compilation_cache (~/.cache/gen_jax/jax_compilation_cache).",
  )
  _COMMAND_FLAGS.update(set(flags.FLAGS) - before)


def _overridden_paths(argv) -> set[str]:
  """The dotted config paths that --config.<path>=... (or --noconfig.<path>) arguments set."""
  found = (re.match(r"^--?(?:no)?config\.([^=]*)", arg) for arg in argv[1:])
  return {match[1] for match in found if match}


def renamed_config_flags(argv) -> list[str]:
  """argv with each --config.<old path> of configs.RENAMED (sample.eta) under its new path,
  with a warning line on stderr: the old names work for one release."""
  from gen_jax import configs

  out = argv[:1]
  for arg in argv[1:]:
    match = re.match(r"^(--?(?:no)?config\.)([^=]*)(=.*)?$", arg)
    if match and match[2] in configs.RENAMED:
      new = configs.RENAMED[match[2]]
      print(
        f"warning: --config.{match[2]} is deprecated, use --config.{new} (the old name goes in "
        "gen_jax 0.3)",
        file=sys.stderr,
      )
      arg = f"{match[1]}{new}{match[3] or ''}"
    out.append(arg)
  return out


DISTRIBUTED_FLAGS = (
  "coordinator_address",
  "num_processes",
  "process_id",
  "heartbeat_timeout",
  "startup_timeout",
  "coordinator_bind_address",
)
# The library's argument names in distributed.initialize's messages -> this command's flags.
_DISTRIBUTED_NAMES = {
  "coordinator_address": "--coordinator_address",
  "coordinator_bind_address": "--coordinator_bind_address",
  "num_processes": "--num_processes",
  "process_id": "--process_id",
  "heartbeat_timeout_seconds": "--heartbeat_timeout",
  "startup_timeout_seconds": "--startup_timeout",
}


def _start_distributed(FLAGS) -> None:
  """jax.distributed with the flags' coordinator (else the environment's, else auto-detected)."""
  from gen_jax import configs
  from gen_jax.runtime import distributed

  try:
    distributed.initialize(
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
      heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
      startup_timeout_seconds=FLAGS.startup_timeout,
      coordinator_bind_address=FLAGS.coordinator_bind_address,
      names=_DISTRIBUTED_NAMES,
    )
  except configs.ConfigError as e:
    _fail(as_flags(str(e)))
  print(distributed.summary(), flush=True)


def _check_peers(FLAGS, config, workdir) -> None:
  """Every process must run the same experiment, mode, workdir and config, named explicitly."""
  import jax

  from gen_jax import configs
  from gen_jax.runtime import distributed

  if jax.process_count() > 1 and not FLAGS["workdir"].present:
    _fail("--distributed with several processes needs --workdir (the same shared folder for all)")
  try:
    distributed.check_same_config(
      config, f"{FLAGS.experiment} --mode={FLAGS.mode} --workdir={os.path.abspath(workdir)}"
    )
  except configs.ConfigError as e:
    _fail(as_flags(str(e)))


def _say_done(mode: str, workdir: str) -> None:
  """Process 0 has said what it wrote; each other process says in one line that it is done."""
  import jax

  if jax.process_index() != 0:
    print(
      f"Process {jax.process_index()} of {jax.process_count()}: done (--mode={mode}); process 0 "
      f"wrote the outputs in {workdir}",
      flush=True,
    )


def main(argv, module):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  mode, runs_itself = FLAGS.mode, hasattr(module, "run")
  if runs_itself and mode != "train":
    _fail(
      f"--mode={mode} does not apply to --experiment={FLAGS.experiment}: "
      "it runs as a whole with --mode=train (the default)"
    )
  from gen_jax import train
  from gen_jax.runtime import compile_cache
  from gen_jax.train import workdir as workdir_lib

  try:  # Before anything compiles: JAX opens the cache at the first compiled program.
    compile_cache.configure(enabled=FLAGS.compilation_cache, cache_dir=FLAGS.compilation_cache_dir)
  except ValueError as e:
    _fail(as_flags(str(e)))
  if FLAGS.distributed and runs_itself:  # its run() is one process: each would write the workdir
    _fail(
      f"--experiment={FLAGS.experiment} runs in one process: start it once, without --distributed"
    )
  if FLAGS.distributed:
    _start_distributed(FLAGS)
  elif not FLAGS.distributed and any(FLAGS[name].present for name in DISTRIBUTED_FLAGS):
    _fail(f"--{'/--'.join(DISTRIBUTED_FLAGS)} need --distributed")
  if FLAGS.out_dir is not None and mode == "train":
    _fail("--out_dir applies to --mode=sample|eval; a training writes into --workdir")
  config, workdir = FLAGS.config, FLAGS.workdir
  if FLAGS.scheduler_config is not None and not FLAGS.pretrained:
    _fail("--scheduler_config applies with --pretrained (the folder's schedule)")
  if FLAGS.pretrained:  # The folder's network, weights and scheduler.
    from gen_jax.train import from_pretrained

    try:
      keep = _overridden_paths(sys.argv)
      config = from_pretrained.use_pretrained(
        config, FLAGS.pretrained, keep=keep, scheduler_config=FLAGS.scheduler_config, report=print
      )
      if mode == "train":  # a short fine-tune: a grid that costs no more than its steps
        config = from_pretrained.scale_sample_grid(
          config, keep, report=lambda m: print(as_flags(m))
        )
      if workdir is None:
        name = os.path.basename(os.path.normpath(FLAGS.pretrained))
        workdir = os.path.join("runs", f"{FLAGS.experiment}-pretrained-{name}")
      if mode in ("sample", "eval"):
        from_pretrained.import_pretrained(config, workdir, module.build, mode=mode)
    except train.USER_ERRORS as e:
      if FLAGS.debug:
        raise
      _fail(as_flags(str(e).strip().splitlines()[0]))
  if workdir is None and mode == "train":
    workdir = workdir_lib.new_workdir(FLAGS.experiment)
  elif workdir is None:
    workdir = workdir_lib.newest_workdir(FLAGS.experiment)
    if workdir is None:
      _fail(f"--mode={mode}: no runs/{FLAGS.experiment}-* workdir; train first or pass --workdir")
    print(f"Using the newest workdir: {workdir}")
  if mode != "train" and not os.path.isdir(workdir):
    _fail(f"--workdir={workdir} does not exist; train first")
  interrupts.set_message(
    "{name} received: stopped at once; "
    + (
      f"the same command resumes from the newest checkpoint in {workdir}"
      if mode == "train"
      else "nothing was written"
    )
  )
  experiment = FLAGS.experiment
  try:
    if mode != "train":  # the config it was trained with; --config.* flags still win
      config = workdir_lib.with_saved_config(config, workdir, keep=_overridden_paths(sys.argv))
    if FLAGS.distributed:
      _check_peers(FLAGS, config, workdir)
    if runs_itself:
      module.run(config, workdir)
    elif mode == "train":
      train.train(
        config,
        workdir,
        module.build,
        experiment=experiment,
        resume_unverified=FLAGS.resume_unverified,
      )
    elif mode == "sample":
      train.sample(
        config,
        workdir,
        module.build,
        FLAGS.num_samples,
        FLAGS.sampler,
        FLAGS.sampling_steps,
        FLAGS.out_dir,
        class_label=FLAGS.class_label,
        guidance_scale=FLAGS.guidance_scale,
        experiment=experiment,
      )
    else:
      train.evaluate(
        config,
        workdir,
        module.build,
        FLAGS.sampler,
        FLAGS.sampling_steps,
        FLAGS.inception_weights,
        out_dir=FLAGS.out_dir,
        experiment=experiment,
      )
    if FLAGS.distributed:
      _say_done(mode, workdir)
  except train.TrainingInterrupted as e:
    import jax

    if jax.process_index() == 0:
      args = [*sys.argv[1:], *([] if FLAGS["workdir"].present else [f"--workdir={workdir}"])]
      command = shlex.join(["python", sys.argv[0], *args])
      every = " in every process" if jax.process_count() > 1 else ""
      print(f"{e}. To resume, run the same command{every}:\n  {command}", flush=True)
    else:  # each process says how it ended; process 0 prints the command
      print(
        f"Process {jax.process_index()} of {jax.process_count()}: {e}. To resume, run the same "
        "command in every process (process 0 printed it)",
        flush=True,
      )
    sys.exit(128 + e.signal_number)
  except train.USER_ERRORS as e:  # Only these: any other exception is a bug, with its traceback.
    if FLAGS.debug:
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    if isinstance(e, train.NoCheckpointError) and mode != "train":
      message = f"--mode={mode}: {message}"
    _fail(as_flags(message))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  # absl shows the main module's docstring for --help/--helpfull.
  __doc__ += "\nExperiments:\n" + experiments_help() + "\n"
  sys.argv = renamed_config_flags(sys.argv)
  experiment_module = define_flags(sys.argv)
  app.run(lambda argv: main(argv, experiment_module))
