"""evaluate(): the likelihood and sample quality of a run's latest checkpoint, written to eval.json.

The figures themselves (Fréchet distance, IS, feature statistics, the console
summary) are pure functions in gen_jax.evaluation; the evaluation classifier
is gen_jax.train.classifier; this module draws the samples, reads the real
data, runs the feature networks and assembles eval.json.
"""

import json
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from gen_jax import data, evaluation
from gen_jax.configs import ConfigError
from gen_jax.evaluation import inception
from gen_jax.runtime import fileio
from gen_jax.train import classifier, faults, rng, sharding
from gen_jax.train import workdir as workdir_lib
from gen_jax.train.run_setup import BuildFn, Run, check_sampler, open_run
from gen_jax.train.sampling import class_grid_labels, draw_samples
from gen_jax.train.step import TrainState


def evaluate(
  config,
  workdir: str,
  build: BuildFn,
  sampler: str | None = None,
  num_steps: int | None = None,
  inception_weights: str | None = None,
  *,
  out_dir: str | None = None,
  experiment: str | None = None,
) -> dict:
  """Evaluates the latest checkpoint's EMA parameters; writes out_dir/eval.json (default out_dir:
  the workdir, which must be writable, as is checked before any work; the evaluation classifier
  is cached there too). experiment: the experiment's name, checked against the workdir's.

  eval.json:
    checkpoint_step, parameters ('ema'), num_parameters (their count),
    seconds (wall time per part);
    likelihood: model.evaluate averaged over the test split (the first
      eval.num_examples, or all): diffusion L_simple and the full bound in
      bits/dim; VAE ELBO terms, IWAE NLL in nats (and bits/dim); with `setup`
      saying how each is computed;
    sample_quality: for image data with labels, eval.num_samples samples
      (sampler and steps from the arguments or config.sample) against real
      data in the feature space of the evaluation classifier
      (gen_jax.train.classifier): Fréchet distances and IS-like scores with
      their real-data floors, the classifier's test accuracy and every setting
      (samples.seconds: the wall time of drawing them, compilation included);
    inception: the same with the FID Inception-v3 (RGB data): FID and IS when
      `inception_weights` (an .npz, see gen_jax.evaluation.inception) is given, else
      {'skipped': why}.
  A part that cannot be computed holds {'skipped': why} instead.
  """
  if inception_weights and not os.path.isfile(os.path.expanduser(inception_weights)):
    raise ConfigError(f"inception_weights={inception_weights} is not a file")
  run = open_run(config, workdir, build, mode="eval", experiment=experiment)
  out_dir = workdir_lib.output_dir(workdir, out_dir, is_writer=run.is_writer)
  with faults.resource_errors("evaluating"):
    return _evaluate(
      run,
      sampler=sampler,
      num_steps=num_steps,
      inception_weights=inception_weights,
      out_dir=out_dir,
    )


def _evaluate(run: Run, *, sampler, num_steps, inception_weights, out_dir) -> dict:
  config, workdir = run.config, run.workdir
  sampler = sampler or config.sample.sampler
  num_steps = num_steps or config.sample.num_steps
  if config.eval.num_samples and run.kind == "image":
    # Now, not after the likelihood.
    check_sampler(run.model, run.abstract_state, sampler, num_steps, config.sample.options)
  state = run.restore()
  run.checkpoints.close()

  num_parameters = sum(x.size for x in jax.tree.leaves(state.ema_params))
  results = {
    "checkpoint_step": int(state.step),
    "parameters": "ema",
    "num_parameters": int(num_parameters),
    "seconds": {},
  }
  start = time.time()
  results["likelihood"] = _evaluate_likelihood(run, state)
  results["seconds"]["likelihood"] = round(time.time() - start, 1)
  start = time.time()
  results.update(
    _evaluate_samples(run, state, sampler, num_steps, inception_weights, out_dir=out_dir)
  )
  results["seconds"]["sample_quality"] = round(time.time() - start, 1)
  if run.is_writer:
    path = os.path.join(out_dir, "eval.json")
    fileio.write_atomically(path, json.dumps(results, indent=2, sort_keys=True))
    print(evaluation.summary(results, workdir, json_path=path))
  return results


def read_images(dataset, limit: int | None = None) -> np.ndarray:
  """The first `limit` (default: all) examples of a split, in index order, (N, H, W, C) in [-1, 1]."""
  wanted = dataset.num_examples if limit is None else min(limit, dataset.num_examples)
  parts, count = [], 0
  for batch in dataset.eval_batches(256):
    parts.append(batch["x"][batch["mask"]])
    count += len(parts[-1])
    if count >= wanted:
      break
  return np.concatenate(parts)[:wanted]


def _evaluate_likelihood(run: Run, state: TrainState) -> dict:
  """model.evaluate averaged over the test split (or its first eval.num_examples).
  The key of batch i is rng.stream(seed, "eval_likelihood", i)."""
  config = run.config
  batch_size = config.eval.batch_size
  options = {"ode_steps": config.eval.ode_steps}
  evaluate_fn = jax.jit(
    lambda params, x, key: run.model.evaluate(params, {"x": x}, key, **options),
    in_shardings=(run.state_shardings.ema_params, sharding.data_sharded(run.mesh), run.replicated),
  )
  totals, count = {}, 0
  limit = config.eval.num_examples or None
  wanted = min(run.dataset.num_examples, limit or run.dataset.num_examples)
  batches = run.dataset.eval_batches(batch_size, jax.process_index(), jax.process_count())
  progress = tqdm(
    batches,
    desc="eval: likelihood",
    total=-(-wanted // batch_size),
    disable=not run.is_writer,
    dynamic_ncols=True,
  )
  with jax.default_matmul_precision("highest"):
    for i, batch in enumerate(progress):
      key = rng.stream(config.seed, "eval_likelihood", i)
      # The global batch: each process holds its rows; values and mask are gathered whole.
      local = {"x": batch["x"], "mask": batch.pop("mask", np.ones(len(batch["x"]), bool))}
      global_batch = sharding.shard_batch(local, run.mesh)
      values, mask = sharding.to_host(
        (evaluate_fn(state.ema_params, global_batch["x"], key), global_batch["mask"])
      )
      for name, v in values.items():
        totals[name] = totals.get(name, 0.0) + float(np.sum(np.asarray(v)[mask]))
      count += int(mask.sum())
      if limit and count >= limit:
        break
  out = {name: total / max(count, 1) for name, total in totals.items()}
  describe = getattr(run.model, "describe_evaluate", None)
  out.update(
    split="test",
    data=run.dataset.name,
    num_examples=count,
    batch_size=batch_size,
    setup=describe(**options) if describe else {},
  )
  return out


def _eval_samples(run, params, sampler, num_steps, labels=None, guidance_scale=0.0):
  """config.eval.num_samples samples rounded to the 8-bit grid (as saved images)."""
  num_samples = run.config.eval.num_samples
  name = "eval_samples" if labels is None else "eval_conditional_samples"
  samples = draw_samples(
    run,
    params,
    num_samples,
    rng.stream(run.config.seed, name),
    sampler,
    num_steps,
    labels,
    guidance_scale,
    desc=f"eval: {num_samples} samples ({sampler})",
  )
  return evaluation.to_8bit_grid(samples)


def _conditional_accuracy(
  run: Run, state: TrainState, classifier_fn, classifier_params, sampler, num_steps, sample_setup
) -> dict:
  """Class-conditional models: the fraction of samples drawn for class c (every class
  equally often, guidance config.sample.guidance_scale) that the evaluation
  classifier labels c."""
  config = run.config
  labels, _ = class_grid_labels(config.eval.num_samples, run.model.num_classes)
  guidance = config.sample.guidance_scale
  samples = _eval_samples(run, state.ema_params, sampler, num_steps, labels, guidance)
  probs = sharding.map_batches(
    classifier_fn, classifier_params, samples, config.eval.batch_size, run.mesh
  )["probs"]
  predicted = np.argmax(probs, axis=-1)
  per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(run.model.num_classes)]
  # Described again with the guidance it ran with: guidance doubles the network calls.
  sample_setup.update(
    run.model.describe_sample(
      sampler=sampler, num_steps=num_steps, guidance_scale=guidance, **config.sample.options
    ),
    labels="every class equally often",
  )
  return {
    "accuracy": float(np.mean(predicted == labels)),
    "accuracy_per_class": per_class,
    "samples": sample_setup,
  }


def _evaluate_samples(
  run: Run, state: TrainState, sampler: str, num_steps, inception_weights: str | None, *, out_dir
) -> dict:
  """The 'sample_quality' and 'inception' sections of eval.json."""
  config, mesh = run.config, run.mesh
  num_samples = config.eval.num_samples
  wants_inception = run.kind == "image" and (bool(inception_weights) or run.example_shape[-1] == 3)
  if not num_samples:
    return {"sample_quality": {"skipped": "config.eval.num_samples=0"}}
  if run.kind != "image":
    return {
      "sample_quality": {
        "skipped": f"sample quality is measured on images; {run.dataset.name} holds {run.kind}"
      }
    }
  train_dataset = data.load_dataset(config.data, "train")
  labelled = train_dataset.num_classes is not None
  no_labels = f"{train_dataset.name} has no labels to train the evaluation classifier on"
  if not labelled and not wants_inception:
    return {"sample_quality": {"skipped": no_labels}}

  start = time.time()
  samples = _eval_samples(run, state.ema_params, sampler, num_steps)
  sampling_seconds = round(time.time() - start, 1)
  test_images = read_images(run.dataset)
  train_images = read_images(train_dataset, num_samples)
  half = len(test_images) // 2
  describe = getattr(run.model, "describe_sample", None)
  options = config.sample.options
  sample_setup = dict(
    describe(sampler=sampler, num_steps=num_steps, **options)
    if describe
    else {"sampler": sampler, "num_steps": num_steps, **options},
    num_samples=num_samples,
    checkpoint_step=int(state.step),
    parameters="ema",
    processing="rounded to the 8-bit grid, as saved images",
    seconds=sampling_seconds,
  )
  reference = {
    "test": f"all {len(test_images)} examples of {run.dataset.name}",
    "train": f"the first {len(train_images)} examples of {train_dataset.name}",
    "test_halves": evaluation.split_description(len(test_images)),
  }
  sets = (("samples", samples), ("test", test_images), ("train", train_images))

  def figures(fn, params, name, num_splits):
    outputs = [
      sharding.map_batches(
        fn,
        params,
        images,
        config.eval.batch_size,
        mesh,
        desc=f"eval: {name} features of {what}" if run.is_writer else None,
      )
      for what, images in sets
    ]
    return evaluation.sample_quality(*outputs, num_splits=num_splits)

  out = {"sample_quality": {"skipped": no_labels}}
  if labelled:
    net, params, info = classifier.load_or_train_classifier(
      out_dir,
      train_dataset,
      run.dataset,
      config.eval.classifier_steps,
      config.seed,
      mesh,
      config.eval.batch_size,
      write=run.is_writer,
    )
    fn = sharding.jit_for_mesh(classifier.classifier_outputs(net), mesh)
    out["sample_quality"] = dict(
      figures(fn, params, "classifier", 1),
      samples=sample_setup,
      reference=reference,
      feature_space=dict(
        info,
        network="gen_jax.nets.ImageClassifier",
        features=f"its penultimate layer ({info['feature_dim']}-d, after ReLU)",
        probabilities=f"its softmax over {info['num_classes']} classes (IS-like score, at most "
        f"{info['num_classes']})",
        path=os.path.join(out_dir, classifier.CLASSIFIER_DIR),
      ),
    )
    if getattr(run.model, "num_classes", 0):
      out["conditional"] = _conditional_accuracy(
        run, state, fn, params, sampler, num_steps, dict(sample_setup)
      )

  if wants_inception and not inception_weights:
    out["inception"] = {
      "skipped": "no inception_weights given: FID and Inception score need the FID "
      "Inception-v3 weights (see the README)"
    }
  elif wants_inception:
    variables = jax.device_put(inception.load_variables(inception_weights), run.replicated)
    fn = sharding.jit_for_mesh(inception.outputs_fn(), mesh)
    num_splits = min(10, num_samples, half)
    with jax.default_matmul_precision("highest"):
      found = figures(fn, variables, "Inception", num_splits)
    out["inception"] = dict(
      {k.replace("fd_", "fid_", 1): v for k, v in found.items()},
      samples=sample_setup,
      reference=reference,
      weights=os.path.abspath(inception_weights),
      feature_space={
        "network": "FID Inception-v3 (gen_jax.evaluation.inception, pytorch-fid's graph)",
        "features": "2048-d pool features",
        "probabilities": "softmax over 1008 logits",
        "is_splits": num_splits,
      },
    )
  return out
