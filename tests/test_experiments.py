"""Every experiment in experiments/ builds, trains two steps and evaluates (tiny sizes); ddpm_cifar has the paper's size.

TFDS data comes from tfds.testing.mock_data, so nothing is downloaded.
"""

import functools
import importlib
import json
import math
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gen_jax import configs, data, train
from tests.support import runs

pytestmark = pytest.mark.usefixtures("fast_compile")


EXPERIMENTS = runs.EXPERIMENTS
# An experiment either plugs a model into the shared trainer (build) or runs itself (run(config, workdir), tested
# in its own file, e.g. tests/test_mle_toy.py).
RUNS_ITSELF = [
  n for n in EXPERIMENTS if hasattr(importlib.import_module(f"experiments.{n}"), "run")
]
TRAINED = [n for n in EXPERIMENTS if n not in RUNS_ITSELF]


def mock_tfds():
  return tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE)


tiny = runs.tiny


def test_experiments_are_discovered():
  assert {
    "ddpm_cifar",
    "ddpm_digits",
    "ddpm_mnist",
    "ddpm_toy2d",
    "edm_cifar",
    "edm_digits",
    "fm_cifar",
    "fm_digits",
    "fm_toy2d",
    "hvae_cifar",
    "hvae_digits",
    "vae_cifar",
    "vae_digits",
    "vae_mnist",
  } <= set(TRAINED)
  assert "mle_toy" in RUNS_ITSELF


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_has_build_or_run(name):
  module = importlib.import_module(f"experiments.{name}")
  assert callable(getattr(module, "get_config", None)), name
  assert hasattr(module, "build") != hasattr(module, "run"), (
    f"{name} must define exactly one of build() and run()"
  )


# Each experiment's get_config() as it was before the U-Net block became configs.unet_config and
# sample.eta became sample.options (commit dff5929), as json.dumps(config.to_dict()) wrote it.
FROZEN_CONFIGS = os.path.join(os.path.dirname(__file__), "support", "experiment_configs.json")


with open(FROZEN_CONFIGS) as f:
  FROZEN = sorted(json.load(f))


@pytest.mark.parametrize("name", FROZEN)
def test_config_values_are_those_before_the_shared_helpers(name):
  """configs.unet_config and config.sample.options changed where the values come from, not
  the values: every field is the frozen copy's, sample.eta (0.0) now sample.options.eta (None,
  which is DDIM's 0.0), and config.diffusion's continuous-time fields (added since) at the
  defaults that keep DDPM's discrete process."""
  import ml_collections

  from gen_jax import configs
  from gen_jax.models import process_model

  with open(FROZEN_CONFIGS) as f:
    before = json.load(f)[name]
  now = json.loads(importlib.import_module(f"experiments.{name}").get_config().to_json())
  if "sample" in before:
    assert before["sample"].pop("eta") == 0.0
    assert now["sample"].pop("options") == configs.sampler_options().to_dict()
  if "diffusion" in before:
    added = json.loads(ml_collections.ConfigDict(process_model.process_fields()).to_json())
    for field, default in added.items():
      if field not in before["diffusion"]:
        assert now["diffusion"].pop(field) == default, field
  assert now == before


# Trained, sampled and evaluated through run.py elsewhere (tests/test_run.py, test_compare.py,
# test_likelihood_table.py, diffusion/test_vdm_run.py): here only their shipped configs are checked,
# which keeps the suite inside its time budget.
RUN_END_TO_END_ELSEWHERE = {"ddpm_digits", "ddpm_toy2d", "vae_digits", "hvae_digits", "vdm_digits"}
# fm_toy2d runs through run.py in tests/models/test_process_model.py; fm_cifar and edm_cifar are
# fm_digits' and edm_digits' objectives on ddpm_cifar's U-Net, which tiny() would shrink to the
# same network: their configs are checked, and their size below.
RUN_END_TO_END_ELSEWHERE |= {"fm_toy2d", "fm_cifar", "edm_cifar"}


@pytest.mark.parametrize("name", TRAINED)
@pytest.mark.slow
def test_experiment_builds_trains_two_steps_and_evaluates(name):
  module = importlib.import_module(f"experiments.{name}")
  assert (module.__doc__ or "").strip(), (
    f"{name} needs a docstring: its first line is the --helpfull entry"
  )
  config = module.get_config()
  configs.validate(config)  # the full-size config is valid as shipped
  if name in RUN_END_TO_END_ELSEWHERE:
    return
  with mock_tfds():
    dataset = data.load_dataset(config.data, "train")
    config = tiny(config, dataset.example_shape)
    batch = {"x": dataset.get_batch(0, config.seed, 4)["x"]}
  model = module.build(config, tuple(dataset.example_shape))

  tx = train.make_optimizer(config.optim, config.train.num_steps)
  state = jax.jit(functools.partial(train.init_state, model, tx))(jax.random.key(0))
  step = jax.jit(train.make_train_step(model, tx, config.train.ema_decay, config.train.ema_warmup))
  params0 = jax.device_get(state.params)
  key = jax.random.key(1)
  losses = []
  for _ in range(2):
    state, metrics = step(state, batch, key)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 2
  assert all(math.isfinite(l) for l in losses), losses
  assert math.isfinite(float(metrics["grad_norm"]))
  changed = jax.tree.leaves(
    jax.tree.map(lambda a, b: not np.array_equal(a, b), params0, jax.device_get(state.params))
  )
  assert any(changed), "two training steps left every parameter unchanged"

  out = jax.jit(model.evaluate)(state.ema_params, batch, jax.random.key(2))
  assert out, "evaluate returned no metrics"
  for k, v in out.items():
    assert v.shape == (4,), (k, v.shape)
    assert np.all(np.isfinite(np.asarray(v))), (k, v)
  if len(dataset.example_shape) == 3:
    assert "bits_per_dim" in out or "nll_iwae" in out


def test_ddpm_cifar_has_the_papers_35_7m_parameters():
  from experiments import ddpm_cifar

  config = ddpm_cifar.get_config()
  model = ddpm_cifar.build(config, (32, 32, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0))  # no allocation
  assert sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)) == 35_746_307


@pytest.mark.parametrize("name", ["fm_cifar", "edm_cifar"])
def test_continuous_cifar_experiments_have_ddpm_cifars_network(name):
  module = importlib.import_module(f"experiments.{name}")
  model = module.build(module.get_config(), (32, 32, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0))  # no allocation
  assert sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)) == 35_746_307
  assert model.process.name == {"fm_cifar": "rectified_flow", "edm_cifar": "ve"}[name]


@pytest.mark.slow
def test_tfds_experiment_trains_through_train_loop_with_mock_data(tmp_path):
  from experiments import vae_mnist

  config = vae_mnist.get_config()
  workdir = str(tmp_path / "wd")
  with mock_tfds():
    tiny(config, (28, 28, 1))
    dataset = data.load_dataset(config.data, "train")
    assert dataset.example_shape == (28, 28, 1) and dataset.num_examples == 16
    state = train.train(config, workdir, vae_mnist.build)
  assert int(state.step) == 2
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [1, 2]
  assert all(math.isfinite(r["loss"]) for r in records)
  assert os.path.isfile(os.path.join(workdir, "samples", "step_0000002.png"))
