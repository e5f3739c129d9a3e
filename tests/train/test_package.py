"""`gen_jax.train`'s public API is a reviewed list: what a user of the library calls.

Adding a public name is a deliberate edit of PUBLIC below; the plumbing of the training system
(opening a run, resume checks, workdir naming, the sample grid, the evaluation classifier) stays
importable from its module only (the names re-exported before 0.2 warn, for one release).
"""

import importlib
import subprocess
import sys

import pytest

from gen_jax import train
from tests.support import runs

# Reviewed 0.2.
PUBLIC = """
train sample evaluate load_trained Trained BuildFn
USER_ERRORS ConfigError DataError DiskFullError InceptionWeightsError NoCheckpointError
NonFiniteError OutOfMemoryError TrainingInterrupted UnreadableCheckpointError WorkdirLockedError
TrainState init_state make_optimizer learning_rate_schedule make_train_step train_step_for
jit_train_step stream
""".split()

# Plumbing taken out of the re-exports in 0.2, and the module each stays in.
PLUMBING = {
  "gen_jax.configs": ["validate"],  # was train.validate_config
  "gen_jax.train.classifier": ["load_or_train_classifier", "train_classifier"],
  "gen_jax.train.eval_checkpoint": ["read_images"],
  "gen_jax.train.faults": ["StopOnSignal"],
  "gen_jax.train.resume": ["RESUMABLE_CHANGES", "check_resume_config", "config_changes"],
  "gen_jax.train.rng": ["STREAMS"],
  "gen_jax.train.run_setup": ["Run", "open_run"],
  "gen_jax.train.sampling": ["class_grid_labels", "draw_samples"],
  "gen_jax.train.step": ["HALT", "MAX_CONSECUTIVE_NONFINITE"],
  "gen_jax.train.workdir": ["new_workdir", "newest_workdir", "with_saved_config"],
}


def test_all_is_the_reviewed_list():
  assert len(PUBLIC) == len(set(PUBLIC))
  assert sorted(train.__all__) == sorted(PUBLIC)
  for name in PUBLIC:
    assert getattr(train, name) is not None, name
  assert train.load_trained is importlib.import_module("gen_jax.train.load").load_trained


def test_plumbing_is_importable_from_its_module_and_not_reexported():
  for module_name, names in PLUMBING.items():
    module = importlib.import_module(module_name)
    for name in names:
      assert hasattr(module, name), f"{module_name}.{name}"
      assert name not in dir(train), name
  # The 0.1 paths still resolve, for one release, and say where the name lives now.
  with pytest.warns(DeprecationWarning, match="use gen_jax.train.run_setup.open_run"):
    assert train.open_run is importlib.import_module("gen_jax.train.run_setup").open_run
  with pytest.warns(DeprecationWarning, match="use gen_jax.configs.validate"):
    assert train.validate_config is importlib.import_module("gen_jax.configs").validate
  with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
    train.no_such_name  # noqa: B018


@pytest.mark.slow
def test_importing_train_and_load_trained_loads_no_inception():
  code = (
    "import sys; from gen_jax import train; train.load_trained; train.train; "
    "assert 'gen_jax.evaluation.inception' not in sys.modules, 'Inception was imported'"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=runs.REPO, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
