"""The hierarchical VAE's networks (Flax Linen), in the style of VDVAE (Child 2021), scaled down.

  Encoder   bottom-up: x -> residual blocks at each resolution, average-pooled between them;
            returns the activation at every resolution {r: (B, r, r, width)}.
  Decoder   top-down: a learned constant at the lowest resolution, then at each resolution
            `layers` stochastic layers, each
              prior      p(z_l | h) = N(mu_p, sigma_p),  from a block on h (+ a residual for h),
              posterior  q(z_l | h, x) = N(mu_q, sigma_q), from a block on [h, encoder(x)_r],
              z_l ~ q (or ~ p when generating), h <- h + proj(z_l), h <- h + block(h),
            nearest-neighbour upsampling between resolutions, and an output head giving P raw
            numbers per channel of each pixel, (B, H, W, C, P), for gen_jax.vae.decoders.

Scales are softplus-bounded (hvae.bounded_logvar): sigma = min_scale + softplus(raw + offset), the
offset making sigma = 1 at raw = 0. Every residual branch ends in a zero-initialised convolution, so
the network starts as the identity plus the prior's N(0, 1) (VDVAE scales these layers down; zero is
the limit of that). The math of each layer is gen_jax.vae.hvae.stochastic_layer.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.vae import hvae

zeros_init = nn.initializers.zeros


def _offset(min_scale: float) -> float:
  """raw offset b with min_scale + softplus(b) = 1."""
  return math.log(math.expm1(1.0 - min_scale))


class Block(nn.Module):
  """VDVAE's bottleneck block: gelu-conv1x1(mid)-gelu-conv(mid)-gelu-conv(mid)-gelu-conv1x1(out).

  3x3 middle convolutions above resolution 2, 1x1 at 2 and 1 (as VDVAE). `zero_last` starts the
  block's output at 0 (a residual branch, or a prior that starts at N(0, 1)).
  """

  mid: int
  out: int
  zero_last: bool = True

  @nn.compact
  def __call__(self, x):
    k = (3, 3) if x.shape[1] > 2 else (1, 1)
    h = nn.Conv(self.mid, (1, 1))(nn.gelu(x))
    h = nn.Conv(self.mid, k)(nn.gelu(h))
    h = nn.Conv(self.mid, k)(nn.gelu(h))
    last_init = zeros_init if self.zero_last else nn.initializers.lecun_normal()
    return nn.Conv(self.out, (1, 1), kernel_init=last_init)(nn.gelu(h))


class Encoder(nn.Module):
  """Bottom-up: {r: activation (B, r, r, width)} for every r in `resolutions`."""

  width: int
  resolutions: Sequence[int]  # any order; each divides the image size
  blocks_per_resolution: int = 2

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.width, (3, 3))(x)
    out = {}
    for r in sorted(self.resolutions, reverse=True):
      if h.shape[1] != r:
        factor = h.shape[1] // r
        h = nn.avg_pool(h, (factor, factor), (factor, factor))
      for _ in range(self.blocks_per_resolution):
        h = h + Block(self.width // 4, self.width)(h)
      out[r] = h
    return out


class Decoder(nn.Module):
  """Top-down: __call__(key, features, num_samples, temperature) -> (raw (B, H, W, C, P),
  [LayerSample] top first). features = Encoder's output samples the posterior (training,
  evaluation); features = None samples the prior (generation, `num_samples` images)."""

  width: int
  latent_channels: int
  resolutions: Sequence[int]  # top-down: lowest resolution first
  layers_per_resolution: Sequence[int]
  image_shape: Sequence[int]
  outputs_per_channel: int
  min_scale: float = 0.01

  @nn.compact
  def __call__(self, key, features=None, num_samples: int | None = None, temperature: float = 1.0):
    batch = next(iter(features.values())).shape[0] if features is not None else num_samples
    r0 = self.resolutions[0]
    h_top = self.param("h_top", zeros_init, (1, r0, r0, self.width))
    if features is None:
      h = jnp.broadcast_to(h_top, (batch, r0, r0, self.width))
    else:  # laid out (sharded) as the batch, so that concatenating with the features is allowed
      h = jnp.zeros_like(features[r0]) + h_top
    num_layers = sum(self.layers_per_resolution)
    keys = iter(jax.random.split(key, num_layers))
    offset = _offset(self.min_scale)
    layers = []
    zc = self.latent_channels
    # Explicit names: generation skips the posterior blocks, and the other names must not move.
    i = 0
    for r, count in zip(self.resolutions, self.layers_per_resolution):
      if h.shape[1] != r:
        factor = r // h.shape[1]
        h = jnp.repeat(jnp.repeat(h, factor, axis=1), factor, axis=2)
      for _ in range(count):
        prior = Block(self.width // 4, 2 * zc + self.width, name=f"prior_{i}")(h)
        p_mean, p_raw, h_prior = jnp.split(prior, [zc, 2 * zc], axis=-1)
        p_logvar = hvae.bounded_logvar(p_raw + offset, min_scale=self.min_scale)
        if features is None:
          layer = hvae.stochastic_layer(
            next(keys), prior_mean=p_mean, prior_logvar=p_logvar, temperature=temperature
          )
        else:
          posterior = Block(self.width // 4, 2 * zc, name=f"posterior_{i}")(
            jnp.concatenate([h, features[r]], -1)
          )
          q_mean, q_raw = jnp.split(posterior, 2, axis=-1)
          layer = hvae.stochastic_layer(
            next(keys),
            prior_mean=p_mean,
            prior_logvar=p_logvar,
            posterior_mean=q_mean,
            posterior_logvar=hvae.bounded_logvar(q_raw + offset, min_scale=self.min_scale),
          )
        layers.append(layer)
        h = h + h_prior
        h = h + nn.Conv(self.width, (1, 1), kernel_init=zeros_init, name=f"z_proj_{i}")(layer.z)
        h = h + Block(self.width // 4, self.width, name=f"res_{i}")(h)
        i += 1
    height, _, channels = self.image_shape
    if h.shape[1] != height:
      factor = height // h.shape[1]
      h = jnp.repeat(jnp.repeat(h, factor, axis=1), factor, axis=2)
    out = nn.Conv(channels * self.outputs_per_channel, (1, 1), name="out")(nn.gelu(h))
    return out.reshape(out.shape[:3] + (channels, self.outputs_per_channel)), layers
