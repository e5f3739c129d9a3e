"""The named random streams (gen_jax.train.rng): distinct, deterministic, order-free."""

import itertools

import jax
import numpy as np
import pytest

from gen_jax.train import rng


def key_data(key):
  return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_streams_are_distinct_from_each_other_and_across_indices_and_seeds():
  keys = {}
  for seed, name in itertools.product((0, 1), rng.STREAMS):
    for indices in ((), (0,), (1,), (0, 0), (0, 1), (10**9,)):
      keys[(seed, name, indices)] = key_data(rng.stream(seed, name, *indices))
  assert len(set(keys.values())) == len(keys)
  # The draws differ too, not only the keys.
  draws = {float(jax.random.uniform(rng.stream(0, name))) for name in rng.STREAMS}
  assert len(draws) == len(rng.STREAMS)


def test_a_stream_is_a_pure_function_of_seed_name_and_indices():
  assert key_data(rng.stream(3, "train", 7)) == key_data(rng.stream(3, "train", 7))
  # fold_in by hand: the stream id comes from the name alone, not from STREAMS' order.
  by_hand = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), rng._stream_id("train")), 7)
  assert key_data(rng.stream(3, "train", 7)) == key_data(by_hand)
  first = rng.numpy_stream(5, "reference_points").standard_normal(3)
  np.testing.assert_array_equal(first, rng.numpy_stream(5, "reference_points").standard_normal(3))


def test_unknown_stream_is_refused():
  with pytest.raises(ValueError, match="unknown random stream 'trian'"):
    rng.stream(0, "trian")
