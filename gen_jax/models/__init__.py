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

One module per family, each with the config builders that make it and the
`check_config(config)` that owns its config sections: diffusion_model
(DDPM-family, gen_jax's networks or a diffusers folder), vae_model (one latent
layer), hvae_model (top-down hierarchy), vdm_model (the continuous-time
variational bound), process_model (diffusion in continuous time on any Gaussian
process: flow matching, EDM, VP; config.diffusion.process); _common holds what two share. configs.validate calls
`check_config` below, which hands a config to its family.

The builders, `make_*(config, example_shape) -> model` from a whole config:
make_unet_diffusion, make_mlp_diffusion, make_pretrained_diffusion, make_unet_vdm, make_mlp_vae,
make_conv_vae, make_hvae. Each experiment binds one as its `build`; training records its name in
the workdir, so gen_jax.train.load_trained rebuilds the model from the workdir alone.
"""

from gen_jax.models import diffusion_model, hvae_model, process_model, vae_model, vdm_model
from gen_jax.models.diffusion_model import (
  DiffusionModel,
  diffusion_betas,
  diffusion_config,
  make_diffusion_model,
  make_mlp_diffusion,
  make_pretrained_diffusion,
  make_unet_diffusion,
)
from gen_jax.models.hvae_model import HVAEModel, make_hvae
from gen_jax.models.process_model import ProcessDiffusionModel, make_process_model, process_config
from gen_jax.models.vae_model import VAEModel, make_conv_vae, make_mlp_vae
from gen_jax.models.vdm_model import VDMModel, make_unet_vdm, vdm_config


# Which family owns a config, by what only its configs hold: the first match checks
# config.model and the family's own section (a VAE is any other config with a model).
def _check_diffusion(config) -> None:
  """config.diffusion.process picks the family: DDPM's (discrete) or the continuous-time one;
  process_model also refuses continuous-time fields set on the discrete path."""
  process_model.check_config(config)
  if config.diffusion.get("process", "discrete") == "discrete":
    diffusion_model.check_config(config)


_FAMILIES = (
  (lambda config: "diffusion" in config, _check_diffusion),
  (lambda config: "vdm" in config, vdm_model.check_config),
  (lambda config: "layers_per_resolution" in config.get("model", {}), hvae_model.check_config),
  (lambda config: "model" in config, vae_model.check_config),
)


def check_config(config) -> None:
  """Raises ConfigError naming the first bad field of the model sections (model, diffusion,
  vdm) of `config`, checked by the family that owns them (_FAMILIES)."""
  for owns, check in _FAMILIES:
    if owns(config):
      check(config)
      return


__all__ = [
  "DiffusionModel",
  "HVAEModel",
  "ProcessDiffusionModel",
  "VAEModel",
  "VDMModel",
  "check_config",
  "diffusion_betas",
  "diffusion_config",
  "make_conv_vae",
  "make_diffusion_model",
  "make_hvae",
  "make_mlp_diffusion",
  "make_mlp_vae",
  "make_pretrained_diffusion",
  "make_process_model",
  "make_unet_diffusion",
  "make_unet_vdm",
  "process_config",
  "vdm_config",
]
