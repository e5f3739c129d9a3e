"""The training system shared by every experiment: train, sample, evaluate.

An experiment supplies a config (ml_collections, gen_jax.configs) and
`build(config, example_shape) -> model` (a gen_jax.models model); everything
else happens here once:

  train(config, workdir, build)     train with periodic logs, sample grids and
                                    checkpoints; resumes from workdir
  sample(config, workdir, build, …) samples.npz + PNG from the EMA parameters
  evaluate(config, workdir, build, …)  likelihood on the test split and
                                    sample quality; eval.json

The modules, each answering one question:

  step.py        how one step is computed: TrainState, the optimizer and its
                 schedule, init_state and THE train step (with its non-finite
                 guard), which train(), the evaluation classifier, the
                 benchmarks and the tests all run
  rng.py         which key each random draw uses (named streams)
  run_setup.py   opening a run: validate the config, data, model, optimizer,
                 abstract state, checkpoint manager (open_run -> Run)
  resume.py      whether a workdir may be resumed with this config and data,
                 and whether its disk holds the checkpoints
  workdir.py     what a workdir holds (config.json, data_spec.json) and how
                 one is named and found
  faults.py      signals, preemption, the time budget, non-finite steps,
                 a full disk or memory
  workdir_lock.py  one training per workdir
  loop.py        train()
  sampling.py    sample(), and drawing samples in chunks
  eval_checkpoint.py  evaluate(): eval.json
  classifier.py  the evaluation classifier, trained through the same step
  from_pretrained.py  runs that start from a diffusers folder (run.py
                 --pretrained), and workdirs exported as one

The step is one jitted pure function `train_step(state, batch, key)`; the key
of step s is fold_in(key, s), and batch s is a pure function of (seed, s), so
a resumed run continues exactly as an uninterrupted one. How train() survives
signals, kills, NaNs and changed configs is in its docstring.
"""

from gen_jax.checkpoint import NoCheckpointError, UnreadableCheckpointError
from gen_jax.configs import ConfigError
from gen_jax.configs import validate as validate_config
from gen_jax.data import DataError
from gen_jax.fileio import DiskFullError
from gen_jax.inception import InceptionWeightsError
from gen_jax.train.classifier import load_or_train_classifier, train_classifier
from gen_jax.train.eval_checkpoint import evaluate, read_images
from gen_jax.train.faults import (
  NonFiniteError,
  OutOfMemoryError,
  StopOnSignal,
  TrainingInterrupted,
)
from gen_jax.train.loop import train
from gen_jax.train.resume import RESUMABLE_CHANGES, check_resume_config, config_changes
from gen_jax.train.rng import STREAMS, stream
from gen_jax.train.run_setup import BuildFn, Run, open_run
from gen_jax.train.sampling import class_grid_labels, draw_samples, sample
from gen_jax.train.step import (
  HALT,
  MAX_CONSECUTIVE_NONFINITE,
  TrainState,
  init_state,
  jit_train_step,
  learning_rate_schedule,
  make_optimizer,
  make_train_step,
  train_step_for,
)
from gen_jax.train.workdir import new_workdir, newest_workdir, with_saved_config
from gen_jax.train.workdir_lock import WorkdirLockedError

# The errors that mean "change the input": a bad config or argument, missing or bad data,
# no checkpoint to read, a run that went non-finite. A command line shows them in one line;
# anything else is a bug and keeps its traceback.
USER_ERRORS = (
  ConfigError,
  DataError,
  NoCheckpointError,
  UnreadableCheckpointError,
  NonFiniteError,
  InceptionWeightsError,
  DiskFullError,  # full disk or quota: free space, resume
  OutOfMemoryError,  # smaller batch or images
)

__all__ = [
  "HALT",
  "MAX_CONSECUTIVE_NONFINITE",
  "RESUMABLE_CHANGES",
  "STREAMS",
  "USER_ERRORS",
  "BuildFn",
  "ConfigError",
  "DataError",
  "DiskFullError",
  "InceptionWeightsError",
  "NoCheckpointError",
  "NonFiniteError",
  "OutOfMemoryError",
  "Run",
  "StopOnSignal",
  "TrainState",
  "TrainingInterrupted",
  "UnreadableCheckpointError",
  "WorkdirLockedError",
  "check_resume_config",
  "class_grid_labels",
  "config_changes",
  "draw_samples",
  "evaluate",
  "init_state",
  "jit_train_step",
  "learning_rate_schedule",
  "load_or_train_classifier",
  "make_optimizer",
  "make_train_step",
  "new_workdir",
  "newest_workdir",
  "open_run",
  "read_images",
  "sample",
  "stream",
  "train",
  "train_classifier",
  "train_step_for",
  "validate_config",
  "with_saved_config",
]
