"""The multi-process mismatch message docs/scaling.md quotes is the one
gen_jax.runtime.distributed.check_same_config raises (issue 26: the docs quoted another
wording and another format of the differing value). Two processes are stood in for by
a fake key-value store, so the real message is built in one process, then written as
run.py writes it (as_flags: config.x -> --config.x)."""

import re
from pathlib import Path

import jax
import ml_collections
import pytest

import run
from gen_jax.configs import ConfigError
from gen_jax.runtime import distributed

DOCS = Path(__file__).parents[2] / "docs" / "scaling.md"


class _Store:
  """The coordination service's key-value store, with process 0's config already in it."""

  def __init__(self, peer_config):
    self.values = {"gen_jax/config/0": peer_config}

  def key_value_set(self, key, value):
    self.values[key] = value

  def blocking_key_value_get(self, key, timeout_ms):
    return self.values[key]


def _quoted() -> str:
  """The message quoted in docs/scaling.md's "A process started differently" item."""
  item = DOCS.read_text().split("**A process started differently**")[1]
  quote = item.split("in every process: `")[1].split("`")[0]
  return re.sub(r"\s+", " ", quote)


def test_docs_quote_the_mismatch_message(monkeypatch):
  job = "ddpm_toy2d --mode=train --workdir=/shared/run"
  theirs = ml_collections.ConfigDict({"optim": {"learning_rate": 0.0002}})
  mine = ml_collections.ConfigDict({"optim": {"learning_rate": 0.0004}})
  store = _Store(distributed.config_fingerprint(theirs, job))
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(distributed, "_client", lambda: store)
  with pytest.raises(ConfigError) as raised:
    distributed.check_same_config(mine, job)
  message = f"error: {run.as_flags(str(raised.value))}"  # run.py's one line on stderr
  quoted = _quoted()
  head, tail = quoted.split("...")
  assert message.startswith(head), (quoted, message)
  assert message.endswith(tail), (quoted, message)


def test_a_peers_death_starts_its_line_after_an_open_progress_bar():
  """The one-line error of a dead peer (or a start-up timeout) is written raw to stderr while training's
  tqdm bar may be open, its line unended: it must start a line of its own. Before, it was glued to the bar
  ("...loss=0.9408]error: process 2 of 3 ended without a word ...") whenever training had begun."""
  import io

  import tqdm

  assert distributed._fresh_line() == ""
  bar = tqdm.tqdm(total=3, file=io.StringIO())
  try:
    assert distributed._fresh_line() == "\n"
  finally:
    bar.close()
  assert distributed._fresh_line() == ""
