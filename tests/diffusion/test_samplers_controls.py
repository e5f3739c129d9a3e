"""The samplers' traps and controls of issue 26 (gen_jax/diffusion/samplers.py): x_init is x_T
for every sampler, its dtype, a start state passed where shape goes, a traced num_steps,
eta's range, no stacked states without return_trajectory, stopping at a level (t_end),
ddim_invert's trajectory, and img2img's grid. The oracle is one-Gaussian data N(mu, s^2),
whose exact model and probability-flow map are known in closed form.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion
from tests.support.diffusion import gaussian_model_fn, np_linear_betas

# Skips XLA's optimisation passes: these tests compile many small scans (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compile")

MU, S = 0.2, 0.3
SAMPLERS = {
  "ddpm": diffusion.ddpm_sample,
  "ddim": diffusion.ddim_sample,
  "respaced": diffusion.respaced_ddpm_sample,
  "dpm++2m": diffusion.dpmpp_2m_sample,
  "heun": diffusion.heun_sample,
}


@pytest.fixture(scope="module")
def sched20():
  return diffusion.make_schedule(np_linear_betas(20, 1e-3, 0.2))


def _ode_solution(schedule, x_T, level):
  """The probability-flow ODE's exact map for N(mu, s^2) data: the standardized
  z = (x_t - a mu) / sqrt(a^2 s^2 + 1 - a^2) is constant, so x_0 = mu + s z."""
  a2 = float(np.asarray(schedule.alphas_cumprod)[level])
  z = (np.asarray(x_T, np.float64) - math.sqrt(a2) * MU) / math.sqrt(a2 * S**2 + 1 - a2)
  return MU + S * z


# ----------------------------------------------------------------------------
# x_init is x_T
# ----------------------------------------------------------------------------


def test_heun_from_a_given_x_T_converges_to_the_ode_solution(x64):
  """Issue 26: Heun's default grid started at sigma = 80 (level 930 of linear T = 1000) and
  put x_init there, so from a given x_T it stalled at 3.7e-4 RMS from the ODE solution
  at 200 steps (3.9e-4 at 500); with x_init the grid now starts at T - 1: 2.6e-5 at 200
  steps (1.5e-4 at 500: the grid's levels snap to the discrete schedule's)."""
  sched = diffusion.make_schedule(np_linear_betas(1000))
  model = gaussian_model_fn(sched, MU, S, "eps")
  x_T = jax.random.normal(jax.random.key(0), (2000, 1), jnp.float64)
  run = jax.jit(
    lambda x: diffusion.heun_sample(
      jax.random.key(1), model, sched, num_steps=200, x_init=x, return_trajectory=True
    )
  )
  out, trajectory = run(x_T)
  assert int(trajectory.timesteps[0]) == 999
  rms = float(np.sqrt(np.mean((np.asarray(out) - _ode_solution(sched, x_T, 999)) ** 2)))
  print("heun from x_T: RMS to the ODE solution", rms)
  assert rms < 1e-4
  # Without x_init the default grid is EDM's, capped at sigma = 80.
  _, default = jax.jit(
    lambda k: diffusion.heun_sample(k, model, sched, (4, 1), num_steps=200, return_trajectory=True)
  )(jax.random.key(1))
  assert int(default.timesteps[0]) == 930


@pytest.mark.slow  # over 2 s (per-test durations, fast tier)
def test_heun_from_x_T_on_a_zero_snr_schedule(x64):
  """At zero terminal SNR the grid from x_T is level T - 1 (sigma = inf), then EDM's grid."""
  sched = diffusion.make_schedule(
    diffusion.rescale_zero_terminal_snr(diffusion.linear_betas(100, 1e-3, 0.2))
  )
  model = gaussian_model_fn(sched, MU, S, "v")
  x_T = jax.random.normal(jax.random.key(0), (4000, 1), jnp.float64)
  out, trajectory = diffusion.heun_sample(
    jax.random.key(1),
    model,
    sched,
    num_steps=40,
    x_init=x_T,
    prediction="v",
    return_trajectory=True,
  )
  assert int(trajectory.timesteps[0]) == 99
  assert np.all(np.diff(np.asarray(trajectory.timesteps)) < 0)
  # x_T is pure noise there: the samples have the data's law.
  assert abs(float(out.mean()) - MU) < 0.02 and abs(float(out.std()) - S) < 0.02


@pytest.mark.slow  # over 2 s (per-test durations, fast tier)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_x_init_of_another_float_dtype_is_cast(name, x64):
  """Issue 26: a float32 x_init under jax_enable_x64 failed in ddpm, ddim, respaced and
  dpm++ with JAX's "scan body function carry input and carry output must have equal
  types"; it is now cast to the steps' dtype (float64) and gives the float64 result."""
  sched20 = diffusion.make_schedule(np_linear_betas(20, 1e-3, 0.2))
  model = gaussian_model_fn(sched20, MU, S, "eps")
  x_T = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64)
  key = jax.random.key(1)
  x_32 = x_T.astype(jnp.float32)
  got = SAMPLERS[name](key, model, sched20, x_init=x_32)
  assert got.dtype == jnp.float64
  ref = SAMPLERS[name](key, model, sched20, x_init=x_32.astype(jnp.float64))
  np.testing.assert_array_equal(got, ref)
  inverted = diffusion.ddim_invert(model, sched20, x_T.astype(jnp.float32), num_steps=5)
  assert inverted.dtype == jnp.float64


@pytest.mark.slow  # over 2 s (per-test durations, fast tier)
def test_bfloat16_x_init_runs_in_the_schedules_float32(sched20):
  model = gaussian_model_fn(sched20, MU, S, "eps")
  x_T = jax.random.normal(jax.random.key(0), (8, 2)).astype(jnp.bfloat16)
  for name, fn in SAMPLERS.items():
    assert fn(jax.random.key(1), model, sched20, x_init=x_T).dtype == jnp.float32, name
  assert diffusion.ddim_invert(model, sched20, x_T, num_steps=5).dtype == jnp.float32


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_x_init_passed_positionally_is_refused_by_name(name, sched20):
  """Issue 26: x_init given positionally landed in `shape` and failed with a JAX TypeError
  that named neither."""
  model = gaussian_model_fn(sched20, MU, S, "eps")
  x_T = jnp.zeros((4, 2))
  fn_name = SAMPLERS[name].__name__
  with pytest.raises(ValueError, match=f"{fn_name}: shape must be a tuple of ints.*x_init="):
    SAMPLERS[name](jax.random.key(0), model, sched20, x_T)


# ----------------------------------------------------------------------------
# Refused by name: traced num_steps, eta outside [0, 1]
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "respaced", "dpm++2m", "heun", "invert"])
def test_traced_num_steps_is_refused_as_not_static(name, sched20):
  """Issue 26: a traced num_steps said "must be an integer in [1, 1000], got
  JitTracer(~int64[])", naming neither the function nor the need to be static."""
  model = gaussian_model_fn(sched20, MU, S, "eps")
  if name == "invert":
    fn_name, call = (
      "ddim_invert",
      lambda n: diffusion.ddim_invert(model, sched20, jnp.zeros((2, 1)), num_steps=n),
    )
  else:
    fn_name = SAMPLERS[name].__name__
    call = lambda n: SAMPLERS[name](jax.random.key(0), model, sched20, (2, 1), num_steps=n)
  with pytest.raises(ValueError, match=f"{fn_name}: num_steps must be static"):
    jax.jit(call)(5)


@pytest.mark.parametrize("eta", [-1.0, 1.5, 2.0])
def test_eta_outside_the_unit_interval_is_refused(eta, sched20):
  """Issue 26: eta = -1 ran as eta = 1 (sigma is squared) and eta = 2 silently clamped a
  square root; both are refused, in the function and in the registry's domain."""
  model = gaussian_model_fn(sched20, MU, S, "eps")
  with pytest.raises(ValueError, match=r"ddim_sample: eta must be a number in \[0, 1\]"):
    diffusion.ddim_sample(jax.random.key(0), model, sched20, (2, 1), eta=eta)
  description, allows = diffusion.SAMPLERS["ddim"].domains["eta"]
  assert not allows(eta) and description == "a number in [0, 1]"
  assert allows(0.0) and allows(1.0)


# ----------------------------------------------------------------------------
# return_trajectory=False stacks nothing, with or without jit
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_no_stacked_states_without_return_trajectory(name):
  """Issue 26: called without jit, a sampler built the full (K, B, ...) trajectory even
  with return_trajectory=False (measured: peak +409 MiB for 1000-step DDPM on a
  (16, 32, 32, 3) batch, now +44 MiB). The scan now outputs nothing per step unless
  asked: no (1000, 16, 32, 32, 3) output in its jaxpr (before: two, x and x0)."""
  sched = diffusion.make_schedule(np_linear_betas(1000))
  model = gaussian_model_fn(sched, MU, S, "eps")
  shape = (16, 32, 32, 3)
  num = {"ddpm": None, "heun": 500}.get(name, 1000)
  kwargs = {} if num is None else {"num_steps": num}
  steps = num or 1000

  def stacked(return_trajectory):
    jaxpr = jax.make_jaxpr(
      lambda k: SAMPLERS[name](
        k, model, sched, shape, return_trajectory=return_trajectory, **kwargs
      )
    )(jax.random.key(0))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    return [v.aval.shape for e in scans for v in e.outvars if v.aval.shape == (steps,) + shape]

  assert stacked(False) == []
  assert len(stacked(True)) == 2


def test_ddim_invert_stacks_nothing_without_return_trajectory():
  sched = diffusion.make_schedule(np_linear_betas(1000))
  model = gaussian_model_fn(sched, MU, S, "eps")
  jaxpr = jax.make_jaxpr(lambda x: diffusion.ddim_invert(model, sched, x))(jnp.zeros((16, 8)))
  scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
  assert [v.aval.shape for e in scans for v in e.outvars] == [(16, 8)]


# ----------------------------------------------------------------------------
# Controls: t_end, ddim_invert's trajectory, img2img's grid
# ----------------------------------------------------------------------------


@pytest.mark.slow  # over 2 s (per-test durations, fast tier)
def test_ddim_t_end_stops_at_that_level(x64):
  """ddim_sample(t_end=s) returns x_s: continuing from there on the rest of the grid is the
  run on the whole grid (eta = 0, deterministic), to float64 precision."""
  sched = diffusion.make_schedule(np_linear_betas(1000))
  model = gaussian_model_fn(sched, MU, S, "eps")
  key = jax.random.key(0)
  x_T = jax.random.normal(jax.random.key(1), (64, 2), jnp.float64)
  grid = diffusion.spaced_timesteps(1000, 40)
  whole, trajectory = diffusion.ddim_sample(
    key, model, sched, timesteps=grid, x_init=x_T, return_trajectory=True
  )
  s = int(grid[25])
  x_s = diffusion.ddim_sample(key, model, sched, timesteps=grid[:25], x_init=x_T, t_end=s)
  np.testing.assert_allclose(x_s, trajectory.x[25], rtol=1e-12, atol=1e-12)
  rest = diffusion.ddim_sample(key, model, sched, timesteps=grid[25:], x_init=x_s)
  np.testing.assert_allclose(rest, whole, rtol=1e-12, atol=1e-12)
  # x_s is on the ODE's path: x_s's standardized value is x_T's.
  a2 = float(sched.alphas_cumprod[s])
  z_s = (np.asarray(x_s) - math.sqrt(a2) * MU) / math.sqrt(a2 * S**2 + 1 - a2)
  np.testing.assert_allclose(MU + S * z_s, _ode_solution(sched, x_T, 999), atol=5e-3)


@pytest.mark.parametrize("name", ["ddpm", "respaced", "ddim"])
def test_ancestral_t_end_has_the_marginal_of_that_level(name, x64):
  """From x_T ~ N(0, I) to t_end = s with the exact model (ddim: eta = 1), x_s has q's
  marginal N(a_s mu, a_s^2 s^2 + 1 - a_s^2) (20,000 samples)."""
  sched = diffusion.make_schedule(np_linear_betas(1000))
  model = gaussian_model_fn(sched, MU, S, "eps")
  n, s = 20000, 300
  grid = np.arange(999, s, -1) if name == "ddpm" else diffusion.spaced_timesteps(1000, 50)
  grid = grid[grid > s]
  extra = {"ddim": {"eta": 1.0}}.get(name, {})
  x_s = jax.jit(
    lambda k: SAMPLERS[name](k, model, sched, (n, 1), timesteps=grid, t_end=s, **extra)
  )(jax.random.key(2))
  a2 = float(sched.alphas_cumprod[s])
  mean, std = math.sqrt(a2) * MU, math.sqrt(a2 * S**2 + 1 - a2)
  assert abs(float(x_s.mean()) - mean) < 5 * std / math.sqrt(n)
  assert abs(float(x_s.std()) - std) < 5 * std / math.sqrt(2 * n)


def test_t_end_is_checked(sched20):
  model = gaussian_model_fn(sched20, MU, S, "eps")
  with pytest.raises(ValueError, match=r"ddim_sample: t_end must be a level in \[0, 5\]"):
    diffusion.ddim_sample(jax.random.key(0), model, sched20, (2, 1), timesteps=[19, 5], t_end=6)
  with pytest.raises(ValueError, match="ddpm_sample: t_end must be an integer level"):
    diffusion.ddpm_sample(jax.random.key(0), model, sched20, (2, 1), t_end=0.5)


def test_ddim_invert_trajectory(x64):
  """ddim_invert(return_trajectory=True): the levels ascending, x[k] the state reached at
  level k (the inversion on the grid's levels up to it), x[-1] the result."""
  sched = diffusion.make_schedule(np_linear_betas(1000))
  model = gaussian_model_fn(sched, MU, S, "eps")
  x0 = MU + S * jax.random.normal(jax.random.key(0), (16, 2), jnp.float64)
  grid = diffusion.spaced_timesteps(1000, 10)
  x_T, trajectory = diffusion.ddim_invert(model, sched, x0, timesteps=grid, return_trajectory=True)
  np.testing.assert_array_equal(trajectory.timesteps, grid[::-1])
  assert trajectory.x.shape == (10, 16, 2) and trajectory.x0.shape == (10, 16, 2)
  np.testing.assert_array_equal(trajectory.x[-1], x_T)
  for k in (0, 4):
    partial = diffusion.ddim_invert(model, sched, x0, timesteps=grid[::-1][: k + 1][::-1])
    np.testing.assert_allclose(trajectory.x[k], partial, rtol=1e-12, atol=1e-12)
  # x0 of the first step is the data itself (the source level is the data, ac = 1).
  np.testing.assert_allclose(trajectory.x0[0], x0, rtol=1e-12)


def test_img2img_timesteps_is_diffusers_get_timesteps():
  """The last int(n * strength) of diffusers' n levels (get_timesteps truncates); the
  docs' former recipe spaced_timesteps(601, 30) is another grid than strength 0.6 at 50
  steps (600, 579, ... against 580, 560, ...)."""
  grid = diffusion.img2img_timesteps(1000, 50, 0.6)
  np.testing.assert_array_equal(grid, np.arange(29, -1, -1) * 20)
  assert not np.array_equal(grid, diffusion.spaced_timesteps(601, 30))
  np.testing.assert_array_equal(
    diffusion.img2img_timesteps(1000, 50, 0.6, steps_offset=1), np.arange(29, -1, -1) * 20 + 1
  )
  # int() truncates: 0.55 * 30 = 16.5 keeps 16 levels; strength 1 keeps all.
  assert len(diffusion.img2img_timesteps(1000, 30, 0.55)) == 16
  np.testing.assert_array_equal(
    diffusion.img2img_timesteps(1000, 30, 1.0, spacing="trailing"),
    diffusion.spaced_timesteps(1000, 30, "trailing"),
  )
  for strength in (0.0, 1.5, -0.1):
    with pytest.raises(ValueError, match=r"img2img_timesteps: strength must be a number in"):
      diffusion.img2img_timesteps(1000, 50, strength)
  with pytest.raises(ValueError, match="img2img_timesteps: strength 0.01 keeps"):
    diffusion.img2img_timesteps(1000, 50, 0.01)


def test_steps_offset_applies_to_leading_only():
  np.testing.assert_array_equal(
    diffusion.spaced_timesteps(1000, 50, "leading", steps_offset=1),
    diffusion.spaced_timesteps(1000, 50, "leading") + 1,
  )
  with pytest.raises(ValueError, match="steps_offset applies to spacing='leading' only"):
    diffusion.spaced_timesteps(1000, 50, "linspace", steps_offset=1)
  with pytest.raises(ValueError, match="steps_offset must be an integer in"):
    diffusion.spaced_timesteps(1000, 50, "leading", steps_offset=20)
