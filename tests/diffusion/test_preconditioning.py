"""EDM's preconditioning (gen_jax.diffusion.preconditioning) against Table 1 of Karras et al.
2022 written out in float64 numpy, k-diffusion's `Denoiser` (its scalings and its loss), and the
Gaussian oracle: with the network that is optimal for data N(mu, s^2), the wrapped model must
return the exact posterior mean
  E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu)
on every process (EDM's own, where t = sigma, and any other through x_t / alpha, sigma / alpha).
"""

import importlib
import importlib.util
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import diffusion
from gen_jax.diffusion import process as proc
from gen_jax.diffusion.denoising import denoising_loss_at
from gen_jax.diffusion.preconditioning import edm_preconditioning, edm_scalings

# XLA's optimisation passes cost more than they save on these small programs.
pytestmark = pytest.mark.usefixtures("fast_compile")

MU = np.array([0.3, -0.2, 0.1])
STD = np.array([0.5, 0.8, 0.3])
SIGMAS = np.array([0.002, 0.03, 0.5, 1.0, 7.0, 80.0])


def np_scalings(sigma, sd):
  """Karras et al. 2022, Table 1 ("Ours"), float64."""
  return (
    sd**2 / (sigma**2 + sd**2),
    sigma * sd / np.sqrt(sigma**2 + sd**2),
    1.0 / np.sqrt(sigma**2 + sd**2),
    0.25 * np.log(sigma),
  )


def optimal_net(sd):
  """F* for data N(MU, STD^2) on EDM's process: the F with c_skip x + c_out F = E[x0 | x; sigma].
  Reads sigma back from c_noise and x from c_in x, so it checks the wrapper's inputs too."""

  def net_fn(x_in, c_noise):
    sigma = jnp.exp(4.0 * c_noise)[:, None]
    x = x_in * jnp.sqrt(sigma**2 + sd**2)
    posterior_mean = MU + STD**2 / (STD**2 + sigma**2) * (x - MU)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / jnp.sqrt(sigma**2 + sd**2)
    return (posterior_mean - c_skip * x) / c_out

  return net_fn


def test_scalings_match_table_1(x64):
  for sd in (0.5, 1.0, 0.2):
    got = edm_scalings(jnp.asarray(SIGMAS), sigma_data=sd)
    for value, want in zip(got, np_scalings(SIGMAS, sd), strict=True):
      np.testing.assert_allclose(np.asarray(value), want, rtol=1e-14, atol=0)


def _np_alpha_sigma(name, t):
  """Closed forms of the processes' (alpha, sigma), float64 numpy."""
  if name == "ve":
    return np.ones_like(t), t
  if name == "rectified_flow":
    return 1.0 - t, t
  a, b = np.arctan(np.exp(-15.0 / 2)), np.arctan(np.exp(15.0 / 2))  # vp_cosine(-15, 15)
  theta = a + t * (b - a)
  return np.cos(theta), np.sin(theta)


@pytest.mark.parametrize("name", [None, "ve", "vp_cosine", "rectified_flow"])
def test_optimal_net_gives_the_posterior_mean(name, x64):
  process = {
    None: None,
    "ve": proc.ve(),
    "vp_cosine": proc.vp_cosine(),
    "rectified_flow": proc.rectified_flow(t_min=0.01, t_max=0.99),
  }[name]
  t = SIGMAS if name in (None, "ve") else np.array([0.01, 0.1, 0.3, 0.5, 0.8, 0.99])
  alpha, sigma = _np_alpha_sigma(name or "ve", t)
  rng = np.random.default_rng(0)
  x0 = MU + STD * rng.normal(size=(t.size, 3))
  x_t = alpha[:, None] * x0 + sigma[:, None] * rng.normal(size=x0.shape)
  a, s = alpha[:, None], sigma[:, None]
  want = MU + a * STD**2 / (a**2 * STD**2 + s**2) * (x_t - a * MU)
  model_fn = edm_preconditioning(optimal_net(0.5), sigma_data=0.5, process=process)
  got = np.asarray(model_fn(jnp.asarray(x_t), jnp.asarray(t)))
  # Relative to the posterior mean's scale; the ends (sigma / alpha from 2e-3 to 80) are
  # included, where c_out or c_skip is small: float64 keeps 1e-12.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_discrete_process_integer_t(x64):
  """On DDPM's schedule at integer t: x_t / sqrt(ac_t) and sigma = sqrt((1 - ac_t) / ac_t)."""
  schedule = diffusion.make_schedule(diffusion.linear_betas(1000))
  process = proc.discrete_process(schedule)
  t = np.array([0, 10, 250, 999])
  ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t]
  rng = np.random.default_rng(1)
  x_t = rng.normal(size=(4, 3))
  sigma = np.sqrt((1 - ac) / ac)
  x = x_t / np.sqrt(ac)[:, None]
  c_skip, c_out, c_in, c_noise = np_scalings(sigma, 0.5)
  net_fn = lambda x_in, c: jnp.sin(x_in) * (1.0 + c[:, None])  # any net
  want = c_skip[:, None] * x + c_out[:, None] * np.sin(c_in[:, None] * x) * (1 + c_noise[:, None])
  got = edm_preconditioning(net_fn, process=process)(jnp.asarray(x_t), jnp.asarray(t))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_jit_and_vmap():
  net_fn = lambda x_in, c: jnp.tanh(x_in) + c[:, None]
  model_fn = edm_preconditioning(net_fn, process=proc.vp_cosine())
  x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)), jnp.float32)
  t = jnp.linspace(0.05, 0.95, 5)
  eager = model_fn(x, t)
  np.testing.assert_allclose(jax.jit(model_fn)(x, t), eager, rtol=1e-6)
  # vmap over an outer axis of batches of one example each; vmap and grad jitted (eagerly they
  # dispatch op by op).
  per_row = jax.jit(jax.vmap(lambda xi, ti: model_fn(xi[None], ti[None])[0]))(x, t)
  np.testing.assert_allclose(per_row, eager, rtol=1e-6)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(model_fn(x, t))))(x)
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("bad", [0.0, -1.0, np.array([0.5, 0.5])])
def test_sigma_data_must_be_a_positive_scalar(bad):
  with pytest.raises(ValueError, match="sigma_data"):
    edm_preconditioning(lambda x, c: x, sigma_data=bad)


def _load_k_diffusion_layers():
  """k_diffusion.layers without the package's heavy imports: layers.py imports dctorch and einops
  at the top (only its DCT loss and attention use them), so empty stand-ins are put in
  sys.modules for the import when they are missing, and removed after."""
  pytest.importorskip("torch")
  if importlib.util.find_spec("k_diffusion") is None:
    pytest.skip("k-diffusion is not installed")
  from tests.support import peers

  peers.load_k_diffusion()
  if "k_diffusion.layers" in sys.modules:
    return sys.modules["k_diffusion.layers"]
  missing = {top: importlib.util.find_spec(top) is None for top in ("dctorch", "einops")}
  stubs = []
  for name in ("dctorch", "dctorch.functional", "einops"):
    if missing[name.split(".")[0]] and name not in sys.modules:
      sys.modules[name] = types.ModuleType(name)
      stubs.append(name)
  if "dctorch" in stubs:
    sys.modules["dctorch"].functional = sys.modules["dctorch.functional"]
  if "einops" in stubs:
    sys.modules["einops"].rearrange = sys.modules["einops"].repeat = None
  try:
    return importlib.import_module("k_diffusion.layers")
  finally:
    for name in stubs:
      sys.modules.pop(name, None)


def test_k_diffusion_scalings_and_loss(x64):
  """k-diffusion's Denoiser (weighting 'karras'): its c_skip, c_out, c_in, and its loss
  mean_D (F - (x0 - c_skip x) / c_out)^2, which is EDM's lambda(sigma) mean_D (D - x0)^2, i.e.
  gen_jax's weighting "edm" with prediction "x0" on ve(): equal to 1e-12 in float64."""
  layers = _load_k_diffusion_layers()
  import torch

  sd = 0.5
  denoiser_peer = layers.Denoiser(
    lambda x_in, sigma: torch.tanh(x_in) * (1 + 0.25 * torch.log(sigma))[:, None], sigma_data=sd
  )
  sigma = torch.tensor(SIGMAS, dtype=torch.float64)
  for peer, ours in zip(denoiser_peer.get_scalings(sigma), edm_scalings(SIGMAS, sigma_data=sd)):
    np.testing.assert_allclose(peer.numpy(), np.asarray(ours), rtol=1e-14)
  rng = np.random.default_rng(3)
  x0 = MU + STD * rng.normal(size=(SIGMAS.size, 3))
  noise = rng.normal(size=x0.shape)
  peer_loss = denoiser_peer.loss(torch.tensor(x0), torch.tensor(noise), sigma).numpy()
  model_fn = edm_preconditioning(lambda x_in, c: jnp.tanh(x_in) * (1 + c[:, None]), sigma_data=sd)
  ours = denoising_loss_at(
    proc.ve(),
    model_fn,
    x0=jnp.asarray(x0),
    t=jnp.asarray(SIGMAS),
    noise=jnp.asarray(noise),
    prediction="x0",
    weighting="edm",
    weighting_params={"sigma_data": sd},
  )
  np.testing.assert_allclose(np.asarray(ours), peer_loss, rtol=1e-12)
