"""`gen_jax.diffusion` is a package of modules, one per question, and keeps every
public name the single module `gen_jax/diffusion.py` had."""

import importlib
import inspect

from gen_jax import diffusion

# The public names of gen_jax/diffusion.py before the split.
NAMES_BEFORE_THE_SPLIT = """
Array EpsFn PREDICTIONS Schedule VARIANCES VLBTerms as_eps_fn cosine_betas ddim_sample
ddim_timesteps ddpm_sample dpmpp_2m_sample edm_timesteps eps_from_prediction guided_eps_fn
heun_sample karras_sigmas linear_betas log_sigma_timesteps make_q_sample make_schedule
ode_bits_per_dim ode_log_likelihood p_mean_variance predict_eps_from_score predict_eps_from_v
predict_eps_from_x0 predict_v_from_eps predict_x0_from_eps prediction_from_eps prior_kl
q_posterior q_step respace_schedule respaced_ddpm_sample schedule_sigmas score_from_eps
sigma_to_timestep simple_loss v_target vlb_bits_per_dim vlb_term vlb_terms
""".split()
MODULES = ("schedules", "forward", "guidance", "reverse", "losses", "ode", "timesteps", "samplers")


def test_names_before_the_split_are_kept():
  for name in NAMES_BEFORE_THE_SPLIT:
    assert name in diffusion.__all__ and hasattr(diffusion, name), name
  assert diffusion.PREDICTIONS == ("eps", "x0", "v")
  assert diffusion.VARIANCES == ("small", "large")


def test_every_public_function_and_class_is_reexported():
  assert sorted(diffusion.__all__) == sorted(set(diffusion.__all__))
  for name in diffusion.__all__:
    assert hasattr(diffusion, name), name
  for module_name in MODULES:
    module = importlib.import_module(f"gen_jax.diffusion.{module_name}")
    defined = [
      name
      for name, value in vars(module).items()
      if not name.startswith("_")
      and (inspect.isfunction(value) or inspect.isclass(value))
      and value.__module__ == module.__name__
    ]
    assert defined, module_name
    for name in defined:
      assert getattr(diffusion, name) is getattr(module, name), f"{module_name}.{name}"
