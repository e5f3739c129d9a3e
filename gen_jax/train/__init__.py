"""The training system shared by every experiment: train, sample, evaluate.

An experiment supplies a config (ml_collections, gen_jax.configs) and
`build(config, example_shape) -> model` (a gen_jax.models model); everything
else happens here once:

  train(config, workdir, build)     train with periodic logs, sample grids and
                                    checkpoints; resumes from workdir
  sample(config, workdir, build, …) samples.npz + PNG from the EMA parameters
  evaluate(config, workdir, build, …)  likelihood on the test split and
                                    sample quality; eval.json
  load_trained(workdir)             the trained model, its EMA (or raw)
                                    parameters, config and a ready model_fn,
                                    for your own script

The names here (`__all__`, reviewed: tests/train/test_package.py) are those a
user calls: the four above, the errors they raise, and the pieces of the step
for a loop of your own. Everything else is in its module, e.g.
gen_jax.train.run_setup.open_run, gen_jax.train.workdir.with_saved_config.

The modules, each answering one question:

  step.py        how one step is computed: TrainState, the optimizer and its
                 schedule, init_state and THE train step (with its non-finite
                 guard), which train(), the evaluation classifier, the
                 benchmarks and the tests all run
  rng.py         which key each random draw uses (named streams)
  run_setup.py   opening a run: validate the config, data, model, optimizer,
                 abstract state, checkpoint manager (open_run -> Run)
  resume.py      resuming a workdir: whether this config and data may (and
                 whether the disk holds the checkpoints), and the state a
                 training starts from, restored or new, with the workdir's
                 records of the run (restore_or_init)
  workdir.py     what a workdir holds (config.json, data_spec.json) and how
                 one is named and found
  faults.py      signals, preemption, the time budget (the loop's Stopper),
                 non-finite steps, a full disk or memory
  workdir_lock.py  one training per workdir
  summary.py     metrics.jsonl and TensorBoard, and the loop's MetricLog
  loop.py        train()
  sampling.py    sample(), the training's sample grid, drawing in chunks
  eval_checkpoint.py  evaluate(): eval.json
  classifier.py  the evaluation classifier, trained through the same step
  from_pretrained.py  runs that start from a diffusers folder (run.py
                 --pretrained), and workdirs exported as one
  load.py        load_trained(): a workdir's model, parameters and config

The step is one jitted pure function `train_step(state, batch, key)`; the key
of step s is fold_in(key, s), and batch s is a pure function of (seed, s), so
a resumed run continues exactly as an uninterrupted one. How train() survives
signals, kills, NaNs and changed configs is in its docstring.
"""

import importlib

import gen_jax

# name -> (module, attribute): resolved on first use (PEP 562), so that `import gen_jax.train`
# (or one of its modules) loads neither the Inception network nor the evaluation code.
_LAZY = {
  "BuildFn": ("gen_jax.train.run_setup", "BuildFn"),
  "ConfigError": ("gen_jax.configs", "ConfigError"),
  "DataError": ("gen_jax.data", "DataError"),
  "DiskFullError": ("gen_jax.runtime.fileio", "DiskFullError"),
  "InceptionWeightsError": ("gen_jax.evaluation.inception", "InceptionWeightsError"),
  "NoCheckpointError": ("gen_jax.train.checkpoint", "NoCheckpointError"),
  "NonFiniteError": ("gen_jax.train.faults", "NonFiniteError"),
  "OutOfMemoryError": ("gen_jax.train.faults", "OutOfMemoryError"),
  "TrainState": ("gen_jax.train.step", "TrainState"),
  "Trained": ("gen_jax.train.load", "Trained"),
  "TrainingInterrupted": ("gen_jax.train.faults", "TrainingInterrupted"),
  "UnreadableCheckpointError": ("gen_jax.train.checkpoint", "UnreadableCheckpointError"),
  "WorkdirLockedError": ("gen_jax.train.workdir_lock", "WorkdirLockedError"),
  "evaluate": ("gen_jax.train.eval_checkpoint", "evaluate"),
  "init_state": ("gen_jax.train.step", "init_state"),
  "jit_train_step": ("gen_jax.train.step", "jit_train_step"),
  "learning_rate_schedule": ("gen_jax.train.step", "learning_rate_schedule"),
  "load_trained": ("gen_jax.train.load", "load_trained"),
  "make_optimizer": ("gen_jax.train.step", "make_optimizer"),
  "make_train_step": ("gen_jax.train.step", "make_train_step"),
  "sample": ("gen_jax.train.sampling", "sample"),
  "stream": ("gen_jax.train.rng", "stream"),
  "train": ("gen_jax.train.loop", "train"),
  "train_step_for": ("gen_jax.train.step", "train_step_for"),
}

# Names gen_jax.train re-exported before 0.2 -> (module, attribute) where they stay. The old names
# still resolve for one release, with a DeprecationWarning; they go in 0.3.
_NO_LONGER_EXPORTED = {
  "HALT": ("gen_jax.train.step", "HALT"),
  "MAX_CONSECUTIVE_NONFINITE": ("gen_jax.train.step", "MAX_CONSECUTIVE_NONFINITE"),
  "RESUMABLE_CHANGES": ("gen_jax.train.resume", "RESUMABLE_CHANGES"),
  "Run": ("gen_jax.train.run_setup", "Run"),
  "STREAMS": ("gen_jax.train.rng", "STREAMS"),
  "StopOnSignal": ("gen_jax.train.faults", "StopOnSignal"),
  "check_resume_config": ("gen_jax.train.resume", "check_resume_config"),
  "class_grid_labels": ("gen_jax.train.sampling", "class_grid_labels"),
  "config_changes": ("gen_jax.train.resume", "config_changes"),
  "draw_samples": ("gen_jax.train.sampling", "draw_samples"),
  "load_or_train_classifier": ("gen_jax.train.classifier", "load_or_train_classifier"),
  "new_workdir": ("gen_jax.train.workdir", "new_workdir"),
  "newest_workdir": ("gen_jax.train.workdir", "newest_workdir"),
  "open_run": ("gen_jax.train.run_setup", "open_run"),
  "read_images": ("gen_jax.train.eval_checkpoint", "read_images"),
  "train_classifier": ("gen_jax.train.classifier", "train_classifier"),
  "validate_config": ("gen_jax.configs", "validate"),
  "with_saved_config": ("gen_jax.train.workdir", "with_saved_config"),
}

# The errors that mean "change the input": a bad config or argument, missing or bad data,
# no checkpoint to read, a run that went non-finite. A command line shows them in one line;
# anything else is a bug and keeps its traceback.
_USER_ERROR_NAMES = (
  "ConfigError",
  "DataError",
  "NoCheckpointError",
  "UnreadableCheckpointError",
  "NonFiniteError",
  "InceptionWeightsError",
  "DiskFullError",  # full disk or quota: free space, resume
  "OutOfMemoryError",  # smaller batch or images
)


def __getattr__(name):
  if name == "USER_ERRORS":
    value = tuple(__getattr__(n) for n in _USER_ERROR_NAMES)
  elif name in _LAZY:
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
  elif name in _NO_LONGER_EXPORTED:  # not cached: each use warns
    module, attribute = _NO_LONGER_EXPORTED[name]
    return gen_jax._no_longer_exported(__name__, name, module, attribute)
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_LAZY) | {"USER_ERRORS"})


__all__ = [
  "USER_ERRORS",
  "BuildFn",
  "ConfigError",
  "DataError",
  "DiskFullError",
  "InceptionWeightsError",
  "NoCheckpointError",
  "NonFiniteError",
  "OutOfMemoryError",
  "TrainState",
  "Trained",
  "TrainingInterrupted",
  "UnreadableCheckpointError",
  "WorkdirLockedError",
  "evaluate",
  "init_state",
  "jit_train_step",
  "learning_rate_schedule",
  "load_trained",
  "make_optimizer",
  "make_train_step",
  "sample",
  "stream",
  "train",
  "train_step_for",
]
