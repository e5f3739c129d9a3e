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
    cells, {"edm_digits": {"bits_per_dim": 4.0, "ode_bits_per_dim": 3.5}}, [5, 10, 20], "cmd"
  )
  assert "| edm_digits | heun | 3.25 | 1.50 (9) | — | 4.000 | 3.500 |" in table


def test_overrides_of_managed_fields_are_refused(capsys):
  import pytest

  with pytest.raises(SystemExit):
    nfe_table.parse_args(["--override=sample.num_steps=3"])
  assert "set by this script" in capsys.readouterr().err
