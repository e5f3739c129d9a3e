"""diffusers' UNet2DModel in Flax: the DDPM-family checkpoints of the model hub, layer for layer.

  spec = UNet2DSpec.from_config(json.load(open("config.json")))   # refuses what it cannot run
  net = DiffusersUNet(spec)                                        # eps = net.apply(p, x, t[, label])
  params = params_from_state_dict(spec, state_dict)                # diffusers' tensors -> Flax
  state_dict = state_dict_from_params(params)                      # and back
  spec, params = from_native_unet(unet, native_params, image_shape)  # gen_jax's nets.UNet -> this

Why a module of its own rather than a mapping onto gen_jax's nets.UNet: the
native U-Net is one point of UNet2DModel's option space (one attention head,
GroupNorm eps 1e-6, SAME-padded strided downsampling, sin-then-cos time
features with freq_shift 1, attention placed by resolution in both halves, a
class table with a null row). Released checkpoints leave that point: the
church/bedroom/cat models and most community ones use several heads,
norm_eps 1e-5, `downsample_padding=1`, `flip_sin_to_cos`, "scale_shift" time
conditioning or channel counts that are no multiple of one base width. A Flax
mirror of UNet2DModel covers all of them with one mechanical weight mapping
(the Flax module names are diffusers' module paths), and the native U-Net maps onto it
exactly (`from_native_unet`), which is how gen_jax's own checkpoints are
exported. The parameter names here are diffusers': a reader can hold this
file next to diffusers/models/unets/unet_2d.py.

Conventions: images NHWC (diffusers: NCHW; the conversion transposes the
convolution kernels OIHW -> HWIO and the linear weights (out, in) -> (in,
out)); float32 throughout; timesteps are the integers 0..T-1 of the DDPM
scheduler (any real t works, as in diffusers).

Longer than the house's ~400 lines on purpose: a layer-for-layer mirror reads best as one file
beside diffusers' own unet_2d.py and unet_2d_blocks.py, block for block.
"""

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
TIME_SCALE_SHIFTS = ("default", "scale_shift")

# config.json keys that do not change the network's function: diffusers' bookkeeping.
_IGNORED_KEYS = ("num_train_timesteps",)  # used only by time_embedding_type "learned" (refused)


class UnsupportedConfigError(ValueError):
  """A UNet2DModel config.json option this module does not implement; the message names it."""


@dataclasses.dataclass(frozen=True)
class UNet2DSpec:
  """The UNet2DModel options of the DDPM family, as config.json names them (diffusers' defaults).

  sample_size: (height, width) of the images; channel counts in and out;
  one entry of block_out_channels / down_block_types / up_block_types per
  resolution; layers_per_block resnets per down block (+1 per up block);
  attention_head_dim None means one head over all channels.
  """

  sample_size: tuple[int, int] = (64, 64)
  in_channels: int = 3
  out_channels: int = 3
  center_input_sample: bool = False
  time_embedding_dim: int | None = None
  freq_shift: float = 0.0
  flip_sin_to_cos: bool = True
  down_block_types: tuple[str, ...] = (
    "DownBlock2D",
    "AttnDownBlock2D",
    "AttnDownBlock2D",
    "AttnDownBlock2D",
  )
  mid_block: bool = True  # mid_block_type "UNetMidBlock2D" (True) or None
  up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
  block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
  layers_per_block: int = 2
  mid_block_scale_factor: float = 1.0
  downsample_padding: int = 1
  dropout: float = 0.0
  attention_head_dim: int | None = 8
  norm_num_groups: int = 32
  attn_norm_num_groups: int | None = None
  norm_eps: float = 1e-5
  resnet_time_scale_shift: str = "default"
  add_attention: bool = True
  num_class_embeds: int | None = None

  @property
  def temb_dim(self) -> int:
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "UNet2DSpec":
    """The spec of a diffusers config.json dict; UnsupportedConfigError names any option
    outside the DDPM family. Keys starting with "_" (diffusers' metadata) and keys that are no
    argument of UNet2DModel are ignored, as diffusers ignores them."""
    cfg = {k: v for k, v in config.items() if not k.startswith("_") and k not in _IGNORED_KEYS}
    class_name = config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
      raise UnsupportedConfigError(
        f"_class_name={class_name!r}: only UNet2DModel checkpoints are supported"
      )
    fixed = {  # options with one supported value
      "time_embedding_type": ("positional",),
      "act_fn": ("silu", "swish"),
      "downsample_type": ("conv",),
      "upsample_type": ("conv",),
      "class_embed_type": (None,),
      "mid_block_type": ("UNetMidBlock2D", None),
      "resnet_time_scale_shift": TIME_SCALE_SHIFTS,
    }
    for key, allowed in fixed.items():
      if key in cfg and cfg[key] not in allowed:
        raise UnsupportedConfigError(
          f"{key}={cfg[key]!r} is not supported (supported: {', '.join(map(repr, allowed))})"
        )
    # Keys that are no UNet2DModel argument are ignored, as diffusers' from_config ignores them.
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in cfg.items() if k in fields}
    if "mid_block_type" in cfg:
      kwargs["mid_block"] = cfg["mid_block_type"] is not None
    size = kwargs.get("sample_size", cls.sample_size)
    if size is None:
      raise UnsupportedConfigError("sample_size=None: the image size is needed")
    kwargs["sample_size"] = (size, size) if isinstance(size, int) else tuple(size)
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
      if key in kwargs:
        kwargs[key] = tuple(kwargs[key])
    spec = cls(**kwargs)
    spec.check()
    return spec

  def check(self) -> None:
    """Raises UnsupportedConfigError naming the first option that cannot work."""
    levels = len(self.block_out_channels)
    for name in ("down_block_types", "up_block_types"):
      if len(getattr(self, name)) != levels:
        raise UnsupportedConfigError(
          f"{name} has {len(getattr(self, name))} entries but block_out_channels has {levels}"
        )
    for name, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
      bad = [b for b in getattr(self, name) if b not in allowed]
      if bad:
        raise UnsupportedConfigError(
          f"{name} entry {bad[0]!r} is not supported (supported: {', '.join(allowed)})"
        )
    if not isinstance(self.norm_num_groups, int) or self.norm_num_groups <= 0:
      raise UnsupportedConfigError(
        f"norm_num_groups={self.norm_num_groups!r}: a positive integer is needed"
      )
    bad_groups = [c for c in self.block_out_channels if c % self.norm_num_groups]
    if bad_groups:
      raise UnsupportedConfigError(
        f"block_out_channels {bad_groups[0]} is not divisible by norm_num_groups="
        f"{self.norm_num_groups}"
      )
    factor = 2 ** (levels - 1)
    if any(s % factor for s in self.sample_size):
      raise UnsupportedConfigError(
        f"sample_size={self.sample_size} must be divisible by 2^(number of levels - 1) = "
        f"{factor}: UNet2DModel's upsampling doubles the size exactly"
      )
    if self.downsample_padding < 0:
      raise UnsupportedConfigError(f"downsample_padding={self.downsample_padding} must be >= 0")
    if self.attention_head_dim is not None and self.attention_head_dim <= 0:
      raise UnsupportedConfigError(f"attention_head_dim={self.attention_head_dim} must be > 0")

  def to_config(self) -> dict[str, Any]:
    """The config.json dict diffusers' UNet2DModel(**config) builds this network from."""
    out = dataclasses.asdict(self)
    out.pop("mid_block")
    out["mid_block_type"] = "UNetMidBlock2D" if self.mid_block else None
    height, width = self.sample_size
    out["sample_size"] = height if height == width else [height, width]
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
      out[key] = list(out[key])
    out.update(
      _class_name="UNet2DModel",
      time_embedding_type="positional",
      act_fn="silu",
      downsample_type="conv",
      upsample_type="conv",
      class_embed_type=None,
    )
    return out


def timestep_features(t, dim: int, *, flip_sin_to_cos: bool, freq_shift: float) -> Array:
  """diffusers' `get_timestep_embedding` (the DDPM code's at flip False, shift 1).

  f_i = 10000^(-i / (dim/2 - freq_shift)), i < dim/2; features
  [sin(t f), cos(t f)], or [cos, sin] with flip_sin_to_cos; an odd dim gets a
  trailing 0. t: (B,); returns (B, dim) float32.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _group_norm(groups: int, eps: float, name: str):
  # Two-pass variance, as torch computes it: E[x^2] - E[x]^2 loses digits in float32.
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def _conv(features: int, name: str, kernel: int = 3):
  return nn.Conv(features, (kernel, kernel), padding=kernel // 2, name=name)


class ResnetBlock2D(nn.Module):
  """norm1 swish conv1 (+ temb) norm2 [scale-shift] swish dropout conv2, plus the (1x1) shortcut,
  divided by output_scale_factor.

  "default": h = norm2(conv1(.) + W silu(temb)); "scale_shift": W silu(temb)
  = (scale, shift) and h = norm2(conv1(.)) (1 + scale) + shift.
  """

  out_channels: int
  spec: UNet2DSpec
  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x, temb, train: bool):
    s, c = self.spec, self.out_channels
    h = _conv(c, "conv1")(nn.swish(_group_norm(s.norm_num_groups, s.norm_eps, "norm1")(x)))
    scale_shift = s.resnet_time_scale_shift == "scale_shift"
    proj = nn.Dense(2 * c if scale_shift else c, name="time_emb_proj")(nn.swish(temb))
    proj = proj[:, None, None, :]
    norm2 = _group_norm(s.norm_num_groups, s.norm_eps, "norm2")
    if scale_shift:
      scale, shift = jnp.split(proj, 2, axis=-1)
      h = norm2(h) * (1.0 + scale) + shift
    else:
      h = norm2(h + proj)
    h = nn.Dropout(s.dropout, deterministic=not train)(nn.swish(h))
    h = _conv(c, "conv2")(h)
    if x.shape[-1] != c:
      x = _conv(c, "conv_shortcut", kernel=1)(x)
    return (x + h) / self.output_scale_factor


class Attention(nn.Module):
  """diffusers' Attention as the U-Net blocks use it: [GroupNorm], multi-head self-attention over
  the pixels (heads = channels // head_dim, softmax in float32), to_out, + input, / rescale."""

  head_dim: int
  norm_groups: int | None
  eps: float
  rescale_output_factor: float = 1.0

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    heads = channels // self.head_dim
    if heads == 0:
      raise ValueError(f"attention_head_dim={self.head_dim} exceeds the {channels} channels")
    h = x
    if self.norm_groups is not None:
      h = _group_norm(self.norm_groups, self.eps, "group_norm")(h)
    h = h.reshape(batch, height * width, channels)
    split = lambda a: a.reshape(batch, height * width, heads, self.head_dim)
    q, k, v = (split(nn.Dense(heads * self.head_dim, name=n)(h)) for n in ("to_q", "to_k", "to_v"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    h = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height * width, -1)
    h = nn.Dense(channels, name="to_out.0")(h).reshape(x.shape)
    return (h + x) / self.rescale_output_factor


def _downsample(x, padding: int, name: str) -> Array:
  """Downsample2D: a stride-2 3x3 conv; padding 0 pads one row/column at the end (the DDPM
  code's TF "SAME"), padding p pads p on each side."""
  pads = ((0, 1), (0, 1)) if padding == 0 else ((padding, padding), (padding, padding))
  return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=pads, name=name)(x)


class DiffusersUNet(nn.Module):
  """UNet2DModel.forward in Flax: out = net.apply(params, x, t[, label], train=...).

  x: (B, H, W, in_channels); t: (B,) timesteps; label: (B,) int classes
  (models with num_class_embeds; `null_label` is the row that means "no
  class", for classifier-free guidance, None if the checkpoint has none).
  Returns (B, H, W, out_channels) float32.
  """

  spec: UNet2DSpec
  null_label: int | None = None

  @nn.compact
  def __call__(self, x, t, label=None, train: bool = False):
    s = self.spec
    if s.center_input_sample:
      x = 2.0 * x - 1.0
    temb = timestep_features(
      t, s.block_out_channels[0], flip_sin_to_cos=s.flip_sin_to_cos, freq_shift=s.freq_shift
    )
    temb = nn.Dense(s.temb_dim, name="time_embedding.linear_1")(temb)
    temb = nn.Dense(s.temb_dim, name="time_embedding.linear_2")(nn.swish(temb))
    if s.num_class_embeds:
      if label is None:
        if self.null_label is None:
          raise ValueError(
            "this checkpoint is class-conditional without a null class: it needs class labels "
            "(no unconditional sampling or classifier-free guidance)"
          )
        label = jnp.full(t.shape, self.null_label, jnp.int32)
      temb = temb + nn.Embed(s.num_class_embeds, s.temb_dim, name="class_embedding")(label)
    elif label is not None:
      raise ValueError("DiffusersUNet: got class labels but the checkpoint has no num_class_embeds")

    def resnet(c, name, scale=1.0):
      return ResnetBlock2D(c, s, scale, name=name)

    def attention(c, name, groups=s.norm_num_groups, rescale=1.0):
      return Attention(s.attention_head_dim or c, groups, s.norm_eps, rescale, name=name)

    h = _conv(s.block_out_channels[0], "conv_in")(x)
    skips = [h]
    levels = len(s.block_out_channels)
    for i, (kind, c) in enumerate(zip(s.down_block_types, s.block_out_channels)):
      block = f"down_blocks.{i}"
      for j in range(s.layers_per_block):
        h = resnet(c, f"{block}.resnets.{j}")(h, temb, train)
        if kind == "AttnDownBlock2D":
          h = attention(c, f"{block}.attentions.{j}")(h)
        skips.append(h)
      if i < levels - 1:
        h = _downsample(h, s.downsample_padding, f"{block}.downsamplers.0.conv")
        skips.append(h)

    if s.mid_block:
      scale = s.mid_block_scale_factor
      h = resnet(h.shape[-1], "mid_block.resnets.0", scale)(h, temb, train)
      if s.add_attention:
        groups = s.attn_norm_num_groups
        if groups is None and s.resnet_time_scale_shift == "default":
          groups = s.norm_num_groups  # (diffusers: no norm here with scale_shift)
        head_dim = s.attention_head_dim or h.shape[-1]
        h = Attention(head_dim, groups, s.norm_eps, scale, name="mid_block.attentions.0")(h)
      h = resnet(h.shape[-1], "mid_block.resnets.1", scale)(h, temb, train)

    for i, (kind, c) in enumerate(zip(s.up_block_types, s.block_out_channels[::-1])):
      block = f"up_blocks.{i}"
      for j in range(s.layers_per_block + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = resnet(c, f"{block}.resnets.{j}")(h, temb, train)
        if kind == "AttnUpBlock2D":
          h = attention(c, f"{block}.attentions.{j}")(h)
      if i < levels - 1:
        b, height, width, channels = h.shape
        h = jax.image.resize(h, (b, 2 * height, 2 * width, channels), "nearest")
        h = _conv(channels, f"{block}.upsamplers.0.conv")(h)
    assert not skips, "skip connections left over"

    h = nn.swish(_group_norm(s.norm_num_groups, s.norm_eps, "conv_norm_out")(h))
    return _conv(s.out_channels, "conv_out")(h)


# ----------------------------------------------------------------------------
# Weights: diffusers' state dict <-> Flax parameters
# ----------------------------------------------------------------------------

# Checkpoints saved before diffusers 0.14 name the attention layers as the old AttentionBlock did.
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@functools.lru_cache(maxsize=16)
def abstract_params(spec: UNet2DSpec, null_label: int | None = None):
  """The parameter tree of DiffusersUNet(spec) as ShapeDtypeStructs (nothing computed)."""
  height, width = spec.sample_size
  x = jnp.zeros((1, height, width, spec.in_channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  label = jnp.zeros((1,), jnp.int32) if spec.num_class_embeds else None
  net = DiffusersUNet(spec, null_label)
  return jax.eval_shape(lambda: net.init(jax.random.key(0), x, t, label))


def _torch_key(path: tuple[str, ...]) -> str:
  """('down_blocks.0.resnets.1', 'conv1', 'kernel') -> 'down_blocks.0.resnets.1.conv1.weight'."""
  leaf = "bias" if path[-1] == "bias" else "weight"  # kernel, scale (GroupNorm), embedding
  return ".".join((*path[:-1], leaf))


def params_from_state_dict(
  spec: UNet2DSpec, state_dict: Mapping[str, np.ndarray], null_label: int | None = None
):
  """Flax parameters of DiffusersUNet(spec) from diffusers' tensors (numpy, any float dtype;
  returned as float32). Raises ValueError listing missing, unexpected or misshapen tensors."""
  state = {_current_name(key): np.asarray(value) for key, value in state_dict.items()}
  check_state_shapes(spec, {key: value.shape for key, value in state.items()}, null_label)
  out = {}
  for path in flax.traverse_util.flatten_dict(abstract_params(spec, null_label)["params"]):
    array = state[_torch_key(path)]
    if path[-1] == "kernel":
      array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
    out[path] = jnp.asarray(array, jnp.float32)
  return {"params": flax.traverse_util.unflatten_dict(out)}


def _current_name(key: str) -> str:
  """A tensor's name as diffusers >= 0.14 writes it (query -> to_q, ...)."""
  parts = key.split(".")
  if len(parts) >= 2 and parts[-2] in _DEPRECATED_ATTENTION:
    return ".".join((*parts[:-2], _DEPRECATED_ATTENTION[parts[-2]], parts[-1]))
  return key


def check_state_shapes(
  spec: UNet2DSpec, shapes: Mapping[str, tuple], null_label: int | None = None
) -> None:
  """Raises ValueError listing missing, unexpected or misshapen tensors, from the tensors'
  names and (torch) shapes alone: a start-up check that reads no weights."""
  state = {_current_name(key): tuple(shape) for key, shape in shapes.items()}
  flat = flax.traverse_util.flatten_dict(abstract_params(spec, null_label)["params"])
  missing, misshapen = [], []
  for path, leaf in flat.items():
    key = _torch_key(path)
    if key not in state:
      missing.append(key)
      continue
    stored_shape = state.pop(key)
    shape = stored_shape
    if path[-1] == "kernel":
      shape = tuple(
        shape[i] for i in ((2, 3, 1, 0) if len(shape) == 4 else range(len(shape))[::-1])
      )
    if shape != tuple(leaf.shape):
      misshapen.append(f"{key} {stored_shape} (Flax {shape}, expected {tuple(leaf.shape)})")
  problems = []
  if missing:
    problems.append(f"missing tensors: {', '.join(missing[:8])}" + ("..." * (len(missing) > 8)))
  if state:
    extra = sorted(state)
    problems.append(f"unexpected tensors: {', '.join(extra[:8])}" + ("..." * (len(extra) > 8)))
  if misshapen:
    problems.append(f"tensors of the wrong shape: {', '.join(misshapen[:8])}")
  if problems:
    raise ValueError("the weights do not match config.json: " + "; ".join(problems))


def state_dict_from_params(params) -> dict[str, np.ndarray]:
  """diffusers' state dict (float32 numpy, C-contiguous) of DiffusersUNet parameters."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(params["params"]).items():
    array = np.asarray(value, np.float32)
    if path[-1] == "kernel":
      array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
    out[_torch_key(path)] = np.ascontiguousarray(array)
  return out


# ----------------------------------------------------------------------------
# gen_jax's own U-Net (nets.UNet) as a UNet2DModel
# ----------------------------------------------------------------------------


def from_native_unet(unet, params, image_shape) -> tuple[UNet2DSpec, Any, int | None]:
  """(spec, params, null_label) of the DiffusersUNet that computes exactly what `unet`
  (a gen_jax nets.UNet) computes with `params` on images of `image_shape` (H, W, C).

  The native U-Net is UNet2DModel with one attention head per block,
  GroupNorm eps 1e-6 (Flax's), downsample_padding 0 (TF "SAME" at even
  sizes), flip_sin_to_cos False, freq_shift 1, attention at the levels whose
  resolution is in attn_resolutions, a mid block with attention, and K + 1
  class rows, the last one the null class. Raises ValueError, naming the
  field, where no UNet2DModel computes the same (an odd size at a
  downsampling).
  """
  height, width, channels = image_shape
  levels = len(unet.ch_mult)
  if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
    raise ValueError(
      f"images of {height}x{width} are halved {levels - 1} times by config.model.ch_mult="
      f"{tuple(unet.ch_mult)}: an odd size on the way pads differently in UNet2DModel"
    )
  resolutions = [height // 2**i for i in range(levels)]
  attn = [r in unet.attn_resolutions for r in resolutions]
  spec = UNet2DSpec(
    sample_size=(height, width),
    in_channels=channels,
    out_channels=unet.out_channels or channels,
    freq_shift=1,
    flip_sin_to_cos=False,
    down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
    up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]),
    block_out_channels=tuple(unet.ch * m for m in unet.ch_mult),
    layers_per_block=unet.num_res_blocks,
    downsample_padding=0,
    dropout=unet.dropout,
    attention_head_dim=None,
    norm_num_groups=unet.num_groups,
    norm_eps=1e-6,
    num_class_embeds=unet.num_classes + 1 if unet.num_classes else None,
  )
  spec.check()
  native = params["params"]
  out = {}
  counters = {"ResBlock": 0, "AttnBlock": 0, "Conv": 0}

  def take(kind):
    name = f"{kind}_{counters[kind]}"
    counters[kind] += 1
    return native[name]

  def resnet(path):
    p = take("ResBlock")
    out[path] = {
      "norm1": p["GroupNorm_0"],
      "conv1": p["Conv_0"],
      "time_emb_proj": p["Dense_0"],
      "norm2": p["GroupNorm_1"],
      "conv2": p["Conv_1"],
    }
    if "Dense_1" in p:  # the "nin" shortcut, a Dense over channels = a 1x1 convolution
      kernel = p["Dense_1"]["kernel"]
      out[path]["conv_shortcut"] = {"kernel": kernel[None, None], "bias": p["Dense_1"]["bias"]}

  def attention(path):
    p = take("AttnBlock")
    out[path] = {"group_norm": p["GroupNorm_0"], "to_q": p["q"], "to_k": p["k"], "to_v": p["v"]}
    out[path]["to_out.0"] = p["proj_out"]

  out["time_embedding.linear_1"] = native["Dense_0"]
  out["time_embedding.linear_2"] = native["Dense_1"]
  if unet.num_classes:
    out["class_embedding"] = {"embedding": native["class_embedding"]["kernel"]}
  out["conv_in"] = take("Conv")
  for i in range(levels):
    for j in range(unet.num_res_blocks):
      resnet(f"down_blocks.{i}.resnets.{j}")
      if attn[i]:
        attention(f"down_blocks.{i}.attentions.{j}")
    if i < levels - 1:
      out[f"down_blocks.{i}.downsamplers.0.conv"] = take("Conv")
  resnet("mid_block.resnets.0")
  attention("mid_block.attentions.0")
  resnet("mid_block.resnets.1")
  for i in range(levels):
    for j in range(unet.num_res_blocks + 1):
      resnet(f"up_blocks.{i}.resnets.{j}")
      if attn[levels - 1 - i]:
        attention(f"up_blocks.{i}.attentions.{j}")
    if i < levels - 1:
      out[f"up_blocks.{i}.upsamplers.0.conv"] = take("Conv")
  out["conv_norm_out"] = native["GroupNorm_0"]
  out["conv_out"] = take("Conv")
  used = {f"{k}_{n}" for k, count in counters.items() for n in range(count)}
  left = sorted(set(native) - used - {"Dense_0", "Dense_1", "class_embedding", "GroupNorm_0"})
  if left:
    raise ValueError(f"native U-Net parameters not mapped: {', '.join(left)}")
  null_label = unet.num_classes if unet.num_classes else None
  return spec, {"params": out}, null_label
