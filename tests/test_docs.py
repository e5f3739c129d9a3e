"""The documentation cannot rot.

docs/math.md: its Python blocks run in order, its links resolve, every `name` it links is defined
in the file it links to, and it covers the lecture's equations. Every other page (README.md,
docs/*.md): each Python block runs on its own and gives what its comments promise; every relative
link points to a file that exists, and to a heading of it; every page is in the site's table of
contents. A region between `<!-- not-executed -->` and `<!-- /not-executed -->` is neither run nor
checked (tests/support/pages.py). The commands of the pages are checked in tests/test_readme.py.
"""

import functools
import importlib.util
import math
import os
import re

import jax
import numpy as np
import pytest

from tests.support import pages, runs

REPO = pages.REPO
DOC = os.path.join(REPO, "docs", "math.md")

# The pages' blocks check values to the tolerances they print, which hold without XLA's optimisation
# passes; compiling is most of their time on a CPU (docs/math.md's blocks: ~15% sooner).
pytestmark = pytest.mark.usefixtures("fast_compile")


def _text():
  return pages.read(DOC)


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
  blocks = pages.blocks(pages.executed(_text()), "python")
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
    (
      "gen_jax/diffusion/process.py",
      [
        "GaussianProcess",
        "discrete_process",
        "q_sample",
        "to_x0_eps",
        "from_x0_eps",
        "ode_velocity",
        "rectified_flow",
      ],
    ),
    (
      "gen_jax/diffusion/denoising.py",
      ["weighting_fn", "weighted_error", "implied_weighting", "elbo_terms"],
    ),
    ("gen_jax/diffusion/preconditioning.py", ["edm_preconditioning"]),
    ("gen_jax/diffusion/solvers.py", ["euler_sample", "ddim_sample", "euler_maruyama_sample"]),
    ("gen_jax/diffusion/process_ode.py", ["ode_log_likelihood"]),
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


# ----------------------------------------------------------------------------------------------------------------
# Every page: its Python blocks, its links, the site's table of contents

# (page, index) of every Python block outside docs/math.md, whose blocks build on each other (above).
BLOCKS = [
  (pages.name(path), index)
  for path in pages.PAGES
  if path != DOC
  for index in range(len(pages.blocks(pages.executed(pages.read(path)), "python")))
]


@functools.cache
def _run_block(page, index):
  """The names one block defines, once per session."""
  code = pages.blocks(pages.executed(pages.read(os.path.join(REPO, page))), "python")[index]
  namespace = {}
  exec(compile(code, f"{page} python block {index}", "exec"), namespace)
  return namespace


def _block_with(text):
  """The names defined by the one block that contains `text`."""
  (found,) = [
    (page, index)
    for page, index in BLOCKS
    if text in pages.blocks(pages.executed(pages.read(os.path.join(REPO, page))), "python")[index]
  ]
  return _run_block(*found)


# Blocks that need a trained workdir run in their own test, beside one.
NEEDS_A_WORKDIR = "train.load_trained("


@pytest.mark.parametrize("page,index", BLOCKS)
@pytest.mark.slow
def test_python_block_runs(page, index):
  code = pages.blocks(pages.executed(pages.read(os.path.join(REPO, page))), "python")[index]
  if NEEDS_A_WORKDIR in code:
    pytest.skip("needs a trained workdir: test_load_trained_block_runs_on_a_trained_workdir")
  _run_block(page, index)


env = runs.env_fixture()


@pytest.mark.slow
def test_load_trained_block_runs_on_a_trained_workdir(env, tmp_path, tmp_path_factory, monkeypatch):
  """library.md's loading block, as printed, on a tiny ddpm_digits run (2 steps) copied to runs/digits: the
  session's shared run (tests/support/runs.py trained_digits_workdir), which tests/test_run.py resumes."""
  runs.copy_workdir(
    runs.trained_digits_workdir(env, tmp_path_factory), tmp_path / "runs" / "digits"
  )
  monkeypatch.chdir(tmp_path)
  (code,) = [
    block
    for path in pages.PAGES
    for block in pages.blocks(pages.executed(pages.read(os.path.join(REPO, path))), "python")
    if NEEDS_A_WORKDIR in block
  ]
  namespace = {}
  exec(compile(code, "docs/library.md loading block", "exec"), namespace)
  assert namespace["loaded"].step == 2
  assert namespace["samples"].shape == (16, 8, 8, 1)
  assert jax.tree.structure(namespace["raw"]) == jax.tree.structure(namespace["loaded"].params)


@pytest.mark.slow
def test_math_core_block_gives_the_shapes_and_values_it_names():
  out = _block_with("vae.iwae_bound")
  assert out["x_t"].shape == out["x0"].shape == (16, 8, 8, 1)
  assert out["losses"].shape == (16,) and out["v_losses"].shape == (16,)
  assert out["samples"].shape == (16, 8, 8, 1) and np.all(np.isfinite(out["samples"]))
  assert out["log_p"].shape == (4,) and np.all(np.isfinite(out["log_p"]))
  # The encoder is the prior N(0, I) itself, so KL = 0; the decoder's x = (z1 + z2) 1 + noise makes
  # x ~ N(0, I + 2 11^T), so log p(1) = -1.5 log 2pi - 0.5 log 7 - 3 / 14, which K = 1000 nearly attains.
  np.testing.assert_array_equal(out["terms"].kl, np.zeros(4))
  log_px = -1.5 * math.log(2 * math.pi) - 0.5 * math.log(7.0) - 3.0 / 14.0
  np.testing.assert_allclose(out["nll"], np.full(4, -log_px), atol=0.05)


def test_evaluation_block_gives_the_values_its_comments_promise():
  out = _block_with("evaluation.frechet_distance")
  assert out["fd"] == pytest.approx(8 * 0.5**2, abs=0.2)  # "about 8 * 0.5**2 = 2"
  assert out["score"] == pytest.approx(10.0, abs=0.1)  # "confident, varied: about 10"


def _slugs(path):
  """The anchors of a page's headings, as GitHub and MyST make them (a repeat gets -1, -2, ...)."""
  slugs = set()
  for title in re.findall(
    r"^#{1,6} +(.+?) *$", re.sub(r"```.*?```", "", pages.read(path), flags=re.S), flags=re.M
  ):
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
    repeat, unique = 0, slug
    while unique in slugs:
      repeat += 1
      unique = f"{slug}-{repeat}"
    slugs.add(unique)
  return slugs


def _broken_links(path):
  """The relative links of a page (code blocks aside) whose file, or heading, does not exist."""
  text = re.sub(r"```.*?```", "", pages.read(path), flags=re.S)
  broken = []
  for _, target in _links(text):
    file, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
    if not os.path.exists(full):
      broken.append(f"{target}: no such file")
    elif anchor and full.endswith(".md") and anchor not in _slugs(full):
      broken.append(f"{target}: no heading #{anchor} in {pages.name(full)}")
  return broken


@pytest.mark.parametrize("page", [pages.name(path) for path in pages.PAGES])
def test_relative_links_point_to_existing_files_and_headings(page):
  assert not _broken_links(os.path.join(REPO, page))


def test_the_link_checker_catches_a_missing_file_and_heading(tmp_path):
  (tmp_path / "a.md").write_text("# A page\n\n## Its part\n")
  (tmp_path / "b.md").write_text(
    "[ok](a.md#its-part) [top](#b) [file](a.md) [gone](c.md) [wrong](a.md#its-whole)\n"
    "```bash\n[in code](d.md)\n```\n# B\n"
  )
  assert _broken_links(str(tmp_path / "b.md")) == [
    "c.md: no such file",
    f"a.md#its-whole: no heading #its-whole in {pages.name(str(tmp_path / 'a.md'))}",
  ]
  assert {"a-page", "its-part"} == _slugs(str(tmp_path / "a.md"))
  assert "evaluation---modeeval" in _slugs(os.path.join(REPO, "docs", "likelihoods.md"))


def test_not_executed_regions_are_closed():
  for path in pages.PAGES:
    markers = re.findall(r"<!-- (/?)not-executed -->", pages.read(path))
    assert markers == ["", "/"] * (len(markers) // 2), (
      f"{pages.name(path)}: unbalanced not-executed markers"
    )


def test_every_page_is_in_the_sites_table_of_contents():
  """docs/index.md's toctrees list every page of docs/ and docs/api/ (Sphinx would warn, in CI)."""
  index = pages.read(os.path.join(pages.DOCS, "index.md"))
  listed = {
    line.strip()
    for block in re.findall(r"```\{toctree\}\n(.*?)```", index, flags=re.S)
    for line in block.splitlines()
  }
  for path in pages.PAGES[1:]:
    entry = os.path.splitext(os.path.relpath(path, pages.DOCS))[0]
    assert entry == "index" or entry in listed, f"docs/index.md does not list {entry}"


def test_plain_docstrings_become_restructuredtext():
  """docs/_ext/plain_docstrings.py: indented runs become literal blocks, stray * and | are escaped,
  a Returns: that names several values becomes a list, and napoleon's sections are left to it."""
  spec = importlib.util.spec_from_file_location(
    "plain_docstrings", os.path.join(pages.DOCS, "_ext", "plain_docstrings.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  docstring = [
    "Loss per example with",
    "  eps: target = noise,",
    "       the MSE;",
    "where `f`(x) is |x|, shape (B, *rest).",
    "",
    "Args:",
    "  x: (B, *rest), see `g`.",
    "",
    "Returns:",
    "  fd_a: the first;",
    "  fd_b: the second, over",
    "    two lines.",
  ]
  assert module.convert(docstring) == [
    "Loss per example with ::",
    "",
    "  eps: target = noise,",
    "       the MSE;",
    "",
    "where `f`\\ (x) is \\|x\\|, shape (B, \\*rest).",
    "",
    "Args:",
    "  x: (B, \\*rest), see `g`.",
    "",
    ":returns:",
    "",
    "   * fd_a: the first;",
    "   * fd_b: the second, over",
    "     two lines.",
    "",
  ]
