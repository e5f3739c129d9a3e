"""gen_jax.train.load_trained: a workdir's model, parameters and config in one call.

A tiny ddpm_toy2d run (checkpoints at steps 2 and 4) and a tiny vae_digits run, trained in-process;
the references are orbax's own restore of the checkpoint folders and what --mode=sample draws.
"""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import ddpm_toy2d, vae_digits
from gen_jax import diffusion, models, train, vae
from gen_jax.train import load, rng, run_setup
from gen_jax.train import workdir as workdir_lib
from tests.support import runs

pytestmark = pytest.mark.usefixtures("fast_compile")

TOY = (
  runs.TOY2D,
  runs.TWO_STEPS,
  {"train.num_steps": 4, "train.checkpoint_every": 2, "train.sample_every": 1000},
  {"train.keep_checkpoints": 2, "sample.num_steps": 3},
)


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("toy2d"))
  train.train(runs.config("ddpm_toy2d", *TOY), workdir, ddpm_toy2d.build, experiment="ddpm_toy2d")
  return workdir


def checkpoint_tree(workdir, step):
  """The checkpoint as orbax restores it with no help from gen_jax (nested dicts of arrays)."""
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  return ocp.StandardCheckpointer().restore(path)


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_training_records_the_library_builder(toy_workdir):
  with open(os.path.join(toy_workdir, workdir_lib.BUILDER_FILE)) as f:
    assert f.read() == "gen_jax.models.make_mlp_diffusion\n"


def test_ema_and_raw_params_are_the_checkpoints_bit_for_bit(toy_workdir):
  saved = checkpoint_tree(toy_workdir, 4)
  trained = train.load_trained(toy_workdir)
  assert isinstance(trained, train.Trained) and isinstance(trained.model, models.DiffusionModel)
  assert trained.step == 4 and trained.workdir == toy_workdir
  assert_trees_equal(trained.params, saved["ema_params"])
  assert_trees_equal(train.load_trained(toy_workdir, params="raw").params, saved["params"])
  # The config the run was trained with, tuples as tuples; the parameters on one CPU device.
  assert trained.config.model.width == 16 and trained.config.diffusion.num_timesteps == 20
  assert trained.config.to_dict() == runs.config("ddpm_toy2d", *TOY).to_dict()
  cpu = jax.local_devices(backend="cpu")[0]
  assert all(leaf.devices() == {cpu} for leaf in jax.tree.leaves(trained.params))


def test_params_are_those_sample_mode_restores(toy_workdir):
  config = workdir_lib.with_saved_config(ddpm_toy2d.get_config(), toy_workdir)
  run = run_setup.open_run(config, toy_workdir, ddpm_toy2d.build, mode="sample")
  try:
    state = run.restore()
  finally:
    run.checkpoints.close()
  assert_trees_equal(train.load_trained(toy_workdir).params, state.ema_params)


@pytest.mark.slow  # compiles sample mode's sampler, ~2 s; the tests around it keep load_trained fast
def test_model_fn_draws_what_sample_mode_draws(toy_workdir, tmp_path):
  trained = train.load_trained(toy_workdir)
  model, key = trained.model, jax.random.key(3)
  ddim = lambda key, n: diffusion.ddim_sample(
    key,
    trained.model_fn,
    model.schedule,
    (n, 2),
    num_steps=3,
    clip=model.clip,
    prediction=model.prediction,
  )
  # The model's own sampler, with the same network: the same draws, bit for bit.
  np.testing.assert_array_equal(
    ddim(key, 5), model.sample(trained.params, key, 5, sampler="ddim", num_steps=3)
  )
  # python run.py --mode=sample: chunk 0's key of rng.stream(seed, "sample", step), jitted there.
  config = workdir_lib.with_saved_config(ddpm_toy2d.get_config(), toy_workdir)
  npz = train.sample(
    config, toy_workdir, ddpm_toy2d.build, 4, "ddim", 3, out_dir=str(tmp_path / "out")
  )
  chunk_key = jax.random.fold_in(rng.stream(config.seed, "sample", 4), 0)
  np.testing.assert_allclose(ddim(chunk_key, 4), np.load(npz)["points"], rtol=1e-5, atol=1e-6)


env = runs.env_fixture()


@pytest.mark.slow
def test_a_run_sharded_over_four_devices_loads_on_one(env, tmp_path):
  """run.py on 4 simulated devices, the train state sharded 2 ways (FSDP): load_trained restores
  it onto this process' one CPU device, as sample mode's restore does here (orbax alone refuses
  a checkpoint of another topology without a target)."""
  workdir = str(tmp_path / "fsdp")
  wide = {"model.width": 128, "model.num_blocks": 1, "data.batch_size": 8}
  args = runs.flags("ddpm_toy2d", *TOY, wide, {"train.num_steps": 2, "mesh.fsdp": 2})
  result = runs.run_py(env, tmp_path, *args, f"--workdir={workdir}", devices=4)
  assert "train state sharded 2 ways (FSDP)" in result.stdout
  trained = train.load_trained(workdir)
  assert trained.step == 2 and trained.config.mesh.fsdp == 2
  run = run_setup.open_run(
    runs.config("ddpm_toy2d", *TOY, wide), workdir, ddpm_toy2d.build, mode="sample"
  )
  try:
    state = run.restore()
  finally:
    run.checkpoints.close()
  assert_trees_equal(trained.params, state.ema_params)
  cpu = jax.local_devices(backend="cpu")[0]
  assert all(leaf.devices() == {cpu} for leaf in jax.tree.leaves(trained.params))


def test_step_picks_the_checkpoint(toy_workdir):
  earlier = train.load_trained(toy_workdir, step=np.int64(2), params="raw")
  assert earlier.step == 2
  assert_trees_equal(earlier.params, checkpoint_tree(toy_workdir, 2)["params"])
  assert train.load_trained(toy_workdir, step=4).step == 4
  with pytest.raises(train.NoCheckpointError, match=r"step=3: .* steps \[2, 4\]"):
    train.load_trained(toy_workdir, step=3)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(params="best"), r"params must be one of \('ema', 'raw'\), got 'best'"),
    (dict(step=-1), "step must be None"),
    (dict(step=True), "step must be None"),
    (dict(step=2.0), "step must be None"),
  ],
)
def test_bad_arguments_are_named(toy_workdir, kwargs, match):
  with pytest.raises(ValueError, match=match):
    train.load_trained(toy_workdir, **kwargs)


def test_no_workdir_and_no_checkpoint(tmp_path):
  with pytest.raises(train.NoCheckpointError, match="does not exist; train first"):
    train.load_trained(tmp_path / "missing")
  with pytest.raises(train.NoCheckpointError, match="no checkpoint in"):
    train.load_trained(tmp_path)  # a pathlib.Path as well as a str


def test_builder_from_experiment_txt_or_build_argument(toy_workdir, tmp_path):
  """A workdir from before builder.txt: its shipped experiment names the builder; else build=."""
  workdir = str(tmp_path / "old")
  shutil.copytree(toy_workdir, workdir)
  os.remove(os.path.join(workdir, workdir_lib.BUILDER_FILE))
  expected = checkpoint_tree(toy_workdir, 4)["ema_params"]
  assert_trees_equal(train.load_trained(workdir).params, expected)

  workdir_lib.write_experiment(workdir, "my_toy")
  with pytest.raises(
    train.ConfigError, match=r"experiment 'my_toy' is no shipped one.*pass build="
  ):
    train.load_trained(workdir)
  trained = train.load_trained(workdir, build=models.make_mlp_diffusion)
  assert_trees_equal(trained.params, expected)

  os.remove(os.path.join(workdir, workdir_lib.EXPERIMENT_FILE))
  with pytest.raises(train.ConfigError, match="records no gen_jax.models builder.*pass build="):
    train.load_trained(workdir)


@pytest.mark.parametrize(
  "recorded",
  [
    "os.system",
    "gen_jax.models.DiffusionModel",
    "gen_jax.models.nets.MLPDenoiser",
    "gen_jax.models.make_nothing",
    "experiments.ddpm_toy2d.build",
  ],
)
def test_unknown_builder_is_refused(toy_workdir, tmp_path, recorded):
  workdir = str(tmp_path / "w")
  shutil.copytree(toy_workdir, workdir)
  workdir_lib.write_builder(workdir, recorded)
  with pytest.raises(train.ConfigError, match=f"the builder '{recorded}', .*pass build="):
    train.load_trained(workdir)


def test_builder_names():
  assert load.builder_name(models.make_unet_diffusion) == "gen_jax.models.make_unet_diffusion"
  own = lambda config, example_shape: None
  assert load.builder_name(own) == f"{__name__}.test_builder_names.<locals>.<lambda>"


@pytest.mark.parametrize("experiment", sorted(load.EXPERIMENT_BUILDERS))
def test_each_shipped_experiment_builds_with_the_builder_load_trained_maps_it_to(experiment):
  module = __import__(f"experiments.{experiment}", fromlist=["build"])
  assert module.build is getattr(models, load.EXPERIMENT_BUILDERS[experiment])
  assert load.builder_name(module.build) == f"gen_jax.models.{load.EXPERIMENT_BUILDERS[experiment]}"


def test_every_experiment_with_a_build_is_mapped():
  with_build = [
    name
    for name in runs.EXPERIMENTS
    if hasattr(__import__(f"experiments.{name}", fromlist=["build"]), "build")
  ]
  assert sorted(with_build) == sorted(load.EXPERIMENT_BUILDERS)


@pytest.mark.slow  # a second training; the diffusion tests above are the fast tier's
def test_vae_workdir(tmp_path):
  workdir = str(tmp_path / "vae")
  config = runs.config("vae_digits", runs.MLP_VAE, runs.TWO_STEPS, {"train.sample_every": 1000})
  train.train(config, workdir, vae_digits.build, experiment="vae_digits")
  trained = train.load_trained(workdir)
  assert isinstance(trained.model, models.VAEModel) and trained.step == 2
  assert_trees_equal(trained.params, checkpoint_tree(workdir, 2)["ema_params"])
  # model_fn: (encode, log_likelihood) with the parameters bound, as gen_jax.vae's bounds take.
  fns = trained.model_fn
  assert isinstance(fns, load.VAEFunctions)
  x = jax.random.randint(jax.random.key(0), (3, 8, 8, 1), 0, 256) / 127.5 - 1.0
  key = jax.random.key(1)
  _, elbo_key, iwae_key = jax.random.split(key, 3)
  model = trained.model
  expected = jax.jit(model.evaluate)(trained.params, {"x": x}, key)
  elbo, iwae = jax.jit(
    lambda x: (
      vae.elbo(elbo_key, x, *fns).elbo,
      vae.iwae_bound(iwae_key, x, *fns, model.iwae_samples, model.iwae_chunk),
    )
  )(x)
  np.testing.assert_allclose(elbo, expected["elbo"], rtol=1e-6)
  np.testing.assert_allclose(-iwae, expected["nll_iwae"], rtol=1e-6)


def abstract_model_fn_output(experiment, overrides, example_shape, *inputs):
  """What `experiment`'s tiny model's Trained.model_fn returns on `inputs`, traced abstractly
  (shapes and dtypes, no computation) at abstract parameters."""
  config = runs.config(experiment, *overrides)
  model = getattr(models, load.EXPERIMENT_BUILDERS[experiment])(config, example_shape)
  params = jax.eval_shape(model.init, jax.random.key(0))
  fn = lambda params, *inputs: load.Trained(model, params, config, 0, "").model_fn(*inputs)
  return jax.eval_shape(fn, params, *inputs)


def test_model_fn_of_a_vdm_is_its_eps_fn():
  z, gamma = jax.ShapeDtypeStruct((2, 8, 8, 1), "float32"), jax.ShapeDtypeStruct((2,), "float32")
  eps = abstract_model_fn_output("vdm_digits", (runs.UNET, runs.VDM), (8, 8, 1), z, gamma)
  assert (eps.shape, eps.dtype) == (z.shape, z.dtype)


def test_model_fn_of_a_hierarchical_vae_is_one_posterior_pass():
  x = jax.ShapeDtypeStruct((3, 8, 8, 1), "float32")
  log_likelihood, layers = abstract_model_fn_output(
    "hvae_digits", (runs.HVAE,), (8, 8, 1), x, jax.random.key(1)
  )
  assert log_likelihood.shape == (3,) and len(layers) == 2  # the two stochastic layers of HVAE
  assert all(isinstance(layer, vae.hvae.LayerSample) for layer in layers)


def test_model_fn_of_an_unknown_model_says_what_to_use():
  trained = load.Trained(model=object(), params={}, config=None, step=0, workdir="")
  with pytest.raises(TypeError, match="use trained.model with trained.params"):
    _ = trained.model_fn
