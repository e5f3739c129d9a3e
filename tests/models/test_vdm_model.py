"""VDMModel (gen_jax/models/vdm_model.py) in the process view: its log-SNR schedule as
`log_snr_process`, its eps-network at the process's time, and the process samplers beside its own
ancestral sampler (`diffusion.vdm.sample`).

The identity tested first, for any schedule gamma = -lambda and an eps-model: vdm's ancestral step
from t to s < t,
  z_s = alpha_s / alpha_t (z_t - sigma_t c eps_hat) + sigma_s sqrt(c) z,   c = 1 - SNR_t / SNR_s,
is DDIM's step with eta = 1 (solvers.ddim_sample),
  z_s = alpha_s x0_hat + sqrt(sigma_s^2 - c_d^2) eps_hat + c_d z,
  x0_hat = (z_t - sigma_t eps_hat) / alpha_t,   c_d^2 = sigma_s^2 (1 - exp(lambda_t - lambda_s)):
the noise coefficients agree (c_d = sigma_s sqrt(c), since exp(lambda_t - lambda_s) = SNR_t / SNR_s),
and so do the eps_hat coefficients: sqrt(1 - c) = alpha_t sigma_s / (sigma_t alpha_s), so
  sigma_s sqrt(1 - c) - alpha_s sigma_t / alpha_t = -(alpha_s sigma_t / alpha_t) c.
Both samplers start from N(0, I) drawn from split(key)[0] and draw step i's noise from
fold_in(split(key)[1], i), so on vdm's grid t_i = (T - i) / T they give the same samples with the
same key, up to rounding (alpha, sigma computed as sqrt(sigmoid) on one side, exp(log_sigmoid / 2)
on the other).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import configs, diffusion, nets
from gen_jax.diffusion import process as proc
from gen_jax.diffusion import solvers, vdm
from gen_jax.models import VDMModel
from tests.support import runs
from tests.support.diffusion import GMM2
from tests.support.solvers import mixture_eps_x0

pytestmark = pytest.mark.usefixtures("fast_compile")


def mixture_eps_fn(z, gamma):
  """vdm's eps_fn(z_t, gamma_t): the exact E[eps | z_t] of the mixture GMM2, alpha and sigma
  from gamma in closed form."""
  alpha, sigma = jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))
  eps, _ = mixture_eps_x0(jnp, z, alpha.astype(z.dtype), sigma.astype(z.dtype), **GMM2)
  return eps


@pytest.mark.parametrize("kind", ["linear", pytest.param("cosine", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_ancestral_sampling_is_ddim_eta_one_on_the_log_snr_process(x64, kind):
  """vdm.sample (T ancestral steps, gaussian decoder z_0 / alpha_0) and ddim_sample(eta=1) on
  log_snr_process over the same grid, the same key: the same samples (module docstring)."""
  schedule = vdm.LogSNRSchedule(kind, gamma_min=-6.0, gamma_max=6.0)
  process = proc.log_snr_process(schedule, {})
  num_steps, shape, key = 40, (64, 2), jax.random.key(7)
  theirs = vdm.sample(
    key=key,
    eps_fn=mixture_eps_fn,
    schedule=schedule,
    schedule_params={},
    shape=shape,
    num_steps=num_steps,
    decoder="gaussian",
  )
  grid = jnp.arange(num_steps, -1, -1, dtype=jnp.float64) / num_steps  # 1, ..., 1/T, 0
  ours = solvers.ddim_sample(
    lambda z, t: mixture_eps_fn(z, schedule({}, t)), process, key, shape=shape, t=grid, eta=1.0
  )
  alpha_0, _ = process.alpha_sigma(jnp.zeros((1,)))
  ours = ours / alpha_0[0]
  assert ours.dtype == jnp.float64
  np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)  # measured 2.5e-15
  # The noise mattered: eta = 0 (deterministic) lands elsewhere.
  deterministic = solvers.ddim_sample(
    lambda z, t: mixture_eps_fn(z, schedule({}, t)), process, key, shape=shape, t=grid
  )
  assert np.max(np.abs(deterministic / alpha_0[0] - theirs)) > 1e-2


@pytest.mark.slow  # test_process.py checks the fixed schedules' view in the fast tier
def test_process_view_is_vdms_alpha_sigma():
  """log_snr_process of a learned schedule reads its parameters: alpha, sigma at t are
  vdm.alpha_sigma(gamma(t))."""
  model = _mlp_vdm("learned")
  params = model.init(jax.random.key(0))
  t = jnp.linspace(0.0, 1.0, 11)
  gamma = model.schedule(params["gamma"], t)
  for ours, theirs in zip(model.process_view(params).alpha_sigma(t), vdm.alpha_sigma(gamma)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def _mlp_vdm(kind="linear", decoder="gaussian"):
  """A VDM on 2-D points: gen_jax's MLP denoiser as its eps-network."""
  return VDMModel(
    net=nets.MLPDenoiser(width=16, num_blocks=1),
    schedule=vdm.LogSNRSchedule(kind, num_features=8),
    example_shape=(2,),
    decoder=decoder,
  )


# The fast tier keeps Euler (the cheapest compile); the rest are slow.
@pytest.mark.parametrize(
  "sampler",
  [
    "euler",
    *(
      pytest.param(name, marks=pytest.mark.slow)
      for name in ("heun", "ddim", "dpm++2m", "process_euler_maruyama")
    ),
  ],
)
@pytest.mark.slow
def test_vdm_samples_with_the_process_samplers_under_jit(sampler):
  """A learned schedule (its gamma traced under jit: the grid is EDM's, fixed, no alpha read
  at trace time) samples with every process sampler: what the sampler draws on
  model.process_view with model.model_fn, and finite."""
  model = _mlp_vdm("learned")
  params = model.init(jax.random.key(0))
  key = jax.random.key(1)
  draw = jax.jit(lambda p, k: model.sample(p, k, 5, sampler=sampler, num_steps=4))
  samples = draw(params, key)
  assert samples.shape == (5, 2) and bool(jnp.all(jnp.isfinite(samples)))
  # The sampler itself, jitted too: eagerly it dispatches op by op (seconds).
  expected = jax.jit(
    lambda p, k: solvers.PROCESS_SAMPLERS[solvers.process_sampler_name(sampler)].fn(
      model.model_fn(p),
      model.process_view(p),
      k,
      shape=(5, 2),
      num_steps=4,
      spacing="karras",
    )
  )(params, key)
  np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_discretized_decoder_rounds_the_process_samples_to_the_8bit_grid():
  model = _mlp_vdm(decoder="discretized")
  params = model.init(jax.random.key(0))
  samples = np.asarray(model.sample(params, jax.random.key(1), 6, sampler="euler", num_steps=3))
  levels = (samples + 1.0) * 127.5
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert samples.min() >= -1.0 and samples.max() <= 1.0


def test_describe_sample_and_refusals():
  model = _mlp_vdm()
  record = model.describe_sample(sampler="heun", num_steps=5, s_churn=None, variance="small")
  assert record["sampler"].startswith("heun: EDM's Heun") and "process vdm" in record["sampler"]
  assert (record["num_steps"], record["network_calls"], record["spacing"]) == (5, 9, "karras")
  assert model.describe_sample(sampler="ddpm", num_steps=5)["network_calls"] == 5
  params = model.init(jax.random.key(0))
  with pytest.raises(ValueError, match="sampler must be one of"):
    model.sample(params, jax.random.key(1), 2, sampler="respaced")
  with pytest.raises(ValueError, match="unconditional"):
    model.sample(params, jax.random.key(1), 2, sampler="euler", guidance_scale=1.0)


def test_config_accepts_process_samplers_and_checks_their_options():
  config = runs.config("vdm_digits", runs.UNET, runs.VDM, {"sample.sampler": "heun"})
  configs.validate(config)
  config.sample.options.s_churn = 5.0
  configs.validate(config)
  config.sample.options.s_churn = -1.0
  with pytest.raises(configs.ConfigError, match=r"sample\.options\.s_churn must be a number >= 0"):
    configs.validate(config)
  config.sample.options.s_churn = None
  config.sample.options.variance = "large"  # DDPM's, no process sampler's
  with pytest.raises(configs.ConfigError, match=r"sample\.options\.variance must be None"):
    configs.validate(config)
  # Ancestral ("ddpm") still takes no option.
  config = runs.config("vdm_digits", runs.UNET, runs.VDM, {"sample.options.eta": 0.5})
  with pytest.raises(configs.ConfigError, match="ancestral sampler takes no options"):
    configs.validate(config)


def test_diffusion_package_keeps_vdm_sample():
  """The ancestral sampler stays the default: sampler 'ddpm' runs vdm.sample itself."""
  model = _mlp_vdm()
  params = model.init(jax.random.key(0))
  key = jax.random.key(3)
  ours = model.sample(params, key, 4, num_steps=5)
  theirs = diffusion.vdm.sample(
    key=key,
    eps_fn=model.eps_fn(params),
    schedule=model.schedule,
    schedule_params={},
    shape=(4, 2),
    num_steps=5,
    decoder="gaussian",
  )
  np.testing.assert_array_equal(ours, theirs)
