"""docs/math.md cannot rot: its Python blocks run in order, its links resolve,
every `name` it links is defined in the file it links to, and it covers the
lecture's equations."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "math.md")


def _text():
  with open(DOC) as f:
    return f.read()


def _links(text):
  """(link text, target) of every markdown link, external ones excepted."""
  return [
    (label, target)
    for label, target in re.findall(r"\[([^\]]+)\]\(([^)\s]+)\)", text)
    if not re.match(r"[a-z]+:", target)
  ]


def _defines(path, name):
  with open(path) as f:
    return re.search(rf"^\s*(?:def|class)\s+{re.escape(name)}\b", f.read(), flags=re.M) is not None


@pytest.mark.slow
def test_python_blocks_run_in_order(monkeypatch):
  monkeypatch.chdir(REPO)  # the page says: run from the repository root
  blocks = re.findall(r"```python\n(.*?)```", _text(), flags=re.S)
  assert len(blocks) >= 10
  namespace = {}
  for index, code in enumerate(blocks):
    exec(compile(code, f"docs/math.md python block {index}", "exec"), namespace)


def test_links_resolve_and_name_real_definitions():
  links = _links(_text())
  assert len(links) > 50
  for label, target in links:
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(os.path.dirname(DOC), path))
    assert os.path.exists(full), f"docs/math.md links to a missing file: {target}"
    code = re.fullmatch(r"`([A-Za-z_][\w.]*)`", label)
    if code and full.endswith(".py"):
      name = code.group(1).split(".")[-1]
      assert _defines(full, name), f"[{label}]({target}): no def/class {name} in {path}"
    if anchor:  # a line anchor must point at the line that defines the linked name
      line = int(re.fullmatch(r"L(\d+)", anchor).group(1))
      with open(full) as f:
        assert code and re.search(
          rf"(def|class)\s+{code.group(1).split('.')[-1]}\b", f.readlines()[line - 1]
        ), target


def test_the_checker_catches_a_wrong_name():
  forward = os.path.join(REPO, "gen_jax", "diffusion", "forward.py")
  assert _defines(forward, "q_posterior")
  assert not _defines(forward, "q_posterio")
  assert not _defines(forward, "normal_kl")


@pytest.mark.parametrize(
  "path,names",
  [
    (
      "gen_jax/distributions.py",
      [
        "normal_log_prob",
        "bernoulli_log_prob",
        "categorical_log_prob",
        "normal_kl",
        "monte_carlo_kl_terms",
        "gaussian_mixture_log_prob",
        "discretized_gaussian_log_prob",
      ],
    ),
    ("experiments/mle_toy.py", ["negative_log_likelihood", "forward_kl", "reverse_kl"]),
    ("gen_jax/vae/elbo.py", ["elbo", "reparameterize", "iwae_bound"]),
    ("gen_jax/diffusion/forward.py", ["q_step", "make_q_sample", "q_posterior"]),
    ("gen_jax/diffusion/reverse.py", ["p_mean_variance"]),
    ("gen_jax/diffusion/losses.py", ["simple_loss", "vlb_term", "prior_kl", "vlb_bits_per_dim"]),
    (
      "gen_jax/diffusion/vdm.py",
      [
        "vdm_terms",
        "diffusion_loss",
        "discrete_diffusion_loss",
        "prior_kl",
        "reconstruction_nll",
        "LogSNRSchedule",
        "variance_tap",
      ],
    ),
  ],
)
def test_covers_every_equation(path, names):
  """Each equation's implementation is linked, and each section links a test."""
  links = _links(_text())
  for name in names:
    assert (f"`{name}`", f"../{path}") in links, f"docs/math.md does not link {name} in {path}"
  sections = re.split(r"^## ", _text(), flags=re.M)[1:]
  assert len(sections) >= 12
  for section in sections:
    targets = [t for _, t in _links(section)]
    title = section.splitlines()[0]
    assert any(t.startswith("../tests/") for t in targets), f"section {title!r} links no test"
    assert any(t.startswith(("../gen_jax/", "../experiments/")) for t in targets), title


def test_readme_links_the_page_at_the_top():
  with open(os.path.join(REPO, "README.md")) as f:
    head = "".join(f.readlines()[:20])
  assert "(docs/math.md)" in head
