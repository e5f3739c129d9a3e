"""Tests of gen_jax.images.save_line_plot: the curves land where their values say."""

import numpy as np
import pytest
from PIL import Image

from gen_jax import images

BLUE, GREY = (30, 80, 200), (200, 200, 200)


def test_line_plot_draws_curves_and_filled_area(tmp_path):
  path = str(tmp_path / "plot.png")
  x = np.linspace(-2.0, 2.0, 401)
  bump = np.exp(-(x**2))  # filled, peak 1 at x = 0
  flat = np.full_like(x, 0.5)  # a line at half the peak
  images.save_line_plot(
    path, x, [("bump", bump, GREY), ("flat", flat, BLUE)], filled=0, size=(400, 300)
  )
  with Image.open(path) as im:
    assert im.size == (400, 300)
    pixels = np.asarray(im.convert("RGB"))
  # layout of save_line_plot: plot area columns 40..389, rows 10..275, y from 0 to 1.05 * max
  left, right, top, bottom = 40, 389, 10, 275
  to_row = lambda v: round(bottom - v / 1.05 * (bottom - top))
  to_col = lambda v: round(left + (v + 2) / 4 * (right - left))
  # the flat line at y = 0.5 across the plot (away from the legend)
  for x_value in (-1.5, 0.5, 1.8):
    column = pixels[:, to_col(x_value)]
    rows = np.flatnonzero(np.all(column == BLUE, axis=-1))
    assert rows.size and abs(rows.mean() - to_row(0.5)) <= 2, (x_value, rows)
  # the filled bump: grey from its curve down to the axis, none above it
  col = to_col(1.0)
  curve_row = to_row(np.exp(-1.0))
  assert np.all(pixels[curve_row + 3 : bottom - 2, col] == GREY)
  assert not np.any(np.all(pixels[top + 80 : curve_row - 3, col] == GREY, axis=-1))


@pytest.mark.parametrize(
  "x,y,match",
  [
    (np.array([0.0, 1.0, 0.5]), np.zeros(3), "increasing"),
    (np.linspace(0, 1, 5), np.zeros(4), "'c' must be"),
    (np.linspace(0, 1, 5), np.array([0, 1, np.nan, 0, 0]), "'c' must be"),
  ],
)
def test_line_plot_bad_input_raises(tmp_path, x, y, match):
  with pytest.raises(ValueError, match=match):
    images.save_line_plot(str(tmp_path / "p.png"), x, [("c", y, BLUE)])
