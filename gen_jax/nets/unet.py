"""The DDPM U-Net (Ho et al. 2020, appendix B): ddpm_cifar uses the paper's size, ddpm_digits
and ddpm_mnist smaller ones; `unet_from_config` builds it from a config's model section.

Mixed precision: the U-Net's `dtype` is the dtype its convolutions, dense
layers and attention compute in (e.g. bfloat16); parameters stay float32
(`param_dtype`), and the normalisations, the softmax and the output run in
float32, so the loss is computed in float32.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# DDPM's output layers start at zero so the initial model predicts eps = 0.
zeros_init = nn.initializers.zeros


def timestep_embedding(t, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of (integer or real) timesteps (Vaswani et al. 2017).

  emb[..., i] = sin(t * f_i) for i < dim/2 and cos(t * f_i) after, with
  f_i = max_period^(-i / (dim/2 - 1)), as in the DDPM code.

  Args:
    t: (B,) timesteps.
    dim: even embedding size.

  Returns:
    (B, dim) float32.
  """
  if dim % 2:
    raise ValueError(f"timestep_embedding: dim must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _group_norm(num_groups: int, x) -> Array:
  """GroupNorm computed (and returned) in float32, whatever x's dtype."""
  return nn.GroupNorm(num_groups, dtype=jnp.float32)(x)


class ResBlock(nn.Module):
  """GroupNorm-swish-conv twice, with the time embedding added in between."""

  out_channels: int
  dropout: float
  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    conv = lambda name=None, **kw: nn.Conv(
      self.out_channels, (3, 3), dtype=self.dtype, name=name, **kw
    )
    h = nn.swish(_group_norm(self.num_groups, x))
    h = conv()(h)
    h = h + nn.Dense(self.out_channels, dtype=self.dtype)(nn.swish(temb))[:, None, None, :]
    h = nn.swish(_group_norm(self.num_groups, h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(kernel_init=zeros_init)(h)
    if x.shape[-1] != self.out_channels:
      x = nn.Dense(self.out_channels, dtype=self.dtype)(x)  # the "nin" 1x1 shortcut
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all pixels, with a residual connection."""

  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = _group_norm(self.num_groups, x).reshape(batch, height * width, channels)
    q, k, v = (nn.Dense(channels, dtype=self.dtype, name=n)(h) for n in ("q", "k", "v"))
    logits = jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(channels)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    h = jnp.einsum("bqk,bkc->bqc", weights, v)
    h = nn.Dense(channels, kernel_init=zeros_init, dtype=self.dtype, name="proj_out")(h)
    return x + h.reshape(x.shape)


class UNet(nn.Module):
  """The DDPM U-Net epsilon-model: eps = UNet(x_t, t).

  Attributes mirror the DDPM code's: base channels `ch`, a multiplier per
  resolution `ch_mult`, `num_res_blocks` residual blocks per resolution,
  self-attention at the resolutions in `attn_resolutions`, dropout, and
  GroupNorm with `num_groups` groups. ddpm_cifar: ch=128, ch_mult=(1, 2, 2, 2),
  num_res_blocks=2, attn_resolutions=(16,), dropout=0.1 (35.7M parameters).

  With `num_classes` = K > 0 the network is class-conditional: a learned
  embedding of the label in {0, ..., K-1}, or K for "no class" (the null
  label of classifier-free guidance), is added to the time embedding.

  `dtype` is the compute dtype (see the module docstring); `remat` recomputes
  each residual and attention block's activations in the backward pass
  (jax.checkpoint) instead of storing them: less memory, about one more
  forward pass of compute.
  """

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_groups: int = 32
  out_channels: int | None = None
  num_classes: int = 0
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, t, label=None, train: bool = False):
    """x: (B, H, W, C) with H == W; t: (B,) int; label: (B,) int in [0, K]
    (K, or None, means no class), used when num_classes = K > 0.

    Returns eps of x's shape, float32.
    """
    groups, dtype = self.num_groups, self.dtype
    # `train` (argument 3 counting self) decides dropout: static under remat.
    res_block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
    attn_block = nn.remat(AttnBlock) if self.remat else AttnBlock
    # Explicit names, the ones Flax gives unwrapped blocks, so parameters do
    # not depend on `remat`.
    count = {"res": 0, "attn": 0}

    def block(channels):
      count["res"] += 1
      return res_block(channels, self.dropout, groups, dtype, name=f"ResBlock_{count['res'] - 1}")

    def attention():
      count["attn"] += 1
      return attn_block(groups, dtype, name=f"AttnBlock_{count['attn'] - 1}")

    conv = lambda c, **kw: nn.Conv(c, (3, 3), dtype=dtype, **kw)

    temb = timestep_embedding(t, self.ch)
    temb = nn.Dense(4 * self.ch, dtype=dtype)(temb)
    temb = nn.Dense(4 * self.ch, dtype=dtype)(nn.swish(temb))
    if self.num_classes:
      if label is None:
        label = jnp.full(t.shape, self.num_classes, jnp.int32)
      # An embedding table as one-hot @ table: a gather with batch-sharded
      # labels has no unambiguous output sharding; a matmul does.
      one_hot = jax.nn.one_hot(label, self.num_classes + 1, dtype=dtype)
      temb = temb + nn.Dense(4 * self.ch, use_bias=False, dtype=dtype, name="class_embedding")(
        one_hot
      )
    elif label is not None:
      raise ValueError("UNet: got class labels but num_classes = 0")

    resolution = x.shape[1]
    hs = [conv(self.ch)(x)]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = block(self.ch * mult)(hs[-1], temb, train)
        if resolution in self.attn_resolutions:
          h = attention()(h)
        hs.append(h)
      if level != len(self.ch_mult) - 1:
        h = hs[-1]
        hs.append(conv(h.shape[-1], strides=(2, 2))(h))
        resolution //= 2

    h = block(hs[-1].shape[-1])(hs[-1], temb, train)
    h = attention()(h)
    h = block(h.shape[-1])(h, temb, train)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = block(self.ch * mult)(
          jnp.concatenate([h, hs.pop().astype(h.dtype)], axis=-1), temb, train
        )
        if resolution in self.attn_resolutions:
          h = attention()(h)
      if level != 0:
        b, height, width, c = h.shape
        h = jax.image.resize(h, (b, 2 * height, 2 * width, c), "nearest")
        h = conv(c)(h)
        resolution *= 2
    assert not hs, "skip connections left over"

    h = nn.swish(_group_norm(groups, h))
    return nn.Conv(
      self.out_channels or x.shape[-1], (3, 3), kernel_init=zeros_init, dtype=jnp.float32
    )(h)


COMPUTE_DTYPES = ("float32", "bfloat16")


def unet_from_config(model_config, compute_dtype: str = "float32", remat: bool = False) -> UNet:
  """A UNet from a config section with fields ch, ch_mult, num_res_blocks,
  attn_resolutions, dropout, num_groups and (optionally) num_classes;
  compute_dtype and remat as the experiments' config.model.compute_dtype and
  config.model.remat (see UNet)."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
  m = model_config
  return UNet(
    ch=m.ch,
    ch_mult=tuple(m.ch_mult),
    num_res_blocks=m.num_res_blocks,
    attn_resolutions=tuple(m.attn_resolutions),
    dropout=m.dropout,
    num_groups=m.num_groups,
    num_classes=m.get("num_classes", 0),
    dtype=jnp.dtype(compute_dtype),
    remat=remat,
  )
