"""scripts/nfe_table.py's pure parts: steps for a budget of network calls, and the table (its run.py loop was
smoke-tested by hand with tiny settings; the measurement itself is scheduled, not tested)."""

from tests.support import runs

nfe_table = runs.load_script("scripts/nfe_table.py")


def test_steps_fit_the_network_call_budget():
  heun = nfe_table.network_calls_fn("edm_digits", "heun")  # 2N - 1 calls
  assert [nfe_table.steps_for(heun, n) for n in (1, 5, 10, 20)] == [1, 3, 5, 10]
  euler = nfe_table.network_calls_fn("fm_digits", "euler")
  assert [nfe_table.steps_for(euler, n) for n in (5, 100)] == [5, 100]
  ddim = nfe_table.network_calls_fn("ddpm_digits", "ddim")  # DDPM's registry
  assert nfe_table.steps_for(ddim, 50) == 50


def test_table_marks_calls_that_differ_from_the_nfe():
  cells = [
    dict(experiment="edm_digits", sampler="heun", nfe=10, network_calls=9, fd=1.5),
    dict(experiment="edm_digits", sampler="heun", nfe=5, network_calls=5, fd=3.25),
  ]
  table = nfe_table.markdown(
    cells,
    {"edm_digits": {"bits_per_dim": 4.0, "ode_bits_per_dim": 3.5}},
    [5, 10, 20],
    "cmd",
    num_samples=500,
    trained_steps={"edm_digits": 2400},
  )
  assert "| edm_digits | heun | 2400 | 3.25 | 1.50 (9) | — | 4.000 | 3.500 |" in table
  assert "500-sample sets" in table


def test_steps_and_seconds_budgets_are_exclusive_and_checked(capsys):
  import pytest

  assert nfe_table.parse_args(["--num_steps=2400"]).budget_seconds is None
  assert nfe_table.parse_args([]).budget_seconds == 600.0
  for argv in (["--num_steps=10", "--budget_seconds=5"], ["--num_steps=0"]):
    with pytest.raises(SystemExit):
      nfe_table.parse_args(argv)
  assert "--num_steps" in capsys.readouterr().err


def test_latest_step_reads_the_checkpoint_folders(tmp_path):
  assert nfe_table.latest_step(str(tmp_path)) is None
  for name in ("883", "1250", "tmp_ignored"):
    (tmp_path / "checkpoints" / name).mkdir(parents=True)
  assert nfe_table.latest_step(str(tmp_path)) == 1250


def test_overrides_of_managed_fields_are_refused(capsys):
  import pytest

  with pytest.raises(SystemExit):
    nfe_table.parse_args(["--override=sample.num_steps=3"])
  assert "set by this script" in capsys.readouterr().err
