"""Flax (Linen) networks: arrays in, arrays out; the math (losses, samplers) lives elsewhere.

  gen_jax.nets.unet        the DDPM U-Net (Ho et al. 2020, appendix B) and `unet_from_config`
  gen_jax.nets.mlp         a residual MLP eps-model for low-dimensional data
  gen_jax.nets.vae         the one-layer VAE's MLP and convolutional encoders / decoders
  gen_jax.nets.hvae        the hierarchical VAE's networks (VDVAE-style, scaled down)
  gen_jax.nets.classifier  the small CNN behind the sample-quality figures

The Inception-v3 of FID lives with the metrics (gen_jax.evaluation.inception), and the mirror of
diffusers' UNet2DModel with the checkpoints it loads (gen_jax.pretrained.diffusers_unet).
Images are NHWC.
"""

from gen_jax.nets.classifier import ImageClassifier
from gen_jax.nets.mlp import MLPDenoiser
from gen_jax.nets.unet import (
  COMPUTE_DTYPES,
  AttnBlock,
  ResBlock,
  UNet,
  timestep_embedding,
  unet_from_config,
)
from gen_jax.nets.vae import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

__all__ = [
  "COMPUTE_DTYPES",
  "AttnBlock",
  "ConvDecoder",
  "ConvEncoder",
  "ImageClassifier",
  "MLPDecoder",
  "MLPDenoiser",
  "MLPEncoder",
  "ResBlock",
  "UNet",
  "timestep_embedding",
  "unet_from_config",
]
