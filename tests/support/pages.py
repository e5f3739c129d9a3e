"""README.md and the pages of docs/ as the tests read them (tests/test_readme.py, tests/test_docs.py).

Every command and snippet on a page runs in the tests, except between the two comments
`<!-- not-executed -->` and `<!-- /not-executed -->`: documentation of an API that another change
brings in. Such a region is neither run nor checked until its markers are removed.
"""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")
# The pages a reader reads: the README and every docs page (the API reference's pages included).
PAGES = [README] + sorted(
  glob.glob(os.path.join(DOCS, "*.md")) + glob.glob(os.path.join(DOCS, "api", "*.md"))
)

NOT_EXECUTED = re.compile(r"<!-- not-executed -->.*?<!-- /not-executed -->", flags=re.S)


def name(path):
  """The page's path from the repository root, e.g. docs/samplers.md."""
  return os.path.relpath(path, REPO)


def read(path):
  with open(path) as f:
    return f.read()


def executed(text):
  """The text with its not-executed regions removed."""
  return NOT_EXECUTED.sub("", text)


def blocks(text, language):
  """The fenced code blocks of one language, in order."""
  return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
