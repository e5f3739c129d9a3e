"""The peers as test references: diffusers' schedulers and k-diffusion's samplers, run
from the same x_init, the same per-step noise and the same deterministic model as gen_jax,
recording (t, x_t) at every network call.

Import this module only after `pytest.importorskip("torch")`, ("diffusers"),
("k_diffusion"): the default install is torch-free, and these are the `peers`
extra (setup.cfg), which CI installs (.ci/run).

How each side runs:
  * The model is an `Oracle`: the exact E[eps | x_t] (or the exact v) of a
    Gaussian mixture, optionally guided by a second mixture. gen_jax calls it
    through JAX (`Oracle.jax_fn`), the peers through float64 numpy
    (`Oracle.np_out`), with guidance written diffusers' way on the peer side:
    uncond + s (cond - uncond), s = 1 + w.
  * gen_jax's network calls are recorded with an ordered `jax.debug.callback`
    inside its compiled scan (`run_gen_jax`), so a whole trajectory is seen
    whatever the sampler returns.
  * The peers run in float64: diffusers' DDPMScheduler and DDIMScheduler
    compute their schedule in float32 from the betas, so `_float64_schedule`
    replaces it by the float64 one (the same numpy cumprod as
    gen_jax.diffusion.make_schedule). DPMSolverMultistepScheduler casts its
    sigmas and the sample to float32 inside step(): a float32-accurate
    reference only.
  * Per-step noise: diffusers' DDPM draws with `randn_tensor` (patched in its
    module), DDIM takes `variance_noise`, k-diffusion draws with
    `torch.randn_like` (replaced inside k_diffusion.sampling only).
"""

import contextlib
import dataclasses
import importlib
import importlib.util
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import torch

from gen_jax import testing

# ----------------------------------------------------------------------------
# k-diffusion without its package __init__
# ----------------------------------------------------------------------------

_TORCHVISION_STUBS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def load_k_diffusion():
  """(k_diffusion.sampling, k_diffusion.external), imported without the package's
  __init__ (which imports torchvision, clip and wandb, none of which the samplers use).

  The package becomes a bare module object with its __path__, so its
  submodules import as usual. k_diffusion/utils.py (imported by both) does
  `from torchvision.transforms import functional as TF` at import time; only
  when torchvision is not installed, empty stand-ins for it are put in
  sys.modules for that import and removed right after.
  """
  if "k_diffusion.sampling" in sys.modules and "k_diffusion.external" in sys.modules:
    return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
  spec = importlib.util.find_spec("k_diffusion")
  if spec is None:
    raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion")
  if "k_diffusion" not in sys.modules:
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec  # so importlib.util.find_spec("k_diffusion") still answers afterwards
    sys.modules["k_diffusion"] = package
  stubbed = []
  if importlib.util.find_spec("torchvision") is None:
    for name in _TORCHVISION_STUBS:
      sys.modules[name] = types.ModuleType(name)
      stubbed.append(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules[
      "torchvision.transforms.functional"
    ]
  try:
    sampling = importlib.import_module("k_diffusion.sampling")
    external = importlib.import_module("k_diffusion.external")
  finally:
    for name in stubbed:
      del sys.modules[name]
  return sampling, external


# ----------------------------------------------------------------------------
# The model both sides call
# ----------------------------------------------------------------------------


def gmm_eps_x0(xp, x, alpha_bar, weights, means, stds):
  """The exact (E[eps | x_t], E[x0 | x_t]) of a Gaussian mixture, in the array
  namespace xp (numpy or jax.numpy), never dividing by sqrt(alpha_bar).

  x (B, D), alpha_bar (B,). With a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar),
  var_k = alpha_bar s_k^2 + 1 - alpha_bar, d_k = x - a mu_k and r_k the
  responsibilities of the noised components N(a mu_k, var_k I):
    eps = s sum_k r_k d_k / var_k,   x0 = sum_k r_k (mu_k + a s_k^2 d_k / var_k).
  Finite at alpha_bar = 0 (zero terminal SNR: eps = x, x0 = E[x0]).
  """
  log_w = xp.log(xp.asarray(weights, x.dtype))
  means = xp.asarray(means, x.dtype)
  var0 = xp.asarray(stds, x.dtype) ** 2
  ab = alpha_bar[:, None]  # (B, 1)
  a, s = xp.sqrt(ab), xp.sqrt(1.0 - ab)
  var = ab * var0 + (1.0 - ab)  # (B, K)
  diff = x[:, None, :] - a[:, :, None] * means  # (B, K, D)
  logits = log_w - 0.5 * x.shape[1] * xp.log(var) - 0.5 * xp.sum(diff**2, axis=-1) / var
  logits = logits - xp.max(logits, axis=-1, keepdims=True)
  resp = xp.exp(logits) / xp.sum(xp.exp(logits), axis=-1, keepdims=True)  # (B, K)
  eps = s * xp.sum((resp / var)[:, :, None] * diff, axis=1)
  x0 = xp.sum(resp[:, :, None] * (means + (a * var0)[:, :, None] * diff / var[:, :, None]), axis=1)
  return eps, x0


@dataclasses.dataclass(frozen=True)
class Oracle:
  """A deterministic model: the exact eps ("eps") or v ("v") of the mixture `cond`,
  guided by `uncond` with weight w = guidance (gen_jax's (1 + w) cond - w uncond,
  diffusers' uncond + s (cond - uncond) with s = 1 + w).

  alphas_cumprod: float64 (T,) of the schedule both sides use. x may have any
  shape (B, ...) with prod(...) = D of the mixture.
  """

  alphas_cumprod: np.ndarray
  cond: dict
  uncond: dict | None = None
  guidance: float = 0.0
  prediction: str = "eps"

  def _np_one(self, params, x, t):
    flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    ab = np.full(x.shape[0], self.alphas_cumprod[t])
    if self.prediction == "eps":
      out = testing.gmm_eps_np(flat, ab, **params)
    else:
      eps, x0 = gmm_eps_x0(np, flat, ab, **params)
      out = np.sqrt(ab)[:, None] * eps - np.sqrt(1.0 - ab)[:, None] * x0
    return out.reshape(x.shape)

  def np_out(self, x, t: int) -> np.ndarray:
    """The peer side: float64 numpy, x (B, ...) at the integer level t."""
    cond = self._np_one(self.cond, x, t)
    if self.uncond is None:
      return cond
    uncond = self._np_one(self.uncond, x, t)
    return uncond + (1.0 + self.guidance) * (cond - uncond)

  def _jax_one(self, params):
    if self.prediction == "eps":
      return testing.gmm_eps_fn(types.SimpleNamespace(alphas_cumprod=self.alphas_cumprod), **params)
    ac = jnp.asarray(self.alphas_cumprod)

    def v_fn(x_t, t):
      ab = ac[t].astype(x_t.dtype)
      eps, x0 = gmm_eps_x0(jnp, x_t.reshape(x_t.shape[0], -1), ab, **params)
      v = jnp.sqrt(ab)[:, None] * eps - jnp.sqrt(1.0 - ab)[:, None] * x0
      return v.reshape(x_t.shape)

    return v_fn

  def jax_fn(self, guided_fn):
    """The gen_jax side: a batched model_fn(x_t, t); guidance through gen_jax's
    own guided_eps_fn (passed in, so that its signature is checked by the test)."""
    cond = self._jax_one(self.cond)
    if self.uncond is None:
      return cond
    return guided_fn(cond, self._jax_one(self.uncond), self.guidance)


# ----------------------------------------------------------------------------
# Runs and their comparison
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """One sampler run: the final sample, and per network call the level t, the
  model's input x_t (VP coordinates) and, where the sampler exposes it, the
  predicted x0 (None otherwise). k-diffusion runs also keep their VE state x_ve
  and sigma at each call."""

  sample: np.ndarray
  timesteps: np.ndarray  # (K,)
  x: np.ndarray  # (K, B, ...)
  x0: np.ndarray | None = None
  x_ve: np.ndarray | None = None
  sigmas: np.ndarray | None = None


def max_rel_error(a, b) -> float:
  """max |a - b| / max |b| over the whole array (the error relative to b's scale)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def trajectory_rel_error(a, b) -> float:
  """max over the calls k of max_rel_error(a[k], b[k]) (each state against its own scale)."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return max(max_rel_error(a_k, b_k) for a_k, b_k in zip(a, b))


def compare(ours: Run, peer: Run) -> dict:
  """The same levels at every network call (exactly), then the max relative
  errors of the final sample and of the states at the calls."""
  np.testing.assert_array_equal(ours.timesteps, peer.timesteps, err_msg="levels of the calls")
  return {
    "sample": max_rel_error(ours.sample, peer.sample),
    "trajectory": trajectory_rel_error(ours.x, peer.x),
  }


# ----------------------------------------------------------------------------
# gen_jax, recorded
# ----------------------------------------------------------------------------


def gen_jax_x_T(key, shape) -> np.ndarray:
  """The x_T today's gen_jax samplers draw: N(0, I) from split(key)[0]."""
  init_key, _ = jax.random.split(key)
  return np.asarray(jax.random.normal(init_key, shape, jnp.result_type(float)))


def gen_jax_step_noise(key, shape, index: int) -> np.ndarray:
  """The noise of step `index` of gen_jax's samplers: N(0, I) from
  fold_in(split(key)[1], index) (ddpm: index = the level t; respaced: the
  respaced index; ddim, heun: the step number)."""
  _, step_key = jax.random.split(key)
  return np.asarray(
    jax.random.normal(jax.random.fold_in(step_key, index), shape, jnp.result_type(float))
  )


def run_gen_jax(sampler, key, model_fn, schedule, shape, **options) -> Run:
  """Runs a gen_jax sampler with a model_fn that records every call's (t, x_t).

  The recording is an ordered jax.debug.callback inside the sampler's compiled
  scan: the calls that really run (a Heun correction skipped under lax.cond is
  not recorded). With return_trajectory=True in `options`, the sampler's own
  trajectory is returned too: (Run, Trajectory).
  """
  calls = []

  def record(x_t, t):
    calls.append((int(np.asarray(t)[0]), np.array(x_t, np.float64)))

  def recorded(x_t, t):
    jax.debug.callback(record, x_t, t, ordered=True)
    return model_fn(x_t, t)

  out = sampler(key, recorded, schedule, shape, **options)
  jax.effects_barrier()
  samples, trajectory = out if options.get("return_trajectory") else (out, None)
  run = Run(
    sample=np.asarray(samples, np.float64),
    timesteps=np.array([t for t, _ in calls]),
    x=np.stack([x for _, x in calls]),
  )
  return (run, trajectory) if options.get("return_trajectory") else run


# ----------------------------------------------------------------------------
# diffusers
# ----------------------------------------------------------------------------


def _float64_schedule(scheduler, betas):
  """Replaces the scheduler's float32 betas / alphas / alphas_cumprod by float64
  ones, computed as gen_jax.diffusion.make_schedule computes them."""
  betas = np.asarray(betas, np.float64)
  scheduler.betas = torch.from_numpy(betas)
  scheduler.alphas = torch.from_numpy(1.0 - betas)
  scheduler.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas))
  if hasattr(scheduler, "one"):  # DDPM's alpha_prod_t_prev after the last step
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
  if hasattr(scheduler, "final_alpha_cumprod"):  # DDIM's, set_alpha_to_one
    scheduler.final_alpha_cumprod = (
      torch.tensor(1.0, dtype=torch.float64)
      if scheduler.config.set_alpha_to_one
      else scheduler.alphas_cumprod[0]
    )
  return scheduler


def _tensor(x):
  return torch.from_numpy(np.array(x, np.float64))


def diffusers_ddpm(
  oracle: Oracle, betas, x_init, noise, *, timesteps, variance_type, prediction_type
) -> Run:
  """diffusers' DDPMScheduler (clip_sample False) on custom `timesteps` from x_init.

  noise(i) -> the noise of step i (only steps with t > 0 draw, as in diffusers).
  """
  import diffusers
  from diffusers.schedulers import scheduling_ddpm

  scheduler = _float64_schedule(
    diffusers.DDPMScheduler(
      num_train_timesteps=len(betas),
      variance_type=variance_type,
      clip_sample=False,
      prediction_type=prediction_type,
    ),
    betas,
  )
  scheduler.set_timesteps(timesteps=[int(t) for t in timesteps])
  step = {"i": None}

  def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
    out = _tensor(noise(step["i"]))
    assert tuple(out.shape) == tuple(shape) and dtype == torch.float64
    return out

  x = _tensor(x_init)
  levels, states, x0s = [], [], []
  with _patched(scheduling_ddpm, "randn_tensor", randn_tensor):
    for i, t in enumerate(scheduler.timesteps):
      step["i"] = i
      levels.append(int(t))
      states.append(x.numpy().copy())
      out = _tensor(oracle.np_out(x.numpy(), int(t)))
      result = scheduler.step(out, t, x)
      x = result.prev_sample
      x0s.append(result.pred_original_sample.numpy().copy())
  return Run(x.numpy().copy(), np.array(levels), np.stack(states), np.stack(x0s))


class _StepTo:
  """Stands in for DDIMScheduler.num_inference_steps inside step(), whose
  previous level is `t - num_train_timesteps // num_inference_steps`: with this
  object that difference is `gap`, so the step goes to the next level of the
  grid. Needed where the grid's gaps are not T // n ("linspace" spacing: at
  T = 1000, n = 10 the grid is 999, 888, ... while diffusers steps 999 -> 899)."""

  def __init__(self, gap: int):
    self.gap = gap

  def __rfloordiv__(self, num_train_timesteps):
    return self.gap


def diffusers_ddim_grid(num_train_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
  """The grid DDIMScheduler.set_timesteps(num_steps) builds for a spacing (steps_offset 0)."""
  import diffusers

  scheduler = diffusers.DDIMScheduler(
    num_train_timesteps=num_train_timesteps, timestep_spacing=spacing, steps_offset=0
  )
  scheduler.set_timesteps(num_steps)
  return scheduler.timesteps.numpy().copy()


def diffusers_ddim(
  oracle: Oracle,
  betas,
  x_init,
  noise,
  *,
  timesteps,
  eta,
  prediction_type,
  step_to_next=False,
  set_alpha_to_one=True,
) -> Run:
  """diffusers' DDIMScheduler (clip_sample False; set_alpha_to_one by default, False: the
  last step goes to alphas_cumprod[0], Stable Diffusion's configs) on `timesteps`.

  The grid is set as diffusers' set_timesteps would (its attribute), with
  num_inference_steps = len(timesteps); step() then goes from t to
  t - T // len(timesteps). With step_to_next it goes to the next level of the
  grid instead (`_StepTo`), and after the last level to alpha_bar = 1.
  noise(i) -> the variance_noise of step i (eta > 0).
  """
  import diffusers

  num_train = len(betas)
  scheduler = _float64_schedule(
    diffusers.DDIMScheduler(
      num_train_timesteps=num_train,
      clip_sample=False,
      set_alpha_to_one=set_alpha_to_one,
      steps_offset=0,
      prediction_type=prediction_type,
    ),
    betas,
  )
  timesteps = np.asarray(timesteps, np.int64)
  scheduler.num_inference_steps = len(timesteps)
  scheduler.timesteps = torch.from_numpy(timesteps.copy())
  nexts = np.append(timesteps[1:], -1)
  x = _tensor(x_init)
  levels, states, x0s = [], [], []
  for i, t in enumerate(scheduler.timesteps):
    levels.append(int(t))
    states.append(x.numpy().copy())
    out = _tensor(oracle.np_out(x.numpy(), int(t)))
    if step_to_next:
      scheduler.num_inference_steps = _StepTo(int(t) - int(nexts[i]))
    result = scheduler.step(
      out, t, x, eta=eta, variance_noise=_tensor(noise(i)) if eta > 0 else None
    )
    x = result.prev_sample
    x0s.append(result.pred_original_sample.numpy().copy())
  return Run(x.numpy().copy(), np.array(levels), np.stack(states), np.stack(x0s))


def diffusers_dpmpp_2m(oracle: Oracle, betas, x_init, *, timesteps, prediction_type) -> Run:
  """diffusers' DPMSolverMultistepScheduler (dpmsolver++, solver_order 2,
  lower_order_final, final_sigmas_type "zero") on custom `timesteps`.

  Float32-accurate only: step() casts its sigmas (set_timesteps) and the
  sample to float32, whatever the input dtype.
  """
  import diffusers

  scheduler = _float64_schedule(
    diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=len(betas),
      algorithm_type="dpmsolver++",
      solver_order=2,
      lower_order_final=True,
      final_sigmas_type="zero",
      prediction_type=prediction_type,
    ),
    betas,
  )
  scheduler.set_timesteps(timesteps=[int(t) for t in timesteps])
  x = _tensor(x_init)
  levels, states, x0s = [], [], []
  for t in scheduler.timesteps:
    levels.append(int(t))
    states.append(x.numpy().copy())
    out = _tensor(oracle.np_out(x.numpy(), int(t)))
    x = scheduler.step(out, t, x).prev_sample
    x0s.append(scheduler.model_outputs[-1].numpy().copy())  # the x0 prediction
  return Run(x.numpy().copy(), np.array(levels), np.stack(states), np.stack(x0s))


@contextlib.contextmanager
def _patched(obj, name, value):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


# ----------------------------------------------------------------------------
# k-diffusion
# ----------------------------------------------------------------------------


class _TorchWithNoise:
  """torch, as k_diffusion.sampling sees it while a sampler runs, with randn_like
  returning gen_jax's noise of the current step (one draw per step in
  sample_euler / sample_heun, drawn whether or not the step churns)."""

  def __init__(self, noise):
    self._noise = noise
    self.step = 0

  def randn_like(self, x):
    out = _tensor(self._noise(self.step))
    assert out.shape == x.shape and x.dtype == torch.float64
    self.step += 1
    return out

  def __getattr__(self, name):
    return getattr(torch, name)


def k_diffusion_sample(name: str, oracle: Oracle, x_init_ve, sigmas, noise=None, **options) -> Run:
  """k-diffusion's `sample_<name>` ("euler", "heun", "dpmpp_2m") in float64 through
  DiscreteEpsDDPMDenoiser(quantize=True) wrapping the oracle's eps.

  x_init_ve: the state in k-diffusion's VE coordinates x_t / sqrt(alpha_bar_t)
  at sigmas[0]; sigmas: the decreasing grid ending in 0. noise(i): step i's
  draw of torch.randn_like (euler, heun). The Run's x is the network's input
  x_t = x_ve / sqrt(sigma^2 + 1) (VP coordinates) at each call, x_ve the VE
  state and x0 the denoised output there.
  """
  sampling, external = load_k_diffusion()
  assert oracle.prediction == "eps"
  levels, states, states_ve, sigmas_seen, x0s = [], [], [], [], []

  def inner(x_t, t):  # what the network sees: the VP input and the quantized level
    assert bool((t == t[0]).all())
    levels.append(int(t[0]))
    states.append(x_t.numpy().copy())
    return _tensor(oracle.np_out(x_t.numpy(), int(t[0])))

  denoiser = external.DiscreteEpsDDPMDenoiser(
    inner, torch.from_numpy(np.asarray(oracle.alphas_cumprod, np.float64)), quantize=True
  )

  def model(x, sigma):
    denoised = denoiser(x, sigma)
    states_ve.append(x.numpy().copy())
    sigmas_seen.append(float(sigma[0]))
    x0s.append(denoised.numpy().copy())
    return denoised

  zeros = lambda i: np.zeros(np.shape(x_init_ve))
  proxy = _TorchWithNoise(noise or zeros)
  with _patched(sampling, "torch", proxy):
    out = getattr(sampling, f"sample_{name}")(
      model, _tensor(x_init_ve), _tensor(sigmas), disable=True, **options
    )
  return Run(
    out.numpy().copy(),
    np.array(levels),
    np.stack(states),
    np.stack(x0s),
    x_ve=np.stack(states_ve),
    sigmas=np.array(sigmas_seen),
  )
