"""A small CNN classifier whose penultimate layer is the feature space of the sample-quality
figures (gen_jax.evaluation; trained by gen_jax.train.classifier)."""

from collections.abc import Sequence

import flax.linen as nn
import jax

Array = jax.Array


class ImageClassifier(nn.Module):
  """A small CNN classifier for images: (logits, features).

  conv3x3(c0) relu, then conv3x3 stride 2 with relu for each further entry of
  `channels`, flatten, Dense(feature_dim) relu (the features, as FID takes
  Inception's last hidden layer), Dense(num_classes) (the logits).
  8x8 digits with the defaults: 8x8x32 -> 4x4x64 -> 2x2x128 -> 64 -> 10.

  __call__(x): x (B, H, W, C) in [-1, 1] -> (logits (B, num_classes),
  features (B, feature_dim)).
  """

  num_classes: int
  channels: Sequence[int] = (32, 64, 128)
  feature_dim: int = 64

  @nn.compact
  def __call__(self, x):
    h = x
    for i, c in enumerate(self.channels):
      h = nn.relu(nn.Conv(c, (3, 3), strides=(1, 1) if i == 0 else (2, 2))(h))
    features = nn.relu(nn.Dense(self.feature_dim)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes)(features), features
