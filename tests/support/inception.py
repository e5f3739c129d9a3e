"""Random Inception-v3 variables for tests that need the network but not the published weights."""

import math

import jax
import numpy as np

from gen_jax.evaluation import inception


def random_variables(seed=0):
  """He-scaled random conv/fc kernels and non-trivial BatchNorm parameters, drawn in numpy (no init compile)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(leaf.shape[:-1])
      return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    low, high = {"scale": (0.5, 1.5), "bias": (-0.1, 0.1), "mean": (-0.1, 0.1), "var": (0.5, 2.0)}[
      name
    ]
    return rng.uniform(low, high, size=leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, inception.abstract_variables())
