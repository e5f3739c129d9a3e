"""Toy 2-D distributions: an infinite train split (fresh points every step) and a fixed, finite test set.

Every distribution is scaled so that each coordinate has roughly unit standard deviation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gen_jax.data.dataset import Batch, DataError, Dataset, local_slice, points_dataset

TOY2D_NAMES = ("eight_gaussians", "two_moons", "swiss_roll")
TOY2D_TEST_SIZE = 10_000  # fixed test set of a toy 2-D distribution
_TOY2D_TEST_SEED = (
  1_000_003  # its seed; also keeps the toy test stream apart from any training seed
)
_TOY2D_EVAL_SEED = (
  1_000_033  # seed of the fixed sample that eval_batches uses on the (infinite) train split
)


def sample_toy2d(name: str, num: int, rng: np.random.Generator) -> np.ndarray:
  """`num` points (num, 2) float32 from toy distribution `name` (one of TOY2D_NAMES).

  eight_gaussians: 8 equal Gaussians centred on a circle of radius 2 (std 0.1), then divided by sqrt(2):
    radius 1.41, std 0.071, per-coordinate std 1.0.
  two_moons: sklearn's two interleaved half circles with Gaussian noise std 0.05, standardized per axis with the
    noiseless shape's exact moments (mean (0.5, 0.25), std (0.866, 0.494)).
  swiss_roll: (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi], noise std 0.5, standardized per axis with the noiseless
    shape's moments (mean (2.0, 0.21), std (6.62, 6.95), computed numerically).
  """
  if name == "eight_gaussians":
    angles = rng.integers(8, size=num) * (np.pi / 4)
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = (centres + 0.1 * rng.standard_normal((num, 2))) / np.sqrt(2.0)
  elif name == "two_moons":
    t = rng.uniform(0.0, np.pi, size=num)
    lower = rng.random(num) < 0.5
    upper_xy = np.stack([np.cos(t), np.sin(t)], axis=1)
    lower_xy = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    points = np.where(lower[:, None], lower_xy, upper_xy) + 0.05 * rng.standard_normal((num, 2))
    y_std = np.sqrt(0.5 - 4 / np.pi**2 + (4 / np.pi - 0.5) ** 2 / 4)
    points = (points - [0.5, 0.25]) / [np.sqrt(0.75), y_std]
  elif name == "swiss_roll":
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(num))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.5 * rng.standard_normal((num, 2))
    points = (points - [2.0, 0.21]) / [6.62, 6.95]
  else:
    raise DataError(f"unknown toy2d data.name {name!r}; use one of {', '.join(TOY2D_NAMES)}")
  return points.astype(np.float32)


class Toy2DDataset(Dataset):
  """The train split of a toy 2-D distribution: infinite, fresh points every step."""

  def __init__(self, name: str):
    super().__init__(
      name=f"toy2d/{name}/train",
      kind="points",
      example_shape=(2,),
      num_examples=None,
      num_classes=None,
      fetch=None,
    )
    self._toy_name = name

  def get_batch(
    self,
    step: int,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    train: bool = True,
  ) -> Batch:
    """{'x': float32 (batch_size // process_count, 2)} drawn from default_rng([seed, step])."""
    sl = local_slice(batch_size, process_index, process_count)
    rng = np.random.default_rng([int(seed), int(step)])
    x = sample_toy2d(self._toy_name, batch_size, rng)[sl]  # cheap: drawn whole, this slice kept
    self.examples_read += len(x)
    return {"x": x}

  def eval_batches(
    self, batch_size: int, process_index: int = 0, process_count: int = 1
  ) -> Iterator[Batch]:
    """A fixed sample of TOY2D_TEST_SIZE training points (its own seed), batched as in Dataset.eval_batches."""
    rng = np.random.default_rng(_TOY2D_EVAL_SEED)
    return points_dataset(
      self.name, sample_toy2d(self._toy_name, TOY2D_TEST_SIZE, rng)
    ).eval_batches(batch_size, process_index, process_count)


def load_toy2d(name: str, split: str) -> Dataset:
  """The train split (infinite) or the test split (TOY2D_TEST_SIZE fixed points) of distribution `name`."""
  if name not in TOY2D_NAMES:
    raise DataError(f"unknown toy2d data.name {name!r}; use one of {', '.join(TOY2D_NAMES)}")
  if split == "train":
    return Toy2DDataset(name)
  # A fixed, finite test set, so eval_batches covers it exactly once (num_examples = TOY2D_TEST_SIZE).
  points = sample_toy2d(name, TOY2D_TEST_SIZE, np.random.default_rng(_TOY2D_TEST_SEED))
  return points_dataset(f"toy2d/{name}/test", points)
