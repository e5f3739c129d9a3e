"""Links from the pages to gen_jax's source files go to the API reference on the site.

On GitHub, [`q_step`](../gen_jax/diffusion/forward.py) opens the file. Sphinx would offer the
file as a download; here a link whose text names a documented object of that module goes to its
entry in the API reference, and any other link to a library module to its highlighted source
(sphinx.ext.viewcode's page). Links to tests/ and experiments/ stay downloads of the file.
"""

import os

from docutils import nodes
from sphinx import addnodes


def _module(repo, path):
  """gen_jax.x.y for repo/gen_jax/x/y.py (or .../y/__init__.py); None outside the library."""
  relative = os.path.relpath(path, repo)
  if not relative.startswith("gen_jax" + os.sep) or not relative.endswith(".py"):
    return None
  parts = relative[: -len(".py")].split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rewrite(app, doctree, docname):
  repo = os.path.dirname(app.srcdir)
  objects = app.env.get_domain("py").objects
  for node in list(doctree.findall(addnodes.download_reference)):
    target = os.path.join(app.srcdir, os.path.dirname(docname), node["reftarget"].partition("#")[0])
    module = _module(repo, os.path.normpath(target))
    if module is None:
      continue
    name = f"{module}.{node.astext().strip()}"
    if name in objects:
      entry = objects[name]
      uri = app.builder.get_relative_uri(docname, entry.docname) + "#" + entry.node_id
    elif "sphinx.ext.viewcode" in app.extensions:
      uri = app.builder.get_relative_uri(docname, "_modules/" + module.replace(".", "/"))
    else:
      continue
    node.replace_self(nodes.reference("", "", *node.children, internal=True, refuri=uri))


def setup(app):
  app.connect("doctree-resolved", _rewrite)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
