"""A Griffe extension for the API reference: the package's docstrings as mkdocstrings should read them.

The docstrings are Google style with three habits of their own, each adapted here before Griffe parses them:

- Sphinx cross-reference roles (:class:`~mmgen_lightning.models.optim.Optimization`, :meth:`sample`), which
  mkdocstrings would print as they are, become optional autorefs links: a link where the target is
  documented on the site, code text where it is not (a layer, a private helper), so a role never breaks the
  strict build. Names resolve as Sphinx resolves them: the enclosing class, then the module, then the
  package, then the name as a full path; ``~`` shows only the last part, ``title <target>`` the title.
- A class docstring that is only its ``Args:`` section (the module docstring describes the family) starts
  with that header on its first line, where Griffe expects a summary; it gets an empty summary, and its
  entries the indentation that cleaning the first line took from them.
- One ``Args`` entry may document several arguments (``top_k, top_p: ...``); it becomes one entry per
  argument with the same description, so each is matched with its type and default.
- A paragraph that ends in reStructuredText's ``::`` before an indented block ends in ``:``: Markdown shows
  the block as code by itself.
"""

from __future__ import annotations

import re
import textwrap

from griffe import Alias, Extension, GriffeError, Module, Object

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(?P<body>[^`]+)`")
LITERAL = re.compile(r"::\n(?=\n[ \t]+\S)")
EXPLICIT = re.compile(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>$")
SECTION = re.compile(r"^(?P<indent> *)(?:Args|Arguments|Parameters):\s*$")
SEVERAL = re.compile(r"^(?P<indent> +)(?P<names>\w+(?:, \w+)+):(?P<rest>.*)$")


def find(package: Module, path: str) -> str | None:
    """The canonical path of ``path`` inside ``package``, or None when nothing is there."""
    if path == package.path:
        return path
    if not path.startswith(package.path + "."):
        return None
    try:
        found = package[path[len(package.path) + 1:]]
    except (KeyError, GriffeError):
        return None
    return found.target_path if isinstance(found, Alias) else found.path


def resolve(package: Module, obj: Object, target: str) -> str | None:
    module = obj if isinstance(obj, Module) else obj.module
    scopes = [parent.path for parent in (obj, obj.parent) if parent is not None and parent.is_class]
    if target.startswith("."):  # a sibling module's object, e.g. ``.files.FileFormat`` from modalities/base.py
        target = target.lstrip(".")
        scopes += [module.parent.path if module.parent is not None else module.path, module.path]
    else:
        scopes += [module.path, package.path]
    for candidate in [f"{scope}.{target}" for scope in scopes] + [target]:
        path = find(package, candidate)
        if path is not None:
            return path
    return None


def link(package: Module, obj: Object, body: str) -> str:
    explicit = EXPLICIT.match(body)
    if explicit:
        title, target = explicit["title"], explicit["target"]
    else:
        target = body
        title = body.lstrip("~.").rsplit(".", 1)[-1] if body.startswith("~") else body.lstrip(".")
    path = resolve(package, obj, target.lstrip("~"))
    if path is None:
        return f"`{title}`"
    return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'


def split_entries(text: str) -> str:
    """Each ``a, b: description`` entry of an Args section as ``a: description`` and ``b: description``."""
    lines, out, section_indent, index = text.split("\n"), [], None, 0
    while index < len(lines):
        line = lines[index]
        header = SECTION.match(line)
        indent = len(line) - len(line.lstrip())
        if header:
            section_indent = len(header["indent"])
        elif line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None
        several = SEVERAL.match(line) if section_indent is not None else None
        if several:
            continuation = []
            while index + 1 < len(lines) and lines[index + 1].strip() and \
                    len(lines[index + 1]) - len(lines[index + 1].lstrip()) > indent:
                index += 1
                continuation.append(lines[index])
            for name in several["names"].split(", "):
                out += [f"{several['indent']}{name}:{several['rest']}", *continuation]
        else:
            out.append(line)
        index += 1
    return "\n".join(out)


def objects(obj: Object):
    yield obj
    for member in obj.members.values():
        if not isinstance(member, Alias):  # an imported name is rewritten where it is defined
            yield from objects(member)


class PackageDocstrings(Extension):
    def on_package(self, *, pkg: Module, **kwargs) -> None:
        for obj in objects(pkg):
            if obj.docstring is None:
                continue
            text = ROLE.sub(lambda match: link(pkg, obj, match["body"]), obj.docstring.value)
            header, _, rest = text.partition("\n")
            if SECTION.match(header):  # cleaned as a first line, so its entries lost their indentation
                text = f"\n{header}\n{textwrap.indent(rest, '    ')}"
            obj.docstring.value = split_entries(LITERAL.sub(":\n", text))
