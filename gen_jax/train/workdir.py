"""What a workdir holds besides checkpoints, and how one is named and found.

workdir/config.json     the config a run was trained with (write_config,
                        with_saved_config merges it back for sample/eval)
workdir/data_spec.json  the data's kind and example shape, so sampling needs
                        no data (write_data_spec / read_data_spec)
workdir/experiment.txt  the name of the experiment (run.py's --experiment)
                        that trains in it (write_experiment / check_experiment)
workdir/builder.txt     the gen_jax.models builder of its model (write_builder;
                        gen_jax.train.load_trained reads it)
runs/<experiment>-<time>  the default name of a new run (new_workdir); the
                        newest such folder is where sample/eval look
                        (newest_workdir)
"""

import datetime
import glob
import json
import os
import platform

from gen_jax.configs import ConfigError, unset_options_not_taken, upgrade_saved_config
from gen_jax.runtime import fileio
from gen_jax.train import checkpoint

CONFIG_FILE = "config.json"
DATA_SPEC = "data_spec.json"
EXPERIMENT_FILE = "experiment.txt"
BUILDER_FILE = "builder.txt"
RUNS_DIR = "runs"


def new_workdir(experiment: str, root: str = RUNS_DIR) -> str:
  """root/<experiment>-<YYYYmmdd-HHMMSS>[-N]: a folder that does not exist yet."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  path = os.path.join(root, f"{experiment}-{stamp}")
  suffix = 1
  while os.path.exists(path):  # Never resume someone else's run by accident.
    suffix += 1
    path = os.path.join(root, f"{experiment}-{stamp}-{suffix}")
  return path


def newest_workdir(experiment: str, root: str = RUNS_DIR) -> str | None:
  """The most recently modified root/<experiment>-* folder, or None."""
  found = sorted(glob.glob(os.path.join(root, f"{experiment}-*")), key=os.path.getmtime)
  return found[-1] if found else None


def nearest_existing(path: str) -> str:
  """`path` if it exists, else its nearest existing ancestor (a workdir may not exist yet)."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  return existing


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir`; raises ConfigError if it cannot be written."""
  check_writable(workdir, what=f"workdir={workdir}", hint="")


def write_config(workdir: str, config) -> None:
  fileio.write_atomically(
    os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2, sort_keys=True)
  )


def check_writable(
  directory: str, *, what: str, hint: str = "; choose where the output goes with out_dir=DIR"
) -> None:
  """Raises ConfigError now, before any work, if `directory` (created if missing) cannot take a
  file; `what` names the argument that chose it (e.g. "workdir=runs/x"), `hint` the way out."""
  # One probe per process: the processes of a job (several hosts) probe a shared folder at once.
  probe = os.path.join(directory, f".write_test.{platform.node()}.{os.getpid()}")
  # os.makedirs says only "File exists" for these two: name what is there instead.
  if os.path.islink(directory) and not os.path.exists(directory):
    raise ConfigError(
      f"{what} is a symbolic link to {os.readlink(directory)}, which does not exist; create "
      "that folder or point the link at one"
    )
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise ConfigError(f"{what} is a file, not a folder; choose a folder")
  try:
    os.makedirs(directory, exist_ok=True)
    fileio.write_atomically(probe, "ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"{what} is not writable ({e.strerror or e}){hint}") from e


def output_dir(workdir: str, out_dir: str | None, *, is_writer: bool) -> str:
  """Where --mode=sample|eval writes: `out_dir`, default the workdir; the writing process checks,
  before any work, that it can take files (ConfigError naming the argument that chose it)."""
  out_dir = out_dir or workdir
  if is_writer:
    where = f"out_dir={out_dir}" if out_dir != workdir else f"workdir={workdir}"
    check_writable(out_dir, what=where)
  return out_dir


def read_json(path: str):
  """The contents of a JSON file gen_jax wrote; ConfigError naming the file if it is damaged."""
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ConfigError(f"{path} is damaged (not valid JSON: {e})") from None


def read_saved_config(workdir: str) -> dict | None:
  """The contents of workdir/config.json, or None if there is none; ConfigError if it is damaged.
  A config.json written by an older version comes with its renamed fields under their new
  names (configs.upgrade_saved_config: sample.eta)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  saved = read_json(path)
  if not isinstance(saved, dict):
    raise ConfigError(f"{path} is damaged (not a JSON object)")
  return upgrade_saved_config(saved)


def write_experiment(workdir: str, experiment: str) -> None:
  fileio.write_atomically(os.path.join(workdir, EXPERIMENT_FILE), experiment + "\n")


def write_builder(workdir: str, name: str) -> None:
  fileio.write_atomically(os.path.join(workdir, BUILDER_FILE), name + "\n")


def check_experiment(workdir: str, experiment: str | None) -> None:
  """Raises ConfigError if `workdir` records another experiment than `experiment` (None: any)."""
  path = os.path.join(workdir, EXPERIMENT_FILE)
  if experiment is None or not os.path.exists(path):
    return
  with open(path) as f:
    recorded = f.read().strip()
  if recorded and recorded != experiment:
    raise ConfigError(
      f"workdir={workdir} holds a run of the experiment {recorded!r}, not {experiment!r}; pass "
      f"experiment={recorded} to go on with it, or use another workdir"
    )


def remove_temporary_files(workdir: str, report=print) -> None:
  """Deletes what a killed writer left half-written in the workdir and its samples/ (a training
  holding the workdir lock; orbax's own leftovers are checkpoint.restore_newest's)."""
  for directory in (workdir, os.path.join(workdir, "samples")):
    for path in fileio.remove_temporary_files(directory):
      report(f"removed {path}, a file left half-written by an interrupted run")


def with_saved_config(config, workdir: str, keep: frozenset[str] = frozenset()):
  """A copy of `config` with the values of workdir/config.json (the config the run was trained
  with), so sampling and evaluation need no repeated overrides.

  keep: dotted paths (e.g. "sample.num_steps") whose value in `config` wins,
  such as the ones overridden on the command line. Keys the saved config has
  and `config` lacks are left out; tuples stay tuples. With "sample.sampler" in
  keep, the saved options that sampler does not take are left unset.
  """
  saved = read_saved_config(workdir)
  if saved is None:
    return config
  config = config.copy_and_resolve_references()

  def merge(node, values, prefix):
    for key, value in values.items():
      name = f"{prefix}{key}"
      if key not in node or name in keep:
        continue
      if isinstance(value, dict) and hasattr(node[key], "keys"):
        merge(node[key], value, name + ".")
      elif isinstance(node[key], tuple) and isinstance(value, list):
        node[key] = tuple(value)
      else:
        node[key] = value

  merge(config, saved, "")
  if "sample.sampler" in keep:  # the saved sampler's options stay with it
    unset_options_not_taken(config.sample, keep)
  return config


def write_data_spec(workdir: str, dataset) -> None:
  """Records the data's kind and example shape, so sampling needs no data."""
  fileio.write_atomically(
    os.path.join(workdir, DATA_SPEC),
    json.dumps({"kind": dataset.kind, "example_shape": list(dataset.example_shape)}),
  )


def read_data_spec(workdir: str) -> tuple[str, tuple]:
  """(kind, example_shape) of the data `workdir` was trained on; NoCheckpointError if unknown."""
  path = os.path.join(workdir, DATA_SPEC)
  if not os.path.exists(path):
    raise checkpoint.NoCheckpointError(
      f"no {DATA_SPEC} in workdir={workdir}; train first with the same workdir"
    )
  rewrite = "the training command with this workdir writes it again"
  try:
    spec = read_json(path)
    kind, shape = spec["kind"], tuple(int(n) for n in spec["example_shape"])
  except ConfigError as e:
    raise ConfigError(f"{e}; {rewrite}") from None
  except (KeyError, TypeError, ValueError):
    raise ConfigError(f"{path} is damaged (no kind and example_shape); {rewrite}") from None
  return kind, shape
