"""Small argument checks shared by the library: one wording for every error.

`name` is how the caller names the value in its message: a function argument
(`num_steps`) or a config field (`config.train.num_steps`); the command line
adds its `--` itself.
"""

import math
import numbers


def is_integer(value) -> bool:
  """True for Python and numpy integers, False for bools (a bool is an int to Python)."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
  """True for finite Python and numpy reals, bools excluded."""
  return (
    isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
  )


def check_integer(value, name: str, low: int | None = None, high: int | None = None) -> int:
  """Returns `value` if it is an integer in [low, high] (either end may be open); else ValueError."""
  if (
    not is_integer(value)
    or (low is not None and value < low)
    or (high is not None and value > high)
  ):
    raise ValueError(f"{name} must be an integer{_range(low, high)}, got {value!r}")
  return int(value)


def check_real(value, name: str, low: float | None = None, high: float | None = None) -> float:
  """Returns `value` as a float if it is a finite real in [low, high]; else ValueError."""
  if not is_real(value) or (low is not None and value < low) or (high is not None and value > high):
    raise ValueError(f"{name} must be a finite number{_range(low, high)}, got {value!r}")
  return float(value)


def _range(low, high) -> str:
  if low is not None and high is not None:
    return f" in [{low}, {high}]"
  if low is not None:
    return f" >= {low}"
  if high is not None:
    return f" <= {high}"
  return ""
