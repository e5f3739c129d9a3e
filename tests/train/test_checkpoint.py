"""checkpoint.restore_newest's lines when no step restores (issue 27 item 10): `--resume_unverified` on a workdir
whose config.json is missing, with a config that does not fit its checkpoints, said "setting it aside" of steps
it then left where they were, and passed orbax's advice to restore with `strict=False` on to the user."""

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from gen_jax.train import checkpoint
from tests.support import runs

env = runs.env_fixture()


def _saved(tmp_path, steps=(2, 4)):
  directory = tmp_path / "checkpoints"
  manager = ocp.CheckpointManager(str(directory), options=ocp.CheckpointManagerOptions(create=True))
  for step in steps:
    manager.save(step, args=ocp.args.StandardSave({"w": jnp.zeros(3)}))
  manager.wait_until_finished()
  manager.close()
  return directory


def test_nothing_is_said_to_be_set_aside_when_no_step_restores(tmp_path):
  directory = _saved(tmp_path)
  other_model = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
  said = []
  manager = ocp.CheckpointManager(str(directory))
  with pytest.raises(checkpoint.UnreadableCheckpointError) as raised:
    checkpoint.restore_newest(manager, other_model, set_aside=True, report=said.append)
  manager.close()
  assert len(said) == 2 and all("cannot be restored" in line for line in said), said
  assert not any("setting it aside" in line for line in said), said
  assert not any("strict=False" in line for line in said + [str(raised.value)]), said
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4"]  # indeed nothing moved
  assert not (tmp_path / checkpoint.CORRUPT_DIR).exists()


def test_a_step_passed_over_for_an_older_one_is_still_said_to_be_set_aside(tmp_path):
  directory = _saved(tmp_path, steps=(2,))
  manager = ocp.CheckpointManager(str(directory))
  manager.save(4, args=ocp.args.StandardSave({"w": jnp.full(3, jnp.nan)}))  # a non-finite state
  manager.wait_until_finished()
  said = []
  _, step = checkpoint.restore_newest(
    manager, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}, report=said.append
  )
  manager.close()
  assert step == 2 and len(said) == 2, said
  assert "step 4" in said[0] and said[0].endswith("; setting it aside"), said
  assert "moved unreadable step 4" in said[1]


@pytest.mark.slow
def test_resume_unverified_with_a_config_that_does_not_fit_is_one_line(env, tmp_path):
  """config.json deleted, then --resume_unverified with another width. Before: 'setting it aside' of a step
  that stayed, orbax's strict=False advice, and 36 'Event loop is closed' tracebacks from tensorstore's late
  callbacks after the failed restore."""
  flags = runs.flags("ddpm_toy2d", runs.TWO_STEPS)
  workdir = tmp_path / "run"
  runs.run_py(env, str(tmp_path), *flags, f"--workdir={workdir}")
  (workdir / "config.json").unlink()
  result = runs.run_py(
    env,
    str(tmp_path),
    *flags,
    f"--workdir={workdir}",
    "--config.model.width=16",
    "--resume_unverified",
    check=False,
  )
  assert result.returncode == 1, result.stdout + result.stderr
  assert result.stderr.count("\n") == 1, result.stderr
  assert result.stderr.startswith(
    f"error: none of the checkpoints in {workdir / 'checkpoints'} can"
  )
  assert "cannot be restored (ValueError: Requested shape" in result.stdout
  for text in ("setting it aside", "strict=False", "Traceback"):
    assert text not in result.stdout + result.stderr, text
  assert os.listdir(workdir / "checkpoints") == ["2"]
