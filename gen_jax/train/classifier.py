"""The evaluation classifier: a small CNN trained through the shared train step, cached in the workdir.

Its penultimate layer is the feature space of evaluate()'s Fréchet distances
(the approach the literature calls FID-MNIST), its softmax the class
probabilities of the IS-like score. It is trained once per workdir on the
labelled train split of the experiment's own data, by the same step as every
model (gen_jax.train.step.make_train_step, jitted by jit_train_step), and
cached in `workdir/eval_classifier/` (params.npz, then info.json).
"""

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from gen_jax import checks, nets
from gen_jax.runtime import fileio
from gen_jax.train import checkpoint, rng, sharding, step

CLASSIFIER_DIR = "eval_classifier"
CLASSIFIER_BATCH_SIZE = 128
CLASSIFIER_LEARNING_RATE = 1e-3


def make_classifier(num_classes: int, feature_dim: int = 64) -> nets.ImageClassifier:
  return nets.ImageClassifier(num_classes=num_classes, feature_dim=feature_dim)


@dataclasses.dataclass(frozen=True)
class ClassifierModel:
  """The classifier behind the model interface the train step takes (init, loss).

  loss: mean softmax cross-entropy of the labels, -(1/B) sum_i log softmax(logits_i)[y_i].
  """

  net: nets.ImageClassifier
  example_shape: tuple

  def init(self, key):
    return self.net.init(key, jnp.zeros((1, *self.example_shape), jnp.float32))

  def loss(self, params, batch, key, train: bool = True):
    del key, train  # deterministic network
    logits, _ = self.net.apply(params, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, {"loss": loss}


def train_classifier(
  net: nets.ImageClassifier,
  dataset,
  num_steps: int,
  seed: int,
  mesh,
  batch_size: int = CLASSIFIER_BATCH_SIZE,
  learning_rate: float = CLASSIFIER_LEARNING_RATE,
  progress: bool = True,
):
  """Trains `net` on the labelled `dataset` (a gen_jax.data.Dataset) with
  softmax cross-entropy and Adam through the shared train step; returns its params.

  Batch s is dataset.get_batch(s, seed, batch_size) (the same pure function of
  (seed, s) as model training), the initialisation is rng stream
  "eval_classifier" of seed: the result is a function of (data, seed,
  num_steps, batch_size).
  """
  if dataset.num_classes is None:
    raise ValueError(f"{dataset.name} has no labels; the evaluation classifier needs them")
  if not checks.is_integer(num_steps) or num_steps <= 0:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  sharding.check_batch_size(batch_size, mesh, "batch_size")
  model = ClassifierModel(net, tuple(dataset.example_shape))
  tx = optax.adam(learning_rate)
  key = rng.stream(seed, "eval_classifier")
  init = jax.jit(lambda k: step.init_state(model, tx, k), out_shardings=sharding.replicated(mesh))
  state = init(key)
  # No EMA is read: the classifier uses its last parameters.
  train_step = step.jit_train_step(step.make_train_step(model, tx, 0.0, False), mesh)
  process_index, process_count = jax.process_index(), jax.process_count()
  for s in tqdm(
    range(num_steps),
    desc="eval classifier",
    disable=not progress or process_index,
    leave=False,
    dynamic_ncols=True,
    mininterval=1.0,
  ):
    batch = dataset.get_batch(s, seed, batch_size, process_index, process_count, train=True)
    state, metrics = train_step(state, sharding.shard_batch(batch, mesh), key)
  if bool(metrics[step.HALT]):
    raise FloatingPointError(f"evaluation classifier: non-finite loss {float(metrics['loss'])}")
  return state.params


def classifier_outputs(net: nets.ImageClassifier) -> Callable:
  """(params, x) -> {'features': (B, feature_dim), 'probs': (B, num_classes)}."""

  def apply(params, x):
    logits, features = net.apply(params, x)
    return {"features": features, "probs": jax.nn.softmax(logits.astype(jnp.float32))}

  return apply


def classifier_accuracy(net, params, dataset, batch_size: int, mesh) -> float:
  """The fraction of `dataset` (all of its examples) that `net` labels correctly."""
  fn = sharding.jit_for_mesh(lambda p, x: jnp.argmax(net.apply(p, x)[0], axis=-1), mesh)
  correct = count = 0
  for batch in dataset.eval_batches(batch_size, jax.process_index(), jax.process_count()):
    mask = batch.pop("mask")
    predicted = np.asarray(
      jax.device_get(fn(params, sharding.shard_batch({"x": batch["x"]}, mesh)["x"]))
    )
    # Each process holds its own slice of the batch's rows: compare those.
    local = slice(jax.process_index() * len(mask), (jax.process_index() + 1) * len(mask))
    correct += int(np.sum((predicted[local] == batch["label"])[mask]))
    count += int(mask.sum())
  return correct / max(count, 1)


def load_or_train_classifier(
  workdir: str,
  train_dataset,
  test_dataset,
  num_steps: int,
  seed: int,
  mesh,
  eval_batch_size: int,
  feature_dim: int = 64,
  write: bool = True,
):
  """The evaluation classifier of this data: from `workdir/eval_classifier/` when
  it was trained there with the same data, size, steps and seed, else trained
  now (and cached when `write`).

  Returns:
    (net, params, info) with info the cached description: data, num_classes,
    feature_dim, num_steps, seed, batch_size, learning_rate, test_accuracy.
  """
  if train_dataset.num_classes is None:
    raise ValueError(f"{train_dataset.name} has no labels")
  net = make_classifier(train_dataset.num_classes, feature_dim)
  want = {
    "data": train_dataset.name,
    "example_shape": list(train_dataset.example_shape),
    "num_classes": train_dataset.num_classes,
    "feature_dim": feature_dim,
    "num_steps": num_steps,
    "seed": seed,
    "batch_size": CLASSIFIER_BATCH_SIZE,
    "learning_rate": CLASSIFIER_LEARNING_RATE,
  }
  directory = os.path.join(workdir, CLASSIFIER_DIR)
  info_path, params_path = (
    os.path.join(directory, "info.json"),
    os.path.join(directory, "params.npz"),
  )
  if os.path.exists(info_path) and os.path.exists(params_path):
    with open(info_path) as f:
      info = json.load(f)
    if {k: info.get(k) for k in want} == want:  # info.json is written last: a complete cache
      params = checkpoint.load_params_npz(params_path)
      return net, jax.device_put(params, sharding.replicated(mesh)), info
    print(f"The cached evaluation classifier in {directory} was trained differently; training anew")
  params = train_classifier(net, train_dataset, num_steps, seed, mesh)
  accuracy = classifier_accuracy(net, params, test_dataset, eval_batch_size, mesh)
  info = dict(
    want,
    test_accuracy=accuracy,
    test_data=test_dataset.name,
    num_parameters=int(sum(x.size for x in jax.tree.leaves(params))),
  )
  if write:
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(info_path):  # never an old description beside new parameters
      os.remove(info_path)
    checkpoint.save_params_npz(params_path, jax.device_get(params))
    fileio.write_atomically(info_path, json.dumps(info, indent=2, sort_keys=True))
  return net, params, info
