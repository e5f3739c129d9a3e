"""The one-layer VAE's encoders and decoders: MLPs for vectors, small CNNs for images (NHWC)."""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

Array = jax.Array


class MLPEncoder(nn.Module):
  """q(z|x): flattened x -> hidden layers -> (mean, logvar), each (B, latent_dim)."""

  hidden: Sequence[int] = (512, 512)
  latent_dim: int = 50

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    return nn.Dense(self.latent_dim)(h), nn.Dense(self.latent_dim)(h)


class MLPDecoder(nn.Module):
  """p(x|z): z -> hidden layers -> outputs of `out_shape` (e.g. (*image_shape, P): the raw
  distribution parameters that gen_jax.vae.decoders reads)."""

  out_shape: Sequence[int]
  hidden: Sequence[int] = (512, 512)

  @nn.compact
  def __call__(self, z):
    h = z
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    out = nn.Dense(math.prod(self.out_shape))(h)
    return out.reshape((z.shape[0],) + tuple(self.out_shape))


class ConvEncoder(nn.Module):
  """q(z|x) for images: strided convolutions, then (mean, logvar) (B, latent_dim)."""

  channels: Sequence[int] = (64, 128, 256)
  latent_dim: int = 128

  @nn.compact
  def __call__(self, x):
    h = x
    for c in self.channels:
      h = nn.swish(nn.GroupNorm(min(32, c))(nn.Conv(c, (4, 4), strides=(2, 2))(h)))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(self.latent_dim)(h), nn.Dense(self.latent_dim)(h)


class ConvDecoder(nn.Module):
  """p(x|z) for images: z -> transposed convolutions -> `outputs_per_channel` raw numbers per
  channel of each pixel, (B, H, W, C, P), read as a distribution by gen_jax.vae.decoders."""

  image_shape: Sequence[int]
  channels: Sequence[int] = (256, 128, 64)
  outputs_per_channel: int = 2

  @nn.compact
  def __call__(self, z):
    height, width, out_c = self.image_shape
    factor = 2 ** len(self.channels)
    h = nn.Dense(self.channels[0] * (height // factor) * (width // factor))(z)
    h = h.reshape(z.shape[0], height // factor, width // factor, self.channels[0])
    for c in self.channels:
      h = nn.ConvTranspose(c, (4, 4), strides=(2, 2))(h)
      h = nn.swish(nn.GroupNorm(min(32, c))(h))
    out = nn.Conv(out_c * self.outputs_per_channel, (3, 3))(h)
    return out.reshape(out.shape[:3] + (out_c, self.outputs_per_channel))
