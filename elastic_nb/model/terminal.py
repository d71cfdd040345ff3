"""A rank's output as a terminal shows it: carriage returns, colours, and nothing else raw.

Pure functions over text, tested without a process:

* ``overwrite`` applies carriage returns within one line as a terminal does:
  a segment ended by ``\\r`` is overwritten by the next, so a tqdm or rich
  progress bar (redrawn with ``\\r`` hundreds of times, one newline at the
  end) is one line in its final state.
* ``plain`` strips every escape sequence (colours, cursor moves, titles):
  what ``job.logs()`` and ``job.follow()`` give.
* ``to_html`` escapes the text for a page and renders SGR colours and
  styles (16, 256 and true colours, bold, dim, italic, underline) as
  ``<span style=...>``; every other escape sequence is dropped, never shown raw.

The files on disk keep the exact bytes the ranks wrote.
"""

from __future__ import annotations

import html
import re

# CSI (colours, cursor moves, erase), OSC (titles, hyperlinks), and two-byte escapes
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

_BASIC = ("#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5")
_BRIGHT = ("#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff")


def overwrite(text: str) -> str:
    """One line with its carriage returns applied (``"50%\\r100%"`` is ``"100%"``)."""
    if "\r" not in text:
        return text
    segments = text.split("\r")
    if "\x1b" in text:  # escape codes have no width: the last drawing stands
        return next((s for s in reversed(segments) if s), "")
    line = ""
    for segment in segments:
        line = segment + line[len(segment):]
    return line


def plain(text: str) -> str:
    """The text without escape sequences or other control characters (tabs stay)."""
    if "\x1b" not in text and not _CONTROL.search(text):
        return text
    return _CONTROL.sub("", _ESCAPE.sub("", text))


def _hex(r: int, g: int, b: int) -> str:
    return f"#{r:02x}{g:02x}{b:02x}"


def _color(codes: list[int], index: int) -> tuple[str | None, int]:
    """The colour an extended SGR code (38/48 ;5;n or ;2;r;g;b) at ``index`` names, and
    how many codes it used."""
    if index + 1 < len(codes) and codes[index + 1] == 5 and index + 2 < len(codes):
        n = codes[index + 2]
        if n < 8:
            return _BASIC[n], 3
        if n < 16:
            return _BRIGHT[n - 8], 3
        if n < 232:
            n -= 16
            r, g, b = (n // 36) % 6, (n // 6) % 6, n % 6
            return _hex(*(0 if c == 0 else 55 + 40 * c for c in (r, g, b))), 3
        level = 8 + 10 * (n - 232)
        return _hex(level, level, level), 3
    if index + 1 < len(codes) and codes[index + 1] == 2 and index + 4 < len(codes):
        return _hex(*(max(0, min(255, c)) for c in codes[index + 2:index + 5])), 5
    return None, 1


class _Style:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fg: str | None = None
        self.bg: str | None = None
        self.bold = self.dim = self.italic = self.underline = False

    def apply(self, codes: list[int]) -> None:
        i = 0
        while i < len(codes):
            code, used = codes[i], 1
            if code == 0:
                self.reset()
            elif code == 1:
                self.bold = True
            elif code == 2:
                self.dim = True
            elif code == 3:
                self.italic = True
            elif code == 4:
                self.underline = True
            elif code == 22:
                self.bold = self.dim = False
            elif code == 23:
                self.italic = False
            elif code == 24:
                self.underline = False
            elif 30 <= code <= 37:
                self.fg = _BASIC[code - 30]
            elif 90 <= code <= 97:
                self.fg = _BRIGHT[code - 90]
            elif 40 <= code <= 47:
                self.bg = _BASIC[code - 40]
            elif 100 <= code <= 107:
                self.bg = _BRIGHT[code - 100]
            elif code == 39:
                self.fg = None
            elif code == 49:
                self.bg = None
            elif code in (38, 48):
                color, used = _color(codes, i)
                if code == 38:
                    self.fg = color
                else:
                    self.bg = color
            i += used

    def css(self) -> str:
        parts = []
        if self.fg:
            parts.append(f"color:{self.fg}")
        if self.bg:
            parts.append(f"background:{self.bg}")
        if self.bold:
            parts.append("font-weight:bold")
        if self.dim:
            parts.append("opacity:0.7")
        if self.italic:
            parts.append("font-style:italic")
        if self.underline:
            parts.append("text-decoration:underline")
        return ";".join(parts)


def to_html(text: str) -> str:
    """The text escaped for HTML, its SGR colours and styles as spans; no other escape."""
    if "\x1b" not in text:
        return html.escape(plain(text))
    style = _Style()
    out: list[str] = []
    position = 0
    for match in _SGR.finditer(text):
        out.append(_span(text[position:match.start()], style.css()))
        style.apply([int(c) if c else 0 for c in match.group(1).split(";")])
        position = match.end()
    out.append(_span(text[position:], style.css()))
    return "".join(out)


def _span(chunk: str, css: str) -> str:
    chunk = html.escape(plain(chunk))
    if not chunk:
        return ""
    return f"<span style='{css}'>{chunk}</span>" if css else chunk
