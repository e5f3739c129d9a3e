"""Pictures of samples: PNG grids of images and scatter plots of 2-D points."""

import math
import os

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images) -> np.ndarray:
  """Maps images in [-1, 1] to uint8 in [0, 255] (rounding to the nearest level)."""
  images = np.asarray(images, dtype=np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, num_rows: int | None = None, pad: int = 1,
         scale: int = 1) -> np.ndarray:
  """Tiles uint8 images (N, H, W, C) into one (rows*(H+pad)+pad, ..., C) image.

  scale > 1 enlarges every pixel (nearest neighbour) so 8x8 digits are visible.
  """
  images = np.asarray(images)
  n, h, w, c = images.shape
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
  rows = num_rows or max(1, int(math.floor(math.sqrt(n))))
  cols = int(math.ceil(n / rows))
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h,
        pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return out


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, C) image; written to a temporary name, then renamed."""
  image = np.asarray(image)
  if image.shape[-1] == 1:
    image = image[..., 0]
  tmp = path + ".tmp.png"
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)


def save_image_grid(path: str, images, scale: int | None = None) -> None:
  """Saves images in [-1, 1], (N, H, W, C), as a PNG grid."""
  images = to_uint8(images)
  if scale is None:  # Aim for cells of at least 64 pixels.
    scale = max(1, 64 // images.shape[1])
  # A margin of a quarter cell keeps small digits apart.
  save_png(path, grid(images, scale=scale, pad=max(2, images.shape[1] * scale // 4)))


def save_scatter(path: str, points, reference=None, size: int = 512,
                 extent: float | None = None) -> None:
  """Saves a scatter plot of 2-D points (blue) over reference points (grey)."""
  points = np.asarray(points, np.float32)
  everything = points if reference is None else np.concatenate([points, reference])
  finite = everything[np.all(np.isfinite(everything), axis=1)]
  if extent is None:
    extent = float(np.quantile(np.abs(finite), 0.995)) * 1.1 if len(finite) else 1.0
  img = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(img)
  to_px = lambda p: ((p + extent) / (2 * extent) * (size - 1))
  for pts, color in ((reference, (180, 180, 180)), (points, (30, 80, 200))):
    if pts is None:
      continue
    for x, y in to_px(np.asarray(pts)):
      if np.isfinite(x) and np.isfinite(y):
        draw.ellipse([x - 1.5, size - 1 - y - 1.5, x + 1.5, size - 1 - y + 1.5],
                     fill=color)
  tmp = path + ".tmp.png"
  img.save(tmp)
  os.replace(tmp, path)
