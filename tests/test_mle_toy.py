"""KL <=> maximum likelihood (experiments/mle_toy.py) against float64 quadrature and closed forms.

References are written here in numpy float64: the 1-D mixture densities, and
the integrals H(p), KL(p || q), E_p[-log q] by the trapezoid rule on a fine
grid (spacing 1e-3 against standard deviations >= 0.4: exact to ~1e-12 for
these smooth, fast-decaying integrands; test_reference_quadrature_is_right).
"""

import concurrent.futures
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import special, stats

from experiments import mle_toy
from tests.support import runs

GRID = np.linspace(-20.0, 20.0, 40_001)

# The default target: 0.3 N(-2, 0.5^2) + 0.7 N(2, 0.8^2).
P = dict(weights=np.array([0.3, 0.7]), means=np.array([-2.0, 2.0]), stds=np.array([0.5, 0.8]))


def log_mixture(x, weights, means, stds):
  x = np.asarray(x, np.float64)[..., None]
  return special.logsumexp(np.log(weights) + stats.norm.logpdf(x, means, stds), axis=-1)


def integral(values):
  return np.trapezoid(values, GRID)


def as_numpy(theta):
  """{weights, means, stds} in float64 from the experiment's {logits, means, logvars}."""
  theta = {k: np.asarray(v, np.float64) for k, v in theta.items()}
  return dict(
    weights=special.softmax(theta["logits"]),
    means=theta["means"],
    stds=np.exp(0.5 * theta["logvars"]),
  )


def quadrature(p, q):
  """(H(p), KL(p || q), E_p[-log q]) in float64."""
  log_p, log_q = log_mixture(GRID, **p), log_mixture(GRID, **q)
  density = np.exp(log_p)
  return (
    integral(-density * log_p),
    integral(density * (log_p - log_q)),
    integral(-density * log_q),
  )


def theta_of(weights, means, stds):
  return mle_toy.gaussian_params(weights, means, stds)


TARGET = theta_of(P["weights"], P["means"], P["stds"])


def random_thetas(rng):
  thetas = []
  for _ in range(2):  # Gaussians
    thetas.append(theta_of([1.0], rng.normal(size=1) * 2, np.exp(rng.uniform(-0.7, 0.7, 1))))
  for _ in range(2):  # 3-component mixtures
    thetas.append(
      theta_of(
        special.softmax(rng.normal(size=3)),
        rng.normal(size=3) * 2,
        np.exp(rng.uniform(-0.7, 0.7, 3)),
      )
    )
  return thetas


@pytest.fixture(scope="module")
def samples_of_p():
  """x ~ p drawn in numpy (independently of the code under test), float32."""
  rng = np.random.default_rng(0)
  n = 100_000
  k = rng.choice(2, size=n, p=P["weights"])
  return np.asarray(P["means"][k] + P["stds"][k] * rng.standard_normal(n), np.float32)


def test_reference_quadrature_is_right():
  # the grid integrates the mixture to 1 and gives a Gaussian's entropy exactly
  np.testing.assert_allclose(integral(np.exp(log_mixture(GRID, **P))), 1.0, rtol=1e-12)
  g = dict(weights=np.array([1.0]), means=np.array([0.3]), stds=np.array([1.7]))
  h, kl, ce = quadrature(g, g)
  np.testing.assert_allclose(h, 0.5 * math.log(2 * math.pi * math.e * 1.7**2), rtol=1e-12)
  assert abs(kl) < 1e-12 and abs(ce - h) < 1e-12


@pytest.mark.slow
def test_cross_entropy_is_kl_plus_entropy_for_every_theta(samples_of_p):
  """E_p[-log q] = KL(p || q) + H(p) for every q, and the two have the same gradient."""
  x = jnp.asarray(samples_of_p)
  n = x.shape[0]
  entropy_ref = quadrature(P, P)[0]
  nll = jax.jit(mle_toy.negative_log_likelihood)
  kl = jax.jit(lambda theta, x: mle_toy.forward_kl(theta, TARGET, x))
  grad_nll, grad_kl = (
    jax.jit(jax.grad(mle_toy.negative_log_likelihood)),
    jax.jit(jax.grad(lambda theta, x: mle_toy.forward_kl(theta, TARGET, x))),
  )
  # per-sample gradients of -log q(x), for the Monte Carlo standard error
  per_sample_grads = jax.jit(
    jax.vmap(jax.grad(lambda theta, xi: -mle_toy.log_density(theta, xi)), in_axes=(None, 0))
  )
  log_p = log_mixture(samples_of_p, **P)
  for theta in random_thetas(np.random.default_rng(1)):
    q = as_numpy(theta)
    _, kl_ref, ce_ref = quadrature(P, q)
    np.testing.assert_allclose(entropy_ref + kl_ref, ce_ref, rtol=1e-12)
    kl_mc, ce_mc = float(kl(theta, x)), float(nll(theta, x))
    log_q = log_mixture(samples_of_p, **q)
    se_kl = np.std(log_p - log_q) / math.sqrt(n)
    se_ce = np.std(log_q) / math.sqrt(n)
    se_h = np.std(log_p) / math.sqrt(n)
    assert abs(kl_mc - kl_ref) < 5 * se_kl + 1e-4, (kl_mc, kl_ref, se_kl)
    assert abs(ce_mc - ce_ref) < 5 * se_ce + 1e-4, (ce_mc, ce_ref, se_ce)
    # the identity with H(p) from quadrature: the curves differ by a constant
    assert abs(kl_mc + entropy_ref - ce_mc) < 5 * se_h + 1e-4

    g_kl, g_nll = grad_kl(theta, x), grad_nll(theta, x)
    for name in theta:
      np.testing.assert_allclose(
        np.asarray(g_kl[name]), np.asarray(g_nll[name]), rtol=1e-4, atol=1e-6, err_msg=name
      )
    # ... and both are the gradient of the exact E_p[-log q]: central differences
    # of the float64 quadrature, within the Monte Carlo error of the estimate
    per_sample = per_sample_grads(theta, x)
    for name in theta:
      for i in range(theta[name].shape[0]):
        h = 1e-5
        shifted = [{k: np.array(v, np.float64) for k, v in theta.items()} for _ in range(2)]
        shifted[0][name][i] += h
        shifted[1][name][i] -= h
        ce_plus, ce_minus = (quadrature(P, as_numpy(s))[2] for s in shifted)
        g_ref = (ce_plus - ce_minus) / (2 * h)
        se = float(np.std(np.asarray(per_sample[name][:, i]))) / math.sqrt(n)
        assert abs(float(g_nll[name][i]) - g_ref) < 5 * se + 1e-4, (
          name,
          i,
          g_nll[name][i],
          g_ref,
          se,
        )


def test_gaussian_gradient_closed_form(samples_of_p):
  """For a Gaussian q the exact gradient is closed-form in p's moments."""
  mean_p = np.sum(P["weights"] * P["means"])
  second_p = np.sum(P["weights"] * (P["stds"] ** 2 + P["means"] ** 2))
  x = jnp.asarray(samples_of_p)
  for m, logvar in [(0.0, 0.0), (1.5, -0.5), (-1.0, 1.2)]:
    theta = theta_of([1.0], [m], [math.exp(logvar / 2)])
    g = jax.grad(mle_toy.negative_log_likelihood)(theta, x)
    # E_p[-log q] = 0.5 (log 2 pi + v) + E_p[(x - m)^2] e^-v / 2
    second_about_m = second_p - 2 * m * mean_p + m * m
    d_mean = -(mean_p - m) * math.exp(-logvar)
    d_logvar = 0.5 - 0.5 * second_about_m * math.exp(-logvar)
    np.testing.assert_allclose(float(g["means"][0]), d_mean, atol=0.03)
    np.testing.assert_allclose(float(g["logvars"][0]), d_logvar, atol=0.03)
    assert float(g["logits"][0]) == 0.0  # one component: the weight is fixed


def _forward_loss(samples):
  return lambda theta, _: mle_toy.negative_log_likelihood(theta, samples)


def test_gaussian_fit_is_the_closed_form_mle():
  """Max likelihood of a Gaussian = the sample mean and the biased (1/N) variance."""
  rng = np.random.default_rng(2)
  data = np.asarray(rng.normal(1.3, 0.6, size=20), np.float32)  # small N: 1/N vs 1/(N-1) is 5%
  theta0 = theta_of([1.0], [0.0], [1.0])
  history = mle_toy.fit(_forward_loss(jnp.asarray(data)), theta0, jax.random.key(0), 600, 0.05)
  mean = float(history["means"][-1, 0])
  variance = math.exp(float(history["logvars"][-1, 0]))
  d = data.astype(np.float64)
  np.testing.assert_allclose(mean, d.mean(), atol=1e-4)
  np.testing.assert_allclose(variance, d.var(ddof=0), rtol=1e-4)
  assert abs(variance / d.var(ddof=1) - 1) > 0.04  # not the unbiased estimate
  assert history["means"].shape == (601, 1)
  np.testing.assert_array_equal(np.asarray(history["means"][0]), [0.0])  # the start


@pytest.mark.slow
def test_reverse_kl_seeks_a_mode_forward_kl_covers_both():
  rng = np.random.default_rng(3)
  n = 2000
  k = rng.choice(2, size=n, p=P["weights"])
  data = jnp.asarray(P["means"][k] + P["stds"][k] * rng.standard_normal(n), jnp.float32)
  steps, lr = 500, 0.05
  forward = mle_toy.fit(
    _forward_loss(data), theta_of([1.0], [0.0], [1.0]), jax.random.key(0), steps, lr
  )
  f = as_numpy(jax.tree.map(lambda h: h[-1], forward))
  # mode covering: one broad Gaussian over both modes, at p's moments
  assert all(abs(mu - f["means"][0]) < 1.5 * f["stds"][0] for mu in P["means"])
  mean_p = np.sum(P["weights"] * P["means"])
  var_p = np.sum(P["weights"] * (P["stds"] ** 2 + P["means"] ** 2)) - mean_p**2
  np.testing.assert_allclose(f["means"][0], mean_p, atol=0.15)
  np.testing.assert_allclose(f["stds"][0] ** 2, var_p, rtol=0.1)

  # mode seeking: the reverse fit lands on one mode, which one depending on
  # where it starts (from N(0, 1): the heavier, wider right one), as that
  # component: KL(q || p) ~ KL(N_k || w_k N_k) = -log w_k.
  reverse_loss = lambda theta, key: mle_toy.reverse_kl(theta, TARGET, key, 256)
  for init, mode in [(0.0, 1), (-1.5, 0)]:
    history = mle_toy.fit(
      reverse_loss, theta_of([1.0], [init], [1.0]), jax.random.key(1), steps, lr
    )
    r = as_numpy(jax.tree.map(lambda h: h[-1], history))
    assert abs(r["means"][0] - P["means"][mode]) < 0.1, (init, r)
    assert abs(r["stds"][0] - P["stds"][mode]) < 0.1, (init, r)
    other = P["means"][1 - mode]
    assert abs(other - r["means"][0]) > 4 * r["stds"][0]  # the other mode is left out
    _, kl_qp, _ = quadrature(r, P)
    component = dict(
      weights=np.array([1.0]), means=P["means"][mode : mode + 1], stds=P["stds"][mode : mode + 1]
    )
    kl_component = quadrature(component, P)[1]
    # p >= w_k N_k, so KL(N_k || p) <= -log w_k, nearly equal for separated modes
    assert -math.log(P["weights"][mode]) - 5e-3 < kl_component <= -math.log(P["weights"][mode])
    assert kl_qp < kl_component + 2e-3, (kl_qp, kl_component)
    # the forward fit is far better in KL(p || q) ...
    assert quadrature(P, f)[1] < quadrature(P, r)[1] - 0.3
    if mode == 1:  # ... and worse in KL(q || p) than the better of the two modes
      assert kl_qp < quadrature(f, P)[1] - 0.3


@pytest.mark.slow
def test_forward_mixture_recovers_the_target():
  rng = np.random.default_rng(4)
  n = 2000
  k = rng.choice(2, size=n, p=P["weights"])
  data = P["means"][k] + P["stds"][k] * rng.standard_normal(n)
  config = mle_toy.get_config()
  config.num_steps = 500
  histories = mle_toy.fit_all(config, TARGET, jnp.asarray(data, jnp.float32), jax.random.key(0))
  m = as_numpy(jax.tree.map(lambda h: h[-1], histories["forward_mixture"]))
  order = np.argsort(m["means"])
  np.testing.assert_allclose(m["weights"][order], P["weights"], atol=0.05)
  np.testing.assert_allclose(m["means"][order], P["means"], atol=0.1)
  np.testing.assert_allclose(m["stds"][order], P["stds"], atol=0.1)
  assert quadrature(P, m)[1] < 0.01


@pytest.mark.parametrize(
  "field,value,match",
  [
    (
      "target.stds",
      (0.5, -0.8),
      "config.target.weights and config.target.stds must be positive",
    ),
    (
      "target.means",
      (0.0,),
      "config.target.weights, .means and .stds must be tuples of one length",
    ),
    ("num_steps", 0, "config.num_steps must be a positive integer"),
    ("learning_rate", 0.0, "config.learning_rate must be > 0"),
  ],
)
def test_bad_config_raises(tmp_path, field, value, match):
  config = mle_toy.get_config()
  section, _, key = field.rpartition(".")
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=re.escape(match)):
    mle_toy.run(config, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")


# ----------------------------------------------------------------------------
# End to end, through run.py


def _run(cwd, *args):
  # Tiny fits: compilation is the cost (subprocess_env skips XLA's optimisation passes).
  return runs.run_py(runs.subprocess_env(), cwd, "--experiment=mle_toy", *args, check=False)


@pytest.mark.slow
def test_run_py_end_to_end(tmp_path):
  tiny = [
    "--config.num_steps=40",
    "--config.log_every=20",
    "--config.num_eval_samples=4000",
    "--config.num_train_samples=500",
  ]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    ok = pool.submit(_run, str(tmp_path), "--workdir=wd", *tiny)
    bad_mode = pool.submit(_run, str(tmp_path), "--mode=sample", "--workdir=wd2")
  result = ok.result()
  assert result.returncode == 0, result.stdout + result.stderr
  assert "KL(p||q)" in result.stdout and "forward_mixture" in result.stdout
  workdir = tmp_path / "wd"
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert set(results["fits"]) == set(mle_toy.FITS)
  with open(workdir / "config.json") as f:
    assert json.load(f)["num_steps"] == 40
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [0, 20, 40]
  for r in records:
    for fit in mle_toy.FITS:
      # the logged curves differ by the constant H(p) (estimated on the same samples)
      np.testing.assert_allclose(
        r[f"{fit}/cross_entropy"] - r[f"{fit}/kl_p_q"], r["target/entropy"], atol=1e-4
      )
      assert r[f"{fit}/kl_p_q"] >= -0.01 and r[f"{fit}/kl_q_p"] >= -0.01
  last = results["fits"]
  assert records[-1]["forward_gaussian/kl_p_q"] == pytest.approx(last["forward_gaussian"]["kl_p_q"])
  # max likelihood lowers the NLL; the reverse fit lowers KL(q || p)
  assert records[-1]["forward_gaussian/nll"] < records[0]["forward_gaussian/nll"]
  assert records[-1]["reverse_gaussian/kl_q_p"] < records[0]["reverse_gaussian/kl_q_p"]
  with Image.open(workdir / "fits.png") as im:
    pixels = {tuple(p) for p in np.asarray(im.convert("RGB")).reshape(-1, 3)}
  for color in mle_toy.COLORS.values():
    assert color in pixels, color

  result = bad_mode.result()
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "--mode=sample does not apply to --experiment=mle_toy" in result.stderr
  assert not os.path.exists(tmp_path / "wd2") and not os.path.exists(tmp_path / "runs")
