"""Tests of gen_jax.evaluation (Fréchet distance, IS-like score, the evaluation classifier) and of --mode=eval.

References: closed forms (diagonal Gaussians, one-hot and constant predictions), scipy.linalg.sqrtm and
scipy.stats.entropy in float64, numpy.cov.
"""

import contextlib
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from experiments import ddpm_digits
from gen_jax import data, evaluation, train
from gen_jax.evaluation import inception
from gen_jax.train import checkpoint, sharding
from gen_jax.train import classifier as eval_classifier
from tests.support import runs
from tests.support.inception import random_variables as random_inception_variables

pytestmark = pytest.mark.usefixtures("fast_compile")


@contextlib.contextmanager
def xla_optimizations():
  """For the classifier's 300 training steps, where running time (not compile time) dominates."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def correlated_features(rng, n, d):
  mixing = rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def random_spd(rng, d, rank=None, scale=1.0):
  a = rng.normal(size=(d, rank or d)) * scale
  return a @ a.T + (0.0 if rank else 1e-3) * np.eye(d)


def reference_frechet(mu1, cov1, mu2, cov2):
  """The textbook formula with scipy's general matrix square root, float64."""
  covmean = scipy.linalg.sqrtm(cov1 @ cov2)
  return float(
    np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean).real
  )


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance and feature statistics


def test_feature_statistics_match_numpy_cov():
  rng = np.random.default_rng(0)
  x = correlated_features(rng, 300, 7)
  mean, cov = evaluation.feature_statistics(x)
  assert mean.dtype == np.float64 and cov.shape == (7, 7)
  np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-14)
  mean32, cov32 = jax.jit(evaluation.feature_statistics)(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(cov32, np.cov(x, rowvar=False), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(mean32, x.mean(axis=0), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="N >= 2"):
    evaluation.feature_statistics(x[:1])


def test_frechet_distance_of_a_set_to_itself_is_zero_and_grows_with_noise():
  rng = np.random.default_rng(1)
  x = correlated_features(rng, 2000, 16)
  stats = evaluation.feature_statistics(x)
  assert abs(evaluation.frechet_distance(*stats, *stats)) < 1e-9 * np.trace(stats[1])
  stats32 = [jnp.asarray(a, jnp.float32) for a in stats]
  assert abs(float(jax.jit(evaluation.frechet_distance)(*stats32, *stats32))) < 1e-4 * np.trace(
    stats[1]
  )
  noise = rng.normal(size=x.shape)
  distances = [
    evaluation.frechet_distance(*stats, *evaluation.feature_statistics(x + sigma * noise))
    for sigma in (0.05, 0.2, 0.5, 1.0)
  ]
  assert distances[0] > 0 and all(a < b for a, b in itertools.pairwise(distances)), distances
  # Independent noise of variance s^2 adds s^2 I to the covariance; with ||C|| ~ 1 the distance is about
  # sum_i (sqrt(l_i + s^2) - sqrt(l_i))^2: check against that, computed from the eigenvalues directly.
  eigenvalues = np.linalg.eigvalsh(stats[1])
  expected = np.sum((np.sqrt(eigenvalues + 1.0) - np.sqrt(eigenvalues)) ** 2)
  np.testing.assert_allclose(distances[-1], expected, rtol=0.15)


def test_frechet_distance_diagonal_gaussians_closed_form():
  """N(mu1, diag(s1^2)) and N(mu2, diag(s2^2)): d^2 = ||mu1 - mu2||^2 + sum_i (s1_i - s2_i)^2."""
  rng = np.random.default_rng(2)
  batch, d = 5, 12
  mu1, mu2 = rng.normal(size=(batch, d)), rng.normal(size=(batch, d))
  s1, s2 = rng.uniform(0.1, 3.0, size=(batch, d)), rng.uniform(0.1, 3.0, size=(batch, d))
  expected = np.sum((mu1 - mu2) ** 2, axis=1) + np.sum((s1 - s2) ** 2, axis=1)
  diag = lambda s: np.einsum("bi,ij->bij", s**2, np.eye(d))
  for b in range(batch):
    np.testing.assert_allclose(
      evaluation.frechet_distance(mu1[b], diag(s1)[b], mu2[b], diag(s2)[b]), expected[b], rtol=1e-10
    )
  # float32 under jit and vmap over a batch of pairs.
  as32 = lambda a: jnp.asarray(a, jnp.float32)
  batched = jax.jit(jax.vmap(evaluation.frechet_distance))(
    as32(mu1), as32(diag(s1)), as32(mu2), as32(diag(s2))
  )
  assert batched.shape == (batch,) and batched.dtype == jnp.float32
  np.testing.assert_allclose(batched, expected, rtol=1e-4)


@pytest.mark.parametrize("rank", [None, 6])
def test_frechet_distance_matches_scipy_sqrtm(rank):
  """General SPD (and rank-deficient PSD) covariances, float64, against scipy.linalg.sqrtm(C1 C2)."""
  rng = np.random.default_rng(3)
  d = 20
  for trial in range(4):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    cov1 = random_spd(rng, d, rank, scale=10.0 ** (trial - 1))
    cov2 = random_spd(rng, d, rank)
    got = evaluation.frechet_distance(mu1, cov1, mu2, cov2)
    np.testing.assert_allclose(
      got,
      reference_frechet(mu1, cov1, mu2, cov2),
      rtol=1e-7,
      atol=1e-9 * (np.trace(cov1) + np.trace(cov2)),
    )


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="covariances"):
    evaluation.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
  with pytest.raises(ValueError, match="means"):
    evaluation.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(3))


# ----------------------------------------------------------------------------------------------------------------
# IS-like score


def test_inception_score_extremes():
  classes = 10
  confident = np.eye(classes)[np.arange(500) % classes]  # one-hot, every class equally often
  np.testing.assert_allclose(evaluation.inception_score(confident), classes, rtol=1e-12)
  rng = np.random.default_rng(4)
  constant = np.tile(
    rng.dirichlet(np.ones(classes)), (300, 1)
  )  # every input gets the same prediction
  np.testing.assert_allclose(evaluation.inception_score(constant), 1.0, rtol=1e-12)
  np.testing.assert_allclose(
    evaluation.inception_score(np.full((7, classes), 1 / classes)), 1.0, rtol=1e-12
  )
  # Confident but only 4 of the 10 classes ever predicted: 4.
  np.testing.assert_allclose(
    evaluation.inception_score(np.eye(classes)[np.arange(400) % 4]), 4.0, rtol=1e-12
  )


def test_inception_score_matches_scipy_entropy_and_runs_under_jit_and_vmap():
  rng = np.random.default_rng(5)
  probs = rng.dirichlet(np.full(6, 0.3), size=(3, 200))  # 3 sets of 200 predictions over 6 classes
  reference = [np.exp(np.mean([scipy.stats.entropy(p, s.mean(axis=0)) for p in s])) for s in probs]
  for s, ref in zip(probs, reference):
    np.testing.assert_allclose(evaluation.inception_score(s), ref, rtol=1e-10)
  got = jax.jit(jax.vmap(evaluation.inception_score))(jnp.asarray(probs, jnp.float32))
  np.testing.assert_allclose(got, reference, rtol=1e-4)
  mean, std = evaluation.inception_score_splits(probs.reshape(600, 6), 3)
  np.testing.assert_allclose([mean, std], [np.mean(reference), np.std(reference)], rtol=1e-10)
  with pytest.raises(ValueError, match="num_splits"):
    evaluation.inception_score_splits(probs[0], 0)


# ----------------------------------------------------------------------------------------------------------------
# From features to the figures


def test_sample_quality_figures_are_the_distances_of_their_sets():
  rng = np.random.default_rng(6)
  d, classes = 5, 3
  sets = {
    name: {
      "features": rng.normal(size=(n, d)) + shift,
      "probs": rng.dirichlet(np.ones(classes), size=n),
    }
    for name, n, shift in (("samples", 60, 2.0), ("test", 80, 0.0), ("train", 60, 0.0))
  }
  out = evaluation.sample_quality(sets["samples"], sets["test"], sets["train"], num_splits=2)
  stats = {k: evaluation.feature_statistics(v["features"]) for k, v in sets.items()}
  np.testing.assert_allclose(
    out["fd_samples_vs_test"], reference_frechet(*stats["samples"], *stats["test"]), rtol=1e-8
  )
  np.testing.assert_allclose(
    out["fd_samples_vs_train"], reference_frechet(*stats["samples"], *stats["train"]), rtol=1e-8
  )
  np.testing.assert_allclose(
    out["fd_train_vs_test"], reference_frechet(*stats["train"], *stats["test"]), rtol=1e-8
  )
  first, second = evaluation.split_in_halves(80)
  assert len(first) == len(second) == 40 and not set(first) & set(second)
  test = sets["test"]["features"]
  np.testing.assert_allclose(
    out["fd_test_halves"],
    reference_frechet(
      *evaluation.feature_statistics(test[first]), *evaluation.feature_statistics(test[second])
    ),
    rtol=1e-8,
  )
  halves = [evaluation.inception_score(p) for p in np.array_split(sets["samples"]["probs"], 2)]
  np.testing.assert_allclose(
    [out["is_samples"], out["is_samples_std"]], [np.mean(halves), np.std(halves)]
  )
  assert out["fd_samples_vs_test"] > 10 * out["fd_train_vs_test"]  # the shifted samples are far


def test_to_8bit_grid():
  x = np.array([-1.2, -1.0, -0.3, 0.0, 0.999, 1.5], np.float32)
  got = evaluation.to_8bit_grid(x)
  levels = (got + 1) * 127.5
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  np.testing.assert_allclose(got, np.clip(np.round((x + 1) * 127.5), 0, 255) / 127.5 - 1, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The evaluation classifier


@pytest.fixture(scope="module")
def digits():
  config = ddpm_digits.get_config().data
  return data.load_dataset(config, "train"), data.load_dataset(config, "test")


@pytest.fixture(scope="module")
def classifier(digits, tmp_path_factory):
  train_set, test_set = digits
  workdir = str(tmp_path_factory.mktemp("classifier"))
  mesh = sharding.make_mesh()
  with xla_optimizations():
    net, params, info = eval_classifier.load_or_train_classifier(
      workdir, train_set, test_set, 300, 0, mesh, 120
    )
  return dict(workdir=workdir, net=net, params=params, info=info, mesh=mesh)


@pytest.mark.slow
def test_classifier_learns_digits(classifier, digits):
  info = classifier["info"]
  assert info["test_accuracy"] > 0.95, info
  assert info["num_steps"] == 300 and info["num_classes"] == 10 and info["data"] == "digits/train"
  # The accuracy is what the network does on the test split.
  test_set = digits[1]
  test_images = np.concatenate([b["x"][b["mask"]] for b in test_set.eval_batches(120)])
  labels = np.concatenate([b["label"][b["mask"]] for b in test_set.eval_batches(120)])
  fn = sharding.jit_for_mesh(
    eval_classifier.classifier_outputs(classifier["net"]), classifier["mesh"]
  )
  out = sharding.map_batches(
    fn, classifier["params"], test_images, 64, classifier["mesh"]
  )  # 360 = 5x64 + 40
  assert out["features"].shape == (360, 64) and out["probs"].shape == (360, 10)
  np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.mean(out["probs"].argmax(axis=1) == labels), info["test_accuracy"])
  # Real test digits: confident and varied predictions; near the score's maximum of 10.
  assert 8.0 < evaluation.inception_score(out["probs"]) <= 10.0


@pytest.mark.slow
def test_classifier_is_cached_and_retrained_when_its_setup_changes(
  classifier, digits, monkeypatch, capsys
):
  workdir, mesh = classifier["workdir"], classifier["mesh"]
  assert sorted(os.listdir(os.path.join(workdir, eval_classifier.CLASSIFIER_DIR))) == [
    "info.json",
    "params.npz",
  ]

  def no_training(*args, **kwargs):
    raise AssertionError("trained although the cache fits")

  monkeypatch.setattr(eval_classifier, "train_classifier", no_training)
  _, params, info = eval_classifier.load_or_train_classifier(workdir, *digits, 300, 0, mesh, 120)
  assert info == classifier["info"]
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(params), jax.device_get(classifier["params"])
  )
  with pytest.raises(AssertionError, match="trained although"):
    eval_classifier.load_or_train_classifier(workdir, *digits, 301, 0, mesh, 120)
  assert "trained differently" in capsys.readouterr().out


def test_params_npz_round_trip(tmp_path):
  params = {
    "params": {"Dense_0": {"kernel": np.arange(6.0).reshape(2, 3), "bias": np.ones(3, np.float32)}}
  }
  path = str(tmp_path / "p.npz")
  checkpoint.save_params_npz(path, params)
  loaded = checkpoint.load_params_npz(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_unlabelled_data_cannot_train_the_classifier(tmp_path):
  images = np.zeros((20, 8, 8, 1), np.uint8)
  np.savez(tmp_path / "x.npz", images=images)
  config = ddpm_digits.get_config().data
  config.source, config.path = "npz", str(tmp_path / "x.npz")
  unlabelled = data.load_dataset(config, "train")
  with pytest.raises(ValueError, match="no labels"):
    eval_classifier.train_classifier(
      eval_classifier.make_classifier(10), unlabelled, 2, 0, sharding.make_mesh()
    )


# ----------------------------------------------------------------------------------------------------------------
# --mode=eval on RGB data: Inception skipped without weights, computed with (random) weights


def tiny_rgb_config(path):
  return runs.config(
    "ddpm_digits",
    runs.UNET,
    {"data.source": "npz", "data.path": path, "data.batch_size": 4},
    {"diffusion.num_timesteps": 10, "train.num_steps": 1, "sample.num_samples": 4},
    {"sample.num_steps": 2, "sample.batch_size": 8},
    {"eval.batch_size": 4, "eval.num_samples": 8, "eval.classifier_steps": 3},
  )


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
  base = tmp_path_factory.mktemp("rgb")
  rng = np.random.default_rng(7)
  arrays = dict(
    images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
    labels=np.arange(16) % 3,
    test_images=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
    test_labels=np.arange(8) % 3,
  )
  np.savez(base / "rgb.npz", **arrays)
  config = tiny_rgb_config(str(base / "rgb.npz"))
  workdir = str(base / "wd")
  train.train(config, workdir, ddpm_digits.build)
  return config, workdir


@pytest.mark.slow
def test_eval_of_rgb_data_without_inception_weights_says_so(rgb_run, capsys):
  config, workdir = rgb_run
  results = train.evaluate(config, workdir, ddpm_digits.build)
  assert "no inception_weights" in results["inception"]["skipped"]
  quality = results["sample_quality"]
  assert quality["samples"]["num_samples"] == 8 and quality["reference"]["train"].startswith(
    "the first 8"
  )
  out = capsys.readouterr().out
  assert "FID and Inception score (Inception-v3): skipped: no inception_weights given" in out
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["inception"] == results["inception"]


@pytest.mark.slow
def test_eval_with_inception_weights_reports_fid_and_is(rgb_run, tmp_path, monkeypatch):
  config, workdir = rgb_run
  # Cheaper, same code path: 75x75 inputs (the smallest Inception-v3 takes; 16x cheaper than 299x299), and
  # the distances on 64 of the 2048 features (float64 eigendecompositions of 2048x2048 take seconds each here).
  monkeypatch.setattr(inception, "INPUT_SIZE", 75)
  outputs_fn = inception.outputs_fn

  def first_features(model=None):
    apply = outputs_fn(model)

    def first(variables, x):
      out = apply(variables, x)
      return dict(out, features=out["features"][:, :64])

    return first

  monkeypatch.setattr(inception, "outputs_fn", first_features)
  path = str(tmp_path / "inception.npz")
  np.savez(path, **inception.state_dict_from_variables(random_inception_variables(8)))
  results = train.evaluate(
    config, workdir, ddpm_digits.build, sampler="ddim", num_steps=3, inception_weights=path
  )
  section = results["inception"]
  for key in (
    "fid_samples_vs_test",
    "fid_samples_vs_train",
    "fid_train_vs_test",
    "fid_test_halves",
    "is_samples",
    "is_test",
  ):
    assert np.isfinite(section[key]), (key, section)
  assert section["samples"]["sampler"] == "ddim" and section["samples"]["num_steps"] == 3
  assert section["weights"] == path and section["feature_space"]["is_splits"] == 4
  assert 1.0 <= section["is_samples"] <= 1008


def test_eval_flags_are_checked_before_any_work(tmp_path):
  config = tiny_rgb_config("unused.npz")
  with pytest.raises(train.ConfigError, match="inception_weights=.*not a file"):
    train.evaluate(
      config, str(tmp_path), ddpm_digits.build, inception_weights=str(tmp_path / "none.npz")
    )
  config.eval.num_samples = 1
  with pytest.raises(train.ConfigError, match="config.eval.num_samples"):
    train.evaluate(config, str(tmp_path), ddpm_digits.build)
  config.eval.num_samples, config.eval.classifier_steps = 8, 0
  with pytest.raises(train.ConfigError, match="config.eval.classifier_steps"):
    train.evaluate(config, str(tmp_path), ddpm_digits.build)
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_eval_rejects_a_bad_sampler_before_the_likelihood(rgb_run):
  config, workdir = rgb_run
  with pytest.raises(train.ConfigError, match="sampler=ddim num_steps=50"):
    train.evaluate(config, workdir, ddpm_digits.build, sampler="ddim", num_steps=50)  # T = 10
  with pytest.raises(train.ConfigError, match="sampler=nope"):
    train.evaluate(config, workdir, ddpm_digits.build, sampler="nope")


def test_models_describe_their_sampler_and_figures():
  from experiments import vae_digits

  config = ddpm_digits.get_config()
  model = ddpm_digits.build(config, (8, 8, 1))
  assert model.describe_sample(sampler="ddpm") == {
    "sampler": "ddpm",
    "num_steps": 1000,
    "network_calls": 1000,
    "variance": "small",
  }
  assert model.describe_sample(sampler="ddim", num_steps=50, eta=0.5) == {
    "sampler": "ddim",
    "num_steps": 50,
    "network_calls": 50,
    "eta": 0.5,
  }
  assert "T=1000" in model.describe_evaluate()["bits_per_dim"]
  vae_model = vae_digits.build(vae_digits.get_config(), (8, 8, 1))
  assert "decoder" in vae_model.describe_sample(sampler="ddim", num_steps=3)["sampler"]
  assert "K=5000" in vae_model.describe_evaluate()["nll_iwae"]
