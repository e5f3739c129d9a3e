"""What arrays and image files are accepted as data: every refusal names the file and says what to do.

Images are 8-bit, uint8 (N, H, W, C) with values 0..255; points are finite float32 (N, D); labels are
non-negative ints (N,).
"""

from __future__ import annotations

import numpy as np

from gen_jax.data.dataset import DataError


def check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
  """Labels (n,) as int32, if they are non-negative integers; `where` names the file in the error."""
  if (
    labels.ndim != 1
    or len(labels) != n
    or not np.issubdtype(labels.dtype, np.integer)
    or labels.min() < 0
  ):
    raise DataError(
      f"{where}: labels must be non-negative ints of shape ({n},), got {labels.dtype} "
      f"{labels.shape}"
    )
  return labels.astype(np.int32)


def check_examples(arr: np.ndarray, key: str, where: str) -> np.ndarray:
  """Validated images uint8 (N, H, W, C) (for keys ending in 'images') or points float32 (N, D).

  Images may come in any integer dtype with values in 0..255 (np.array of Python ints gives int64); float or
  bool images, values outside 0..255, and 0/1 images (binary data never scaled to 0..255, which would
  train on nearly black pictures) are refused. Points must be finite in float32.
  """
  if arr.ndim == 0 or len(arr) == 0:
    raise DataError(f"{where}: {key!r} has no examples (shape {arr.shape})")
  if key.endswith("images"):
    return _check_images(arr, key, where)
  if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
    raise DataError(f"{where}: {key!r} has dtype {arr.dtype}; points must be float")
  if arr.ndim != 2:
    raise DataError(f"{where}: {key!r} has shape {arr.shape}; points must be (N, D)")
  bad = int(np.sum(~np.isfinite(arr)))
  if bad:
    raise DataError(f"{where}: {key!r} has {bad} NaN/inf values; clean the file")
  points = arr.astype(np.float32)
  bad = int(np.sum(~np.isfinite(points)))
  if bad:
    raise DataError(
      f"{where}: {key!r} has {bad} values beyond the float32 range (|x| > 3.4e38); rescale them"
    )
  return points


def check_points_dimension(kind: str, example_shape, *, where: str) -> None:
  """Points data must be 2-D: the sample pictures drawn while training are scatter plots."""
  if kind == "points" and tuple(example_shape) != (2,):
    raise DataError(
      f"{where}: the points have shape {tuple(example_shape)} each, but the points models train on "
      "2-D points (their sample pictures are scatter plots); give the file points of shape (N, 2)"
    )


# Channels a PNG holds (grey, grey + alpha, RGB, RGBA): the sample grids and --mode=sample's
# pictures are PNGs (gen_jax.images).
IMAGE_CHANNELS = (1, 2, 3, 4)


def check_images_fit(
  kind: str, example_shape, *, where: str, size_multiple: int = 1, model=""
) -> None:
  """Images must have 1-4 channels (their sample pictures are PNGs) and, for a network that
  halves them `size_multiple` = 2^k times over, a height and width divisible by it: checked at
  start-up, as the model would otherwise train and fail at its first sample grid or trace."""
  if kind != "image":
    return
  height, width, channels = tuple(example_shape)
  if channels not in IMAGE_CHANNELS:
    raise DataError(
      f"{where}: the images have {channels} channels, but their sample pictures are PNGs of 1 "
      "(grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels; give images of 1-4 channels"
    )
  if height % size_multiple or width % size_multiple:
    raise DataError(
      f"{where}: the images are {height}x{width}, but {model or 'the network'} halves them "
      f"{size_multiple.bit_length() - 1} time(s), so their height and width must be multiples "
      f"of {size_multiple}; pad or resize the images, or use fewer levels"
    )


def _check_images(arr: np.ndarray, key: str, where: str) -> np.ndarray:
  if not np.issubdtype(arr.dtype, np.integer):
    raise DataError(
      f"{where}: {key!r} has dtype {arr.dtype}; images must be uint8 0..255 "
      "(store float data under 'points')"
    )
  if arr.ndim == 3:
    arr = arr[..., None]  # NHW grayscale -> NHW1
  if arr.ndim != 4:
    raise DataError(f"{where}: {key!r} has shape {arr.shape}; images must be NHWC or NHW")
  low, high = int(arr.min()), int(arr.max())
  if low < 0 or high > 255:
    raise DataError(
      f"{where}: {key!r} has values in {low}..{high}; images must lie in 0..255 (8-bit); rescale them"
    )
  if high == 1:
    raise DataError(
      f"{where}: {key!r} holds only 0s and 1s; images must be on the 0..255 scale "
      "(multiply binary images by 255)"
    )
  return arr.astype(np.uint8)


def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 1) for grayscale files, (H, W, 3) for everything else (palette and alpha become RGB).

  16/32-bit integer and float files are accepted only when every value is an integer in 0..255.
  """
  from PIL import Image

  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      if mode.startswith(
        ("I", "F")
      ):  # 16/32-bit integer or float pixels: convert('L') would clip them
        raw = np.asarray(im)
        arr = None
      else:
        gray = mode in ("1", "L", "LA")
        arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
  except Exception as e:  # PIL raises several types for unreadable files
    raise DataError(
      f"cannot read image {path} ({type(e).__name__}: {str(e).splitlines()[0]})"
    ) from None
  if arr is None:
    if (
      not np.all(np.isfinite(raw))
      or raw.min() < 0
      or raw.max() > 255
      or np.any(raw != np.round(raw))
    ):
      raise DataError(
        f"{path} is a {mode} image with values in {raw.min()}..{raw.max()}; gen_jax reads "
        "8-bit images (0..255): convert it to 8 bits"
      )
    arr = raw.astype(np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr
