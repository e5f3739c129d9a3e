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
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gen_jax.runtime import cpu_flags

cpu_flags.set_default_cpu_flags()


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
  try:
    export(args.experiment, args.workdir, args.out)
  except (ModuleNotFoundError, *train.USER_ERRORS) as e:
    print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
