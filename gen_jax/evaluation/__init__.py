"""Sample quality: Fréchet distance and an Inception-score-like figure in a feature space.

The math (pure; numpy in -> numpy float64 out, the host-side path of
`--mode=eval`; jax arrays in -> jax out, under jax.jit and jax.vmap):

  feature_statistics(features) -> (mean, cov)       mean (D,), cov (D, D), ddof 1
  frechet_distance(mean1, cov1, mean2, cov2)        ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))
  inception_score(probs)                            exp E_x[KL(p(y|x) || p(y))]

`sample_quality` turns one feature space's (features, probabilities) of the
samples and of real data into the figures of eval.json: the Fréchet distance
of the samples to the test split, the same distance for real train data of the
samples' size and for two halves of the test split (the floor), and the
IS-like score of the samples and of real test data. `summary` is the console
summary of eval.json.

Where the rest lives: the feature spaces are the evaluation classifier
(gen_jax.train.classifier, trained through the shared train step) and the FID
Inception-v3 (gen_jax.evaluation.inception); networks are applied to host arrays by
gen_jax.train.sharding.map_batches; gen_jax.train.evaluate assembles eval.json. The
names that lived here before (train_classifier, map_batches, ...) still
resolve, to those modules.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import images

Array = Any  # numpy or jax array

# Fixed, so that the two halves of the test split are the same in every evaluation.
_HALVES_SEED = 0


def _namespace(*arrays):
  """numpy for numpy inputs (float64 on the host), jax.numpy for jax arrays and tracers."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


# ----------------------------------------------------------------------------
# Math
# ----------------------------------------------------------------------------


def feature_statistics(features: Array) -> tuple[Array, Array]:
  """The mean and covariance of a set of feature vectors.

  mean = (1/N) sum_i f_i; cov = (1/(N-1)) sum_i (f_i - mean)(f_i - mean)^T,
  the unbiased estimate (numpy.cov's, the convention of the FID code).

  Args:
    features: (N, D), N >= 2. numpy input is computed in float64.

  Returns:
    mean (D,), cov (D, D).
  """
  xp = _namespace(features)
  if xp is np:
    features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(
      f"feature_statistics: features must be (N, D) with N >= 2, got shape {features.shape}"
    )
  mean = features.mean(axis=0)
  centered = features - mean
  cov = centered.T @ centered / (features.shape[0] - 1)
  return mean, cov


def _sqrt_psd(xp, matrix):
  """The symmetric square root of a symmetric PSD matrix, U sqrt(L) U^T.

  Eigenvalues below 0 are round-off (or rank deficiency) and count as 0.
  """
  eigenvalues, eigenvectors = xp.linalg.eigh(matrix)
  return (eigenvectors * xp.sqrt(xp.maximum(eigenvalues, 0.0))) @ eigenvectors.T


def frechet_distance(mean1: Array, cov1: Array, mean2: Array, cov2: Array) -> Array:
  """The Fréchet (2-Wasserstein) distance between N(mean1, cov1) and N(mean2, cov2).

  d^2 = ||mean1 - mean2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2))

  (Dowson & Landau 1982; FID is this d^2 on Inception features). cov1 cov2 is
  not symmetric, so instead of a general matrix square root (scipy's sqrtm,
  which can return complex round-off) this uses S = cov1^(1/2) from an
  eigendecomposition: cov1 cov2 = S (S cov2) and S cov2 S share their
  eigenvalues (AB and BA do), and S cov2 S is symmetric PSD, so
  tr((cov1 cov2)^(1/2)) = sum_i sqrt(lambda_i(S cov2 S)), with eigvalsh.

  Args:
    mean1, mean2: (D,). cov1, cov2: (D, D) symmetric PSD.
      numpy inputs are computed in float64 (pass float64 for large D: the
      last term cancels most of the first three).

  Returns:
    A scalar >= 0 (up to round-off).
  """
  xp = _namespace(mean1, cov1, mean2, cov2)
  if xp is np:
    mean1, cov1, mean2, cov2 = (np.asarray(a, np.float64) for a in (mean1, cov1, mean2, cov2))
  if mean1.shape != mean2.shape or mean1.ndim != 1:
    raise ValueError(
      f"frechet_distance: means must both be (D,), got {mean1.shape} and {mean2.shape}"
    )
  dim = mean1.shape[0]
  if cov1.shape != (dim, dim) or cov2.shape != (dim, dim):
    raise ValueError(
      f"frechet_distance: covariances must be ({dim}, {dim}), got {cov1.shape} and {cov2.shape}"
    )
  sqrt_cov1 = _sqrt_psd(xp, cov1)
  middle = sqrt_cov1 @ cov2 @ sqrt_cov1
  middle = 0.5 * (middle + middle.T)  # symmetric up to round-off; eigvalsh reads one triangle
  trace_sqrt = xp.sum(xp.sqrt(xp.maximum(xp.linalg.eigvalsh(middle), 0.0)))
  diff = mean1 - mean2
  return diff @ diff + xp.trace(cov1) + xp.trace(cov2) - 2.0 * trace_sqrt


def inception_score(probs: Array) -> Array:
  """The Inception score of class probabilities (Salimans et al. 2016).

  IS = exp( (1/N) sum_i KL(p(y|x_i) || p(y)) ),  p(y) = (1/N) sum_i p(y|x_i),

  with 0 log 0 = 0. It lies in [1, C]: 1 when every x gets the same
  prediction, C when the predictions are confident (one-hot) and the classes
  equally frequent. With a classifier other than Inception-v3 it is an
  "IS-like" figure, comparable only within that classifier.

  Args:
    probs: (N, C), rows summing to 1. numpy input is computed in float64.

  Returns:
    A scalar.
  """
  xp = _namespace(probs)
  if xp is np:
    probs = np.asarray(probs, np.float64)
  if probs.ndim != 2:
    raise ValueError(f"inception_score: probs must be (N, C), got shape {probs.shape}")
  marginal = probs.mean(axis=0)
  safe = lambda p: xp.where(p > 0, p, 1.0)
  # sum_y p log p - sum_y p log p(y); where p(y|x) = 0 the term is 0, and p(y) > 0 wherever p(y|x) > 0.
  kl = xp.sum(
    xp.where(probs > 0, probs * (xp.log(safe(probs)) - xp.log(safe(marginal))), 0.0), axis=-1
  )
  return xp.exp(xp.mean(kl))


def inception_score_splits(probs: np.ndarray, num_splits: int) -> tuple[float, float]:
  """The mean and standard deviation of `inception_score` over `num_splits`
  consecutive parts of probs (N, C), as the Inception-score code reports it
  (10 splits of 50k samples for CIFAR-10)."""
  if not 1 <= num_splits <= len(probs):
    raise ValueError(
      f"inception_score_splits: num_splits={num_splits} must be in [1, {len(probs)}]"
    )
  scores = [float(inception_score(part)) for part in np.array_split(np.asarray(probs), num_splits)]
  return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------
# From features to the figures of eval.json
# ----------------------------------------------------------------------------


def split_in_halves(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """Two disjoint halves of range(num_examples) (a fixed permutation, so data
  stored in class order still splits fairly), each of num_examples // 2."""
  order = np.random.default_rng(_HALVES_SEED).permutation(num_examples)
  half = num_examples // 2
  return order[:half], order[half : 2 * half]


def sample_quality(
  samples: dict, test: dict, train: dict | None = None, num_splits: int = 1
) -> dict:
  """The sample-quality figures in one feature space.

  Args:
    samples, test, train: {'features': (N, D), 'probs': (N, C)} of the model's
      samples, the test split and (optional) real train examples, numpy.
    num_splits: splits of the Inception score (mean and std over splits).

  Returns:
    fd_samples_vs_test: Fréchet distance of the samples to the test split;
    fd_samples_vs_train: to the train examples (FID's usual reference for
      CIFAR-10: the training set);
    fd_train_vs_test: of the real train examples to the test split (with as
      many examples as samples, it is what a model that reproduced the data
      would score in fd_samples_vs_test, up to train/test differences);
    fd_test_halves: between two halves of the test split: the floor at that
      size (smaller sets bias the distance upwards);
    is_samples, is_test (and is_*_std with splits): the IS-like score.
  """
  test_stats = feature_statistics(test["features"])
  sample_stats = feature_statistics(samples["features"])
  out = {"fd_samples_vs_test": float(frechet_distance(*sample_stats, *test_stats))}
  if train is not None:
    train_stats = feature_statistics(train["features"])
    out["fd_samples_vs_train"] = float(frechet_distance(*sample_stats, *train_stats))
    out["fd_train_vs_test"] = float(frechet_distance(*train_stats, *test_stats))
  first, second = split_in_halves(len(test["features"]))
  out["fd_test_halves"] = float(
    frechet_distance(
      *feature_statistics(test["features"][first]), *feature_statistics(test["features"][second])
    )
  )
  for name, probs in (("is_samples", samples["probs"]), ("is_test", test["probs"])):
    mean, std = inception_score_splits(probs, num_splits)
    out[name] = mean
    if num_splits > 1:
      out[name + "_std"] = std
  return out


def to_8bit_grid(samples: np.ndarray) -> np.ndarray:
  """Samples in [-1, 1] rounded to the 8-bit grid (as if saved as PNG), in [-1, 1].

  Real data are 8-bit; features of samples are taken after the same
  quantization, as the FID code does with saved images.
  """
  return images.to_uint8(samples).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def split_description(num_examples: int) -> str:
  half = num_examples // 2
  return f"2 x {half} of the test split's {num_examples} examples (fixed permutation, seed {_HALVES_SEED})"


# ----------------------------------------------------------------------------
# The console summary of eval.json
# ----------------------------------------------------------------------------

_LIKELIHOOD_NAMES = {
  "bits_per_dim": "bits/dim (the bound in setup)",
  "ode_bits_per_dim": "bits/dim (probability-flow ODE)",
  "loss": "L_simple",
  "denoising_loss": "denoising loss (its weighting in setup)",
  "nll_iwae": "NLL (IWAE bound), nats",
  "elbo": "ELBO, nats",
  "log_likelihood": "  reconstruction E_q log p(x|z)",
  "kl": "  KL(q(z|x) || p(z))",
}


def _quality_lines(section: dict, title: str, distance: str, score: str) -> list[str]:
  if "skipped" in section:
    return [f"  {title}: skipped: {section['skipped']}"]
  samples, reference, space = section["samples"], section["reference"], section["feature_space"]
  steps = f", {samples['num_steps']} steps" if samples.get("num_steps") else ""
  if "seconds" in samples:
    steps += f", drawn in {samples['seconds']:.0f} s"
  head = f"  {title}, {samples['num_samples']} samples ({samples['sampler']}{steps})"
  if "test_accuracy" in space:
    head += f"; classifier test accuracy {100 * space['test_accuracy']:.1f}%"
  lines = [head + ":"]
  prefix = "fid" if "fid_samples_vs_test" in section else "fd"
  rows = [
    ("samples vs test", section[f"{prefix}_samples_vs_test"], reference["test"]),
    ("samples vs train", section[f"{prefix}_samples_vs_train"], reference["train"]),
    ("train vs test", section[f"{prefix}_train_vs_test"], "real data of the samples' size"),
    (
      "test halves",
      section[f"{prefix}_test_halves"],
      "the floor at half the test split's size (small sets bias it upwards): "
      + reference["test_halves"],
    ),
  ]
  for label, value, note in rows:
    lines.append(f"    {distance:<8} {label:<17} {value:10.4f}   {note}")
  for label, key in (("samples", "is_samples"), ("test data", "is_test")):
    std = f" ± {section[key + '_std']:.3f}" if key + "_std" in section else ""
    lines.append(f"    {score:<8} {label:<17} {section[key]:10.4f}{std}")
  return lines


def summary(results: dict, workdir: str = "", *, json_path: str | None = None) -> str:
  """A readable summary of the results `gen_jax.train.evaluate` writes to eval.json
  (json_path, default workdir/eval.json)."""
  lines = [
    f"Evaluation of {workdir or 'the run'}: checkpoint step {results['checkpoint_step']}, "
    f"{results['parameters'].upper()} parameters"
  ]
  likelihood = results["likelihood"]
  lines.append(f"  likelihood on {likelihood['data']} ({likelihood['num_examples']} examples):")
  for key, label in _LIKELIHOOD_NAMES.items():
    if key in likelihood:
      lines.append(f"    {label:<34} {likelihood[key]:10.4f}")
  lines += _quality_lines(
    results["sample_quality"],
    "sample quality in the evaluation classifier's feature space",
    "FD",
    "IS-like",
  )
  if "conditional" in results:
    conditional = results["conditional"]
    lines.append(
      f"  class-conditional samples labelled as their class by the classifier: "
      f"{100 * conditional['accuracy']:.1f}% (guidance scale "
      f"{conditional['samples']['guidance_scale']})"
    )
  if "inception" in results:
    lines += _quality_lines(
      results["inception"], "FID and Inception score (Inception-v3)", "FID", "IS"
    )
  seconds = results.get("seconds", {})
  if seconds:
    lines.append("  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
  if workdir or json_path:
    lines.append(
      f"  all figures and their setup: {json_path or os.path.join(workdir, 'eval.json')}"
    )
  return "\n".join(lines)
