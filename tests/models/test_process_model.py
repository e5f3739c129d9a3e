"""ProcessDiffusionModel (gen_jax.models.process_model): continuous-time diffusion behind the model
interface. Its config check, the network's time input, training on toy2d, sampling, evaluation, and the
run.py round trip of fm_toy2d (train, resume, sample)."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gen_jax import configs, data, models, nets
from gen_jax.configs import ConfigError
from tests.support import runs

pytestmark = pytest.mark.usefixtures("fast_compile")


def _config(experiment, *overrides):
  return runs.config(experiment, *overrides)


# ----------------------------------------------------------------------------------------------------------------
# check_config: every refusal names its field and what is allowed, at validate time (start-up).

REFUSALS = [
  ("fm_digits", {"diffusion.process": "vp_square"}, "config.diffusion.process must be one of"),
  ("fm_digits", {"diffusion.prediction": "noise"}, "config.diffusion.prediction must be one of"),
  ("fm_digits", {"diffusion.weighting": "snr"}, "config.diffusion.weighting must be one of"),
  (
    "fm_digits",
    {"diffusion.time_distribution": "beta"},
    "config.diffusion.time_distribution must be one of",
  ),
  (
    "fm_digits",
    {"diffusion.preconditioning": "karras"},
    "config.diffusion.preconditioning must be",
  ),
  # EDM's preconditioning divides by alpha and takes ln(sigma): refused where either is 0.
  (
    "fm_digits",
    {"diffusion.preconditioning": "edm", "diffusion.prediction": "x0"},
    "config.diffusion.preconditioning must be 'none' with process 'rectified_flow' on [0, 1]",
  ),
  # ... and makes the network an x0-predictor.
  ("edm_digits", {"diffusion.prediction": "eps"}, "config.diffusion.prediction must be 'x0'"),
  # eps cannot give x0 where alpha = 0 (rectified flow's noise end): the first sampler step.
  (
    "fm_digits",
    {"diffusion.prediction": "eps", "diffusion.weighting": "eps_mse"},
    "alpha = 0 there",
  ),
  # A parameter of another process.
  ("fm_digits", {"diffusion.sigma_max": 80.0}, "config.diffusion.sigma_max must be unset"),
  # The constructor's own refusal, named by the fields.
  ("edm_digits", {"diffusion.sigma_min": 100.0}, "config.diffusion.sigma_min=100.0"),
  ("fm_digits", {"sample.sampler": "ddpm"}, "config.sample.sampler must be one of"),
  (
    "fm_digits",
    {"diffusion.zero_terminal_snr": True},
    "config.diffusion.zero_terminal_snr must be False",
  ),
  ("fm_digits", {"diffusion.sigma_data": 0.0}, "config.diffusion.sigma_data must be a number > 0"),
  ("fm_digits", {"diffusion.eval_time_samples": 0}, "config.diffusion.eval_time_samples must be"),
  ("fm_digits", {"pretrained": "some/folder"}, "needs a network trained on it"),
  # The continuous-time fields are refused on DDPM's discrete path rather than silently ignored.
  ("ddpm_digits", {"diffusion.weighting": "edm"}, "config.diffusion.weighting must be None"),
  (
    "ddpm_digits",
    {"diffusion.preconditioning": "edm"},
    "config.diffusion.preconditioning must be 'none'",
  ),
  ("ddpm_digits", {"diffusion.sigma_max": 80.0}, "config.diffusion.sigma_max must be unset"),
  ("ddpm_digits", {"diffusion.t_min": 0.0}, "config.diffusion.t_min must be unset"),  # 0 is set
]


@pytest.mark.parametrize("experiment, overrides, message", REFUSALS)
def test_check_config_refuses(experiment, overrides, message):
  config = _config(experiment, overrides)
  with pytest.raises(ConfigError, match="^config\\.") as raised:
    configs.validate(config)
  assert message in str(raised.value)


def test_loss_refusals_surface_as_config_errors():
  """A combination only the loss refuses (here: an unknown time-distribution parameter) fails in
  check_config, naming config.diffusion, not at the first training step."""
  config = _config("edm_digits")
  config.diffusion.time_params.no_such_parameter = 1.0
  with pytest.raises(ConfigError, match="config.diffusion: process='edm'"):
    configs.validate(config)


@pytest.mark.parametrize(
  "experiment", ["fm_toy2d", "fm_digits", "edm_digits", "fm_cifar", "edm_cifar"]
)
def test_shipped_configs_validate(experiment):
  configs.validate(_config(experiment))


# ----------------------------------------------------------------------------------------------------------------
# config.diffusion.process selects the family; "discrete" is today's DDPM.


def test_process_selects_the_family_and_discrete_keeps_ddpm():
  ddpm = models.make_unet_diffusion(_config("ddpm_digits", runs.UNET), (8, 8, 1))
  assert type(ddpm) is models.DiffusionModel
  flow = _config(
    "ddpm_digits",
    runs.UNET,
    {
      "diffusion.process": "rectified_flow",
      "diffusion.prediction": "velocity",
      "sample.sampler": "euler",
    },
  )
  configs.validate(flow)
  model = models.make_unet_diffusion(flow, (8, 8, 1))
  assert isinstance(model, models.ProcessDiffusionModel)
  assert model.process.name == "rectified_flow" and model.weighting == "velocity_mse"
  # ddpm_toy2d's builder hands over too.
  toy = _config(
    "ddpm_toy2d",
    runs.TOY2D,
    {"diffusion.process": "vp_cosine", "diffusion.prediction": "v", "sample.sampler": "euler"},
  )
  configs.validate(toy)
  from experiments import ddpm_toy2d

  model = ddpm_toy2d.build(toy, (2,))
  assert model.process.name == "vp_cosine" and model.weighting == "v_mse"


def test_process_parameters_reach_the_process():
  config = _config("edm_digits", {"diffusion.sigma_max": 40.0})
  model = models.make_unet_diffusion(config, (8, 8, 1))
  assert model.process.t_max == 40.0 and model.process.t_min == 0.002


def test_ddpm_runs_saved_before_the_process_fields_resume():
  """A DDPM workdir's config.json from before config.diffusion.process existed resumes: the new
  fields at their defaults train as that run did; a continuous process is a change."""
  from gen_jax import train

  config = _config("ddpm_digits")
  saved = json.loads(config.to_json_best_effort())
  for field in models.process_model.process_fields():
    del saved["diffusion"][field]
  assert train.config_changes(saved, config) == []
  config.diffusion.process = "rectified_flow"
  assert train.config_changes(saved, config) == ['diffusion.process: <absent> -> "rectified_flow"']


# ----------------------------------------------------------------------------------------------------------------
# The network's time input.


class _EchoTime(nn.Module):
  """Returns its time input at every output entry: what the network is shown."""

  @nn.compact
  def __call__(self, x, t, train=False):
    scale = self.param("scale", nn.initializers.ones, ())
    return scale * jnp.broadcast_to(t.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def test_network_time_is_1000_t_on_unit_processes():
  model = models.make_process_model(_config("fm_toy2d").diffusion, _EchoTime(), (2,))
  params = model.init(jax.random.key(0))
  t = jnp.array([0.0, 0.25, 1.0])
  out = model.model_fn(params)(jnp.zeros((3, 2)), t)
  np.testing.assert_allclose(out[:, 0], 1000.0 * t)


def test_network_time_under_edm_preconditioning_is_250_c_noise():
  model = models.make_process_model(_config("edm_digits").diffusion, _EchoTime(), (2,))
  params = model.init(jax.random.key(0))
  sigma = jnp.array([0.002, 0.5, 80.0])
  # D(0; sigma) = c_out F(0, c_noise) with F echoing its time: c_out * 250 * ln(sigma) / 4.
  out = model.model_fn(params)(jnp.zeros((3, 2)), sigma)
  c_out = sigma * 0.5 / jnp.sqrt(sigma**2 + 0.25)
  np.testing.assert_allclose(out[:, 0], c_out * 62.5 * jnp.log(sigma), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Training, sampling, evaluation.


def _train(model, params, batches, steps, lr=3e-3):
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch, key):
    (loss, _), grads = jax.value_and_grad(model.loss, has_aux=True)(params, batch, key)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, loss

  for i in range(steps):
    params, opt, loss = step(params, opt, batches(i), jax.random.key(100 + i))
    assert math.isfinite(float(loss)), (i, float(loss))
  return params


def _held_out_loss(model, x):
  """The loss on fixed data at 16 fixed keys, a jitted function of the parameters (one compilation
  for before and after): the same draws of (t, eps) before and after, so the comparison sees the
  model change, not the draws."""
  keys = jax.random.split(jax.random.key(7), 16)

  @jax.jit
  def held_out(params):
    return jnp.mean(jax.vmap(lambda key: model.loss(params, {"x": x}, key, train=False)[0])(keys))

  return lambda params: float(held_out(params))


@pytest.mark.parametrize(
  "overrides",
  [
    pytest.param({}, id="rectified_flow"),  # velocity
    # The fast tier keeps one process; these two add a compile each.
    pytest.param(
      {
        "diffusion.process": "vp_cosine",
        "diffusion.prediction": "eps",
        "diffusion.weighting": "eps_mse",
      },
      id="vp_cosine",
      marks=pytest.mark.slow,
    ),
    # EDM's preconditioning on a VP process: D(x; s) at s = sigma / alpha.
    pytest.param(
      {
        "diffusion.process": "vp_cosine",
        "diffusion.prediction": "x0",
        "diffusion.weighting": "edm",
        "diffusion.preconditioning": "edm",
        "diffusion.time_distribution": "log_normal",
      },
      id="vp_cosine_edm_preconditioned",
      marks=pytest.mark.slow,
    ),
  ],
)
@pytest.mark.slow
def test_loss_decreases_on_toy2d(overrides):
  config = _config("fm_toy2d", {"model.width": 32, "model.num_blocks": 1}, overrides)
  dataset = data.load_dataset(config.data, "train")
  net = nets.MLPDenoiser(width=32, num_blocks=1)
  model = models.make_process_model(config.diffusion, net, tuple(dataset.example_shape))
  held_out = jnp.asarray(data.load_dataset(config.data, "test").get_batch(0, 0, 512)["x"])
  params = model.init(jax.random.key(0))
  held_out_loss = _held_out_loss(model, held_out)
  before = held_out_loss(params)
  params = _train(model, params, lambda i: {"x": dataset.get_batch(i, 0, 256)["x"]}, 60)
  after = held_out_loss(params)
  assert after < 0.8 * before, (before, after)
  # Jitted, as the trainer draws: inside jit solvers cannot read alpha(t_max) to pick its grid.
  samples = jax.jit(lambda p, k: model.sample(p, k, 16, sampler="euler", num_steps=4))(
    params, jax.random.key(3)
  )
  assert samples.shape == (16, 2) and bool(jnp.all(jnp.isfinite(samples)))


@pytest.mark.slow  # a U-Net compile per process; the fast tier keeps toy2d
@pytest.mark.parametrize("experiment", ["fm_digits", "edm_digits"])
def test_digits_models_sample_and_evaluate(experiment):
  config = _config(experiment, runs.UNET)
  model = models.make_unet_diffusion(config, (8, 8, 1))
  params = model.init(jax.random.key(0))
  samples = jax.jit(lambda p, k: model.sample(p, k, 3, sampler=config.sample.sampler, num_steps=2))(
    params, jax.random.key(1)
  )
  assert samples.shape == (3, 8, 8, 1) and bool(jnp.all(jnp.isfinite(samples)))
  assert float(jnp.max(jnp.abs(samples))) <= 1.0  # clip: images
  model = models.make_process_model(
    _config(experiment, {"diffusion.eval_time_samples": 2}).diffusion,
    model.net,
    (8, 8, 1),
  )
  x = jnp.asarray(data.load_dataset(config.data, "test").get_batch(0, 0, 4)["x"])
  out = jax.jit(lambda p, x, k: model.evaluate(p, {"x": x}, k, ode_steps=2))(
    params, x, jax.random.key(2)
  )
  assert set(out) == {"denoising_loss", "bits_per_dim", "ode_bits_per_dim"}
  for name, value in out.items():
    assert value.shape == (4,) and bool(jnp.all(jnp.isfinite(value))), name
  described = model.describe_evaluate(ode_steps=2)
  assert set(described) == set(out)


@pytest.mark.slow  # a U-Net compile
def test_class_conditional_flow_trains_and_samples_with_guidance():
  config = _config("fm_digits", runs.UNET, {"model.num_classes": 10})
  configs.validate(config)
  model = models.make_unet_diffusion(config, (8, 8, 1))
  params = model.init(jax.random.key(0))
  x = jnp.asarray(data.load_dataset(config.data, "train").get_batch(0, 0, 4)["x"])
  batch = {"x": x, "label": jnp.arange(4)}
  loss, _ = jax.jit(model.loss)(params, batch, jax.random.key(1))
  assert math.isfinite(float(loss))
  with pytest.raises(ValueError, match="labelled data"):
    model.loss(params, {"x": batch["x"]}, jax.random.key(1))
  # The U-Net's last layer starts at zero (its output ignores the label): a few steps first.
  params = _train(model, params, lambda i: batch, 3, lr=1e-2)
  draw = jax.jit(
    lambda p, k, labels: model.sample(
      p, k, 3, sampler="euler", num_steps=2, labels=labels, guidance_scale=1.5
    )
  )
  samples = draw(params, jax.random.key(2), jnp.arange(3))
  assert samples.shape == (3, 8, 8, 1) and bool(jnp.all(jnp.isfinite(samples)))
  # Guidance changes the samples (w = 1.5 against the conditional model alone).
  plain = jax.jit(
    lambda p, k, labels: model.sample(p, k, 3, sampler="euler", num_steps=2, labels=labels)
  )
  assert not np.allclose(samples, plain(params, jax.random.key(2), jnp.arange(3)))


def test_describe_sample_counts_network_calls():
  model = models.make_unet_diffusion(_config("edm_digits", runs.UNET), (8, 8, 1))
  heun = model.describe_sample(sampler="heun", num_steps=18)
  assert heun["num_steps"] == 18 and heun["network_calls"] == 35
  json.dumps(heun, allow_nan=False)  # strict JSON for eval.json (s_tmax defaults to inf)
  assert heun["spacing"] == "karras"
  flow = models.make_unet_diffusion(_config("fm_digits", runs.UNET), (8, 8, 1))
  assert flow.describe_sample(sampler="euler")["spacing"] == "uniform"  # alpha(1) = 0
  euler = model.describe_sample(sampler="euler", num_steps=10, guidance_scale=2.0)
  assert euler["network_calls"] == 20 and euler["guidance_scale"] == 2.0
  with pytest.raises(ValueError, match="sampler must be one of"):
    model.describe_sample(sampler="ddpm")


@pytest.mark.slow
def test_sample_takes_the_configs_options_section():
  """The trainer and --mode=sample pass every config.sample.options field, None unless set,
  DDPM's variance and rho among them: ignored, not refused (run.py fm_toy2d failed at start-up
  with "unknown sampler options ['rho', 'variance']"). A set option of another sampler is
  ignored too; the record shows the defaults for None."""
  config = _config("fm_toy2d", runs.TOY2D)
  model = models.make_mlp_diffusion(config, (2,))
  params = model.init(jax.random.key(0))
  options = dict(config.sample.options)
  assert set(options) >= {"variance", "rho", "eta", "s_churn"}
  plain = model.sample(params, jax.random.key(1), 3, sampler="heun", num_steps=3)
  given = model.sample(params, jax.random.key(1), 3, sampler="heun", num_steps=3, **options)
  np.testing.assert_array_equal(plain, given)
  churned = model.sample(
    params, jax.random.key(1), 3, sampler="heun", num_steps=3, **{**options, "s_churn": 5.0}
  )
  assert not np.allclose(plain, churned)  # a set option of the sampler applies
  record = model.describe_sample(sampler="process_heun", num_steps=3, **options)
  assert record["s_churn"] == 0.0 and record["sampler"].startswith("process_heun: EDM's Heun")
  with pytest.raises(ValueError, match="unknown sampler options"):
    model.sample(params, jax.random.key(1), 3, sampler="euler", num_steps=3, eta_=0.5)


# ----------------------------------------------------------------------------------------------------------------
# run.py: train, resume, sample (subprocesses).

env = runs.env_fixture()

FM_TOY2D = runs.flags(
  "fm_toy2d",
  runs.TOY2D,
  {
    "train.checkpoint_every": 2,
    "sample.num_steps": 3,
    "eval.batch_size": 100,
    "eval.num_examples": 100,
  },
)


@pytest.mark.slow
def test_fm_toy2d_train_resume_sample(env, tmp_path):
  cwd, workdir = str(tmp_path), str(tmp_path / "wd")
  runs.run_py(env, cwd, *FM_TOY2D, "--config.train.num_steps=2", f"--workdir={workdir}")
  result = runs.run_py(env, cwd, *FM_TOY2D, "--config.train.num_steps=4", f"--workdir={workdir}")
  assert "Resuming" in result.stdout and "from step 2" in result.stdout
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert all(math.isfinite(r["loss"]) for r in records)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["diffusion"]["process"] == "rectified_flow"

  runs.run_py(env, cwd, *FM_TOY2D, "--mode=sample", "--num_samples=10", f"--workdir={workdir}")
  with np.load(os.path.join(workdir, "samples.npz")) as f:
    points = f["points"]
  assert points.shape == (10, 2) and np.all(np.isfinite(points))
