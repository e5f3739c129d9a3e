"""Class-conditional diffusion and classifier-free guidance through the model, the trainer and run.py.

The guidance formula itself is tested against numpy on a labelled Gaussian mixture in tests/diffusion/test_guidance.py;
here: the model combines its own conditional and null-class predictions by that formula, label dropout, the
training loop and `--mode=sample --class_label/--guidance_scale`.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ddpm_digits
from gen_jax import train
from tests.support import runs

REPO = runs.REPO


# Each test but the label-dropout one (no network run) builds a U-Net, and most train or run run.py: slow.
pytestmark = pytest.mark.usefixtures("fast_compile")


def tiny_config(num_classes=10, num_steps=2):
  config = ddpm_digits.get_config()
  m = config.model
  m.ch, m.ch_mult, m.num_res_blocks, m.num_groups, m.attn_resolutions = 8, (1,), 1, 4, (8,)
  m.num_classes = num_classes
  config.diffusion.num_timesteps = 20
  config.data.batch_size = 4
  config.train.num_steps = num_steps
  config.train.log_every = config.train.checkpoint_every = config.train.sample_every = num_steps
  config.sample.num_samples = 20
  config.sample.num_steps = 2
  return config


def perturbed_params(model):
  params = model.init(jax.random.key(0))
  return jax.tree.map(lambda p: p + 0.05, params)  # wake the zero-initialised output layer


@pytest.mark.slow
def test_guided_eps_is_the_guidance_formula_of_the_models_own_predictions():
  model = ddpm_digits.build(tiny_config(), (8, 8, 1))
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
  t = jnp.array([0, 7, 19])
  labels = jnp.array([2, 5, 9])
  w = 2.5

  @jax.jit  # one compilation for the init and the five forward passes (op by op: 18 s on a busy machine)
  def outputs():
    params = perturbed_params(model)
    return (
      model.net.apply(params, x, t, labels),
      model.net.apply(params, x, t, jnp.full((3,), 10)),
      model.eps_fn(params, labels=labels, guidance_scale=w)(x, t),
      model.eps_fn(params, labels=labels)(x, t),
      model.eps_fn(params)(x, t),
    )

  cond, null, guided, conditional, unconditional = outputs()
  np.testing.assert_allclose(guided, (1 + w) * cond - w * null, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(conditional, cond, rtol=1e-6)
  np.testing.assert_allclose(unconditional, null, rtol=1e-6)


def test_label_dropout_replaces_labels_by_the_null_class():
  """The labels the loss hands the network: all kept without dropout, about half the null class at 0.5."""
  config = tiny_config()
  batch = {"x": jnp.zeros((64, 8, 8, 1)), "label": jnp.full((64,), 3, jnp.int32)}
  seen = []

  class Spy:
    """Records the labels the network is called with; returns zeros (the labels are the question, so no
    U-Net is run or initialised)."""

    def __getattr__(self, name):
      return getattr(model.net, name)

    def apply(self, params, x, t, labels, **kw):
      seen.append(labels)
      return jnp.zeros_like(x)

  labels_seen = []
  for drop_prob in (0.0, 0.5):
    config.model.cond_drop_prob = drop_prob
    model = ddpm_digits.build(config, (8, 8, 1))
    spy_model = model.__class__(**{**model.__dict__, "net": Spy()})
    # Under jit (one compilation; op by op took seconds): the labels the spy saw are an output.
    loss_and_labels = jax.jit(lambda key: (spy_model.loss(None, batch, key)[0], seen[-1]))
    labels_seen.append(np.asarray(loss_and_labels(jax.random.key(1))[1]))
  no_drop, half_drop = labels_seen
  assert np.all(no_drop == 3)
  assert set(np.unique(half_drop)) == {3, 10} and 16 < np.sum(half_drop == 10) < 48
  with pytest.raises(ValueError, match="labelled data"):
    spy_model.loss(None, {"x": batch["x"]}, jax.random.key(1))


@pytest.mark.slow
def test_conditional_training_and_sampling_end_to_end(tmp_path):
  config = tiny_config()
  workdir = str(tmp_path / "run")
  train.train(config, workdir, ddpm_digits.build)
  assert os.path.exists(os.path.join(workdir, "samples", "step_0000002.png"))

  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  overrides = [
    "--config.model.ch=8",
    "--config.model.ch_mult=(1,)",
    "--config.model.num_res_blocks=1",
    "--config.model.num_groups=4",
    "--config.model.attn_resolutions=(8,)",
    "--config.model.num_classes=10",
    "--config.diffusion.num_timesteps=20",
  ]
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "run.py"),
      "--experiment=ddpm_digits",
      f"--workdir={workdir}",
      "--mode=sample",
      "--num_samples=20",
      "--guidance_scale=2",
      *overrides,
    ],
    cwd=str(tmp_path),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  with np.load(os.path.join(workdir, "samples.npz")) as f:
    assert f["images"].shape == (20, 8, 8, 1)
    np.testing.assert_array_equal(f["labels"], np.repeat(np.arange(10), 2))  # one row per class

  train.sample(config, workdir, ddpm_digits.build, 6, class_label=7, guidance_scale=1.0)
  with np.load(os.path.join(workdir, "samples.npz")) as f:
    np.testing.assert_array_equal(f["labels"], np.full(6, 7))
  with pytest.raises(train.ConfigError, match="class_label"):
    train.sample(config, workdir, ddpm_digits.build, 6, class_label=10)

  config.eval.num_samples, config.eval.classifier_steps = 20, 20
  config.eval.batch_size, config.eval.num_examples = 40, 40
  config.sample.guidance_scale = 1.0
  results = train.evaluate(config, workdir, ddpm_digits.build)
  conditional = results["conditional"]
  assert 0.0 <= conditional["accuracy"] <= 1.0 and len(conditional["accuracy_per_class"]) == 10
  assert conditional["samples"]["guidance_scale"] == 1.0


@pytest.mark.slow
def test_guidance_needs_a_conditional_model_and_labelled_data(tmp_path):
  unconditional = tiny_config(num_classes=0)
  workdir = str(tmp_path / "uncond")
  train.train(unconditional, workdir, ddpm_digits.build)
  with pytest.raises(train.ConfigError, match="num_classes"):
    train.sample(unconditional, workdir, ddpm_digits.build, 4, guidance_scale=2.0)
  wrong = tiny_config(num_classes=3)
  with pytest.raises(train.ConfigError, match="num_classes=3"):
    train.train(wrong, str(tmp_path / "wrong"), ddpm_digits.build)
