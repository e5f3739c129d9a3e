"""Tests of gen_jax.vae.hvae with a linear-Gaussian hierarchy as the exact oracle (float64 numpy).

Model, L = 3 layers of d = 2 latents, x in R^5:
  z_3 ~ N(0, I),  z_l | z_{l+1} ~ N(a_l * z_{l+1} + b_l, diag(v_l)) (l = 2, 1),
  x | z_1 ~ N(W z_1 + c, s^2 I),  W = Q diag(w) with orthonormal columns Q.
Everything is jointly Gaussian, so log p(x) and the posterior p(z | x) are closed forms; the exact
top-down conditionals p(z_l | z_{l+1}, x) (Markov chain: z_{>l+1} adds nothing) come from the joint
posterior by Gaussian conditioning, and with W's orthonormal columns and diagonal a_l, v_l they are
diagonal Gaussians: the exact posterior is a member of the ladder VAE's family.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gen_jax.vae import hvae

L, D_LAT, D_OBS, S_OBS = 3, 2, 5, 0.4
RNG = np.random.default_rng(0)
A = {2: np.array([0.9, -0.6]), 1: np.array([1.2, 0.7])}  # z_l = a_l * z_{l+1} + b_l + noise
B = {2: np.array([0.3, -0.2]), 1: np.array([-0.1, 0.4])}
V = {3: np.ones(2), 2: np.array([0.5, 0.3]), 1: np.array([0.2, 0.6])}
Q, _ = np.linalg.qr(RNG.normal(size=(D_OBS, D_LAT)))
W = Q * np.array([1.5, 0.8])
C = RNG.normal(size=D_OBS) * 0.3
LAYERS = (3, 2, 1)  # top first


def joint_prior():
  """Mean and covariance of (z_3, z_2, z_1, x), stacked in that order, and the linear map x = M u + m."""
  # u = (eps_3, eps_2, eps_1, eps_x) standard normal; every variable is affine in u.
  n_u = 3 * D_LAT + D_OBS
  maps, offsets = {}, {}
  eye = np.eye(n_u)
  maps[3], offsets[3] = np.sqrt(V[3])[:, None] * eye[0:2], np.zeros(2)
  for l, start in ((2, 2), (1, 4)):
    maps[l] = A[l][:, None] * maps[l + 1] + np.sqrt(V[l])[:, None] * eye[start : start + 2]
    offsets[l] = A[l] * offsets[l + 1] + B[l]
  maps["x"] = W @ maps[1] + S_OBS * eye[6:]
  offsets["x"] = W @ offsets[1] + C
  big = np.concatenate([maps[k] for k in (3, 2, 1, "x")])
  mean = np.concatenate([offsets[k] for k in (3, 2, 1, "x")])
  return mean, big @ big.T


MEAN, COV = joint_prior()
Z, X = slice(0, 6), slice(6, 11)
GAIN = COV[Z, X] @ np.linalg.inv(COV[X, X])  # E[z | x] = MEAN_z + GAIN (x - MEAN_x)
POST_COV = COV[Z, Z] - GAIN @ COV[X, Z]
BLOCK = {3: slice(0, 2), 2: slice(2, 4), 1: slice(4, 6)}


def exact_log_px(x):
  return stats.multivariate_normal(MEAN[X], COV[X, X]).logpdf(np.asarray(x, np.float64))


def exact_conditionals():
  """Layer l: (F_l, var_l) with p(z_l | z_{l+1}, x) = N(mu_l(x) + F_l (z_{l+1} - mu_{l+1}(x)), var_l)."""
  out = {}
  for l in LAYERS:
    s = POST_COV[BLOCK[l], BLOCK[l]]
    if l == 3:
      f = np.zeros((2, 2))
    else:
      up = BLOCK[l + 1]
      f = POST_COV[BLOCK[l], up] @ np.linalg.inv(POST_COV[up, up])
      s = s - f @ POST_COV[up, BLOCK[l]]
    out[l] = (f, s)
  return out


COND = exact_conditionals()


def posterior_params(shift=0.0, var_factor=1.0):
  """{l: (F_l diagonal, log var_l)} of the exact conditionals, or a wrong posterior: means shifted by `shift`
  standard deviations and variances scaled by var_factor."""
  out = {}
  for l, (f, s) in COND.items():
    out[l] = (np.diag(f).copy(), np.log(np.diag(s) * var_factor), shift * np.sqrt(np.diag(s)))
  return out


def q_joint(params, x):
  """Mean and covariance of q(z_3, z_2, z_1 | x) for one x (float64), from its conditionals."""
  mu = MEAN[Z] + GAIN @ (x - MEAN[X])
  means, maps = {}, {}
  eye = np.eye(6)
  for l in LAYERS:
    f, logvar, shift = params[l]
    noise = np.sqrt(np.exp(logvar))[:, None] * eye[BLOCK[l]]
    if l == 3:
      means[l], maps[l] = mu[BLOCK[l]] + shift, noise
    else:
      means[l] = mu[BLOCK[l]] + shift + f * (means[l + 1] - mu[BLOCK[l + 1]])
      maps[l] = f[:, None] * maps[l + 1] + noise
  big = np.concatenate([maps[l] for l in LAYERS])
  return np.concatenate([means[l] for l in LAYERS]), big @ big.T


def gaussian_kl(m0, s0, m1, s1):
  inv = np.linalg.inv(s1)
  d = m1 - m0
  return 0.5 * (
    np.trace(inv @ s0) + d @ inv @ d - len(m0) + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1]
  )


def top_down(key, x, params):
  """One top-down pass of the oracle through `params`' posterior with gen_jax.vae.hvae: (log p(x|z), layers)."""
  x = jnp.asarray(x, jnp.float32)
  mu = jnp.asarray(MEAN[Z], jnp.float32) + (x - jnp.asarray(MEAN[X], jnp.float32)) @ jnp.asarray(
    GAIN.T, jnp.float32
  )
  layers, upper = [], None
  for key_l, l in zip(jax.random.split(key, L), LAYERS):
    f, logvar, shift = (jnp.asarray(p, jnp.float32) for p in params[l])
    mu_l = mu[:, BLOCK[l]] + shift
    if upper is None:
      prior_mean, prior_logvar = jnp.zeros_like(mu_l), jnp.zeros_like(mu_l)
      q_mean = mu_l
    else:
      prior_mean = jnp.asarray(A[l], jnp.float32) * upper + jnp.asarray(B[l], jnp.float32)
      prior_logvar = jnp.broadcast_to(jnp.log(jnp.asarray(V[l], jnp.float32)), mu_l.shape)
      q_mean = mu_l + f * (upper - mu[:, BLOCK[l + 1]])
    layer = hvae.stochastic_layer(
      key_l,
      prior_mean=prior_mean,
      prior_logvar=prior_logvar,
      posterior_mean=q_mean,
      posterior_logvar=jnp.broadcast_to(logvar, q_mean.shape),
    )
    layers.append(layer)
    upper = layer.z
  x_mean = upper @ jnp.asarray(W.T, jnp.float32) + jnp.asarray(C, jnp.float32)
  log_lik = jnp.sum(
    -0.5 * math.log(2 * math.pi * S_OBS**2) - 0.5 * jnp.square(x - x_mean) / S_OBS**2, axis=-1
  )
  return log_lik, layers


def sample_x(n, seed):
  rng = np.random.default_rng(seed)
  return rng.multivariate_normal(MEAN[X], COV[X, X], size=n)


@jax.jit
def _pass_terms(key, x, params):
  log_lik, layers = top_down(key, x, params)
  return hvae.elbo(log_lik, layers), hvae.log_importance_weight(log_lik, layers)


many_passes = jax.jit(jax.vmap(_pass_terms, in_axes=(0, None, None)))


def test_oracle_is_consistent():
  """The exact conditionals are diagonal (so the family holds them); chained, they give back p(z | x)."""
  for f, s in COND.values():
    assert np.max(np.abs(f - np.diag(np.diag(f)))) < 1e-12
    assert np.max(np.abs(s - np.diag(np.diag(s)))) < 1e-12
  x = sample_x(1, 1)[0]
  m, s = q_joint(posterior_params(), x)
  np.testing.assert_allclose(m, MEAN[Z] + GAIN @ (x - MEAN[X]), atol=1e-12)
  np.testing.assert_allclose(s, POST_COV, atol=1e-12)
  assert gaussian_kl(*q_joint(posterior_params(0.5, 2.0), x), m, s) > 0.1


@pytest.mark.slow
def test_exact_posterior_weight_is_log_px_at_every_draw_and_elbo_equals_it():
  """With the exact posterior every log-weight is log p(x) (no variance), the analytic-KL ELBO averages to
  log p(x), and the KL per layer is non-negative."""
  x = sample_x(4, 2)
  terms, log_w = many_passes(jax.random.split(jax.random.key(0), 2000), x, posterior_params())
  exact = exact_log_px(x)
  np.testing.assert_allclose(
    np.asarray(log_w, np.float64), np.broadcast_to(exact, log_w.shape), atol=3e-4
  )
  elbo = np.asarray(terms.elbo, np.float64)
  se = elbo.std(0) / math.sqrt(len(elbo))
  assert np.all(np.abs(elbo.mean(0) - exact) < 4 * se + 1e-4), (elbo.mean(0) - exact, se)
  assert np.all(np.asarray(terms.kl_per_layer) >= 0) and terms.kl_per_layer.shape == (2000, 4, L)
  np.testing.assert_allclose(terms.kl, terms.kl_per_layer.sum(-1), rtol=1e-6)
  np.testing.assert_allclose(terms.elbo, terms.log_likelihood - terms.kl, rtol=1e-6)


@pytest.mark.slow
def test_wrong_posterior_gap_is_the_joint_kl_and_iwae_closes_it():
  """A wrong posterior: E[ELBO] = log p(x) - KL(q(z|x) || p(z|x)) with the joint KL in float64 closed form, and
  the IWAE bound rises with K towards log p(x) (chunked: K = 2000 in chunks of 500)."""
  params = posterior_params(shift=0.3, var_factor=1.5)
  x = sample_x(3, 3)
  terms, _ = many_passes(jax.random.split(jax.random.key(1), 4000), x, params)
  elbo = np.asarray(terms.elbo, np.float64)
  exact = exact_log_px(x)
  m_post = [MEAN[Z] + GAIN @ (xi - MEAN[X]) for xi in x]
  gap = np.array([gaussian_kl(*q_joint(params, xi), m, POST_COV) for xi, m in zip(x, m_post)])
  assert np.all(gap > 0.2)
  se = elbo.std(0) / math.sqrt(len(elbo))
  assert np.all(np.abs(elbo.mean(0) - (exact - gap)) < 4 * se), (elbo.mean(0) - exact + gap, se)

  def log_weights(key, num_draws):  # (num_draws, B): one pass per key
    return jax.vmap(lambda k: _pass_terms(k, x, params)[1])(jax.random.split(key, num_draws))

  @jax.jit
  def bounds(key):
    return [
      jax.vmap(lambda k: hvae.iwae_bound_from_log_weights(k, log_weights, num, chunk))(
        jax.random.split(key, repeats)
      ).mean(0)
      for num, chunk, repeats in ((10, None, 64), (2000, 500, 2))
    ]

  # measured: ELBO gap 0.55 nats; K = 10 leaves 0.001-0.05, K = 2000 0.001-0.02
  gaps = [exact - np.asarray(b, np.float64) for b in bounds(jax.random.key(2))]
  assert np.all(gaps[0] < 0.2 * gap), (gap, gaps)
  assert np.all(np.abs(gaps[-1]) < 0.03) and np.mean(np.abs(gaps[-1])) < np.mean(gaps[0]), gaps


@pytest.mark.slow
def test_old_iwae_bound_name_warns_and_gives_the_same_bound():
  """hvae.iwae_bound was renamed (gen_jax.vae.iwae_bound is the one-layer VAE's, another function):
  the old name stays for one release, warns, and returns the new function's value."""
  log_weights = lambda key, n: jax.random.normal(key, (n, 3))
  key = jax.random.key(0)
  with pytest.warns(DeprecationWarning, match="iwae_bound_from_log_weights"):
    old = hvae.iwae_bound(key, log_weights, 8, chunk_size=4)
  new = hvae.iwae_bound_from_log_weights(key, log_weights, 8, chunk_size=4)
  np.testing.assert_array_equal(old, new)


def test_training_loss_warmup_and_free_bits():
  kl = jnp.array([[0.05, 2.0, 0.5], [0.15, 4.0, 0.5]])
  terms = hvae.HierarchicalELBO(
    elbo=jnp.array([-10.0, -20.0]) - kl.sum(-1),
    log_likelihood=jnp.array([-10.0, -20.0]),
    kl=kl.sum(-1),
    kl_per_layer=kl,
  )
  np.testing.assert_allclose(hvae.training_loss(terms), -terms.elbo.mean(), rtol=1e-6)
  # free bits 0.2 nats: layer means (0.1, 3.0, 0.5) -> (0.2, 3.0, 0.5)
  np.testing.assert_allclose(hvae.training_loss(terms, free_bits=0.2), 15.0 + 3.7, rtol=1e-6)
  np.testing.assert_allclose(hvae.training_loss(terms, kl_weight=0.5), 15.0 + 0.5 * 3.6, rtol=1e-6)
  mask = jnp.array([1.0, 0.0])
  np.testing.assert_allclose(hvae.training_loss(terms, mask=mask), -terms.elbo[0], rtol=1e-6)
  assert (
    float(hvae.kl_warmup_weight(50, 200)) == 0.25 and float(hvae.kl_warmup_weight(500, 200)) == 1.0
  )
  assert float(hvae.kl_warmup_weight(0, 0)) == 1.0


@pytest.mark.slow
def test_stochastic_layer_prior_draw_and_bounded_scale():
  mean, logvar = jnp.full((20000, 2), 0.5), jnp.full((20000, 2), math.log(0.09))
  layer = hvae.stochastic_layer(
    jax.random.key(3), prior_mean=mean, prior_logvar=logvar, temperature=0.5
  )
  z = np.asarray(layer.z, np.float64)
  np.testing.assert_allclose(z.mean(0), 0.5, atol=0.005)
  np.testing.assert_allclose(z.std(0), 0.5 * 0.3, rtol=0.02)
  assert np.all(np.asarray(layer.kl) == 0) and np.all(np.asarray(layer.log_q) == 0)
  ref = stats.norm(0.5, 0.3).logpdf(z).sum(-1)
  np.testing.assert_allclose(np.asarray(layer.log_p, np.float64), ref, rtol=1e-5, atol=1e-5)
  raw = jnp.array([-50.0, 0.0, 50.0])
  scale = np.exp(0.5 * np.asarray(hvae.bounded_logvar(raw, min_scale=0.01), np.float64))
  np.testing.assert_allclose(scale, [0.01, 0.01 + math.log(2), 50.01], rtol=1e-5)
  with pytest.raises(TypeError):
    hvae.stochastic_layer(jax.random.key(0), mean, logvar)
  with pytest.raises(ValueError, match="one shape"):
    hvae.stochastic_layer(
      jax.random.key(0),
      prior_mean=mean,
      prior_logvar=logvar,
      posterior_mean=mean[:, :1],
      posterior_logvar=logvar[:, :1],
    )


@pytest.mark.parametrize(
  ("experiment", "path", "value"),
  [
    ("hvae_digits", "model.likelihood", "gaussian"),
    ("hvae_digits", "model.num_mixtures", 0),
    ("hvae_digits", "model.kl_warmup_steps", -1),
    ("hvae_digits", "model.free_bits", -0.5),
    ("hvae_digits", "model.min_scale", 0.0),
    ("hvae_digits", "model.layers_per_resolution", (1, 0, 2, 2)),
    ("vae_digits", "model.iwae_chunk", 300),
    ("vae_digits", "model.binarize", "yes"),
  ],
)
def test_config_refuses_bad_model_fields(experiment, path, value):
  import ml_collections

  from gen_jax import configs
  from tests.support import runs

  config = ml_collections.ConfigDict(runs.config(experiment).to_dict(), type_safe=False)
  configs.validate(config)
  runs.apply(config, {path: value})
  with pytest.raises(configs.ConfigError, match=rf"^config\.{path} must be"):
    configs.validate(config)


def test_hvae_build_refuses_resolutions_that_do_not_fit():
  from experiments import hvae_digits
  from gen_jax import configs
  from tests.support import runs

  config = runs.config("hvae_digits", {"model.resolutions": (1, 3, 4, 8)})
  with pytest.raises(configs.ConfigError, match="config.model.resolutions"):
    hvae_digits.build(config, (8, 8, 1))


def test_stochastic_layer_takes_a_given_noise(x64):
  """Issue 26: stochastic_layer drew its noise from the key only, so exact expectations and
  common random numbers needed the noise recovered from z afterwards. With noise=, z is
  mu + sigma noise exactly (posterior), mu_p + temperature sigma_p noise (prior), and the
  key is not needed. E[KL] by 3-point Gauss-Hermite quadrature is the analytic KL."""
  mu_p, lv_p = jnp.array([[0.1, -0.4]]), jnp.array([[0.2, -0.3]])
  mu_q, lv_q = jnp.array([[0.5, 0.3]]), jnp.array([[-1.0, -0.5]])
  noise = jnp.array([[1.5, -0.25]])
  layer = hvae.stochastic_layer(
    None,
    prior_mean=mu_p,
    prior_logvar=lv_p,
    posterior_mean=mu_q,
    posterior_logvar=lv_q,
    noise=noise,
  )
  np.testing.assert_allclose(layer.z, mu_q + jnp.exp(0.5 * lv_q) * noise, rtol=1e-15)
  q = stats.norm(np.asarray(mu_q), np.exp(0.5 * np.asarray(lv_q)))
  np.testing.assert_allclose(layer.log_q, q.logpdf(np.asarray(layer.z)).sum(-1), rtol=1e-12)
  prior = hvae.stochastic_layer(
    None, prior_mean=mu_p, prior_logvar=lv_p, temperature=0.5, noise=noise
  )
  np.testing.assert_allclose(prior.z, mu_p + 0.5 * jnp.exp(0.5 * lv_p) * noise, rtol=1e-15)
  # The same noise through the key's draw: identical to drawing it from the key.
  key = jax.random.key(4)
  drawn = hvae.stochastic_layer(key, prior_mean=mu_p, prior_logvar=lv_p)
  again = hvae.stochastic_layer(
    None, prior_mean=mu_p, prior_logvar=lv_p, noise=jax.random.normal(key, mu_p.shape)
  )
  np.testing.assert_array_equal(drawn.z, again.z)
  # E_q[log q - log p] over Gauss-Hermite nodes in each dimension = the analytic KL.
  nodes, weights = np.polynomial.hermite_e.hermegauss(3)
  expected = 0.0
  for i, a in enumerate(nodes):
    for j, b in enumerate(nodes):
      point = hvae.stochastic_layer(
        None,
        prior_mean=mu_p,
        prior_logvar=lv_p,
        posterior_mean=mu_q,
        posterior_logvar=lv_q,
        noise=jnp.array([[a, b]]),
      )
      expected += weights[i] * weights[j] / (2 * math.pi) * (point.log_q - point.log_p)
  np.testing.assert_allclose(expected, layer.kl, rtol=1e-12)
  with pytest.raises(ValueError, match=r"stochastic_layer: noise must have the latent's shape"):
    hvae.stochastic_layer(None, prior_mean=mu_p, prior_logvar=lv_p, noise=noise[:, :1])
  with pytest.raises(ValueError, match="stochastic_layer: give a key or noise="):
    hvae.stochastic_layer(None, prior_mean=mu_p, prior_logvar=lv_p)
