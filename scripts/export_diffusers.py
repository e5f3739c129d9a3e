"""Writes a gen_jax U-Net diffusion run as a diffusers DDPMPipeline folder (for the model hub).

  python scripts/export_diffusers.py --experiment=ddpm_cifar --workdir=runs/cifar --out=my-ddpm-cifar10
  huggingface-cli upload me/my-ddpm-cifar10 my-ddpm-cifar10

The EMA parameters of the workdir's latest checkpoint, with the config it was trained with (its
config.json), become `unet/` (config.json, diffusion_pytorch_model.safetensors) and
`scheduler/scheduler_config.json` (a DDPMScheduler): `DDPMPipeline.from_pretrained(OUT)` and
`UNet2DModel.from_pretrained(OUT, subfolder="unet")` load them with the same outputs. The run's
network must be gen_jax's U-Net (ddpm_digits, ddpm_mnist, ddpm_cifar) or a diffusers network it
was started from (run.py --pretrained); anything else is refused by name. See
gen_jax.train.from_pretrained.export_workdir.
"""

import argparse
import importlib
import os
import shutil
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# First: Ctrl-C or SIGTERM end the export in one line (see install_signals).
from gen_jax.runtime import interrupts

if __name__ == "__main__":
  interrupts.install("export_diffusers: {name} received: stopped; nothing was exported")

from gen_jax.runtime import cpu_flags

cpu_flags.set_default_cpu_flags()

# The folder the export writes under, and what it held before: a signal removes the temporary
# folder the export was writing there (gen_jax.pretrained.save renames it to --out at the end).
_writing = {"parent": None, "before": set()}


def _stop(signum, frame=None):
  parent = _writing["parent"]
  if parent is not None:
    try:
      for name in set(os.listdir(parent)) - _writing["before"]:
        if name.startswith(".export-"):
          shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    except OSError:
      pass
  interrupts.handle(signum)


def install_signals() -> None:
  for signum in interrupts.SIGNALS:
    if signal.getsignal(signum) != signal.SIG_IGN:
      signal.signal(signum, _stop)


def check_out(out: str) -> str | None:
  """Why `out` cannot take the export (one line naming it), or None; checked before any work."""
  if os.path.lexists(out):
    return f"--out={out} exists; choose a new folder for the export"
  parent = os.path.dirname(os.path.abspath(out))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return f"--out={out} is under {parent}, which is a file, not a folder; choose another --out"
  if not os.access(parent, os.W_OK | os.X_OK):
    return f"--out={out}: {parent} is not writable; choose another --out"
  return None


def check_experiment(experiment: str, workdir: str) -> str | None:
  """Why `workdir` is not a run of `experiment` (its experiment.txt says which it is), or None."""
  from gen_jax.train import workdir as workdir_lib

  path = os.path.join(workdir, workdir_lib.EXPERIMENT_FILE)
  try:
    with open(path) as f:
      recorded = f.read().strip()
  except OSError:
    return None  # no record (an old run): the checkpoint decides
  if recorded and recorded != experiment:
    return (
      f"--workdir={workdir} holds a run of {recorded} (its {workdir_lib.EXPERIMENT_FILE}), not "
      f"{experiment}; pass --experiment={recorded}"
    )
  return None


def export(experiment: str, workdir: str, out: str) -> str:
  """The folder written (see the module docstring)."""
  from gen_jax.train import from_pretrained
  from gen_jax.train.workdir import with_saved_config

  module = importlib.import_module(f"experiments.{experiment}")
  config = with_saved_config(module.get_config(), workdir)
  return from_pretrained.export_workdir(config, workdir, module.build, out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiment", required=True, help="the experiment the run was trained with")
  parser.add_argument("--workdir", required=True, help="the run's workdir")
  parser.add_argument("--out", required=True, help="a new folder for the diffusers pipeline")
  args = parser.parse_args(argv)
  from gen_jax import train

  if not os.path.isdir(args.workdir):
    print(f"error: --workdir={args.workdir} does not exist", file=sys.stderr)
    return 1
  problem = check_out(args.out) or check_experiment(args.experiment, args.workdir)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 1
  parent = os.path.dirname(os.path.abspath(args.out))
  _writing.update(parent=parent, before=set(os.listdir(parent)) if os.path.isdir(parent) else set())
  try:
    export(args.experiment, args.workdir, args.out)
  except (ModuleNotFoundError, *train.USER_ERRORS) as e:
    print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    return 1
  except OSError as e:  # the disk filled, a folder changed under the export
    print(f"error: --out={args.out} could not be written ({e.strerror or e})", file=sys.stderr)
    return 1
  finally:
    _writing["parent"] = None
  return 0


if __name__ == "__main__":
  install_signals()
  sys.exit(main())
