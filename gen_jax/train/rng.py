"""The named random streams of a run: every key the training system draws comes from here.

  stream(seed, name, *indices) = fold_in(...fold_in(fold_in(key(seed), id(name)), i0)..., ik)

with id(name) the CRC-32 of the name (31 bits), so a stream's keys depend on
its name alone, never on which other streams exist or their order. Each key
is a pure function of (seed, name, indices), which is what makes a resumed
run draw what an uninterrupted one would.

The data's batches are the other source of randomness: a pure function of
(seed, step) in gen_jax.data.
"""

import zlib

import jax
import numpy as np

# name -> what it draws, and the indices folded in after the name.
STREAMS = {
  "init": "the initial parameters",
  "train": "training steps; the step folds in its step number (train_step)",
  "sample_grid": "the sample grid drawn while training; then the step",
  "sample": "sample(): then the checkpoint step, then the chunk",
  "eval_likelihood": "evaluate()'s likelihood; then the test batch",
  "eval_samples": "evaluate()'s unconditional samples; then the chunk",
  "eval_conditional_samples": "evaluate()'s class-conditional samples; then the chunk",
  "eval_classifier": "the evaluation classifier: its initial parameters; its steps fold in the step",
  "reference_points": "(numpy) the data points drawn under the samples of 2-D toy data",
}


def _stream_id(name: str) -> int:
  if name not in STREAMS:
    raise ValueError(f"unknown random stream {name!r}; the streams are {', '.join(STREAMS)}")
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def stream(seed: int, name: str, *indices: int) -> jax.Array:
  """The key of stream `name` of run `seed`, with `indices` (step, chunk, ...) folded in."""
  key = jax.random.fold_in(jax.random.key(seed), _stream_id(name))
  for index in indices:
    key = jax.random.fold_in(key, index)
  return key


def numpy_stream(seed: int, name: str) -> np.random.Generator:
  """A numpy Generator for host-side draws of stream `name` (e.g. reference points)."""
  return np.random.default_rng([seed, _stream_id(name)])
