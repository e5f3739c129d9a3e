"""The one train step (gen_jax.train.step): its non-finite guard, and that train(), the
evaluation classifier, mle_toy and the benchmark all run that step and no other."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ddpm_digits, ddpm_toy2d, mle_toy
from gen_jax import data, train
from gen_jax.train import classifier, sharding
from gen_jax.train import step as step_lib
from tests.support import runs

pytestmark = pytest.mark.usefixtures("fast_compile")
REPO = runs.REPO


def toy_config(num_steps=2):
  config = ddpm_toy2d.get_config()
  config.model.width, config.model.num_blocks = 16, 1
  config.diffusion.num_timesteps = 20
  config.data.batch_size = 8
  config.train.update(num_steps=num_steps, log_every=1, checkpoint_every=2, sample_every=2)
  config.sample.update(sampler="ddim", num_steps=2, num_samples=4)
  return config


@pytest.fixture
def steps_made(monkeypatch):
  """Records every step make_train_step returns and every function jit_train_step jits."""
  made, jitted = [], []
  real_make, real_jit = step_lib.make_train_step, step_lib.jit_train_step

  def make(*args, **kwargs):
    made.append(real_make(*args, **kwargs))
    return made[-1]

  def jit(fn, mesh, *args, **kwargs):  # *args: the state's shardings (FSDP)
    jitted.append(fn)
    return real_jit(fn, mesh, *args, **kwargs)

  monkeypatch.setattr(step_lib, "make_train_step", make)
  monkeypatch.setattr(step_lib, "jit_train_step", jit)
  monkeypatch.setattr(train, "jit_train_step", jit)  # the re-exported name
  return made, jitted


@pytest.mark.slow
def test_train_runs_the_public_guarded_step(tmp_path, steps_made):
  made, jitted = steps_made
  state = train.train(toy_config(), str(tmp_path / "wd"), ddpm_toy2d.build)
  assert int(state.step) == 2
  assert len(made) == 1 and jitted == made  # the step train() jits is make_train_step's


@pytest.mark.slow
def test_the_evaluation_classifier_trains_through_the_same_step(steps_made):
  made, jitted = steps_made
  dataset = data.load_dataset(ddpm_digits.get_config().data, "train")
  params = classifier.train_classifier(
    classifier.make_classifier(10), dataset, 2, 0, sharding.make_mesh(), batch_size=8
  )
  assert len(made) == 1 and jitted == made
  assert jax.tree.leaves(params)


def test_mle_toy_fits_through_the_same_step(steps_made):
  made, _ = steps_made
  theta0 = mle_toy.gaussian_params([1.0], [0.0], [1.0])
  history = mle_toy.fit(
    lambda theta, key: jnp.sum(theta["means"] ** 2), theta0, jax.random.key(0), 3, 0.1
  )
  assert len(made) == 1 and history["means"].shape == (4, 1)


@pytest.mark.slow
def test_the_benchmark_times_the_step_train_runs(steps_made, monkeypatch):
  made, jitted = steps_made
  monkeypatch.setenv("GEN_JAX_CPU_FLAGS", "0")  # importing it must not touch XLA_FLAGS
  spec = importlib.util.spec_from_file_location("bench", os.path.join(REPO, "benchmarks", "run.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  run, _, flops, _ = bench.ours_train(ddpm_toy2d, (2,), 8, "float32")
  run()
  assert len(made) == 1 and jitted == made and flops > 0


@pytest.fixture(scope="module")
def toy_model():
  return ddpm_toy2d.build(toy_config(), (2,))


@pytest.mark.parametrize("skip_nonfinite", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_guard_flags_a_nonfinite_step(toy_model, skip_nonfinite):
  config = toy_config()
  config.train.skip_nonfinite = skip_nonfinite
  tx, train_step = step_lib.train_step_for(config, toy_model)
  train_step = jax.jit(train_step)
  state = step_lib.init_state(toy_model, tx, jax.random.key(0))
  good = {"x": jnp.zeros((8, 2))}
  bad = {"x": jnp.full((8, 2), jnp.nan)}
  state, metrics = train_step(state, good, jax.random.key(1))
  assert not bool(metrics[step_lib.HALT]) and np.isfinite(float(metrics["loss"]))
  if not skip_nonfinite:  # the first NaN halts
    _, metrics = train_step(state, bad, jax.random.key(1))
    assert bool(metrics[step_lib.HALT])
    return
  # skipped, counted, and only MAX_CONSECUTIVE_NONFINITE in a row halt
  for i in range(step_lib.MAX_CONSECUTIVE_NONFINITE):
    assert not bool(metrics[step_lib.HALT])
    state, metrics = train_step(state, bad, jax.random.key(1))
    assert int(metrics["skipped_nonfinite_steps"]) == i + 1
  assert bool(metrics[step_lib.HALT])
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(state.params)))


@pytest.mark.slow
def test_skip_grad_norm_skips_large_gradients_and_counts_them():
  """optim.skip_grad_norm: an update whose gradient norm reaches the threshold leaves the parameters and Adam's
  moments as they were and is counted; a smaller one is the plain optimizer's update."""
  import ml_collections

  from gen_jax import configs, train

  optim = configs.base_config().optim
  optim.skip_grad_norm = 1.0
  plain = ml_collections.ConfigDict(optim.to_dict())
  plain.skip_grad_norm = 0.0
  params = {"w": jnp.array([1.0, -2.0])}
  tx, tx_plain = train.make_optimizer(optim, 100), train.make_optimizer(plain, 100)
  state, state_plain = tx.init(params), tx_plain.init(params)
  small, large = {"w": jnp.array([0.3, 0.4])}, {"w": jnp.array([6.0, 8.0])}
  updates, state = tx.update(small, state, params)
  updates_plain, state_plain = tx_plain.update(small, state_plain, params)
  np.testing.assert_array_equal(updates["w"], updates_plain["w"])
  before = jax.tree.leaves(state.inner_state.inner_state)
  updates, state = tx.update(large, state, params)
  assert np.all(np.asarray(updates["w"]) == 0)
  for a, b in zip(before, jax.tree.leaves(state.inner_state.inner_state)):
    np.testing.assert_array_equal(a, b)
  assert int(state.inner_state.num_skipped) == 1
