"""The sampler API research code uses (gen_jax/diffusion/samplers.py): eps_and_x0,
Heun's key independence without churn, x_init and SDEdit, DDIM inversion,
return_trajectory, timesteps=, and the errors for float t and swapped arguments.
The oracle is one-Gaussian data N(mu, s^2), whose exact model is known in every
prediction (tests/support/diffusion.py: gaussian_model_fn).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion
from tests.support.diffusion import (
  gaussian_model_fn,
  np_abar,
  np_linear_betas,
  np_rescale_zero_terminal_snr,
)

MU, S = 0.2, 0.3


@pytest.fixture(scope="module")
def sched100():
  return diffusion.make_schedule(np_linear_betas(100, 1e-3, 0.2))


# ----------------------------------------------------------------------------
# eps_and_x0
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.slow
def test_eps_and_x0_float64(x64, prediction):
  """Against the closed forms in float64, on a zero-SNR schedule (x0 and v:
  at every level, the top one included; eps below the top)."""
  betas = np_rescale_zero_terminal_snr(np_linear_betas(50, 1e-3, 0.2))
  sched = diffusion.make_schedule(betas)
  abar = np_abar(betas)
  rng = np.random.default_rng(0)
  t = np.arange(50) if prediction != "eps" else np.arange(49)
  x_t, out = rng.standard_normal((2, len(t), 3))
  fn = jax.jit(
    lambda x, t, o: diffusion.eps_and_x0(sched, x_t=x, t=t, output=o, prediction=prediction)
  )
  eps, x0 = fn(x_t, t, out)
  a, c = np.sqrt(abar[t])[:, None], np.sqrt(1 - abar[t])[:, None]
  ref = {
    "eps": (out, (x_t - c * out) / np.where(a > 0, a, 1)),
    "x0": ((x_t - a * out) / c, out),
    "v": (a * out + c * x_t, a * x_t - c * out),
  }[prediction]
  np.testing.assert_allclose(eps, ref[0], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(x0, ref[1], rtol=1e-12, atol=1e-12)
  assert np.all(np.isfinite(eps)) and np.all(np.isfinite(x0))


# ----------------------------------------------------------------------------
# Heun without churn does not depend on the key
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_heun_without_churn_ignores_the_key(sched100):
  """s_churn = 0: the noise term is exactly 0, so two keys give bitwise-equal
  samples from the same x_init, in float32. Written as sqrt(sigma_hat^2 -
  sigma^2), XLA fuses it into an FMA whose result is the rounding residue of
  sigma^2, and the samples moved with the key."""
  model = gaussian_model_fn(sched100, MU, S, "eps")
  x_init = jax.random.normal(jax.random.key(9), (256, 2))
  run = jax.jit(lambda k: diffusion.heun_sample(k, model, sched100, num_steps=18, x_init=x_init))
  a, b = np.asarray(run(jax.random.key(1))), np.asarray(run(jax.random.key(2)))
  assert a.dtype == np.float32
  np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# x_init, SDEdit, inversion
# ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m", "heun"])
def test_sdedit_returns_the_data_law(sampler):
  """With a model exact for the data, noising data to level t and denoising
  from there returns samples of the data law (SDEdit / img2img)."""
  sched = diffusion.make_schedule(np_linear_betas(1000))
  model = gaussian_model_fn(sched, MU, S, "eps")
  n, t_start = 20000, 600
  key = jax.random.key(3)
  x0 = MU + S * jax.random.normal(jax.random.key(4), (n, 1))
  noise = jax.random.normal(key, (n, 1))
  x_t = diffusion.make_q_sample(sched)(x0=x0, t=jnp.full((n,), t_start), noise=noise)
  grid = {
    "ddim": diffusion.spaced_timesteps(t_start + 1, 100),
    "ddpm": np.arange(t_start, -1, -1),
    "dpm++2m": np.asarray(diffusion.log_sigma_timesteps(sched, 30))[::-1],
  }.get(sampler)
  if sampler == "dpm++2m":
    grid = grid[grid <= t_start]
  # Heun: EDM's rho-grid from the start level's sigma down to sigma_0.
  sigmas = np.asarray(diffusion.schedule_sigmas(sched), np.float64)
  heun_sigmas = np.asarray(diffusion.karras_sigmas(sigmas[0], sigmas[t_start], 40))
  fn = {
    "ddim": lambda k: diffusion.ddim_sample(k, model, sched, timesteps=grid, x_init=x_t),
    "ddpm": lambda k: diffusion.ddpm_sample(k, model, sched, timesteps=grid, x_init=x_t),
    "dpm++2m": lambda k: diffusion.dpmpp_2m_sample(k, model, sched, timesteps=grid, x_init=x_t),
    "heun": lambda k: diffusion.heun_sample(k, model, sched, sigmas=heun_sigmas, x_init=x_t),
  }[sampler]
  x = np.asarray(jax.jit(fn)(jax.random.key(5)), np.float64)
  print(sampler, x.mean() - MU, x.std() - S)
  assert abs(x.mean() - MU) < 5 * S / math.sqrt(n) + 0.003
  assert abs(x.std() - S) < 5 * S / math.sqrt(2 * n) + 0.01 * S


@pytest.mark.slow
def test_sdedit_from_level_zero_returns_the_input(sched100):
  """t_start = 0: one step, the x0 prediction at the lowest level, which for
  the exact model is the input up to the noise at that level (sqrt(1 - ac_0)
  = 0.03, shrunk by the posterior to ~0.03 * 0.09 / 0.0901)."""
  model = gaussian_model_fn(sched100, MU, S, "eps")
  x0 = MU + S * jax.random.normal(jax.random.key(0), (500, 1))
  noise = jax.random.normal(jax.random.key(1), (500, 1))
  x_t = diffusion.make_q_sample(sched100)(x0=x0, t=jnp.zeros((500,), jnp.int32), noise=noise)
  out = jax.jit(lambda k: diffusion.ddim_sample(k, model, sched100, timesteps=[0], x_init=x_t))(
    jax.random.key(2)
  )
  assert np.max(np.abs(np.asarray(out - x0))) < 4 * 0.0317


@pytest.mark.slow
def test_ddim_inversion_round_trip():
  """data -> x_T -> data with the exact eps of Gaussian data (N(0.2, 0.3^2),
  linear T = 1000). The round trip's error is first order: eps is evaluated
  at the previous level while inverting, and DDIM's own steps are first
  order. Measured on 2000 points: max |error| 0.147 at 50 steps, 0.0375 at
  200 (root-mean-square 0.037 and 0.0094)."""
  sched = diffusion.make_schedule(np_linear_betas(1000))
  model = gaussian_model_fn(sched, MU, S, "eps")
  x0 = MU + S * jax.random.normal(jax.random.key(0), (2000, 1))
  errors = {}
  for steps in (50, 200):
    x_T = jax.jit(lambda x: diffusion.ddim_invert(model, sched, x, num_steps=steps))(x0)
    # x_T looks like the prior: N(0, 1) up to the data's share sqrt(ac_T) s.
    assert abs(float(jnp.std(x_T)) - 1) < 0.05
    back = jax.jit(
      lambda x: diffusion.ddim_sample(jax.random.key(1), model, sched, num_steps=steps, x_init=x)
    )(x_T)
    errors[steps] = float(jnp.max(jnp.abs(back - x0)))
    print(steps, "rms", float(jnp.sqrt(jnp.mean((back - x0) ** 2))), "max", errors[steps])
  # First order: 4x the steps, about 1/4 of the error.
  assert errors[200] < errors[50] / 3
  assert errors[50] < 0.2 and errors[200] < 0.05


# ----------------------------------------------------------------------------
# return_trajectory
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m", "heun"])
@pytest.mark.slow
def test_trajectory_final_x0_is_the_sample(sampler, sched100):
  model = gaussian_model_fn(sched100, MU, S, "v")
  fn = {
    "ddim": lambda k: diffusion.ddim_sample(
      k, model, sched100, (8, 2), num_steps=10, eta=0.5, prediction="v", return_trajectory=True
    ),
    "ddpm": lambda k: diffusion.ddpm_sample(
      k, model, sched100, (8, 2), timesteps=[99, 60, 30, 5], prediction="v", return_trajectory=True
    ),
    "dpm++2m": lambda k: diffusion.dpmpp_2m_sample(
      k, model, sched100, (8, 2), num_steps=7, prediction="v", return_trajectory=True
    ),
    "heun": lambda k: diffusion.heun_sample(
      k, model, sched100, (8, 2), num_steps=6, s_churn=1.0, prediction="v", return_trajectory=True
    ),
  }[sampler]
  samples, traj = jax.jit(fn)(jax.random.key(0))
  k = traj.timesteps.shape[0]
  assert traj.x.shape == traj.x0.shape == (k, 8, 2)
  assert np.all(np.diff(np.asarray(traj.timesteps)) < 0)
  np.testing.assert_allclose(samples, traj.x0[-1], rtol=1e-5, atol=1e-5)
  plain = jax.jit(lambda k: fn(k)[0])(jax.random.key(0))
  np.testing.assert_array_equal(plain, samples)


@pytest.mark.slow
def test_trajectory_states_match_a_manual_loop(x64):
  """DDIM (eta = 0) and DPM-Solver++(2M): the states at each network call are
  those of a float64 loop written from the papers."""
  betas = np_linear_betas(100, 1e-3, 0.2)
  sched = diffusion.make_schedule(betas)
  abar = np_abar(betas)
  model = gaussian_model_fn(sched, MU, S, "eps")
  x_T = np.random.default_rng(0).standard_normal((16, 1))

  def eps_np(x, t):
    a, c = math.sqrt(abar[t]), math.sqrt(1 - abar[t])
    return c * (x - a * MU) / (a * a * S * S + c * c)

  grid = [99, 70, 40, 20, 5]
  _, traj = diffusion.ddim_sample(
    jax.random.key(0), model, sched, timesteps=grid, x_init=x_T, return_trajectory=True
  )
  x, states = x_T, []
  for i, t in enumerate(grid):
    states.append(x)
    eps = eps_np(x, t)
    x0 = (x - math.sqrt(1 - abar[t]) * eps) / math.sqrt(abar[t])
    a_next = abar[grid[i + 1]] if i + 1 < len(grid) else 1.0
    x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
  np.testing.assert_allclose(traj.x, np.stack(states), rtol=1e-12, atol=1e-12)

  _, traj = diffusion.dpmpp_2m_sample(
    jax.random.key(0), model, sched, timesteps=grid, x_init=x_T, return_trajectory=True
  )
  lam = lambda t: math.log(math.sqrt(abar[t]) / math.sqrt(1 - abar[t]))
  x, states, x0_prev, h_prev = x_T, [], None, None
  for i, t in enumerate(grid[:-1]):
    states.append(x)
    x0 = (x - math.sqrt(1 - abar[t]) * eps_np(x, t)) / math.sqrt(abar[t])
    s = grid[i + 1]
    h = lam(s) - lam(t)
    d = x0 if i == 0 else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
    x = math.sqrt((1 - abar[s]) / (1 - abar[t])) * x + math.sqrt(abar[s]) * -math.expm1(-h) * d
    x0_prev, h_prev = x0, h
  states.append(x)
  np.testing.assert_allclose(traj.x, np.stack(states), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# Errors: float t, swapped arguments, conflicting grids
# ----------------------------------------------------------------------------


def test_float_t_names_the_public_function(sched100):
  x = jnp.zeros((2, 3))
  t = jnp.array([3.0, 7.0])
  calls = {
    "q_sample": lambda: diffusion.make_q_sample(sched100)(x0=x, t=t, noise=x),
    "q_step": lambda: diffusion.q_step(sched100, x_prev=x, t=t, noise=x),
    "q_posterior": lambda: diffusion.q_posterior(sched100, x0=x, x_t=x, t=t),
    "p_mean_variance": lambda: diffusion.p_mean_variance(sched100, x_t=x, t=t, eps=x),
    "eps_and_x0": lambda: diffusion.eps_and_x0(sched100, x_t=x, t=t, output=x, prediction="v"),
    "predict_x0_from_eps": lambda: diffusion.predict_x0_from_eps(sched100, x_t=x, t=t, eps=x),
    "v_target": lambda: diffusion.v_target(sched100, x0=x, t=t, noise=x),
  }
  for name, call in calls.items():
    with pytest.raises(TypeError, match=f"{name}: t must hold integer timesteps .*float32"):
      call()
  model = lambda x, t: jnp.zeros_like(x)
  key = jax.random.key(0)
  for name, call in {
    "ddim_sample": diffusion.ddim_sample,
    "ddpm_sample": diffusion.ddpm_sample,
    "dpmpp_2m_sample": diffusion.dpmpp_2m_sample,
    "heun_sample": diffusion.heun_sample,
  }.items():
    with pytest.raises(TypeError, match=f"{name}: timesteps must hold integer"):
      call(key, model, sched100, (2, 3), timesteps=jnp.array([50.0, 10.0]))
  with pytest.raises(TypeError, match="ddim_invert: timesteps must hold integer"):
    diffusion.ddim_invert(model, sched100, x, timesteps=np.array([50.0, 10.0]))


def test_swaps_are_refused(sched100):
  x = jnp.zeros((2, 3))
  t = jnp.array([3, 7])
  f = lambda x, t: x
  with pytest.raises(TypeError):
    diffusion.q_posterior(sched100, x, x, t)
  with pytest.raises(TypeError):
    diffusion.p_mean_variance(sched100, x, t, x)
  with pytest.raises(TypeError):
    diffusion.guided_eps_fn(f, f, 1.0)
  with pytest.raises(TypeError):
    diffusion.eps_and_x0(sched100, x, t, x, "eps")
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="num_steps or timesteps, not both"):
    diffusion.ddim_sample(key, f, sched100, (2, 3), num_steps=5, timesteps=[9, 0])
  with pytest.raises(ValueError, match="at most one of num_steps, timesteps, sigmas"):
    diffusion.heun_sample(key, f, sched100, (2, 3), num_steps=5, sigmas=[10.0, 1.0])
  with pytest.raises(ValueError, match="sigmas must be positive and strictly decreasing"):
    diffusion.heun_sample(key, f, sched100, (2, 3), sigmas=[1.0, 10.0])
  with pytest.raises(ValueError, match="differs from x_init"):
    diffusion.ddim_sample(key, f, sched100, (2, 4), x_init=x)
  with pytest.raises(ValueError, match="give shape or x_init"):
    diffusion.ddim_sample(key, f, sched100)


def test_heun_sigmas_snap_to_levels(sched100):
  """sigmas= is snapped to the nearest levels; the trajectory's timesteps are them."""
  model = gaussian_model_fn(sched100, MU, S, "eps")
  sig = np.asarray(diffusion.schedule_sigmas(sched100), np.float64)
  wanted = np.array([sig[80] * 1.01, sig[40] * 0.99, sig[3]])
  _, traj = jax.jit(
    lambda k: diffusion.heun_sample(
      k, model, sched100, (4, 1), sigmas=wanted, return_trajectory=True
    )
  )(jax.random.key(0))
  assert np.asarray(traj.timesteps).tolist() == [80, 40, 3]
