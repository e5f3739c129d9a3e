"""run.py's flags that a mode does not use are refused, not ignored (issue 27 item 10): one line, exit 1,
no workdir made."""

import pytest

from tests.support import runs

env = runs.env_fixture()


@pytest.mark.parametrize(
  ("args", "want"),
  [
    # Before: the training ran into --workdir (a new runs/ folder) and the flag was ignored.
    (
      ["--out_dir=elsewhere"],
      "error: --out_dir applies to --mode=sample|eval; a training writes into --workdir",
    ),
    (
      ["--scheduler_config=s.json"],
      "error: --scheduler_config applies with --pretrained (the folder's schedule)",
    ),
  ],
)
@pytest.mark.slow
def test_a_flag_the_mode_does_not_use_is_refused(env, tmp_path, args, want):
  workdir = tmp_path / "run"
  result = runs.run_py(
    env,
    str(tmp_path),
    *runs.flags("ddpm_toy2d", runs.TWO_STEPS),
    f"--workdir={workdir}",
    *args,
    check=False,
  )
  assert (result.returncode, result.stderr.strip()) == (1, want), result.stdout + result.stderr
  assert not workdir.exists() and not (tmp_path / "runs").exists()
