"""Gaussian diffusion as pure functions: DDPM's discrete time (Ho et al. 2020) and the continuous-
time family (VP, EDM, flow matching, VDM) on one noising process.

One module per question; the names researchers call are re-exported here (`__all__`, a
reviewed list: tests/diffusion/test_package.py), so `from gen_jax import diffusion;
diffusion.ddim_sample(...)` works. Plumbing (argument checks, the sampler registry's record type,
the grids the samplers build internally) stays in its module, e.g.
`gen_jax.diffusion.samplers.SamplerSpec`, `gen_jax.diffusion.timesteps.check_timesteps`:
  schedules   the betas (linear, cosine, zero terminal SNR), `Schedule`, respacing, sigma_t
  forward     q(x_t | x_0), q(x_{t-1} | x_t, x_0), the targets eps / x0 / v / score, `eps_and_x0`
  guidance    classifier-free guidance, `guided_eps_fn`
  reverse     the model's step p(x_{t-1} | x_t), `p_mean_variance`
  losses      L_simple and the variational bound (terms, prior KL, bits/dim, continuous nats/dim)
  ode         the exact likelihood of the probability-flow ODE
  timesteps   the time grids (DDIM's, uniform in log-sigma, Karras et al.'s rho-grid, img2img's)
  samplers    ddpm, ddim, respaced, dpm++2m, heun, `ddim_invert`, and `SAMPLERS`, their one registry
  vdm         the continuous-time variational bound (Kingma et al. 2021), its log-SNR schedules
              and ancestral sampler: a module of its own, `diffusion.vdm.vdm_terms(...)`

Continuous time, on one abstraction: a Gaussian process x_t = alpha(t) x0 + sigma(t) eps
(docs/processes.md). Its constructors are re-exported (`diffusion.rectified_flow()`, ...); the
rest is called through its module, since several names (ddim_sample, ode_bits_per_dim, ...) mean
the same idea on the discrete schedule above:
  process          `GaussianProcess` and its constructors (DDPM's schedules exactly at integer t,
                   vp_linear, vp_cosine, ve / EDM, rectified_flow, log_snr_process for VDM), the
                   conversions between eps, x0, v, velocity and score
  denoising        the weighted denoising loss in any target with any time law (Kingma & Gao
                   2023's weighting), and the continuous-time ELBO of any model
  preconditioning  EDM's c_skip, c_out, c_in, c_noise as a wrapper of any network
  solvers          Euler, Heun (with churn), DDIM, DPM-Solver++(2M) and Euler-Maruyama on every
                   process and any time grid, never snapped to levels; `PROCESS_SAMPLERS`
  process_ode      the probability-flow ODE likelihood on every process

Conventions:
  * t is 0-based: t = 0 is the first noising step (the paper's x_1) and
    t = T - 1 the last; x_0 is the data. `alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)`
    so q(x_t | x_0) = N(sqrt(alphas_cumprod[t]) x_0, (1 - alphas_cumprod[t]) I)
    is the distribution of the paper's x_{t+1}.
  * An epsilon-predictor is any batched function `eps_fn(x_t, t) -> eps` with
    x_t of shape (B, ...) and t int32 of shape (B,): a Flax model's `apply`
    with bound parameters, an analytic predictor, or a guided combination.
  * Per-example values are returned with shape (B,); "data dimensions" are the
    axes after the batch axis. Likelihoods are in nats unless the name says
    bits per dimension.
  * The schedule is built once on the host (float64 numpy, then cast to the
    default float dtype: float32, or float64 under `jax_enable_x64`) and
    passed to jitted functions as an ordinary pytree argument.
"""

from gen_jax.diffusion import denoising, preconditioning, process, process_ode, solvers, vdm
from gen_jax.diffusion.forward import (
  PREDICTIONS,
  EpsFn,
  ModelFn,
  as_eps_fn,
  eps_and_x0,
  eps_from_prediction,
  make_q_sample,
  predict_eps_from_score,
  predict_eps_from_v,
  predict_eps_from_x0,
  predict_v_from_eps,
  predict_x0_from_eps,
  prediction_from_eps,
  q_posterior,
  q_step,
  score_from_eps,
  v_target,
)
from gen_jax.diffusion.guidance import guided_eps_fn
from gen_jax.diffusion.losses import (
  DECODERS,
  VLBTerms,
  prior_kl,
  simple_loss,
  vlb_bits_per_dim,
  vlb_nats_per_dim,
  vlb_term,
  vlb_terms,
)
from gen_jax.diffusion.ode import ode_bits_per_dim, ode_log_likelihood
from gen_jax.diffusion.process import (
  PROCESSES,
  GaussianProcess,
  discrete_process,
  log_snr_process,
  rectified_flow,
  ve,
  vp_cosine,
  vp_linear,
)
from gen_jax.diffusion.reverse import VARIANCES, p_mean_variance
from gen_jax.diffusion.samplers import (
  SAMPLERS,
  Trajectory,
  ddim_invert,
  ddim_sample,
  ddpm_sample,
  describe_sampler,
  dpmpp_2m_sample,
  heun_sample,
  respaced_ddpm_sample,
  run_sampler,
)
from gen_jax.diffusion.schedules import (
  Schedule,
  cosine_betas,
  linear_betas,
  make_schedule,
  prior_kl_per_dim,
  rescale_zero_terminal_snr,
  respace_schedule,
  schedule_from_alphas_cumprod,
  schedule_sigmas,
  sigma_to_timestep,
)
from gen_jax.diffusion.timesteps import (
  SPACINGS,
  ddim_timesteps,
  edm_timesteps,
  img2img_timesteps,
  karras_sigmas,
  log_sigma_timesteps,
  spaced_timesteps,
)

__all__ = [
  "DECODERS",
  "PREDICTIONS",
  "PROCESSES",
  "SAMPLERS",
  "SPACINGS",
  "VARIANCES",
  "EpsFn",
  "GaussianProcess",
  "ModelFn",
  "Schedule",
  "Trajectory",
  "VLBTerms",
  "as_eps_fn",
  "cosine_betas",
  "ddim_invert",
  "ddim_sample",
  "ddim_timesteps",
  "ddpm_sample",
  "denoising",
  "describe_sampler",
  "discrete_process",
  "dpmpp_2m_sample",
  "edm_timesteps",
  "eps_and_x0",
  "eps_from_prediction",
  "guided_eps_fn",
  "heun_sample",
  "img2img_timesteps",
  "karras_sigmas",
  "linear_betas",
  "log_sigma_timesteps",
  "log_snr_process",
  "make_q_sample",
  "make_schedule",
  "ode_bits_per_dim",
  "ode_log_likelihood",
  "p_mean_variance",
  "preconditioning",
  "predict_eps_from_score",
  "predict_eps_from_v",
  "predict_eps_from_x0",
  "predict_v_from_eps",
  "predict_x0_from_eps",
  "prediction_from_eps",
  "prior_kl",
  "prior_kl_per_dim",
  "process",
  "process_ode",
  "q_posterior",
  "q_step",
  "rectified_flow",
  "rescale_zero_terminal_snr",
  "respace_schedule",
  "respaced_ddpm_sample",
  "run_sampler",
  "schedule_from_alphas_cumprod",
  "schedule_sigmas",
  "score_from_eps",
  "sigma_to_timestep",
  "simple_loss",
  "solvers",
  "spaced_timesteps",
  "v_target",
  "vdm",
  "ve",
  "vlb_bits_per_dim",
  "vlb_nats_per_dim",
  "vlb_term",
  "vlb_terms",
  "vp_cosine",
  "vp_linear",
]

# Plumbing that gen_jax.diffusion re-exported before 0.2 -> the module it stays in. The old names
# still resolve for one release, with a DeprecationWarning; they go in 0.3.
_PLUMBING = {
  "Array": "forward",
  "check_prediction": "forward",
  "check_prediction_for_schedule": "forward",
  "check_decoder": "losses",
  "default_ode_steps": "ode",
  "ode_timesteps": "ode",
  "check_variance": "reverse",
  "COMMON_OPTIONS": "samplers",
  "SamplerSpec": "samplers",
  "sampler_num_steps": "samplers",
  "sampler_spec": "samplers",
  "PRIOR_KL_WARNING": "schedules",
  "check_timesteps": "timesteps",
  "edm_sigma_range": "timesteps",
  "snap_sigmas": "timesteps",
}


def __getattr__(name):
  if name not in _PLUMBING:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  from gen_jax import _no_longer_exported  # here: the namespace holds the public names only

  return _no_longer_exported(__name__, name, f"{__name__}.{_PLUMBING[name]}")
