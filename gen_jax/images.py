"""Pictures: PNG grids of images, scatter plots of 2-D points, line plots of 1-D curves."""

import math

import numpy as np
from PIL import Image, ImageDraw

from gen_jax.runtime import fileio


def to_uint8(images) -> np.ndarray:
  """Maps images in [-1, 1] to uint8 in [0, 255] (rounding to the nearest level)."""
  images = np.asarray(images, dtype=np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(
  images: np.ndarray, num_rows: int | None = None, pad: int = 1, scale: int = 1
) -> np.ndarray:
  """Tiles uint8 images (N, H, W, C) into one (rows*(H+pad)+pad, ..., C) image.

  scale > 1 enlarges every pixel (nearest neighbour) so 8x8 digits are visible.
  """
  images = np.asarray(images)
  n, h, w, c = images.shape
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
  rows = num_rows or max(1, math.floor(math.sqrt(n)))
  cols = math.ceil(n / rows)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, cols)
    out[
      pad + r * (h + pad) : pad + r * (h + pad) + h,
      pad + col * (w + pad) : pad + col * (w + pad) + w,
    ] = images[i]
  return out


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, C) image atomically (gen_jax.runtime.fileio)."""
  image = np.asarray(image)
  if image.shape[-1] == 1:
    image = image[..., 0]
  with fileio.atomic_path(path) as tmp:
    Image.fromarray(image).save(tmp)


def save_image_grid(
  path: str, images, scale: int | None = None, num_rows: int | None = None
) -> None:
  """Saves images in [-1, 1], (N, H, W, C), as a PNG grid."""
  images = to_uint8(images)
  if scale is None:  # Aim for cells of at least 64 pixels.
    scale = max(1, 64 // images.shape[1])
  # A margin of a quarter cell keeps small digits apart.
  save_png(
    path, grid(images, num_rows=num_rows, scale=scale, pad=max(2, images.shape[1] * scale // 4))
  )


def save_scatter(
  path: str, points, reference=None, size: int = 512, extent: float | None = None
) -> None:
  """Saves a scatter plot of 2-D points (blue) over reference points (grey)."""
  points = np.asarray(points, np.float32)
  everything = points if reference is None else np.concatenate([points, reference])
  finite = everything[np.all(np.isfinite(everything), axis=1)]
  if extent is None:
    extent = float(np.quantile(np.abs(finite), 0.995)) * 1.1 if len(finite) else 1.0
  img = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(img)
  to_px = lambda p: (p + extent) / (2 * extent) * (size - 1)
  for pts, color in ((reference, (180, 180, 180)), (points, (30, 80, 200))):
    if pts is None:
      continue
    for x, y in to_px(np.asarray(pts)):
      if np.isfinite(x) and np.isfinite(y):
        draw.ellipse([x - 1.5, size - 1 - y - 1.5, x + 1.5, size - 1 - y + 1.5], fill=color)
  with fileio.atomic_path(path) as tmp:
    img.save(tmp)


def save_line_plot(
  path: str, x, curves, filled: int | None = None, size: tuple[int, int] = (720, 420)
) -> None:
  """Saves curves y(x) on shared axes (y from 0 up) as a PNG, with a legend.

  Args:
    path: the PNG to write (via a temporary name, then renamed).
    x: (N,) increasing abscissae, shared by every curve.
    curves: a sequence of (label, y, rgb): y of shape (N,), finite, and rgb a
      triple of 0..255 integers; drawn in order, each a 2-pixel line.
    filled: the index of one curve to draw as a filled area instead (a
      reference, e.g. a target density), or None.
    size: (width, height) in pixels.
  """
  x = np.asarray(x, np.float64)
  ys = [np.asarray(y, np.float64) for _, y, _ in curves]
  if x.ndim != 1 or x.size < 2 or np.any(np.diff(x) <= 0):
    raise ValueError("save_line_plot: x must be an increasing vector of 2 or more points")
  for (label, _, _), y in zip(curves, ys):
    if y.shape != x.shape or not np.all(np.isfinite(y)):
      raise ValueError(f"save_line_plot: curve {label!r} must be {x.shape} and finite")
  width, height = size
  left, right, top, bottom = 40, 10, 10, 24
  y_max = max(float(y.max()) for y in ys) * 1.05 if ys else 1.0
  y_max = y_max if y_max > 0 else 1.0
  to_col = lambda v: left + (v - x[0]) / (x[-1] - x[0]) * (width - left - right - 1)
  to_row = lambda v: height - bottom - 1 - v / y_max * (height - top - bottom - 1)
  img = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(img)
  for i, ((_, _, color), y) in enumerate(zip(curves, ys)):
    points = list(zip(to_col(x), to_row(np.maximum(y, 0.0))))
    if i == filled:
      base = to_row(0.0)
      draw.polygon([(points[0][0], base)] + points + [(points[-1][0], base)], fill=tuple(color))
    else:
      draw.line(points, fill=tuple(color), width=2)
  # Axes, ticks at the ends and at integers (at most 21 of them), legend.
  draw.rectangle([left, top, width - right - 1, height - bottom - 1], outline="black")
  ticks = np.arange(math.ceil(x[0]), math.floor(x[-1]) + 1)
  if ticks.size > 21 or ticks.size == 0:
    ticks = np.array([x[0], x[-1]])
  for tick in ticks:
    col = to_col(tick)
    draw.line([(col, height - bottom - 1), (col, height - bottom + 3)], fill="black")
    draw.text((col - 6, height - bottom + 5), f"{tick:g}", fill="black")
  draw.text((4, top), f"{y_max / 1.05:.2g}", fill="black")
  draw.text((4, height - bottom - 12), "0", fill="black")
  for i, (label, _, color) in enumerate(curves):
    row = top + 8 + 16 * i
    draw.rectangle([left + 10, row - 3, left + 30, row + 3], fill=tuple(color))
    draw.text((left + 36, row - 6), label, fill="black")
  with fileio.atomic_path(path) as tmp:
    img.save(tmp)
