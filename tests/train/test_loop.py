"""Tests of gen_jax.train and gen_jax.train.checkpoint: exact resume, checkpoints, schedule, EMA, logs, one compile."""

import functools
import glob
import itertools
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import ddpm_toy2d
from gen_jax import configs, train
from gen_jax.train import checkpoint, sharding
from tests.support import runs

pytestmark = pytest.mark.usefixtures("fast_compile")


def toy_config(num_steps=4):
  return runs.config(
    "ddpm_toy2d",
    runs.TOY2D,
    {"train.num_steps": num_steps, "train.checkpoint_every": 2, "train.sample_every": 2},
    {"train.keep_checkpoints": 1, "sample.sampler": "ddim", "sample.num_steps": 2},
    {"optim.warmup_steps": 1},  # the experiment's cosine schedule, with a warm-up that matters here
  )


class CountingModel:
  """Delegates to a model and counts how often its loss is traced."""

  def __init__(self, model):
    self._model = model
    self.loss_traces = 0

  def __getattr__(self, name):
    return getattr(self._model, name)

  def loss(self, *args, **kwargs):
    self.loss_traces += 1
    return self._model.loss(*args, **kwargs)


def counting_build(built):
  def build(config, example_shape):
    model = CountingModel(ddpm_toy2d.build(config, example_shape))
    built.append(model)
    return model

  return build


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  """4 steps in one go."""
  workdir = str(tmp_path_factory.mktemp("run_a"))
  built = []
  state = train.train(toy_config(), workdir, counting_build(built))
  return dict(workdir=workdir, state=state, model=built[0])


class Interrupted(Exception):
  pass


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(run_a, tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "b")
  real_save = checkpoint.save

  def save_then_crash(mngr, step, state):
    real_save(mngr, step, state)
    if step == 2:
      raise Interrupted()

  monkeypatch.setattr(checkpoint, "save", save_then_crash)
  with pytest.raises(Interrupted):
    train.train(toy_config(), workdir, ddpm_toy2d.build)
  monkeypatch.setattr(checkpoint, "save", real_save)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]

  capsys.readouterr()
  state_b = train.train(toy_config(), workdir, ddpm_toy2d.build)
  assert "Resuming" in capsys.readouterr().out
  assert int(state_b.step) == 4
  # Bitwise: parameters, EMA, optimizer state and step, returned and as checkpointed.
  assert_trees_equal(run_a["state"], state_b)
  abstract = checkpoint.abstract_like(state_b)
  restored_a = checkpoint.restore(checkpoint.manager(run_a["workdir"], create=False), abstract)
  restored_b = checkpoint.restore(checkpoint.manager(workdir, create=False), abstract)
  assert_trees_equal(restored_a.params, restored_b.params)
  assert_trees_equal(restored_a.ema_params, restored_b.ema_params)
  assert_trees_equal(restored_a, run_a["state"])
  # Same batches and keys after the resume: the logged losses agree exactly, step by step.
  losses_a = [
    (r["step"], r["loss"]) for r in read_jsonl(os.path.join(run_a["workdir"], "metrics.jsonl"))
  ]
  losses_b = [(r["step"], r["loss"]) for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  assert losses_a == losses_b and [s for s, _ in losses_a] == [1, 2, 3, 4]


@pytest.mark.slow
def test_rerun_with_more_steps_continues_exactly(tmp_path, capsys):
  """Train to 2 steps, then again to 4 in the same workdir == 4 steps in one go. (A constant learning rate:
  a cosine schedule depends on num_steps, so there raising num_steps changes the schedule itself.)"""

  def config(num_steps):
    c = toy_config(num_steps)
    c.optim.schedule, c.optim.warmup_steps = "constant", 0
    return c

  whole = train.train(config(4), str(tmp_path / "whole"), ddpm_toy2d.build)
  first = train.train(config(2), str(tmp_path / "parts"), ddpm_toy2d.build)
  assert int(first.step) == 2
  capsys.readouterr()
  parts = train.train(config(4), str(tmp_path / "parts"), ddpm_toy2d.build)
  assert "Resuming" in capsys.readouterr().out
  assert_trees_equal(whole.params, parts.params)
  assert_trees_equal(whole.ema_params, parts.ema_params)
  assert_trees_equal(whole, parts)


@pytest.mark.slow
def test_spent_time_budget_stops_like_a_last_step_and_the_run_resumes_exactly(
  run_a, tmp_path, capsys
):
  """A budget spent at once: step 1 finishes, is logged, checkpointed and sampled, and train()
  returns normally; resuming without the budget then gives the uninterrupted run, bit for bit."""
  workdir = str(tmp_path / "wd")
  config = toy_config()
  config.train.max_seconds = 1e-9
  state = train.train(config, workdir, ddpm_toy2d.build)
  assert int(state.step) == 1
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
  assert [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))] == [1]
  assert os.listdir(os.path.join(workdir, "samples")) == ["step_0000001.png"]
  out = capsys.readouterr().out
  assert "Stopped on the time budget (config.train.max_seconds=1e-09) at step 1 of 4" in out
  assert "Done" not in out

  config.train.max_seconds = 0.0  # a resumed run may change its budget
  resumed = train.train(config, workdir, ddpm_toy2d.build)
  assert int(resumed.step) == 4
  assert_trees_equal(run_a["state"], resumed)
  assert [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))] == [1, 2, 3, 4]


@pytest.mark.slow
def test_time_budget_stops_a_long_run_with_a_consistent_checkpoint_log_and_grid(tmp_path, capsys):
  workdir = str(tmp_path / "wd")
  config = toy_config(num_steps=10**7)
  config.train.update(max_seconds=1.5, log_every=10**7, checkpoint_every=10**7, sample_every=10**7)
  start = time.time()
  state = train.train(config, workdir, ddpm_toy2d.build)
  seconds = time.time() - start
  step = int(state.step)
  assert 1 < step < 10**7 and seconds < 60
  # The checkpoint, the one log record (the average of all steps) and the grid are all of that step.
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
  restored = checkpoint.restore(
    checkpoint.manager(workdir, create=False), checkpoint.abstract_like(state)
  )
  assert_trees_equal(restored, state)
  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records] == [step] and np.isfinite(records[0]["loss"])
  assert os.listdir(os.path.join(workdir, "samples")) == [f"step_{step:07d}.png"]
  match = re.search(
    r"at step (\d+) of 10000000 after ([\d.]+) s of training", capsys.readouterr().out
  )
  assert match and int(match.group(1)) == step and 1.5 <= float(match.group(2)) <= seconds


@pytest.mark.slow
def test_train_step_compiles_once(run_a):
  assert run_a["model"].loss_traces == 1  # 4 steps, one trace of the loss: one compiled train_step


@pytest.mark.slow
def test_logs_config_and_pictures_are_written(run_a):
  workdir = run_a["workdir"]
  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  for r in records:
    assert {"step", "loss", "grad_norm", "learning_rate", "steps_per_sec"} <= set(r)
    assert np.isfinite(r["loss"])
  assert records[0]["learning_rate"] == 0.0  # warm-up starts at 0
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["train"]["num_steps"] == 4 and saved["model"]["width"] == 16
  assert saved["data"]["source"] == "toy2d"
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  for step in (2, 4):
    assert os.path.isfile(os.path.join(workdir, "samples", f"step_{step:07d}.png"))
  # keep_checkpoints=1: the step-2 checkpoint was pruned.
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def small_state(k):
  params = {
    "w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * k,
    "b": jnp.full((3,), -k, jnp.float32),
  }
  opt_state = optax.adam(1e-3).init(params)
  return train.TrainState(
    step=jnp.asarray(k, jnp.int32),
    params=params,
    opt_state=opt_state,
    ema_params=jax.tree.map(lambda x: x + 0.5, params),
  )


def test_checkpoint_round_trip_and_keep(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), max_to_keep=2)
  with pytest.raises(checkpoint.NoCheckpointError):
    checkpoint.restore(mngr, checkpoint.abstract_like(small_state(1)))
  for k in (1, 2, 3):
    checkpoint.save(mngr, k, small_state(k))
  assert list(mngr.all_steps()) == [2, 3]
  assert sorted(os.listdir(checkpoint.checkpoint_dir(str(tmp_path)))) == ["2", "3"]
  mngr.close()

  again = checkpoint.manager(str(tmp_path), max_to_keep=2, create=False)
  assert checkpoint.latest_step(again) == 3
  abstract = checkpoint.abstract_like(small_state(0))
  restored = checkpoint.restore(again, abstract)
  assert isinstance(restored, train.TrainState)
  assert_trees_equal(restored, small_state(3))
  assert_trees_equal(checkpoint.restore(again, abstract, step=2), small_state(2))


# ----------------------------------------------------------------------------------------------------------------
# Learning rate, EMA, config checks


def optim(**fields):
  o = configs.base_config().optim
  o.update(fields)
  return o


@pytest.mark.slow
def test_learning_rate_schedule():
  lr = 1e-3
  cosine = train.learning_rate_schedule(
    optim(learning_rate=lr, warmup_steps=10, schedule="cosine"), 100
  )
  assert float(cosine(0)) == 0.0
  np.testing.assert_allclose(float(cosine(5)), lr / 2, rtol=1e-6)
  np.testing.assert_allclose(float(cosine(10)), lr, rtol=1e-6)
  np.testing.assert_allclose(float(cosine(55)), lr / 2, rtol=1e-5)  # half way down the cosine
  assert abs(float(cosine(100))) < 1e-12
  values = [float(cosine(s)) for s in range(10, 101)]
  assert all(a >= b for a, b in itertools.pairwise(values))

  constant = train.learning_rate_schedule(
    optim(learning_rate=lr, warmup_steps=10, schedule="constant"), 100
  )
  assert float(constant(0)) == 0.0
  np.testing.assert_allclose(float(constant(10)), lr, rtol=1e-6)
  np.testing.assert_allclose(float(constant(100)), lr, rtol=1e-6)

  no_warmup = train.learning_rate_schedule(
    optim(learning_rate=lr, warmup_steps=0, schedule="constant"), 100
  )
  np.testing.assert_allclose(float(no_warmup(0)), lr, rtol=1e-6)
  cosine_only = train.learning_rate_schedule(
    optim(learning_rate=lr, warmup_steps=0, schedule="cosine"), 100
  )
  np.testing.assert_allclose(float(cosine_only(0)), lr, rtol=1e-6)
  assert abs(float(cosine_only(100))) < 1e-12


@pytest.fixture(scope="module")
def toy_model_and_batch():
  config = toy_config()
  model = ddpm_toy2d.build(config, (2,))
  batch = {"x": jax.random.normal(jax.random.key(5), (8, 2))}
  return model, batch


@pytest.mark.parametrize("ema_warmup", [True, False])
@pytest.mark.slow
def test_ema_follows_the_documented_formula(toy_model_and_batch, ema_warmup):
  model, batch = toy_model_and_batch
  o = optim(learning_rate=1e-2, warmup_steps=0, schedule="constant")
  tx = train.make_optimizer(o, 10)
  state0 = jax.jit(functools.partial(train.init_state, model, tx))(jax.random.key(0))
  step = jax.jit(
    train.make_train_step(model, tx, 0.999, ema_warmup, train.learning_rate_schedule(o, 10))
  )
  state1, metrics = step(state0, batch, jax.random.key(1))
  state2, _ = step(state1, batch, jax.random.key(1))
  np.testing.assert_allclose(float(metrics["learning_rate"]), 1e-2, rtol=1e-6)
  assert int(state2.step) == 2

  def expected(ema, params, decay):
    d = np.float32(decay)
    return jax.tree.map(
      lambda e, p: d * np.asarray(e) + (np.float32(1) - d) * np.asarray(p), ema, params
    )

  # step 0: decay = min(ema_decay, (1 + 0) / (10 + 0)) = 0.1 with the warm-up, else ema_decay
  d0, d1 = (0.1, 2 / 11) if ema_warmup else (0.999, 0.999)
  p0, p1, p2 = (jax.device_get(s.params) for s in (state0, state1, state2))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))
  ema1 = expected(p0, p1, d0)  # EMA starts as a copy of the initial parameters
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    jax.device_get(state1.ema_params),
    ema1,
  )
  ema2 = expected(ema1, p2, d1)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    jax.device_get(state2.ema_params),
    ema2,
  )


def test_config_errors_name_the_flag_and_write_nothing(tmp_path):
  cases = [
    ("train.num_steps", -1),
    ("train.num_steps", 0),
    ("data.batch_size", 0),
    ("train.checkpoint_every", -5),
  ]
  for path, value in cases:
    config = toy_config()
    section, key = path.split(".")
    config[section][key] = value
    workdir = str(tmp_path / "never")
    with pytest.raises(train.ConfigError, match=f"config.{path}"):
      train.train(config, workdir, ddpm_toy2d.build)
    assert not os.path.exists(workdir)
  for path, value in [
    ("train.ema_decay", 1.0),
    ("optim.learning_rate", -1.0),
    ("optim.warmup_steps", -1),
    ("optim.name", "sgd"),
    ("optim.schedule", "linear"),
    ("train.max_seconds", -1.0),
    ("train.max_seconds", float("inf")),
  ]:
    config = toy_config()
    section, key = path.split(".")
    config[section][key] = value
    with pytest.raises(train.ConfigError, match=f"config.{path}"):
      configs.validate(config)
  with pytest.raises(train.ConfigError, match="num_samples"):
    train.sample(toy_config(), str(tmp_path / "never"), ddpm_toy2d.build, num_samples=0)


def test_batch_size_must_divide_over_devices():
  class FakeMesh:  # check_batch_size only needs mesh.devices.size
    devices = np.empty((2,), dtype=object)

  with pytest.raises(ValueError, match=r"config.data.batch_size=3 .*number of devices \(2\)"):
    sharding.check_batch_size(3, FakeMesh())
  with pytest.raises(ValueError, match="config.eval.batch_size=5"):
    sharding.check_batch_size(5, FakeMesh(), "config.eval.batch_size")
  sharding.check_batch_size(4, FakeMesh())
  sharding.check_batch_size(
    3, sharding.make_mesh()
  )  # one real CPU device: anything positive divides
