"""gen_jax: generative models (VAEs, diffusion) in JAX, from losses up.

The packages, each answering one question (docs/index.md has the map):
  gen_jax.distributions  log-likelihoods and KL divergences (the probabilistic losses)
  gen_jax.diffusion      Gaussian diffusion: schedules, forward/reverse process, losses, bounds,
                         samplers, the probability-flow ODE, VDM
  gen_jax.vae            the VAE objectives: reparameterization, ELBO, IWAE; hierarchical VAEs
  gen_jax.nets           Flax networks (U-Net, MLPs, VAE and hierarchical-VAE networks)
  gen_jax.models         a network + the math behind one interface the trainer uses
  gen_jax.data           host-side data: sources, batches as a pure function of (seed, step)
  gen_jax.train          the training system: train, sample, evaluate, checkpoints, sharding
  gen_jax.evaluation     sample quality: Fréchet distance, Inception score, FID's Inception-v3
  gen_jax.pretrained     diffusers model folders in and out
  gen_jax.runtime        process plumbing: signals, CPU flags, compilation cache, multi-process
                         start-up, atomic files
  gen_jax.configs        the config schema and its checks
  gen_jax.testing        analytic oracles (exact eps, densities, sampler laws) for your tests

Modules that moved in 0.2 (gen_jax.fileio, gen_jax.hvae, ...) still import from their old
paths for one release, with a DeprecationWarning naming the new one (_MOVED below).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.2.0"

# Old module path -> new one (moved in 0.2; the old paths go in 0.3).
_MOVED = {
  "gen_jax.checkpoint": "gen_jax.train.checkpoint",
  "gen_jax.compile_cache": "gen_jax.runtime.compile_cache",
  "gen_jax.cpu_flags": "gen_jax.runtime.cpu_flags",
  "gen_jax.decoders": "gen_jax.vae.decoders",
  "gen_jax.diffusers_unet": "gen_jax.pretrained.diffusers_unet",
  "gen_jax.distributed": "gen_jax.runtime.distributed",
  "gen_jax.fileio": "gen_jax.runtime.fileio",
  "gen_jax.hvae": "gen_jax.vae.hvae",
  "gen_jax.hvae_nets": "gen_jax.nets.hvae",
  "gen_jax.inception": "gen_jax.evaluation.inception",
  "gen_jax.interrupts": "gen_jax.runtime.interrupts",
  "gen_jax.sharding": "gen_jax.train.sharding",
  "gen_jax.summary": "gen_jax.train.summary",
}


def _no_longer_exported(package: str, name: str, module: str, attribute: str | None = None):
  """`module.attribute` for a name `package` re-exported before 0.2, with a DeprecationWarning.

  The packages' __getattr__ (gen_jax.diffusion, gen_jax.train) call this for their plumbing names."""
  attribute = attribute or name
  warnings.warn(
    f"{package}.{name} is no longer re-exported in gen_jax 0.2: use {module}.{attribute} "
    "(the old path goes in 0.3)",
    DeprecationWarning,
    stacklevel=3,
  )
  return getattr(importlib.import_module(module), attribute)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Imports a moved module under its old name: the same module object, and a warning."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname in _MOVED:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    new = _MOVED[spec.name]
    warnings.warn(
      f"{spec.name} moved to {new} in gen_jax 0.2; the old path goes in 0.3",
      DeprecationWarning,
      stacklevel=2,
    )
    return importlib.import_module(new)

  def exec_module(self, module):
    pass  # already executed under its new name


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
  sys.meta_path.append(_MovedModuleFinder())
