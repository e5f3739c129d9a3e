"""Tests for `diffusion.SAMPLERS`, the one registry of the samplers
(gen_jax/diffusion/samplers.py): each name's function, default step count,
options and network calls, and `run_sampler` / `describe_sampler` built on it."""

import inspect
import re

import jax
import numpy as np
import pytest

from gen_jax import diffusion, testing
from tests.support.diffusion import GMM2, counting

# Dispatch and bookkeeping, not numerics: XLA's optimisation passes only cost time here.
pytestmark = pytest.mark.usefixtures("fast_compile")


def test_registry_entries():
  """The names, functions and default steps the README and run.py document;
  each option is a keyword of its function, with the function's default."""
  expected = {
    "ddpm": (diffusion.ddpm_sample, None, {"variance"}),
    "ddim": (diffusion.ddim_sample, None, {"eta"}),
    "respaced": (diffusion.respaced_ddpm_sample, None, {"variance"}),
    "dpm++2m": (diffusion.dpmpp_2m_sample, 20, set()),
    "heun": (diffusion.heun_sample, 18, {"s_churn", "s_tmin", "s_tmax", "s_noise", "rho"}),
  }
  assert list(diffusion.SAMPLERS) == list(expected)
  for name, (fn, default_steps, options) in expected.items():
    spec = diffusion.SAMPLERS[name]
    assert spec.fn is fn and spec.default_steps == default_steps, name
    assert set(spec.options) == options, name
    parameters = inspect.signature(fn).parameters
    for option, default in spec.options.items():
      assert parameters[option].default == default, (name, option)
    assert ("num_steps" in parameters) == spec.takes_num_steps, name
    assert "clip" in parameters
  assert [spec.network_calls(18) for spec in diffusion.SAMPLERS.values()] == [18, 18, 18, 18, 35]


def test_every_option_says_what_it_accepts():
  """config.sample.options is built from the registry (gen_jax.configs.sampler_options): each
  option needs the values it accepts (its domain), and one name one type across samplers."""
  types = {}
  for name, spec in diffusion.SAMPLERS.items():
    assert set(spec.domains) == set(spec.options), name
    for option, default in spec.options.items():
      description, allows = spec.domains[option]
      assert allows(default) and description, (name, option)
      assert types.setdefault(option, type(default)) is type(default), (name, option)
  assert not diffusion.SAMPLERS["ddim"].domains["eta"][1](-0.5)
  assert diffusion.SAMPLERS["heun"].domains["s_tmax"][1](float("inf"))
  assert not diffusion.SAMPLERS["heun"].domains["rho"][1](0.0)
  assert not diffusion.SAMPLERS["ddpm"].domains["variance"][1]("tiny")


def test_none_leaves_the_sampler_s_default():
  """config.sample.options holds None for every option not set: run_sampler and
  describe_sampler take it as the sampler's default."""
  assert diffusion.describe_sampler("ddim", 5, 50, eta=None, s_churn=None) == {
    "sampler": "ddim",
    "num_steps": 5,
    "network_calls": 5,
    "eta": 0.0,
  }


def test_sampler_num_steps():
  assert diffusion.samplers.sampler_num_steps("ddpm", 7, 50) == 50  # always all T
  assert diffusion.samplers.sampler_num_steps("ddim", None, 50) == 50
  assert diffusion.samplers.sampler_num_steps("respaced", None, 50) == 50
  assert diffusion.samplers.sampler_num_steps("dpm++2m", None, 50) == 20
  assert diffusion.samplers.sampler_num_steps("heun", None, 50) == 18
  assert diffusion.samplers.sampler_num_steps("heun", 0, 50) == 18  # 0 means the default, as None
  for name in ("ddim", "respaced", "dpm++2m", "heun"):
    assert diffusion.samplers.sampler_num_steps(name, 7, 50) == 7
    for bad in (51, 2.5, True, -1):
      with pytest.raises(ValueError, match=re.escape(f"num_steps for sampler '{name}'")):
        diffusion.samplers.sampler_num_steps(name, bad, 50)
  # A default larger than T is refused, not silently cut.
  with pytest.raises(ValueError, match=r"in \[1, 10\], got 20"):
    diffusion.samplers.sampler_num_steps("dpm++2m", None, 10)
  with pytest.raises(ValueError, match="sampler must be one of"):
    diffusion.samplers.sampler_num_steps("euler", None, 50)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(diffusion.SAMPLERS))
@pytest.mark.parametrize("num_steps", [1, 7])
def test_network_calls_as_registered(name, num_steps):
  """spec.network_calls is what `run_sampler` costs, counted at the eps_fn."""
  sched = diffusion.make_schedule(diffusion.linear_betas(20, 1e-3, 0.2))
  counter = []
  eps_fn = counting(testing.gmm_eps_fn(sched, **GMM2), counter)
  run = jax.jit(
    lambda k: diffusion.run_sampler(name, k, eps_fn, sched, (4, 2), num_steps=num_steps)
  )
  jax.block_until_ready(run(jax.random.key(0)))
  jax.effects_barrier()
  steps = diffusion.samplers.sampler_num_steps(name, num_steps, 20)
  assert len(counter) == diffusion.SAMPLERS[name].network_calls(steps)


@pytest.mark.slow
def test_run_sampler_passes_only_the_options_that_apply():
  sched = diffusion.make_schedule(diffusion.linear_betas(20, 1e-3, 0.2))
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  key = jax.random.key(1)
  run = lambda name, **kw: np.asarray(
    jax.jit(lambda k: diffusion.run_sampler(name, k, eps_fn, sched, (8, 2), num_steps=5, **kw))(key)
  )
  # eta does not apply to DPM-Solver++: the same samples with or without it.
  np.testing.assert_array_equal(run("dpm++2m", eta=1.0, variance="large"), run("dpm++2m"))
  # It applies to DDIM, and is the function's own argument there.
  direct = jax.jit(lambda k: diffusion.ddim_sample(k, eps_fn, sched, (8, 2), num_steps=5, eta=1.0))(
    key
  )
  np.testing.assert_array_equal(run("ddim", eta=1.0, s_churn=3.0), np.asarray(direct))
  assert np.max(np.abs(run("ddim", eta=1.0) - run("ddim"))) > 1e-3
  with pytest.raises(ValueError, match="unknown sampler options"):
    run("ddim", etaa=1.0)


def test_describe_sampler():
  assert diffusion.describe_sampler("heun", None, 1000, s_churn=2.0) == {
    "sampler": "heun",
    "num_steps": 18,
    "network_calls": 35,
    "s_churn": 2.0,
    "s_tmin": 0.0,
    "s_tmax": float("inf"),
    "s_noise": 1.0,
    "rho": 7.0,
  }
  assert diffusion.describe_sampler("dpm++2m", None, 1000, eta=0.5, s_churn=2.0) == {
    "sampler": "dpm++2m",
    "num_steps": 20,
    "network_calls": 20,
  }
  assert diffusion.describe_sampler("ddim", 50, 1000, guidance_scale=1.5, eta=0.3) == {
    "sampler": "ddim",
    "num_steps": 50,
    "network_calls": 100,
    "eta": 0.3,
    "guidance_scale": 1.5,
  }
  assert diffusion.describe_sampler("ddpm", 10, 1000)["num_steps"] == 1000
  with pytest.raises(ValueError, match="num_steps"):
    diffusion.describe_sampler("ddim", 1001, 1000)


@pytest.mark.slow
def test_run_sampler_common_options_and_prediction():
  """timesteps, x_init and return_trajectory reach every sampler through the
  registry, with the model's prediction; describe_sampler records the grid."""
  sched = diffusion.make_schedule(diffusion.linear_betas(20, 1e-3, 0.2))
  model = lambda x, t: 0.5 * x  # a v-predictor
  x_init = jax.random.normal(jax.random.key(0), (3, 2))
  for name, spec in diffusion.SAMPLERS.items():
    out, traj = diffusion.run_sampler(
      name,
      jax.random.key(1),
      model,
      sched,
      None,
      num_steps=None,
      prediction="v",
      timesteps=[19, 9, 2],
      x_init=x_init,
      return_trajectory=True,
      eta=0.0,
    )
    assert out.shape == (3, 2) and np.all(np.isfinite(np.asarray(out))), name
    assert np.asarray(traj.timesteps).tolist() == [19, 9, 2], name
    direct = spec.fn(
      jax.random.key(1), model, sched, prediction="v", timesteps=[19, 9, 2], x_init=x_init
    )
    np.testing.assert_array_equal(out, direct)
  record = diffusion.describe_sampler("heun", None, 20, timesteps=[19, 9, 2], s_churn=1.0)
  assert record == {
    "sampler": "heun",
    "num_steps": 3,
    "network_calls": 5,
    "s_churn": 1.0,
    "s_tmin": 0.0,
    "s_tmax": float("inf"),
    "s_noise": 1.0,
    "rho": 7.0,
    "timesteps": [19, 9, 2],
  }
