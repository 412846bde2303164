"""A MkDocs hook: the pages' formulas rendered to MathML when the site is built.

``pymdownx.arithmatex`` (generic mode) keeps each ``$...$`` and ``$$...$$`` of a page out of Markdown's
way and marks it ``<span class="arithmatex">`` or ``<div class="arithmatex">``; here each one becomes
MathML (``latex2mathml``), which browsers draw natively. No MathJax or KaTeX script, so nothing is
fetched when a page is read and the site works offline; a formula latex2mathml cannot read fails the
build, naming the page.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

FORMULA = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', re.DOTALL)
DELIMITERS = {"span": ("\\(", "\\)"), "div": ("\\[", "\\]")}


def on_page_content(content: str, page, **kwargs) -> str:
    def render(match: re.Match) -> str:
        tex = html.unescape(match["tex"]).strip()
        opening, closing = DELIMITERS[match["tag"]]
        tex = tex.removeprefix(opening).removesuffix(closing)
        try:
            mathml = convert(tex, display="block" if match["tag"] == "div" else "inline")
        except Exception as error:  # latex2mathml raises its own kinds; any of them is this formula's fault
            raise ValueError(f"{page.file.src_uri}: cannot render the formula {tex!r} ({error})") from error
        # a command latex2mathml does not know is left as text; Chrome draws only mathvariant="normal", so
        # \mathcal N must be written \mathcal{N}, which becomes the Unicode letter itself
        unread = re.search(r"\\[A-Za-z|]+|mathvariant=\"(?!normal)", mathml)
        if unread:
            raise ValueError(f"{page.file.src_uri}: the formula {tex!r} renders {unread[0]!r} as it is "
                             "(write \\mathcal{N}, \\lVert x \\rVert, ...)")
        return mathml

    return FORMULA.sub(render, content)
