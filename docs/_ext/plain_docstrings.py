"""gen_jax's docstrings as Sphinx should read them.

The house style is plain text that reads well in `help()` and an editor: Google-style
"Args:" / "Returns:" sections (napoleon parses those), and elsewhere formulas, tables and
cases set off by indentation, with no reStructuredText markup. reStructuredText reads such
an indented run as an unexpected indentation or a definition list and warns; here it becomes
a preformatted block, laid out as written. Stray `*` and `|` (as in `(B, *shape)`, `**kwargs`
or `|x|`) are escaped so that they are not read as emphasis or substitutions.

The docstrings themselves stay as they are; `convert` runs on each one before napoleon.
"""

import re

# Napoleon's section headers (Google style): their bodies are napoleon's to read.
_SECTION = re.compile(
  r"(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters|Returns|Return"
  r"|Yields|Yield|Raises|Raise|Attributes|Methods|Example|Examples|Note|Notes|References"
  r"|See Also|Todo|Warning|Warnings|Warns):\s*$"
)
_NAMED = re.compile(r"\s*[\w*.\[\], ()]+: ")
_BULLET = re.compile(r"([*+-]|\d+[.)]|#\.)\s+(?=\S)")
# Inline literals and interpreted text (`x`, ``x``, :role:`x`) are left alone.
_INLINE_CODE = re.compile(r"(:[\w:.-]+:)?``.*?``|(:[\w:.-]+:)?`[^`]*`")
# Emphasis and strong emphasis that reStructuredText would read as such: kept.
_EMPHASIS = re.compile(r"(?<![\w*\\])(\*\*?)(?=\S)[^*\n]*?(?<=\S)\1(?![\w*])")


def _indent(line):
  return len(line) - len(line.lstrip())


def _escape_outside_code(line):
  """`*`, `|` and `name_` escaped where reStructuredText would read them as markup, not in code;
  code that touches a word or a bracket (`f`(x), `a`[0]) gets the separator it needs."""
  stripped = line.lstrip()
  bullet = _BULLET.match(stripped)
  prefix = line[: len(line) - len(stripped) + (bullet.end() if bullet else 0)]
  line = line[len(prefix) :]
  pieces, end = [], 0
  for match in _INLINE_CODE.finditer(line):
    before = _escape_text(line[end : match.start()])
    if before and not re.match(r"[\s\-:/'\"<(\[{]", before[-1]):
      before += "\\ "
    pieces += [before, match.group(0)]
    end = match.end()
    if end < len(line) and not re.match(r"[\s\-.,:;!?\\/'\")\]}>]", line[end]):
      pieces.append("\\ ")
  pieces.append(_escape_text(line[end:]))
  return prefix + "".join(pieces)


def _escape_text(text):
  kept = {}

  def keep(match):
    kept[f"\0{len(kept)}\0"] = match.group(0)
    return f"\0{len(kept) - 1}\0"

  text = _EMPHASIS.sub(keep, text)
  text = re.sub(r"(?<!\\)([*|])", r"\\\1", text)
  text = re.sub(r"(?<=\w)_(?!\w)", r"\\_", text)  # name_ is a reference
  for placeholder, original in kept.items():
    text = text.replace(placeholder, original)
  return text


def _section_end(lines, start):
  """The index after the Google-style section whose header is lines[start]."""
  base = _indent(lines[start])
  i = start + 1
  while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
    i += 1
  return i


def _section(lines):
  """A Google-style section, escaped; a "Returns:" or "Yields:" that lists several named values
  ("name: what", one per line) becomes a bulleted field, which napoleon would run together."""
  header, body = lines[0].strip(), lines[1:]
  base = min((_indent(line) for line in body if line.strip()), default=0)
  named = [line for line in body if line.strip() and _indent(line) == base]
  if header in ("Returns:", "Yields:") and len(named) > 1 and all(map(_NAMED.match, named)):
    field = ":returns:" if header == "Returns:" else ":Yields:"
    items = []
    for line in body:
      if not line.strip():
        items.append("")
      elif _indent(line) == base:
        items.append("   * " + _escape_outside_code(line.strip()))
      else:
        items.append("     " + _escape_outside_code(line[base + 2 :]))
    return [field, ""] + items + [""]
  return [_escape_outside_code(line) for line in lines]


def convert(lines):
  """The docstring's lines with each indented run outside the sections as a literal block."""
  out = []
  i = 0
  text_indent = None  # where the current paragraph's text starts; None after a blank line
  item_indent = None  # the indentation of the current list item's marker, if any
  last_text = None  # (index in out, text indent) of the last paragraph line, across blank lines
  while i < len(lines):
    line = lines[i]
    if not line.strip():
      out.append(line)
      text_indent = None
      i += 1
      continue
    indent = _indent(line)
    if _SECTION.fullmatch(line.strip()) and (text_indent is None or indent <= text_indent):
      end = _section_end(lines, i)
      if out and out[-1].strip():
        out.append("")
      out += _section(lines[i:end])
      text_indent = item_indent = last_text = None
      i = end
      continue
    if text_indent is None and last_text and indent > last_text[1]:
      # An indented run after a blank line (a block quote to reStructuredText): laid out too.
      at, text_indent = last_text
      i = _literal(lines, i, text_indent, out, at)
      text_indent = item_indent = last_text = None
      continue
    bullet = _BULLET.match(line.strip())
    if text_indent is None or indent < text_indent or (bullet and indent == item_indent):
      if text_indent is not None:  # a dedent inside a block: a new paragraph or list item
        if not (bullet and indent == item_indent):
          out.append("")
      item_indent = indent if bullet else None
      text_indent = indent + bullet.end() if bullet else indent
      out.append(_escape_outside_code(line))
      last_text = (len(out) - 1, text_indent)
      i += 1
      continue
    if indent == text_indent:
      out.append(_escape_outside_code(line))
      last_text = (len(out) - 1, text_indent)
      i += 1
      continue
    # Deeper than the paragraph: laid out as written.
    out.append("")
    i = _literal(lines, i, text_indent, out, last_text[0])
    text_indent = item_indent = last_text = None
  return out


def _literal(lines, i, text_indent, out, at):
  """Copies the run from lines[i] that is indented past `text_indent` as a literal block
  introduced by out[at]; returns the index after it. "text ::" shows "text", "text:" + ":"
  shows "text:"."""
  if not out[at].endswith("::"):
    out[at] += ":" if out[at].endswith(":") else " ::"
  while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > text_indent):
    out.append(lines[i])
    i += 1
  while out and out[-1] == "":
    out.pop()
  out.append("")
  return i


def _process_docstring(app, what, name, obj, options, lines):
  lines[:] = convert(lines)


def setup(app):
  # Before napoleon (priority 500), which then reads the sections as ever.
  app.connect("autodoc-process-docstring", _process_docstring, priority=400)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
