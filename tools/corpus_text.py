"""Plain text out of documentation formats, for tools/build_corpus.py: reStructuredText and
AsciiDoc (kept, decoration lines dropped), HTML (tags dropped, scripts and styles skipped), roff
manual pages and Perl POD (requests and formatting codes dropped). Standard library only: a
fresh machine needs no groff or pandoc. Rough by design: the aim is prose and code a language
model reads, not a faithful rendering."""
from __future__ import annotations

import gzip
import html
import html.parser
import re

_DECORATION = re.compile(r"^\s*([=\-~^\"'`#*+_.:])\1{3,}\s*$")   # rst/asciidoc underlines, rules
_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_ROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_ROFF_SPECIAL = {r"\-": "-", r"\(em": "--", r"\(en": "-", r"\(lq": '"', r"\(rq": '"', r"\(aq": "'",
                 r"\(bu": "*", r"\e": "\\", r"\&": "", r"\ ": " ", r"\~": " ", r"\(co": "(c)",
                 r"\(dq": '"', r"\(ga": "`", r"\(ti": "~", r"\(ha": "^", r"\|": "", r"\^": "", r"\:": ""}
_ROFF_TEXT_MACROS = re.compile(r"^\.(SH|SS|TP|IP|B|I|BR|BI|IB|IR|RB|RI|TQ|UR|MT|Nm|Nd|Sh|Ss|It)\b\s*")
_POD_CODE = re.compile(r"[BCFIELSXZ]<+\s*([^<>]*?)\s*>+")
_POD_LINK = re.compile(r"L<+\s*(?:([^|<>]*)\|)?([^<>]*?)\s*>+")


def read_bytes(path: str) -> bytes:
    """A file's bytes, gunzipped when it ends in .gz."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def tidy(text: str) -> str:
    """Drop decoration lines and trailing spaces; at most one blank line in a row."""
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n") if not _DECORATION.match(ln)]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


class _HTMLText(html.parser.HTMLParser):
    """Collects the text of an HTML page; block elements end lines, script/style are skipped."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd",
              "table", "section", "blockquote", "title"}
    SKIP = {"script", "style", "head", "nav", "footer"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skipping = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_text(source: str) -> str:
    parser = _HTMLText()
    parser.feed(source)
    parser.close()
    return tidy("".join(parser.parts))


def roff_text(source: str) -> str:
    """A man page's text: comments and layout requests dropped, text macros keep their words."""
    out = []
    for line in source.split("\n"):
        if line.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if line.startswith((".", "'")):
            m = _ROFF_TEXT_MACROS.match(line)
            if not m:
                continue
            line = line[m.end():].replace('"', "")
            if m.group(1) in ("SH", "Sh"):
                out.append("")
        line = _ROFF_FONT.sub("", line)
        for code, text in _ROFF_SPECIAL.items():
            line = line.replace(code, text)
        out.append(re.sub(r"\\\(..|\\\[[^\]]*\]|\\.", "", line))
    return tidy("\n".join(out))


def pod_text(source: str) -> str:
    """Perl POD: =head/=item keep their text, other commands are dropped; codes keep their text."""
    out = []
    for line in source.split("\n"):
        if line.startswith("="):
            cmd, _, rest = line.partition(" ")
            if cmd.startswith(("=head", "=item")) and rest.strip():
                out += ["", rest.strip()]
            continue
        out.append(line)
    text = "\n".join(out)
    for _ in range(3):  # nested codes: B<I<x>> needs more than one pass
        text = _POD_LINK.sub(lambda m: m.group(1) or m.group(2), text)
        text = _POD_CODE.sub(r"\1", text)
    return tidy(html.unescape(text))


CONVERTERS = {"text": tidy, "html": html_text, "roff": roff_text, "pod": pod_text}


def to_text(path: str, kind: str):
    """The cleaned text of one file (kind: text, html, roff or pod), or None when it is not
    UTF-8 (binary or another encoding)."""
    try:
        source = read_bytes(path).decode("utf-8")
    except (UnicodeDecodeError, OSError, EOFError):
        return None
    return CONVERTERS[kind](source)


def looks_like_prose(text: str, min_chars: int = 200, max_non_ascii: float = 0.05) -> bool:
    """Long enough, mostly ASCII (drops translations) and mostly letters and spaces (drops
    tables of numbers, hex dumps and base64)."""
    if len(text) < min_chars:
        return False
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    wordy = sum(1 for ch in text if ch.isalpha() or ch == " ")
    return non_ascii <= max_non_ascii * len(text) and wordy >= 0.6 * len(text)
