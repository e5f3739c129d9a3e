"""The FID Inception-v3 in Flax: the network behind the published FID and Inception scores.

This is the graph of TensorFlow's FID code (`inception-2015-12-05`, 1008
classes) as pytorch-fid ports it (`pt_inception-2015-12-05-6726825d.pth`):
torchvision's Inception-v3 without the auxiliary classifier, with the FID
graph's differences: the average pools of the Mixed_5*, 6b-6e and 7b blocks
exclude the zero padding (TensorFlow's convention) and Mixed_7c pools its
branch with a 3x3 max pool. Layer names are the PyTorch module names
(`Mixed_6b.branch7x7_2.conv`), so a PyTorch state dict maps onto the
parameters by transposition only (`variables_from_state_dict`).

  FIDInceptionV3()(x) -> (pool (B, 2048), logits (B, 1008))

x: (B, H, W, 3) in [-1, 1] (pytorch-fid's input 2 u - 1 for u in [0, 1]);
resized to 299x299 bilinearly with half-pixel centres and no antialiasing
(PyTorch's `interpolate(mode="bilinear", align_corners=False)`, as
pytorch-fid). pool: the 2048-d average-pooled features FID uses; logits: the
1008-way classifier the Inception score's softmax uses. Grayscale input is
repeated to 3 channels.

The weights are not shipped: `load_variables(path)` reads an .npz of the
pytorch-fid state dict (scripts/convert_inception_weights.py makes one from
the .pth without PyTorch; see the README).
"""

import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_FEATURES = 2048
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
)


class InceptionWeightsError(ValueError):
  """An inception_weights file that is missing or does not fit the network."""


def _pairs(value):
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
  """Convolution without bias, BatchNorm (eps 1e-3, running statistics), ReLU."""

  features: int
  kernel_size: int | Sequence[int]
  strides: int = 1
  padding: int | Sequence[int] = 0

  @nn.compact
  def __call__(self, x):
    pad_h, pad_w = _pairs(self.padding)
    x = nn.Conv(
      self.features,
      _pairs(self.kernel_size),
      strides=_pairs(self.strides),
      padding=((pad_h, pad_h), (pad_w, pad_w)),
      use_bias=False,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """3x3, stride 1, padding 1, averaging over the unpadded pixels only."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride, padding=0):
  return nn.max_pool(
    x, (3, 3), strides=(stride, stride), padding=((padding, padding), (padding, padding))
  )


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(64, 1, name="branch1x1")(x)
    branch5x5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    branch5x5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(branch5x5)
    branch3x3dbl = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(384, 3, strides=2, name="branch3x3")(x)
    branch3x3dbl = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, 3, strides=2, name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, 1, name="branch1x1")(x)
    branch7x7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    dbl = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
    dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
    dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
    branch_pool = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    branch3x3 = BasicConv2d(320, 3, strides=2, name="branch3x3_2")(branch3x3)
    branch7x7x3 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, 3, strides=2, name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """pool: 'avg' (padding excluded; Mixed_7b) or 'max' (the FID graph's Mixed_7c)."""

  pool: str

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(320, 1, name="branch1x1")(x)
    branch3x3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate(
      [
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
      ],
      axis=-1,
    )
    dbl = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    dbl = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(dbl)
    dbl = jnp.concatenate(
      [
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl),
      ],
      axis=-1,
    )
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool(x, 1, padding=1)
    branch_pool = BasicConv2d(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


def resize_bilinear(x, size: int):
  """(B, H, W, C) -> (B, size, size, C), bilinear with half-pixel centres and no
  antialiasing: PyTorch's interpolate(mode='bilinear', align_corners=False)."""
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
  """The FID Inception-v3 (see the module docstring).

  resize_input: resize to 299x299 first (pytorch-fid's default). Without it
  the network takes any size >= 75x75 (the pool is global).
  """

  resize_input: bool = True

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"FIDInceptionV3: x must be (B, H, W, 1 or 3), got {x.shape}")
    x = x.astype(jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    if self.resize_input:
      x = resize_bilinear(x, INPUT_SIZE)
    x = BasicConv2d(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, 2)
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, name="fc")(pool)
    return pool, logits


# ----------------------------------------------------------------------------
# Weights: a PyTorch state dict (as .npz) <-> Flax variables
# ----------------------------------------------------------------------------

# Flax leaf name -> (PyTorch parameter name, how the array is laid out there).
_LEAVES = {
  ("params", "kernel", 4): ("weight", "conv"),  # torch (O, I, kh, kw) -> flax (kh, kw, I, O)
  ("params", "kernel", 2): ("weight", "linear"),  # torch (O, I) -> flax (I, O)
  ("params", "bias", 1): ("bias", None),
  ("params", "scale", 1): ("weight", None),  # BatchNorm gamma
  ("batch_stats", "mean", 1): ("running_mean", None),
  ("batch_stats", "var", 1): ("running_var", None),
}


def _torch_name(collection: str, path: tuple, ndim: int) -> tuple[str, str | None]:
  name, layout = _LEAVES[(collection, path[-1], ndim)]
  return ".".join(path[:-1] + (name,)), layout


def abstract_variables(model: FIDInceptionV3 | None = None):
  """The network's variables as ShapeDtypeStructs (no allocation)."""
  model = model or FIDInceptionV3()
  x = jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def state_dict_names(variables) -> dict[str, tuple]:
  """PyTorch state-dict name -> (collection, Flax path) for every variable."""
  out = {}
  for collection, tree in variables.items():
    for path, leaf in traverse_util.flatten_dict(tree).items():
      torch_name, _ = _torch_name(collection, path, len(leaf.shape))
      out[torch_name] = (collection, path)
  return out


def variables_from_state_dict(
  state_dict: dict, model: FIDInceptionV3 | None = None, source: str = "the state dict"
):
  """Flax variables {'params', 'batch_stats'} from pytorch-fid's state dict
  (name -> numpy array, PyTorch layouts). Every variable must be present with
  its shape; BatchNorm's num_batches_tracked counters are ignored.

  Raises:
    InceptionWeightsError naming the missing, unexpected or misshaped entries.
  """
  abstract = abstract_variables(model)
  expected = state_dict_names(abstract)
  given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  if missing or unexpected:
    raise InceptionWeightsError(
      f"{source} is not the FID Inception-v3 state dict: {len(missing)} missing entries "
      f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
      f"use pytorch-fid's {WEIGHTS_FILE} converted with scripts/convert_inception_weights.py"
    )
  flat = {"params": {}, "batch_stats": {}}
  for torch_name, (collection, path) in expected.items():
    leaf = traverse_util.flatten_dict(abstract[collection])[path]
    value = np.asarray(given[torch_name], np.float32)
    _, layout = _torch_name(collection, path, len(leaf.shape))
    if layout == "conv":
      value = value.transpose(2, 3, 1, 0)
    elif layout == "linear":
      value = value.T
    if value.shape != leaf.shape:
      raise InceptionWeightsError(
        f"{source}: {torch_name} has shape {given[torch_name].shape}, "
        f"which does not fit the FID Inception-v3 ({leaf.shape} in Flax layout)"
      )
    flat[collection][path] = value
  return {c: traverse_util.unflatten_dict(tree) for c, tree in flat.items()}


def state_dict_from_variables(variables) -> dict[str, np.ndarray]:
  """The inverse of `variables_from_state_dict` (PyTorch names and layouts)."""
  out = {}
  for collection, tree in variables.items():
    for path, value in traverse_util.flatten_dict(jax.device_get(tree)).items():
      value = np.asarray(value)
      torch_name, layout = _torch_name(collection, path, value.ndim)
      if layout == "conv":
        value = value.transpose(3, 2, 0, 1)
      elif layout == "linear":
        value = value.T
      out[torch_name] = value
  return out


def load_variables(path: str, model: FIDInceptionV3 | None = None):
  """Flax variables from an .npz of pytorch-fid's state dict (see the module docstring)."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise InceptionWeightsError(f"inception_weights={path} is not a file")
  if path.endswith(".pth"):
    raise InceptionWeightsError(
      f"inception_weights={path} is a PyTorch file; convert it once with "
      f"`python scripts/convert_inception_weights.py {path} pt_inception-2015-12-05.npz` "
      "and pass the .npz"
    )
  try:
    with np.load(path, allow_pickle=False) as f:
      state_dict = {name: f[name] for name in f.files}
  except Exception as e:  # zipfile / format errors: not a readable npz
    raise InceptionWeightsError(
      f"inception_weights={path}: cannot read as .npz ({type(e).__name__}: {e})"
    ) from None
  return variables_from_state_dict(state_dict, model, f"inception_weights={path}")


def outputs_fn(model: FIDInceptionV3 | None = None):
  """(variables, x) -> {'features': pool (B, 2048), 'probs': softmax(logits) (B, 1008)}."""
  model = model or FIDInceptionV3()

  def apply(variables, x):
    pool, logits = model.apply(variables, x)
    return {"features": pool, "probs": jax.nn.softmax(logits)}

  return apply
