"""Tests for DiffusionModel (gen_jax/models/diffusion_model.py) as the diffusion package sees it: the
sampler dispatch through `diffusion.SAMPLERS`, what `describe_sample` records, and
the `prediction` field (eps | x0 | v) in training, sampling and evaluation.
"""

import dataclasses
import inspect
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion, models
from gen_jax.diffusion import solvers
from tests.support.diffusion import np_abar, np_linear_betas

F32 = jnp.float32

# Dispatch and bookkeeping, not numerics: XLA's optimisation passes only cost time here.
pytestmark = pytest.mark.usefixtures("fast_compile")


class ZerosStub:
  """Stands in for a Flax module: apply(params, x, t) = 0."""

  def apply(self, params, x, t, train=False, rngs=None):
    del params, t, train, rngs
    return jnp.zeros_like(x)


class CountingZeros:
  """apply(params, x, t[, labels]) = 0, counting its calls as they run (also
  inside a compiled scan or lax.cond)."""

  def __init__(self, counter):
    self.counter = counter

  def apply(self, params, x, t, labels=None, train=False, rngs=None):
    del params, t, labels, train, rngs
    jax.debug.callback(lambda: self.counter.append(1))
    return jnp.zeros_like(x)


class Zeros(nn.Module):
  """A network that predicts 0 (plus a parameter so init has something)."""

  @nn.compact
  def __call__(self, x, t, train=False):
    del t, train
    return 0.0 * self.param("b", nn.initializers.zeros, ()) + jnp.zeros_like(x)


# ----------------------------------------------------------------------------
# DiffusionModel.sample dispatch
# ----------------------------------------------------------------------------


def test_model_sample_dispatch(monkeypatch):
  """DiffusionModel.sample routes each name to its sampler with the model's
  eps_fn, variance and clip and the documented step counts (spies stand in
  for the samplers, which are tested elsewhere; the arguments they get must
  bind to the real samplers' signatures)."""
  sched = diffusion.make_schedule(diffusion.linear_betas(50, 1e-3, 0.1))
  model = models.DiffusionModel(
    net=ZerosStub(),
    schedule=sched,
    example_shape=(2,),
    variance="large",
    clip=False,
    prediction="v",
  )
  calls = []
  real = {
    "ddpm": diffusion.ddpm_sample,
    "ddim": diffusion.ddim_sample,
    "respaced": diffusion.respaced_ddpm_sample,
    "dpm++2m": diffusion.dpmpp_2m_sample,
    "heun": diffusion.heun_sample,
  }

  def spy(name):
    def record(key, eps_fn, schedule, shape, **kwargs):
      calls.append((name, eps_fn, schedule, shape, kwargs))
      return jnp.zeros(shape)

    return record

  for name, spec in diffusion.SAMPLERS.items():
    assert spec.fn is real[name]
    monkeypatch.setitem(diffusion.SAMPLERS, name, dataclasses.replace(spec, fn=spy(name)))
  key = jax.random.key(0)
  expected = {
    ("ddpm", None): dict(variance="large", clip=False, prediction="v"),
    ("ddpm", 7): dict(variance="large", clip=False, prediction="v"),  # all T steps
    ("ddim", None): dict(num_steps=50, eta=0.5, clip=False, prediction="v"),
    ("ddim", 7): dict(num_steps=7, eta=0.5, clip=False, prediction="v"),
    ("respaced", None): dict(num_steps=50, variance="large", clip=False, prediction="v"),
    ("respaced", 7): dict(num_steps=7, variance="large", clip=False, prediction="v"),
    ("dpm++2m", None): dict(num_steps=20, clip=False, prediction="v"),
    ("dpm++2m", 7): dict(num_steps=7, clip=False, prediction="v"),
    ("heun", None): dict(num_steps=18, s_churn=3.0, clip=False, prediction="v"),
    ("heun", 7): dict(num_steps=7, s_churn=3.0, clip=False, prediction="v"),
  }
  assert {name for name, _ in expected} == set(diffusion.SAMPLERS)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)), F32)
  t = jnp.array([0, 10, 30, 49])
  for (name, steps), kwargs in expected.items():
    calls.clear()
    out = model.sample({}, key, 4, sampler=name, num_steps=steps, eta=0.5, s_churn=3.0)
    assert out.shape == (4, 2)
    [(called, model_fn, schedule, shape, got_kwargs)] = calls
    assert (called, schedule, shape) == (name, sched, (4, 2)), name
    assert got_kwargs == kwargs, (name, steps)
    inspect.signature(real[name]).bind(key, model_fn, schedule, shape, **got_kwargs)
    # The samplers get the network's own output (a v-prediction, here 0) and
    # read it through prediction="v".
    np.testing.assert_array_equal(model_fn(x, t), 0 * x)
  with pytest.raises(ValueError, match="sampler must be one of"):
    model.sample({}, key, 4, sampler="euler_ancestral")
  for name in ("ddim", "respaced", "dpm++2m", "heun"):
    with pytest.raises(ValueError, match="num_steps"):
      model.sample({}, key, 4, sampler=name, num_steps=51)


# ----------------------------------------------------------------------------
# describe_sample: what eval.json records
# ----------------------------------------------------------------------------

# Heun's options as EDM's paper sets them, the defaults of heun_sample.
HEUN_OPTIONS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0, "rho": 7.0}
# T = 50: what each sampler runs without a step count and with 7 steps.
DESCRIBED = {
  ("ddpm", None): {"sampler": "ddpm", "num_steps": 50, "network_calls": 50, "variance": "large"},
  ("ddpm", 7): {"sampler": "ddpm", "num_steps": 50, "network_calls": 50, "variance": "large"},
  ("ddim", None): {"sampler": "ddim", "num_steps": 50, "network_calls": 50, "eta": 0.5},
  ("ddim", 7): {"sampler": "ddim", "num_steps": 7, "network_calls": 7, "eta": 0.5},
  ("respaced", None): {
    "sampler": "respaced",
    "num_steps": 50,
    "network_calls": 50,
    "variance": "large",
  },
  ("respaced", 7): {"sampler": "respaced", "num_steps": 7, "network_calls": 7, "variance": "large"},
  ("dpm++2m", None): {"sampler": "dpm++2m", "num_steps": 20, "network_calls": 20},
  ("dpm++2m", 7): {"sampler": "dpm++2m", "num_steps": 7, "network_calls": 7},
  ("heun", None): {"sampler": "heun", "num_steps": 18, "network_calls": 35, **HEUN_OPTIONS},
  ("heun", 7): {"sampler": "heun", "num_steps": 7, "network_calls": 13, **HEUN_OPTIONS},
}


def _counting_model(**fields):
  """A DiffusionModel on T = 50 whose network predicts 0 and counts its calls."""
  counter = []
  sched = diffusion.make_schedule(diffusion.linear_betas(50, 1e-3, 0.1))
  model = models.DiffusionModel(
    net=CountingZeros(counter), schedule=sched, example_shape=(2,), clip=False, **fields
  )
  return model, counter


@pytest.mark.parametrize("sampler,num_steps", list(DESCRIBED))
def test_describe_sample_records_what_sample_runs(sampler, num_steps):
  """The record holds the steps and the network calls that `sample` makes
  and only the options that apply. Issue 15: dpm++2m and heun without a step
  count were recorded as T steps while they ran 20 and 18, and every sampler
  but ddpm was recorded with eta."""
  model, _ = _counting_model(variance="large")
  record = model.describe_sample(sampler=sampler, num_steps=num_steps, eta=0.5)
  assert record == DESCRIBED[sampler, num_steps]


@pytest.mark.slow
@pytest.mark.parametrize("sampler,num_steps", list(DESCRIBED))
def test_describe_sample_counts_the_calls_sample_makes(sampler, num_steps):
  """The recorded network calls are the calls `sample` makes, counted at the network."""
  model, counter = _counting_model(variance="large")
  record = model.describe_sample(sampler=sampler, num_steps=num_steps, eta=0.5)
  samples = model.sample({}, jax.random.key(0), 3, sampler=sampler, num_steps=num_steps, eta=0.5)
  jax.block_until_ready(samples)
  jax.effects_barrier()
  assert len(counter) == record["network_calls"]


def test_describe_sample_with_guidance_counts_both_calls():
  """Guided sampling calls the network with the label and with the null
  label: twice the calls, and the scale is recorded."""
  model, counter = _counting_model(num_classes=3)
  record = model.describe_sample(sampler="heun", num_steps=5, s_churn=1.0, guidance_scale=2.0)
  assert record == {
    "sampler": "heun",
    "num_steps": 5,
    "network_calls": 18,
    **HEUN_OPTIONS,
    "s_churn": 1.0,
    "guidance_scale": 2.0,
  }
  samples = model.sample(
    {},
    jax.random.key(0),
    3,
    sampler="heun",
    num_steps=5,
    s_churn=1.0,
    labels=jnp.array([0, 1, 2]),
    guidance_scale=2.0,
  )
  jax.block_until_ready(samples)
  jax.effects_barrier()
  assert len(counter) == record["network_calls"]


# ----------------------------------------------------------------------------
# DiffusionModel.prediction
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_model_trains_and_samples_its_prediction():
  cfg = models.diffusion_config(num_timesteps=50, clip=False, prediction="x0")
  model = models.make_diffusion_model(cfg, Zeros(), (3,))
  assert model.prediction == "x0"
  params = model.init(jax.random.key(0))
  x = jnp.asarray(np.random.default_rng(9).uniform(-1, 1, (32, 3)), F32)
  # Predicting x0 = 0: the x0-loss is mean(x0^2) whatever t and the noise.
  loss, _ = model.loss(params, {"x": x}, jax.random.key(1))
  np.testing.assert_allclose(loss, np.mean(np.asarray(x, np.float64) ** 2), rtol=1e-5)
  # Its eps_fn is the x0 = 0 predictor converted: eps = x_t / sqrt(1 - ac).
  t = jnp.array([0, 10, 49] * 10 + [5, 6])
  eps = model.eps_fn(params)(x, t)
  # config's default linear betas at T = 50: improved-diffusion's scaling, 20x DDPM's.
  abar = np_abar(np_linear_betas(50, 2e-3, 0.4))
  ref = np.asarray(x) / np.sqrt(1 - abar[np.asarray(t)])[:, None]
  np.testing.assert_allclose(eps, ref, rtol=1e-5)
  # The x0 = 0 model samples 0 with a deterministic sampler.
  out = model.sample(params, jax.random.key(2), 4, sampler="dpm++2m", num_steps=5)
  np.testing.assert_allclose(out, 0.0, atol=1e-5)
  evaluated = model.evaluate(params, {"x": x}, jax.random.key(3))
  np.testing.assert_allclose(evaluated["loss"], np.mean(np.asarray(x) ** 2, 1), rtol=1e-5)


def test_config_prediction_checked():
  cfg = models.diffusion_config(prediction="noise")
  with pytest.raises(ValueError, match=r"^config\.diffusion\.prediction"):
    models.make_diffusion_model(cfg, Zeros(), (3,))
  assert models.diffusion_config().prediction == "eps"


# ----------------------------------------------------------------------------
# The process view: a DDPM samples with solvers.PROCESS_SAMPLERS at real t
# ----------------------------------------------------------------------------

# The name a DDPM is given -> the PROCESS_SAMPLERS row it runs: the bare names DDPM's own
# registry lacks, and every row as process_<name> (process_heun: EDM's Heun, unsnapped).
PROCESS_NAMES = {
  "euler": "euler",
  "euler_maruyama": "euler_maruyama",
  **{f"process_{name}": name for name in solvers.PROCESS_SAMPLERS},
}


def test_process_sampler_dispatch(monkeypatch):
  """Each process name reaches its PROCESS_SAMPLERS row with the schedule's discrete_process,
  the network's own output read as the model's prediction, its clip, EDM's grid spacing, the
  registry's default steps (free of T) and only the options that row takes (DDPM's variance
  and rho, and None, are dropped). The arguments must bind to the real sampler's signature."""
  sched = diffusion.make_schedule(diffusion.linear_betas(50, 1e-3, 0.1))
  model = models.DiffusionModel(
    net=ZerosStub(), schedule=sched, example_shape=(2,), clip=False, prediction="v"
  )
  calls, real = [], {name: spec.fn for name, spec in solvers.PROCESS_SAMPLERS.items()}

  def spy(name):
    def record(model_fn, process, key, **kwargs):
      calls.append((name, model_fn, process, kwargs))
      return jnp.zeros(kwargs["shape"])

    return record

  for name, spec in solvers.PROCESS_SAMPLERS.items():
    monkeypatch.setitem(solvers.PROCESS_SAMPLERS, name, dataclasses.replace(spec, fn=spy(name)))
  key = jax.random.key(0)
  options = dict(eta=0.5, s_churn=3.0, s_noise=None, variance="large", rho=None)
  own = {"ddim": {"eta": 0.5}, "heun": {"s_churn": 3.0}}
  for given, row in PROCESS_NAMES.items():
    for steps in (None, 77):  # more steps than T = 50: real t
      calls.clear()
      out = model.sample({}, key, 4, sampler=given, num_steps=steps, **options)
      assert out.shape == (4, 2)
      [(called, model_fn, process, kwargs)] = calls
      assert called == row and process is model.process_view, given
      assert process.name == "discrete" and process.discrete_levels == 50
      assert kwargs == dict(
        spacing="karras",
        shape=(4, 2),
        num_steps=steps or solvers.PROCESS_SAMPLERS[row].default_steps,
        prediction="v",
        clip=False,
        **own.get(row, {}),
      ), (given, steps)
      inspect.signature(real[row]).bind(model_fn, process, key, **kwargs)
  # DDPM's own names keep DDPM's samplers (test_model_sample_dispatch); unknown ones are refused.
  with pytest.raises(ValueError, match="process_heun"):
    model.sample({}, key, 4, sampler="process_ddpm")


@pytest.mark.slow
def test_process_samplers_run_jitted_then_eagerly():
  """process_view, first built inside jit, holds concrete tables (a traced copy cached on the
  model would fail the next, eager call); the two draws agree."""
  sched = diffusion.make_schedule(diffusion.linear_betas(20))
  model = models.DiffusionModel(net=Zeros(), schedule=sched, example_shape=(2,), clip=False)
  params, key = model.init(jax.random.key(0)), jax.random.key(1)
  draw = lambda p, k: model.sample(p, k, 3, sampler="euler", num_steps=4)
  jitted = jax.jit(draw)(params, key)
  np.testing.assert_allclose(jitted, draw(params, key), rtol=1e-5, atol=1e-6)
  assert bool(jnp.all(jnp.isfinite(jitted)))


def test_process_view_of_a_zero_terminal_snr_schedule_samples_on_a_uniform_grid():
  """alphas_cumprod[T-1] = 0: sigma / alpha is infinite at the top, so the grid is uniform in t
  (EDM's grid needs a finite sigma_max), and a v-predictor's samples are finite."""
  betas = diffusion.rescale_zero_terminal_snr(diffusion.linear_betas(20))
  model = models.DiffusionModel(
    net=Zeros(), schedule=diffusion.make_schedule(betas), example_shape=(2,), prediction="v"
  )
  assert model.describe_sample(sampler="euler", num_steps=4)["spacing"] == "uniform"
  samples = model.sample(model.init(jax.random.key(0)), jax.random.key(1), 3, "euler", 4)
  assert bool(jnp.all(jnp.isfinite(samples)))


def test_describe_sample_of_a_process_sampler():
  model, _ = _counting_model(variance="large")
  record = model.describe_sample(sampler="process_heun", num_steps=7, s_churn=None, rho=None)
  assert record["sampler"].startswith("process_heun: EDM's Heun")
  assert "on process discrete (t from 49 to 0)" in record["sampler"]
  assert (record["num_steps"], record["network_calls"], record["spacing"]) == (7, 13, "karras")
  assert (record["s_churn"], record["s_tmax"]) == (0.0, "inf")  # None: the default
  assert "variance" not in record and "rho" not in record


@pytest.mark.parametrize(
  "options, message",
  [
    ({"rho": 3.0}, r"options\.rho must be None: config\.sample\.sampler='process_heun'"),
    ({"s_churn": -1.0}, r"options\.s_churn must be a number >= 0"),
    ({"eta": 0.5}, r"options\.eta must be None"),
  ],
)
def test_process_sampler_options_checked_against_their_registry(options, message):
  """configs.validate checks config.sample.options against the registry the model samples
  with: PROCESS_SAMPLERS' heun has no rho, its churn's domain is SamplerSpec's."""
  from gen_jax import configs
  from tests.support import runs

  config = runs.config("ddpm_toy2d", runs.TOY2D, {"sample.sampler": "process_heun"})
  configs.validate(config)
  for name, value in options.items():
    config.sample.options[name] = value
  with pytest.raises(configs.ConfigError, match=message):
    configs.validate(config)


def test_process_sampler_steps_are_free_of_t():
  """T = 20, but the process samplers' grids are real: euler_maruyama's default 500 steps and
  num_steps = 100 validate (DDPM's own samplers stay bounded by T)."""
  from gen_jax import configs
  from tests.support import runs

  for sampler, steps in (("euler_maruyama", None), ("euler", 100), ("process_ddim", 100)):
    configs.validate(
      runs.config("ddpm_toy2d", runs.TOY2D, {"sample.sampler": sampler, "sample.num_steps": steps})
    )
  with pytest.raises(configs.ConfigError, match="sample.num_steps"):
    configs.validate(
      runs.config("ddpm_toy2d", runs.TOY2D, {"sample.sampler": "ddim", "sample.num_steps": 100})
    )
  with pytest.raises(configs.ConfigError, match="sample.sampler must be one of"):
    configs.validate(runs.config("ddpm_toy2d", runs.TOY2D, {"sample.sampler": "process_x"}))


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
  """A tiny ddpm_toy2d (T = 20) trained 2 steps in-process, as tests/train/test_load.py's."""
  from experiments import ddpm_toy2d
  from gen_jax import train
  from tests.support import runs

  workdir = str(tmp_path_factory.mktemp("toy2d"))
  config = runs.config("ddpm_toy2d", runs.TOY2D, runs.TWO_STEPS, {"train.sample_every": 1000})
  train.train(config, workdir, ddpm_toy2d.build, experiment="ddpm_toy2d")
  return workdir


@pytest.mark.parametrize(
  "sampler",
  [
    "process_heun",
    pytest.param("euler", marks=pytest.mark.slow),
    pytest.param("euler_maruyama", marks=pytest.mark.slow),
  ],
)
@pytest.mark.slow
def test_trained_ddpm_samples_with_process_samplers_in_sample_mode(toy_workdir, tmp_path, sampler):
  """run.py --mode=sample --sampler=<process sampler> on a DDPM workdir (train.sample, the saved
  config's options included) draws what the process sampler draws on discrete_process of the
  trained model's schedule with its network at real t, for the same chunk key."""
  from experiments import ddpm_toy2d
  from gen_jax import train
  from gen_jax.train import rng
  from gen_jax.train import workdir as workdir_lib

  config = workdir_lib.with_saved_config(ddpm_toy2d.get_config(), toy_workdir)
  npz = train.sample(
    config, toy_workdir, ddpm_toy2d.build, 4, sampler, 3, out_dir=str(tmp_path / "out")
  )
  trained = train.load_trained(toy_workdir)
  model = trained.model
  chunk_key = jax.random.fold_in(rng.stream(config.seed, "sample", trained.step), 0)
  expected = solvers.PROCESS_SAMPLERS[PROCESS_NAMES[sampler]].fn(
    trained.model_fn,
    diffusion.discrete_process(model.schedule),
    chunk_key,
    shape=(4, 2),
    num_steps=3,
    spacing="karras",
    prediction=model.prediction,
    clip=model.clip,
  )
  points = np.load(npz)["points"]
  assert points.shape == (4, 2) and np.all(np.isfinite(points))
  np.testing.assert_allclose(points, expected, rtol=1e-5, atol=1e-6)
