"""Tests for the fast samplers of gen_jax/diffusion/samplers.py: respaced DDPM,
DPM-Solver++(2M) and EDM Heun with churn.

References: float64 numpy written from the papers (Nichol & Dhariwal 2021
for respacing; Lu et al. 2022, Algorithm 2, for DPM-Solver++(2M); Karras et
al. 2022, eq. 5 and Algorithm 2, for EDM), driven by the Gaussian-mixture
oracle's exact eps (gen_jax/testing.py), and the exact output law of a
linear-Gaussian chain (testing.gaussian_sampler_law).
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion, testing
from tests.support.diffusion import (
  ABAR,
  BETAS,
  GMM2,
  N_SAMPLES,
  assert_trajectories_close,
  count_primitive,
  counting,
  draw_x_T,
  gmm_np,
  mixture_failures,
  np_dpmpp_2m,
  np_edm_heun,
)

F32 = jnp.float32


# ----------------------------------------------------------------------------
# Respaced DDPM
# ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("variance", ["small", "large"])
def test_respaced_exact_law_one_gaussian(sched, variance):
  """On N(mu, s^2) data with the exact eps the chain is linear-Gaussian:
  "small" has the law of DDIM with eta = 1 on the same timesteps, "large"
  the law of DDPM on the respaced betas (testing.gaussian_sampler_law)."""
  mu, s, n, steps = np.array([0.5, -0.3]), 0.08, 40000, 25
  eps_fn = testing.gmm_eps_fn(sched, [1.0], mu[None], [s])
  x = np.asarray(
    jax.jit(
      lambda k: diffusion.respaced_ddpm_sample(
        k, eps_fn, sched, (n, 2), num_steps=steps, variance=variance
      )
    )(jax.random.key(4)),
    np.float64,
  )
  kept = np.round(np.linspace(999, 0, steps)).astype(int)
  if variance == "small":
    law = dict(betas=BETAS, sampler="ddim", eta=1.0, timesteps=kept)
  else:
    abar_kept = ABAR[kept[::-1]]
    law = dict(
      betas=1 - abar_kept / np.append(1.0, abar_kept[:-1]), sampler="ddpm", variance="large"
    )
  for dim in range(2):
    mean, std = testing.gaussian_sampler_law(mu=mu[dim], s=s, **law)
    assert abs(x[:, dim].mean() - mean) < 5 * std / math.sqrt(n)
    assert abs(x[:, dim].std() / std - 1) < 5 / math.sqrt(2 * n)


@pytest.mark.slow
def test_respaced_all_steps_is_ddpm(sched):
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  key = jax.random.key(1)
  full = jax.jit(lambda k: diffusion.ddpm_sample(k, eps_fn, sched, (64, 2)))(key)
  respaced = jax.jit(
    lambda k: diffusion.respaced_ddpm_sample(k, eps_fn, sched, (64, 2), num_steps=1000)
  )(key)
  np.testing.assert_allclose(respaced, full, atol=2e-4)


# ----------------------------------------------------------------------------
# DPM-Solver++(2M) and EDM Heun against float64 references
# ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 20])
def test_dpmpp_2m_matches_numpy(x64, steps):
  sched = diffusion.make_schedule(diffusion.linear_betas(1000))
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  key = jax.random.key(2)
  got = jax.jit(lambda k: diffusion.dpmpp_2m_sample(k, eps_fn, sched, (200, 2), num_steps=steps))(
    key
  )
  timesteps = np.asarray(diffusion.log_sigma_timesteps(sched, steps))[::-1] if steps > 1 else [999]
  ref = np_dpmpp_2m(draw_x_T(key, (200, 2)), timesteps, ABAR, gmm_np(GMM2))
  assert_trajectories_close(got, ref)


@pytest.mark.slow
def test_dpmpp_first_order_step_is_ddim(sched):
  """With two steps DPM-Solver++ is first order throughout, so it is DDIM
  (eta = 0) on the same two timesteps (DDIM's are 999 and 0 as well)."""
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  key = jax.random.key(3)
  dpm = jax.jit(lambda k: diffusion.dpmpp_2m_sample(k, eps_fn, sched, (100, 2), num_steps=2))(key)
  ddim = jax.jit(lambda k: diffusion.ddim_sample(k, eps_fn, sched, (100, 2), num_steps=2))(key)
  np.testing.assert_allclose(dpm, ddim, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
  "churn", [dict(), dict(s_churn=40.0), dict(s_churn=10.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)]
)
def test_heun_matches_numpy(x64, churn):
  sched = diffusion.make_schedule(diffusion.linear_betas(1000))
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  key, steps, shape = jax.random.key(5), 12, (200, 2)
  got = jax.jit(lambda k: diffusion.heun_sample(k, eps_fn, sched, shape, num_steps=steps, **churn))(
    key
  )
  # The documented noise of step i: fold_in(split(key)[1], i).
  step_key = jax.random.split(key)[1]
  noises = [
    np.asarray(jax.random.normal(jax.random.fold_in(step_key, i), shape)) for i in range(steps)
  ]
  timesteps = np.asarray(diffusion.edm_timesteps(sched, steps))
  ref = np_edm_heun(draw_x_T(key, shape), timesteps, ABAR, gmm_np(GMM2), noises, **churn)
  assert_trajectories_close(got, ref, tight=1e-7)


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile")  # small programs: compilation is the cost
def test_heun_churn_gating(sched):
  """Churn outside [s_tmin, s_tmax] is no churn; inside it changes the output."""
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  key = jax.random.key(6)
  run = lambda **kw: np.asarray(
    jax.jit(lambda k: diffusion.heun_sample(k, eps_fn, sched, (100, 2), num_steps=10, **kw))(key)
  )
  plain = run()
  np.testing.assert_array_equal(run(s_churn=40.0, s_tmin=1e4), plain)
  assert np.max(np.abs(run(s_churn=40.0) - plain)) > 1e-2


# ----------------------------------------------------------------------------
# Network calls, point masses, one scan
# ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,steps,calls", [("respaced", 50, 50), ("dpm++2m", 20, 20), ("heun", 18, 35), ("heun", 1, 1)]
)
@pytest.mark.usefixtures("fast_compile")  # small programs: compilation is the cost
def test_network_calls(sched, name, steps, calls):
  counter = []
  eps_fn = counting(testing.gmm_eps_fn(sched, **GMM2), counter)
  fn = {
    "respaced": diffusion.respaced_ddpm_sample,
    "dpm++2m": diffusion.dpmpp_2m_sample,
    "heun": diffusion.heun_sample,
  }[name]
  jax.block_until_ready(
    jax.jit(lambda k: fn(k, eps_fn, sched, (4, 2), num_steps=steps))(jax.random.key(0))
  )
  assert len(counter) == calls


@pytest.mark.parametrize(
  "name,kw",
  [
    pytest.param("respaced", dict(num_steps=7), marks=pytest.mark.slow),
    pytest.param("respaced", dict(num_steps=7, variance="large"), marks=pytest.mark.slow),
    ("dpm++2m", dict(num_steps=7)),
    pytest.param("heun", dict(num_steps=7), marks=pytest.mark.slow),
    pytest.param("heun", dict(num_steps=7, s_churn=20.0), marks=pytest.mark.slow),
  ],
)
def test_point_mass_returns_the_point(name, kw):
  """Data = a point mass: the exact eps predicts x0 = mu at every level, and
  each sampler's last step (the posterior mean; the x0 prediction; the Euler
  step to sigma = 0) returns mu."""
  sched = diffusion.make_schedule(diffusion.linear_betas(20, 1e-3, 0.2))
  mu = np.array([0.3, -0.7])
  eps_fn = testing.gmm_eps_fn(sched, [1.0], mu[None], [0.0])
  fn = {
    "respaced": diffusion.respaced_ddpm_sample,
    "dpm++2m": diffusion.dpmpp_2m_sample,
    "heun": diffusion.heun_sample,
  }[name]
  x = jax.jit(lambda k: fn(k, eps_fn, sched, (300, 2), **kw))(jax.random.key(6))
  np.testing.assert_allclose(x, np.broadcast_to(mu, x.shape), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["respaced", "dpm++2m", "heun", "ode_log_likelihood"])
def test_one_scan_and_size_independent_of_steps(sched, name):
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  sizes = {}
  for steps in (10, 300):
    fn = {
      "respaced": lambda k: diffusion.respaced_ddpm_sample(
        k, eps_fn, sched, (8, 2), num_steps=steps
      ),
      "dpm++2m": lambda k: diffusion.dpmpp_2m_sample(k, eps_fn, sched, (8, 2), num_steps=steps),
      "heun": lambda k: diffusion.heun_sample(
        k, eps_fn, sched, (8, 2), num_steps=steps, s_churn=1.0
      ),
      "ode_log_likelihood": lambda k: diffusion.ode_log_likelihood(
        k, eps_fn, sched, jnp.zeros((8, 2)), steps
      ),
    }[name]
    closed = jax.make_jaxpr(fn)(jax.random.key(0))
    scans = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == steps
    assert count_primitive(closed.jaxpr, "scan") == 1
    sizes[steps] = len(closed.jaxpr.eqns) + len(scans[0].params["jaxpr"].jaxpr.eqns)
    if steps == 300:
      start = time.perf_counter()
      jax.jit(fn).lower(jax.random.key(0)).compile()
      assert time.perf_counter() - start < 10.0
  assert sizes[10] == sizes[300]


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile")  # small programs: compilation is the cost
def test_jit_matches_eager():
  sched = diffusion.make_schedule(diffusion.linear_betas(20, 1e-3, 0.2))
  key = jax.random.key(0)
  eps_fn = lambda x, t: 0.5 * x + 0.01 * t[:, None]
  x = jax.random.normal(jax.random.key(1), (4, 3))
  # Heun has the most Python-side logic (churn gating, lax.cond);
  # ode_bits_per_dim covers the likelihood.
  cases = {
    "heun": lambda k: diffusion.heun_sample(
      k, eps_fn, sched, (4, 3), num_steps=5, s_churn=5.0, clip=True
    ),
    "ode_bits_per_dim": lambda k: diffusion.ode_bits_per_dim(
      k, eps_fn, sched, jnp.clip(jnp.round((x + 1) * 127.5), 0, 255) / 127.5 - 1, 10
    ),
  }
  for name, fn in cases.items():
    eager, jitted = fn(key), jax.jit(fn)(key)
    assert np.all(np.isfinite(jitted)), name
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5, err_msg=name)


def test_bad_num_steps_raise(sched):
  eps_fn = lambda x, t: jnp.zeros_like(x)
  key = jax.random.key(0)
  for call in (
    lambda s: diffusion.respaced_ddpm_sample(key, eps_fn, sched, (2, 2), num_steps=s),
    lambda s: diffusion.dpmpp_2m_sample(key, eps_fn, sched, (2, 2), num_steps=s),
    lambda s: diffusion.heun_sample(key, eps_fn, sched, (2, 2), num_steps=s),
  ):
    for steps in (0, 1001, 2.5, True):
      with pytest.raises(ValueError, match="num_steps"):
        call(steps)
  with pytest.raises(ValueError, match="num_steps"):
    diffusion.ode_log_likelihood(key, eps_fn, sched, jnp.zeros((2, 2)), 1000)
  with pytest.raises(ValueError, match="variance"):
    diffusion.respaced_ddpm_sample(key, eps_fn, sched, (2, 2), num_steps=5, variance="learned")


# ----------------------------------------------------------------------------
# The mixture at the advertised step counts
# ----------------------------------------------------------------------------


# Measured on GMM2 with 2000 samples (key 3); the data-vs-data baseline is
# ~0.011. Mode std ratios: respaced-100 "small" 0.76-0.83 (the respaced
# beta~ omits more of x0's uncertainty than at T steps), "large" 1.09-1.15;
# DPM++(2M)-20 1.03-1.10; Heun-18 (35 calls) 1.04-1.12, sliced W1 0.020,
# about DDIM-50's (0.021; benchmarks/sampler_oracle.py has the full table);
# Heun-50 with churn 10: 1.00-1.03.
ADVERTISED = {
  "respaced_small": (
    lambda e, s, k: diffusion.respaced_ddpm_sample(k, e, s, (N_SAMPLES, 2), num_steps=100),
    (0.7, 1.06),
    2.0,
  ),
  "respaced_large": (
    lambda e, s, k: diffusion.respaced_ddpm_sample(
      k, e, s, (N_SAMPLES, 2), num_steps=100, variance="large"
    ),
    (0.95, 1.25),
    2.0,
  ),
  "dpm++2m_20": (
    lambda e, s, k: diffusion.dpmpp_2m_sample(k, e, s, (N_SAMPLES, 2), num_steps=20),
    (0.9, 1.15),
    1.5,
  ),
  "heun_18": (
    lambda e, s, k: diffusion.heun_sample(k, e, s, (N_SAMPLES, 2), num_steps=18),
    (0.9, 1.15),
    2.0,
  ),
  "heun_churn_50": (
    lambda e, s, k: diffusion.heun_sample(k, e, s, (N_SAMPLES, 2), num_steps=50, s_churn=10.0),
    (0.9, 1.1),
    1.5,
  ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ADVERTISED))
def test_sampler_reproduces_mixture(sched, sw_baseline, name):
  run, band, sw_factor = ADVERTISED[name]
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  samples = np.asarray(jax.jit(lambda k: run(eps_fn, sched, k))(jax.random.key(3)))
  assert samples.shape == (N_SAMPLES, 2) and np.all(np.isfinite(samples))
  failures, numbers = mixture_failures(
    samples, **GMM2, std_band=band, sw_base=sw_baseline, sw_factor=sw_factor
  )
  print(name, numbers)
  assert not failures, failures
  # Negative control: the exact eps of a shifted mixture fails the same criteria.
  wrong = testing.gmm_eps_fn(
    sched, GMM2["weights"], GMM2["means"] + np.array([0.1, 0.05]), GMM2["stds"]
  )
  samples = np.asarray(jax.jit(lambda k: run(wrong, sched, k))(jax.random.key(3)))
  failures, _ = mixture_failures(
    samples, **GMM2, std_band=band, sw_base=sw_baseline, sw_factor=sw_factor
  )
  assert failures


@pytest.mark.slow
def test_dpmpp_20_steps_as_good_as_ddpm_1000(sched):
  """DPM-Solver++(2M) at 20 calls against ancestral DDPM at 1000, on 10000
  samples against one reference set. Measured (keys 3, 4): sliced W1 0.012 /
  0.011 for DPM++-20, 0.015 / 0.010 for DDPM-1000, 0.035 / 0.033 for DDIM-20;
  data-vs-data 0.007-0.013."""
  n = 10000
  eps_fn = testing.gmm_eps_fn(sched, **GMM2)
  ref, _ = testing.gmm_sample(np.random.default_rng(123), n, **GMM2)
  floor = np.mean(
    [
      testing.sliced_wasserstein(testing.gmm_sample(np.random.default_rng(s), n, **GMM2)[0], ref)
      for s in (7, 8)
    ]
  )
  key = jax.random.key(3)
  sw = {}
  for name, fn in (
    ("ddpm_1000", lambda k: diffusion.ddpm_sample(k, eps_fn, sched, (n, 2))),
    ("dpm++2m_20", lambda k: diffusion.dpmpp_2m_sample(k, eps_fn, sched, (n, 2), num_steps=20)),
    ("ddim_20", lambda k: diffusion.ddim_sample(k, eps_fn, sched, (n, 2), num_steps=20)),
  ):
    sw[name] = testing.sliced_wasserstein(np.asarray(jax.jit(fn)(key)), ref)
  print({k: round(v, 4) for k, v in sw.items()}, "floor", round(floor, 4))
  assert sw["dpm++2m_20"] <= 1.5 * max(sw["ddpm_1000"], floor)
  # The second-order correction is what gets it there: first order (DDIM)
  # at the same 20 calls is more than twice as far.
  assert sw["ddim_20"] > 2 * sw["dpm++2m_20"]
