"""Generative models = a network + the math core, behind one small interface.

The training loop (gen_jax.train) sees every experiment through this
interface and nothing else:

  init(key) -> params
  loss(params, batch, key, train) -> (scalar loss, metrics dict of scalars)
  sample(params, key, num_samples, **sampler) -> samples in data space
  evaluate(params, batch, key, **options) -> dict of per-example arrays (B,)
  describe_evaluate(**options) -> {name: how `evaluate` computes it}, for eval.json
  describe_sample(**sampler) -> how `sample` draws with these arguments

Batches are dicts {'x': (B, *example_shape) float32} (images in [-1, 1],
NHWC) with an optional boolean 'mask' in evaluation. The classes are frozen
dataclasses, so jitted functions can close over them.

One module per family, each with the config builders that make it:
diffusion_model (DDPM-family, gen_jax's networks or a diffusers folder),
vae_model (one latent layer), hvae_model (top-down hierarchy), vdm_model
(the continuous-time variational bound), process_model (diffusion in continuous
time on any Gaussian process: flow matching, EDM, VP; config.diffusion.process);
_common holds what two share.
"""

from gen_jax.models.diffusion_model import (
  DiffusionModel,
  diffusion_betas,
  diffusion_config,
  make_diffusion_model,
  make_pretrained_diffusion,
  make_unet_diffusion,
)
from gen_jax.models.hvae_model import HVAEModel, make_hvae
from gen_jax.models.process_model import ProcessDiffusionModel, make_process_model, process_config
from gen_jax.models.vae_model import VAEModel, make_mlp_vae
from gen_jax.models.vdm_model import VDMModel, make_unet_vdm, vdm_config

__all__ = [
  "DiffusionModel",
  "HVAEModel",
  "ProcessDiffusionModel",
  "VAEModel",
  "VDMModel",
  "diffusion_betas",
  "diffusion_config",
  "make_diffusion_model",
  "make_hvae",
  "make_mlp_vae",
  "make_pretrained_diffusion",
  "make_process_model",
  "make_unet_diffusion",
  "make_unet_vdm",
  "process_config",
  "vdm_config",
]
