"""gen_jax.checks: strict integers and finite reals, with the value's name in the error."""

import numpy as np
import pytest

from gen_jax import checks


@pytest.mark.parametrize("value", [0, 3, np.int32(4), np.int64(-2)])
def test_integers(value):
  assert checks.is_integer(value)


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, np.float32(1)])
def test_not_integers(value):
  assert not checks.is_integer(value)


def test_check_integer_names_the_value_and_the_range():
  assert checks.check_integer(5, "num_steps", 1, 10) == 5
  with pytest.raises(ValueError, match=r"config.train.num_steps must be an integer >= 1, got 0"):
    checks.check_integer(0, "config.train.num_steps", low=1)
  with pytest.raises(ValueError, match=r"num_steps must be an integer in \[1, 10\], got True"):
    checks.check_integer(True, "num_steps", 1, 10)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "1.0", None])
def test_check_real_refuses_non_finite_and_non_numbers(value):
  with pytest.raises(ValueError, match="lr must be a finite number"):
    checks.check_real(value, "lr")


def test_check_real_bounds():
  assert checks.check_real(np.float32(0.5), "eta", 0.0, 1.0) == 0.5
  with pytest.raises(ValueError, match=r"eta must be a finite number >= 0.0, got -1"):
    checks.check_real(-1, "eta", low=0.0)
