"""Sphinx configuration: the pages are MyST Markdown, the API reference comes from the docstrings.

Build (warnings are errors): python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import re
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DOCS)
# autodoc imports gen_jax from this checkout, not from whichever copy is installed.
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(DOCS, "_ext"))

project = "gen_jax"
copyright = "the gen_jax authors"
author = "the gen_jax authors"

add_module_names = False  # `linear_betas(...)`, not `gen_jax.diffusion.schedules.linear_betas(...)`

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "plain_docstrings",
  "source_links",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]

# The pages are GitHub-flavoured Markdown read on GitHub too: heading anchors as GitHub makes
# them, so `page.md#a-heading` links work in both places.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "amsmath"]

# Google-style "Args:" / "Returns:" sections; `name` in a docstring is code (and a link
# where Sphinx knows the name).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are not described twice
# Docstrings lay formulas out as literal blocks: plain text, not Python to colour.
highlight_language = "none"
default_role = "py:obj"
# A `name` several classes define (`net`) stays code without a link instead of failing the build.
suppress_warnings = ["ref.python"]
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Signatures with their type annotations wrap instead of running off the page.
maximum_signature_line_length = 88
python_display_short_literal_types = True

html_theme = "sphinx_book_theme"
html_title = "gen_jax"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
  "show_toc_level": 2,
  "navigation_with_keys": False,
}


# GitHub's math syntax, which the pages use so that they render on GitHub as well:
# $`...`$ inline and ```math fences, rewritten to MyST's $...$ and {math} before parsing.
_INLINE_MATH = re.compile(r"\$`(.+?)`\$")
_MATH_FENCE = re.compile(r"^```math[ \t]*$", flags=re.M)


def _github_math_to_myst(app, docname, source):
  text = _INLINE_MATH.sub(lambda m: "$" + m.group(1) + "$", source[0])
  source[0] = _MATH_FENCE.sub("```{math}", text)


def _no_experiments_imported(app, exception):
  """The site documents the library: experiments/ (scripts with side effects) is never imported."""
  imported = sorted(m for m in sys.modules if m == "experiments" or m.startswith("experiments."))
  if imported:
    raise RuntimeError(f"the docs build imported {imported}; document gen_jax only")


def setup(app):
  app.connect("source-read", _github_math_to_myst)
  app.connect("build-finished", _no_experiments_imported)
