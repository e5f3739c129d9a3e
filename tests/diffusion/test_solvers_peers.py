"""The process samplers (gen_jax/diffusion/solvers.py) against the peers, step by step.

  gen_jax                               peer (float64 unless said)
  euler_sample on ve                    k-diffusion sample_euler (continuous sigmas)
  heun_sample on ve (churn 0 and > 0)   k-diffusion sample_heun, the same per-step noise
  dpmpp_2m_sample on ve                 k-diffusion sample_dpmpp_2m
  ddim_sample eta 0 / 1, dpmpp_2m on    k-diffusion sample_euler / sample_euler_ancestral /
    the discrete process (real t) and   sample_dpmpp_2m in x / alpha through
    vp_cosine                           DiscreteEpsDDPMDenoiser(quantize=False), and a
                                        hand-written cosine Denoiser
  euler_sample on rectified_flow        diffusers FlowMatchEulerDiscreteScheduler (shift 3):
                                        its sigmas, timesteps and steps (float32 inside step())
  heun_sample on the discrete process   k-diffusion sample_heun on DiscreteEpsDDPMDenoiser
    (DDPM's process_heun), EDM's grid   (quantize=False): the same calls, converging samples

Both sides call the same model: the exact posterior of a Gaussian mixture
(tests/support/solvers.py), through JAX on gen_jax's side and float64 numpy on the peer's.
gen_jax's calls are recorded with an ordered jax.debug.callback; the peer's at its model.
Tolerances: float64 on both sides agrees to 2e-15 relative (measured, the worst case
DPM-Solver++ on ve); 1e-11 leaves room for other BLAS / XLA builds. diffusers' flow-matching step casts
the sample to float32 (measured 6e-7): 5e-6, as test_peers.py allows float32 peers.
The fast tier keeps one case per peer; the rest are slow. These tests need the `peers` extra (torch, diffusers, k-diffusion): without it they skip.
"""

import importlib.util
import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gen_jax import diffusion  # noqa: E402
from gen_jax.diffusion import process as proc  # noqa: E402
from gen_jax.diffusion import solvers  # noqa: E402
from tests.support import peers  # noqa: E402
from tests.support.diffusion import GMM2  # noqa: E402
from tests.support.solvers import mixture_eps_x0, mixture_model_fn  # noqa: E402

pytestmark = pytest.mark.usefixtures("x64", "fast_compile")

TOL64 = 1e-11
TOL32 = 5e-6


@pytest.fixture(scope="module")
def k_sampling():
  if importlib.util.find_spec("k_diffusion") is None:
    pytest.skip("k-diffusion is not installed (the peers extra)")
  return peers.load_k_diffusion()


def recorded(model_fn, calls):
  """model_fn recording each call's (t, x_t) on the host, in order."""

  def record(x_t, t):
    calls.append((float(np.asarray(t)[0]), np.array(x_t, np.float64)))

  def fn(x_t, t):
    jax.debug.callback(record, x_t, t, ordered=True)
    return model_fn(x_t, t)

  return fn


def run_ours(sampler, process, model_fn, key, **options):
  calls = []
  out = sampler(recorded(model_fn, calls), process, key, **options)
  jax.effects_barrier()
  return np.asarray(out), np.array([t for t, _ in calls]), np.stack([x for _, x in calls])


def run_k(k_sampling, name, denoiser, x_init_ve, sigmas, noise=None, **options):
  """k-diffusion's sample_<name> on `sigmas` (ending in 0) with torch.randn_like returning
  noise(i) at its i-th draw; returns (sample, sigmas of the calls, the VE states there)."""
  sampling, _ = k_sampling
  seen, states = [], []

  def model(x, sigma):
    seen.append(float(sigma[0]))
    states.append(x.numpy().copy())
    return denoiser(x, sigma)

  proxy = peers._TorchWithNoise(noise or (lambda i: np.zeros(np.shape(x_init_ve))))
  with peers._patched(sampling, "torch", proxy):
    out = getattr(sampling, f"sample_{name}")(
      model, peers._tensor(x_init_ve), peers._tensor(sigmas), disable=True, **options
    )
  return out.numpy(), np.array(seen), np.stack(states)


def our_noise(key, shape):
  _, step_key = jax.random.split(key)
  return lambda i: np.asarray(jax.random.normal(jax.random.fold_in(step_key, i), shape))


def ve_denoiser(x, sigma):
  """D(x; sigma) = E[x0 | x] of the mixture under x = x0 + sigma eps, float64 numpy."""
  x_np = x.numpy()
  n = x_np.shape[0]
  _, x0 = mixture_eps_x0(np, x_np, np.ones(n), sigma.numpy().astype(np.float64), **GMM2)
  return peers._tensor(x0)


# ---------------------------------------------------------------------------------------------
# k-diffusion on the VE process


@pytest.mark.parametrize(
  "sampler, k_name, options",
  [
    pytest.param("euler", "euler", {}, marks=pytest.mark.slow),
    pytest.param("heun", "heun", {}, marks=pytest.mark.slow),
    ("heun", "heun", {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}),
    pytest.param("dpm++2m", "dpmpp_2m", {}, marks=pytest.mark.slow),
  ],
)
def test_ve_agrees_with_k_diffusion(k_sampling, sampler, k_name, options, record_property):
  """EDM's grid (18 sigmas from 80 to 0.002, then 0) on ve with sigma_max = 200 (so that the
  churn at sigma = 80 stays in range and no step is capped); our model predicts x0."""
  process = proc.ve(0.002, 200.0)
  grid = solvers.time_grid(process, 18, spacing="karras", t_start=80.0)
  key = jax.random.key(21)
  x_init = 80.0 * np.asarray(jax.random.normal(jax.random.key(22), (6, 2)))
  fn = solvers.PROCESS_SAMPLERS[sampler].fn
  model_fn = mixture_model_fn(process, GMM2, "x0")
  ours, t_ours, x_ours = run_ours(fn, process, model_fn, key, x_init=x_init, t=grid,
                                  prediction="x0", **options)  # fmt: skip
  theirs, sigmas, x_theirs = run_k(
    k_sampling, k_name, ve_denoiser, x_init, np.asarray(grid), our_noise(key, x_init.shape),
    **options,
  )  # fmt: skip
  np.testing.assert_allclose(t_ours, sigmas, rtol=1e-13)
  errors = {"sample": peers.max_rel_error(ours, theirs),
            "trajectory": peers.trajectory_rel_error(x_ours, x_theirs)}  # fmt: skip
  record_property("max_rel_error", errors)
  assert max(errors.values()) < TOL64, errors
  if options.get("s_churn"):
    assert np.any(sigmas[::2] > np.asarray(grid)[:-1] * 1.01)  # the churn raised sigma


# ---------------------------------------------------------------------------------------------
# VP processes through x / alpha


def _discrete_case():
  """The discrete process of DDPM's T = 1000 schedule and k-diffusion's own
  DiscreteEpsDDPMDenoiser(quantize=False) around the mixture's eps at real t (alpha from
  log sigma interpolated linearly in t, as its sigma_to_t does, in float64)."""
  _, external = peers.load_k_diffusion()
  schedule = diffusion.make_schedule(diffusion.linear_betas(1000))
  process = proc.discrete_process(schedule)
  ac = np.asarray(schedule.alphas_cumprod, np.float64)
  log_sigmas = 0.5 * np.log((1 - ac) / ac)

  def inner(x_t, t):
    sigma = np.exp(np.interp(t.numpy(), np.arange(len(ac)), log_sigmas))
    alpha = 1 / np.sqrt(1 + sigma**2)
    eps, _ = mixture_eps_x0(np, x_t.numpy(), alpha, alpha * sigma, **GMM2)
    return peers._tensor(eps)

  denoiser = external.DiscreteEpsDDPMDenoiser(inner, torch.from_numpy(ac), quantize=False)
  return process, denoiser, solvers.time_grid(process, 15, spacing="karras")


def _cosine_case():
  """vp_cosine and a Denoiser written here: sigma = tan(a + t (b - a)) in x / alpha, so the
  network's t = (atan(sigma) - a) / (b - a) and x_t = x / sqrt(1 + sigma^2)."""
  process = proc.vp_cosine()
  a, b = math.atan(math.exp(-7.5)), math.atan(math.exp(7.5))

  def denoiser(x, sigma):
    s = sigma.numpy().astype(np.float64)
    t = (np.arctan(s) - a) / (b - a)
    alpha, sig = np.cos(a + t * (b - a)), np.sin(a + t * (b - a))
    _, x0 = mixture_eps_x0(np, x.numpy() * alpha[:, None], alpha, sig, **GMM2)
    return peers._tensor(x0)

  return process, denoiser, solvers.time_grid(process, 15, spacing="karras", t_start=0.95)


@pytest.mark.parametrize("case", ["discrete", pytest.param("vp_cosine", marks=pytest.mark.slow)])
@pytest.mark.parametrize(
  "sampler, k_name, options",
  [
    pytest.param("ddim", "euler", {}, marks=pytest.mark.slow),
    ("ddim", "euler_ancestral", {"eta": 1.0}),
    pytest.param("dpm++2m", "dpmpp_2m", {}, marks=pytest.mark.slow),
  ],
)
def test_vp_agrees_with_k_diffusion(k_sampling, case, sampler, k_name, options, record_property):
  """DDIM is Euler in (x / alpha, sigma / alpha) (eta = 1: k-diffusion's ancestral step, whose
  sigma_up^2 is DDIM's posterior variance); DPM-Solver++(2M) is the same in any coordinates.
  The peer runs in x / alpha on sigma / alpha at our grid; the states compared are x_t."""
  process, denoiser, grid = _discrete_case() if case == "discrete" else _cosine_case()
  alpha, sigma = (np.asarray(v, np.float64) for v in process.alpha_sigma(grid[:-1]))
  sigmas = np.append(sigma / alpha, 0.0)
  key = jax.random.key(23)
  x_init = np.asarray(jax.random.normal(jax.random.key(24), (6, 2)))
  fn = solvers.PROCESS_SAMPLERS[sampler].fn
  ours, t_ours, x_ours = run_ours(
    fn, process, mixture_model_fn(process, GMM2, "eps"), key, x_init=x_init, t=grid, **options
  )
  k_options = {"eta": 1.0} if k_name == "euler_ancestral" else {}
  # Our c z in x is (c / alpha_s) z = sigma_up z in x / alpha: the same z.
  noise = our_noise(key, x_init.shape) if options else None
  theirs, seen, x_ve = run_k(
    k_sampling, k_name, denoiser, x_init / alpha[0], sigmas, noise, **k_options
  )
  np.testing.assert_allclose(seen, sigmas[:-1], rtol=1e-13)
  np.testing.assert_allclose(t_ours, np.asarray(grid)[:-1], rtol=1e-13)
  errors = {"sample": peers.max_rel_error(ours, theirs),
            "trajectory": peers.trajectory_rel_error(x_ours, x_ve * alpha[:, None, None])}  # fmt: skip
  record_property("max_rel_error", errors)
  assert max(errors.values()) < TOL64, errors


# ---------------------------------------------------------------------------------------------
# diffusers' flow-matching Euler


@pytest.mark.parametrize("shift", [pytest.param(1.0, marks=pytest.mark.slow), 3.0])
def test_rectified_flow_agrees_with_diffusers(shift, record_property):
  """FlowMatchEulerDiscreteScheduler (SD3's): its sigmas are time_grid(rectified_flow, N,
  t_end=its sigma_min, shift=shift) (float32 on its side), its timesteps 1000 sigmas, and its
  steps x + (sigma_next - sigma) v are euler_sample's with the velocity model on its grid."""
  diffusers = pytest.importorskip("diffusers")
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
  scheduler.set_timesteps(12)
  their_sigmas = scheduler.sigmas.numpy().astype(np.float64)
  rf = proc.rectified_flow()
  grid = solvers.time_grid(rf, 12, t_end=shift * 1e-3 / (1 + (shift - 1) * 1e-3), shift=shift)
  np.testing.assert_allclose(grid, their_sigmas, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(1000 * np.asarray(grid[:-1]), scheduler.timesteps.numpy(), rtol=1e-6)

  x_init = np.asarray(jax.random.normal(jax.random.key(25), (6, 2)))
  ours, _, x_ours = run_ours(
    solvers.euler_sample, rf, mixture_model_fn(rf, GMM2, "velocity"), None, x_init=x_init,
    t=their_sigmas, prediction="velocity",
  )  # fmt: skip
  x = peers._tensor(x_init)
  states = []
  for timestep in scheduler.timesteps:
    states.append(x.numpy().copy())
    s = float(timestep) / 1000  # the model's time, as the transformer reads it
    eps, x0 = mixture_eps_x0(np, x.numpy(), np.full(6, 1 - s), np.full(6, s), **GMM2)
    x = scheduler.step(peers._tensor(eps - x0), timestep, x).prev_sample
  errors = {"sample": peers.max_rel_error(ours, x.numpy()),
            "trajectory": peers.trajectory_rel_error(x_ours, np.stack(states))}  # fmt: skip
  record_property("max_rel_error", errors)
  assert max(errors.values()) < TOL32, errors


# ---------------------------------------------------------------------------------------------
# A DDPM schedule's process view: EDM's Heun at real t, as DiffusionModel's process_heun runs it


@pytest.mark.slow  # three grids and the discrete Heun: 30 s of compiles
def test_process_heun_on_ddpm_schedule_keeps_the_edm_grid_and_meets_k_diffusion(
  k_sampling, record_property
):
  """EDM's grid sigma / alpha from 80 to sigma_min = 0.02 (between the linear schedule's levels
  3 and 4) on the discrete process of DDPM's T = 1000 schedule: heun_sample calls the model at
  every requested sigma, sigma_min included (the discrete samplers.heun_sample snaps it to a
  level's), as k-diffusion's sample_heun on DiscreteEpsDDPMDenoiser(quantize=False) does.

  The two are not the same steps: ours is Heun in the process's time on x_t (EDM's Algorithm 1
  with the VP's s(t) and sigma(t)), k-diffusion's Heun in (x / alpha, sigma / alpha). Both are
  second-order solvers of one probability-flow ODE from the same start, so their samples differ
  by the discretisation error only: measured max relative difference 0.018, 0.0049, 0.0020 at
  N = 20, 40, 80 (float64). Asserted: every call sigma within 1e-13 of the request, the
  difference below 2.5% at N = 20 and shrinking at least 2x per doubling: both converge to
  the ODE's solution (lambda is piecewise linear in t, and Heun in t loses its second order at
  the levels' kinks: the measured ratios are 3.7 and 2.5)."""
  process, denoiser, _ = _discrete_case()
  x_init = np.asarray(jax.random.normal(jax.random.key(26), (6, 2)))
  model_fn = mixture_model_fn(process, GMM2, "eps")
  differences = []
  for num_steps in (20, 40, 80):
    sigmas = np.asarray(
      diffusion.karras_sigmas(sigma_min=0.02, sigma_max=80.0, num_steps=num_steps), np.float64
    )
    grid = np.append(np.asarray(process.t_from_log_snr(-2.0 * np.log(sigmas))), -1.0)
    ours, t_ours, _ = run_ours(solvers.heun_sample, process, model_fn, None, x_init=x_init, t=grid)
    alpha, sigma = (np.asarray(v, np.float64) for v in process.alpha_sigma(t_ours))
    theirs, seen, _ = run_k(k_sampling, "heun", denoiser, x_init / alpha[0], np.append(sigmas, 0))
    np.testing.assert_allclose(sigma / alpha, seen, rtol=1e-13)  # the same calls, unsnapped
    assert abs(seen[-1] - 0.02) < 1e-14  # the last call at the requested sigma_min
    differences.append(peers.max_rel_error(ours, theirs))
  record_property("max_rel_error", dict(zip(("N=20", "N=40", "N=80"), differences)))
  assert differences[0] < 0.025, differences
  assert differences[0] > 2 * differences[1] > 4 * differences[2], differences
  # DiffusionModel's plain "heun" (samplers.heun_sample) on the same request ends at a level's
  # sigma (the one nearest to 0.02 in log sigma), the "snaps every sigma".
  schedule = diffusion.make_schedule(diffusion.linear_betas(1000))
  calls = []
  diffusion.heun_sample(
    jax.random.key(0), recorded(model_fn, calls), schedule, None, sigmas=sigmas, x_init=x_init
  )
  jax.effects_barrier()
  last_level = int(calls[-1][0])
  alpha, sigma = (float(v) for v in process.alpha_sigma(np.int32(last_level)))
  assert abs(sigma / alpha - 0.02) > 1e-3, (last_level, sigma / alpha)
