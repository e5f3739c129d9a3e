"""`gen_jax.diffusion`'s public API is a reviewed list: the names researchers call.

Adding a public name is a deliberate edit of PUBLIC below; plumbing (argument checks, the
registry's record type, the grids samplers build internally) stays in its module, importable from
there but not re-exported (the names re-exported before 0.2 warn, for one release).
"""

import importlib

import pytest

from gen_jax import diffusion

# Reviewed 0.2: what a researcher calls or reads, grouped by module.
PUBLIC = """
Schedule linear_betas cosine_betas rescale_zero_terminal_snr make_schedule
schedule_from_alphas_cumprod respace_schedule schedule_sigmas sigma_to_timestep prior_kl_per_dim
PREDICTIONS EpsFn ModelFn make_q_sample q_step q_posterior v_target predict_x0_from_eps
predict_eps_from_x0 predict_eps_from_v predict_v_from_eps score_from_eps predict_eps_from_score
eps_from_prediction prediction_from_eps eps_and_x0 as_eps_fn
guided_eps_fn
VARIANCES p_mean_variance
DECODERS VLBTerms simple_loss vlb_term prior_kl vlb_terms vlb_bits_per_dim vlb_nats_per_dim
ode_log_likelihood ode_bits_per_dim
SPACINGS spaced_timesteps img2img_timesteps ddim_timesteps log_sigma_timesteps karras_sigmas edm_timesteps
SAMPLERS Trajectory ddpm_sample ddim_sample ddim_invert respaced_ddpm_sample dpmpp_2m_sample
heun_sample run_sampler describe_sampler
vdm
process denoising preconditioning solvers process_ode
GaussianProcess PROCESSES discrete_process vp_linear vp_cosine ve rectified_flow log_snr_process
""".split()
SUBMODULES = ("vdm", "process", "denoising", "preconditioning", "solvers", "process_ode")

# Plumbing taken out of the re-exports in 0.2, and the module each stays in.
PLUMBING = {
  "forward": ["Array", "check_prediction", "check_prediction_for_schedule"],
  "losses": ["check_decoder"],
  "ode": ["default_ode_steps", "ode_timesteps"],
  "reverse": ["check_variance"],
  "samplers": ["COMMON_OPTIONS", "SamplerSpec", "sampler_spec", "sampler_num_steps"],
  "schedules": ["PRIOR_KL_WARNING"],
  "timesteps": ["check_timesteps", "edm_sigma_range", "snap_sigmas"],
}
MODULES = (
  "schedules",
  "forward",
  "guidance",
  "reverse",
  "losses",
  "ode",
  "timesteps",
  "samplers",
  "process",
)


def test_all_is_the_reviewed_list():
  assert len(PUBLIC) == len(set(PUBLIC))
  assert sorted(diffusion.__all__) == sorted(PUBLIC)


def test_each_public_name_is_its_modules_object():
  for name in SUBMODULES:
    assert getattr(diffusion, name) is importlib.import_module(f"gen_jax.diffusion.{name}")
  for name in PUBLIC:
    if name in SUBMODULES:
      continue
    homes = [m for m in MODULES if hasattr(importlib.import_module(f"gen_jax.diffusion.{m}"), name)]
    assert homes, name
    module = importlib.import_module(f"gen_jax.diffusion.{homes[0]}")
    assert getattr(diffusion, name) is getattr(module, name), name
  assert diffusion.PREDICTIONS == ("eps", "x0", "v")
  assert diffusion.VARIANCES == ("small", "large")


def test_plumbing_is_importable_from_its_module_and_not_reexported():
  public_attributes = {name for name in dir(diffusion) if not name.startswith("_")}
  # The package namespace holds the public names and its modules, nothing else.
  assert public_attributes - set(PUBLIC) == set(MODULES) - set(SUBMODULES)
  for module_name, names in PLUMBING.items():
    module = importlib.import_module(f"gen_jax.diffusion.{module_name}")
    for name in names:
      assert hasattr(module, name), f"{module_name}.{name}"
      # The 0.1 path still resolves, for one release, and says where the name lives now.
      with pytest.warns(DeprecationWarning, match=f"use {module.__name__}\\."):
        assert getattr(diffusion, name) is getattr(module, name)
  with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
    diffusion.no_such_name  # noqa: B018
