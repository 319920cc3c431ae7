"""One escaping function per output context, for text from the store (prompt
texts, task, model and root names, errors) that an export or a page shows.

Stored text is data, never markup: whatever it holds (``<script>``, a Markdown
image, ``\\input``) it comes out as the same characters, drawn as text. See
docs/SECURITY.md for which context each export and page uses.
"""

from __future__ import annotations

import html
import json
import re
import string

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _plain(s) -> str:
    """``s`` as a string without control characters (NUL included): each becomes U+FFFD."""
    return _CONTROL.sub("\ufffd", str(s))


def html_text(s) -> str:
    """Text between HTML tags (``<h3>…</h3>``, ``<title>``)."""
    return html.escape(_plain(s), quote=True)


def html_attr(s) -> str:
    """A double-quoted HTML attribute value (``title="…"``); newlines kept as
    character references, so a tooltip keeps its lines."""
    return html_text(s).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")


def script_json(obj) -> str:
    """``obj`` as JSON to sit inside ``<script type="application/json">``: no
    ``<``, ``>`` or ``&`` in it at all (they are ``\\u003c`` …), so neither
    ``</script>`` nor ``<!--`` in a string can end or change the script block;
    still valid JSON that parses back to ``obj``."""
    text = json.dumps(obj, default=str, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_MD_SPECIAL = set(string.punctuation)


_WJ = "\u2060"  # WORD JOINER: invisible, no break; splits what GFM would make a link
_BARE_LINK = re.compile(
    r"(?i)(?<=www)(?=\.)|(?<=http:)|(?<=https:)|(?<=mailto:)|(?<=xmpp:)"
    r"|(?<=@)(?=[\w-]+\.)"
)


def markdown(s) -> str:
    """Inline Markdown (``st.markdown``, ``st.caption``, ``st.info`` …): every ASCII
    punctuation character backslash-escaped (CommonMark allows it for all of
    them), so no backtick, link, image, emphasis, ``$`` math, ``:color[...]``
    directive or HTML tag can form; a word joiner (U+2060, invisible) inside each
    ``http:``/``https:``/``mailto:``/``xmpp:``, ``www.`` and ``name@domain.``,
    because GFM finds bare links after escapes are read; newlines become spaces
    (one line of text stays one line)."""
    text = _plain(s).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    out = []
    for c in _BARE_LINK.sub(_WJ, text):
        out.append("\\" + c if c in _MD_SPECIAL else c)
    return "".join(out)


_TEX = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "%": r"\%",
    "_": r"\_",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "\n": " ",
    "\r": " ",
    "\t": " ",
    "\x85": " ",
    "\u2028": " ",
    "\u2029": " ",
}


def tex(s) -> str:
    """Text in TeX source, in a node's label or after ``%`` in a comment: every
    character TeX treats specially is written as the character it stands for,
    and a newline (any line break) becomes a space (so a comment cannot end early and start a
    live line such as ``\\input``)."""
    return "".join(_TEX.get(c, c) for c in _plain(s)).replace("\ufffd", "?")
