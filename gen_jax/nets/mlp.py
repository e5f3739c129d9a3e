"""A residual MLP denoiser for vectors (2-D toy data, flattened images): eps = MLP(x_t, t)."""

import math

import flax.linen as nn

from gen_jax.nets.unet import timestep_embedding, zeros_init


class MLPDenoiser(nn.Module):
  """Residual MLP epsilon-model for vectors: eps = MLP(x_t, t).

  Each block: LayerNorm, Dense(width), swish, plus a projection of the time
  embedding, Dense back; the input is flattened and the output reshaped, so
  it serves 2-D toy data and flattened images alike.
  """

  width: int = 256
  num_blocks: int = 3
  time_embedding_dim: int = 64

  @nn.compact
  def __call__(self, x, t, train: bool = False):
    del train
    shape = x.shape
    h = nn.Dense(self.width)(x.reshape(shape[0], -1))
    temb = timestep_embedding(t, self.time_embedding_dim)
    temb = nn.swish(nn.Dense(self.width)(temb))
    for _ in range(self.num_blocks):
      r = nn.LayerNorm()(h)
      r = nn.swish(nn.Dense(self.width)(r) + nn.Dense(self.width)(temb))
      h = h + nn.Dense(self.width)(r)
    out = nn.Dense(math.prod(shape[1:]), kernel_init=zeros_init)(nn.swish(nn.LayerNorm()(h)))
    return out.reshape(shape)
