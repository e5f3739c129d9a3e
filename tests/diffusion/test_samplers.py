"""Tests for ancestral DDPM and DDIM (gen_jax/diffusion/samplers.py) on the
Gaussian-mixture oracle, whose exact E[eps | x_t] is known (gen_jax/testing.py),
and the exact output law of a linear-Gaussian chain
(testing.gaussian_sampler_law); jit against eager for the discrete-time core,
and one compiled scan whose size does not grow with T.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion, testing
from tests.support.diffusion import (
  GMM2,
  N_SAMPLES,
  count_primitive,
  mixture_failures,
  np_linear_betas,
)

F32 = jnp.float32


def _run_sampler(kind, sched, eps_fn, key, n=N_SAMPLES, **kw):
  if kind == "ddpm":
    fn = lambda k: diffusion.ddpm_sample(k, eps_fn, sched, (n, 2), **kw)
  else:
    fn = lambda k: diffusion.ddim_sample(k, eps_fn, sched, (n, 2), **kw)
  return np.asarray(jax.jit(fn)(key))


# The std bands: the samplers' exact law on one Gaussian (testing.
# gaussian_sampler_law, also tested below) shrinks a mode of std 0.08 to
# 0.954 s (DDPM-1000, small variance: beta~ omits the x0 uncertainty) and
# 0.74 s (DDIM-50, eta = 0: coarse last steps); the SE of a ratio is ~2.5%.
# The sliced-W1 allowance is 1.5x the data-vs-data baseline for DDPM and 2x
# for DDIM-50, whose narrower modes alone cost ~1.9x (measured 0.021 vs 0.011).
CRITERIA = {
  "ddpm": (dict(variance="small"), (0.88, 1.06), 1.5),
  "ddim": (dict(num_steps=50, eta=0.0), (0.68, 1.06), 2.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_sampler_reproduces_mixture(kind, sched1000, sw_baseline):
  kw, band, sw_factor = CRITERIA[kind]
  eps_fn = testing.gmm_eps_fn(sched1000, **GMM2)
  samples = _run_sampler(kind, sched1000, eps_fn, jax.random.key(3), **kw)
  assert samples.shape == (N_SAMPLES, 2) and np.all(np.isfinite(samples))
  failures, numbers = mixture_failures(
    samples, **GMM2, std_band=band, sw_base=sw_baseline, sw_factor=sw_factor
  )
  print(kind, numbers)
  assert not failures, failures


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["shifted_means", "swapped_weights", "wide_stds"])
def test_sampler_negative_control(wrong, sched1000, sw_baseline):
  """The exact eps of a different mixture must fail the same criteria."""
  params = dict(GMM2)
  if wrong == "shifted_means":
    params["means"] = GMM2["means"] + np.array([0.1, 0.05])
  elif wrong == "swapped_weights":
    params["weights"] = [0.3, 0.5, 0.2]
  else:
    params["stds"] = list(1.4 * np.array(GMM2["stds"]))
  eps_fn = testing.gmm_eps_fn(sched1000, **params)
  for kind in ("ddpm", "ddim"):
    kw, band, sw_factor = CRITERIA[kind]
    samples = _run_sampler(kind, sched1000, eps_fn, jax.random.key(3), **kw)
    failures, numbers = mixture_failures(
      samples, **GMM2, std_band=band, sw_base=sw_baseline, sw_factor=sw_factor
    )
    print(wrong, kind, numbers, failures)
    assert failures, f"{kind} passed with a wrong predictor ({wrong})"


@pytest.mark.slow
@pytest.mark.parametrize(
  "kind,kw",
  [
    ("ddpm", dict(variance="small")),
    ("ddpm", dict(variance="large")),
    ("ddim", dict(num_steps=50, eta=0.0)),
    ("ddim", dict(num_steps=20, eta=1.0)),
  ],
)
def test_sampler_exact_law_one_gaussian(kind, kw, sched1000):
  """On one-Gaussian data the samplers' output law is known exactly (a
  linear-Gaussian chain); compare its mean and std with 40000 samples."""
  mu, s, n = np.array([0.5, -0.3]), 0.08, 40000
  eps_fn = testing.gmm_eps_fn(sched1000, [1.0], mu[None], [s])
  x = _run_sampler(kind, sched1000, eps_fn, jax.random.key(4), n=n, **kw)
  betas = np_linear_betas(1000)
  law_kw = (
    dict(sampler="ddpm", variance=kw["variance"])
    if kind == "ddpm"
    else dict(
      sampler="ddim",
      eta=kw["eta"],
      timesteps=np.round(np.linspace(999, 0, kw["num_steps"])).astype(int),
    )
  )
  for dim in range(2):
    mean, std = testing.gaussian_sampler_law(betas, mu[dim], s, **law_kw)
    assert abs(x[:, dim].mean() - mean) < 5 * std / math.sqrt(n)
    assert abs(x[:, dim].std() / std - 1) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize(
  "kind,kw",
  [
    pytest.param("ddpm", dict(variance="small"), marks=pytest.mark.slow),
    pytest.param("ddpm", dict(variance="large"), marks=pytest.mark.slow),
    ("ddim", dict(num_steps=10, eta=1.0)),
  ],
)
def test_sampler_point_mass_returns_the_point(kind, kw, sched20):
  """Data = a point mass at mu: the exact eps predicts x0 = mu at every step,
  so the last step (the mean, no noise; DDIM: the x0 prediction) returns mu
  exactly. Noise added at t = 0 would leave an error ~sqrt(beta~_1) = 0.03."""
  mu = np.array([0.3, -0.7])
  eps_fn = testing.gmm_eps_fn(sched20, [1.0], mu[None], [0.0])
  x = _run_sampler(kind, sched20, eps_fn, jax.random.key(6), n=500, **kw)
  np.testing.assert_allclose(x, np.broadcast_to(mu, x.shape), atol=1e-4)


@pytest.mark.slow
def test_ddim_eta1_smoke(sched1000):
  eps_fn = testing.gmm_eps_fn(sched1000, **GMM2)
  x = _run_sampler("ddim", sched1000, eps_fn, jax.random.key(5), n=1000, num_steps=50, eta=1.0)
  assert x.shape == (1000, 2) and np.all(np.isfinite(x))
  labels = np.argmin(((x[:, None] - GMM2["means"]) ** 2).sum(-1), 1)
  w_hat = np.bincount(labels, minlength=3) / 1000
  np.testing.assert_allclose(w_hat, GMM2["weights"], atol=0.07)
  # Stochastic: another key gives other samples; eta = 0 is deterministic
  # given x_T, eta = 1 is not the eta = 0 result.
  x0 = _run_sampler("ddim", sched1000, eps_fn, jax.random.key(5), n=1000, num_steps=50, eta=0.0)
  assert np.max(np.abs(x - x0)) > 1e-2


# ----------------------------------------------------------------------------
# jit, scan
# ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile")  # small programs: compilation is the cost
def test_jit_matches_eager(sched20):
  key = jax.random.key(0)
  x0 = testing.quantize(np.random.default_rng(0).uniform(-1, 1, (4, 3)))
  x0 = jnp.asarray(x0, F32)
  x_t = jax.random.normal(jax.random.key(1), (4, 3))
  eps = jax.random.normal(jax.random.key(2), (4, 3))
  t = jnp.array([0, 1, 9, 19])
  # A cheap, t-dependent predictor (eager mode compiles every op separately).
  eps_fn = lambda x, t: 0.5 * x + 0.01 * t[:, None]
  q_sample = diffusion.make_q_sample(sched20)
  cases = {
    "q_sample": (lambda a, b, c: q_sample(x0=a, t=b, noise=c), (x0, t, eps)),
    "q_step": (lambda a, b, c: diffusion.q_step(sched20, x_prev=a, t=b, noise=c), (x_t, t, eps)),
    "q_posterior": (
      lambda a, b, c: diffusion.q_posterior(sched20, x0=a, x_t=b, t=c),
      (x0, x_t, t),
    ),
    "predict_x0_from_eps": (
      lambda a, b, c: diffusion.predict_x0_from_eps(sched20, x_t=a, t=b, eps=c),
      (x_t, t, eps),
    ),
    "predict_eps_from_x0": (
      lambda a, b, c: diffusion.predict_eps_from_x0(sched20, x_t=a, t=b, x0=c),
      (x_t, t, x0),
    ),
    "p_mean_variance": (
      lambda a, b, c: diffusion.p_mean_variance(
        sched20, x_t=a, t=b, eps=c, variance="large", clip=True
      ),
      (x_t, t, eps),
    ),
    "simple_loss": (lambda k, x: diffusion.simple_loss(k, eps_fn, sched20, x), (key, x0)),
    "vlb_term": (
      lambda x0, x_t, t, eps: diffusion.vlb_term(sched20, x0=x0, x_t=x_t, t=t, output=eps),
      (x0, x_t, t, eps),
    ),
    "prior_kl": (lambda x: diffusion.prior_kl(sched20, x), (x0,)),
    "vlb_terms": (lambda k, x: diffusion.vlb_terms(k, eps_fn, sched20, x), (key, x0)),
    "vlb_bits_per_dim": (
      lambda k, x: diffusion.vlb_bits_per_dim(k, eps_fn, sched20, x, "large"),
      (key, x0),
    ),
    "ddpm_sample": (lambda k: diffusion.ddpm_sample(k, eps_fn, sched20, (4, 3)), (key,)),
    "ddim_sample": (
      lambda k: diffusion.ddim_sample(k, eps_fn, sched20, (4, 3), num_steps=7, eta=0.5, clip=True),
      (key,),
    ),
  }
  for name, (fn, args) in cases.items():
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
      assert np.all(np.isfinite(j)), name
      np.testing.assert_allclose(j, e, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "vlb_terms"])
def test_one_scan_and_size_independent_of_t(sampler):
  sizes = {}
  for num in (10, 1000):
    sched = diffusion.make_schedule(diffusion.linear_betas(num))
    eps_fn = testing.gmm_eps_fn(sched, **GMM2)
    fn = {
      "ddpm": lambda k: diffusion.ddpm_sample(k, eps_fn, sched, (8, 2)),
      "ddim": lambda k: diffusion.ddim_sample(k, eps_fn, sched, (8, 2), num_steps=num),
      "vlb_terms": lambda k: diffusion.vlb_terms(k, eps_fn, sched, jnp.zeros((8, 2))).total,
    }[sampler]
    closed = jax.make_jaxpr(fn)(jax.random.key(0))
    scans = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == num
    assert count_primitive(closed.jaxpr, "scan") == 1
    sizes[num] = len(closed.jaxpr.eqns) + len(scans[0].params["jaxpr"].jaxpr.eqns)
    if num == 1000:
      start = time.perf_counter()
      jax.jit(fn).lower(jax.random.key(0)).compile()
      assert time.perf_counter() - start < 10.0
  assert sizes[10] == sizes[1000]
