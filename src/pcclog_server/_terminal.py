r"""What ``pcclog tail`` and ``pcclog sessions`` print to a terminal: text
from the logs made inert, and pcclog's own colours and columns around it.

Theory of operation
-------------------

Every string a producer controls (log text, level, session id, timestamp,
``data``, status metadata, the server's error texts) passes through
``neutralize`` before pcclog adds anything of its own. ``neutralize``
replaces each character of the table below with its escaped spelling, so a
container's output is never interpreted by the terminal: no title set
(``OSC 0``), no screen cleared (``CSI 2 J``), no hidden text (``SGR 8``), no
hyperlink (``OSC 8``), no line overwritten by ``\r`` or backspaces, no
forged line started by ``\n``, no text reordered by a bidi override, no
session id made to look like another with an invisible character. Colours
are added afterwards, from pcclog's own constants only, so they are the
only escape sequences that reach the terminal. ``--json`` output is exact
JSON and does not pass through here.

Escaping the introducer defuses a whole sequence: once ESC is the four
characters ``\x1b``, the ``]0;title`` after it is plain text.

==========================  ========================================  ==========
characters                  why                                       printed as
==========================  ========================================  ==========
LF, CR                      start or overwrite a line                 ``\n`` ``\r``
HT                          moves right only: kept in a log message   ``\t``
                            (stack traces indent with it), escaped
                            in every other field (it breaks columns)
other C0, DEL               BEL, BS, ESC (which starts CSI, OSC,      ``\x1b``
                            DCS, APC, PM, SOS)                        ``\x7f``
C1, U+0080..U+009F          8-bit CSI, OSC, DCS, ST, NEL              ``\x9b``
U+202A..U+202E,             bidi embeddings, overrides, isolates,     ``\u202e``
U+2066..U+2069, U+200E,     marks: reorder what follows
U+200F, U+061C
U+200B..U+200D, U+2060..    zero width or blank: an id with one       ``\u200b``
U+2064, U+FEFF, U+00AD,     looks like the id without
Hangul fillers, U+034F,
U+E0000..U+E0FFF (tags,
variation selectors 17-256)
U+2028, U+2029              line and paragraph separators             ``\u2028``
U+D800..U+DFFF              lone surrogates: not even encodable       ``\ud800``
every other Cf              invisible format characters               ``\uXXXX``
==========================  ========================================  ==========

``ESCAPED_RANGES`` is the exact list. Code points up to U+00FF are written
``\xHH``, up to U+FFFF ``\uHHHH``, beyond ``\UHHHHHHHH``.

Decisions:

* A newline inside a message is printed as ``\n``, not as an indented
  continuation: one entry is one line, so the prefix of every line (time,
  session, level) is pcclog's, and ``grep`` or ``less`` work entry by
  entry. ``pcclog run`` and the Docker source split lines before
  publishing; only a producer sending several lines in one entry sees it.
* The emoji variation selectors U+FE00..U+FE0F are kept (a red heart is
  U+2764 U+FE0F); the zero-width joiner is escaped, so an emoji sequence
  joined by U+200D shows its parts with ``\u200d`` between them.
* A backslash is printed as is: the literal text ``\x1b`` and an escaped
  ESC look the same. That is ambiguous, never dangerous; ``--json`` has
  the exact text.
* Lines longer than the terminal wrap, so text padded to the width of the
  screen still starts a screen row; with colour on, a genuine prefix is
  coloured and such text is not.

Speed: the common line (printable ASCII) is recognised by two C-level
string methods, any other by one search of a precompiled regex; only a line
with something to escape is rewritten.

Colours and columns
-------------------

Each session id gets a colour of ``SESSION_PALETTE``: 16 colours of the
xterm 256-colour cube, each with a contrast ratio of at least 3:1 on both a
black and a white background (so no near-black, near-white, yellow or
cyan), none grey or red (red means errors), chosen far apart in CIELAB. The
colour comes from a stable hash of the id (BLAKE2s of its UTF-8), so a
session has the same colour in every run. Two ids of one view that hash to
the same colour are told apart: the one seen later takes the next free
colour, so up to 16 sessions on screen never share one.

``pcclog tail`` on a terminal pads the session column to the widest id seen
so far, capped at ``SESSION_WIDTH`` columns; a longer id is cut in the
middle with ``…``, keeping its start and its distinguishing end. Piped
output keeps whole ids, unpadded.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = [
    "ESCAPED_RANGES",
    "RESET",
    "SESSION_PALETTE",
    "SESSION_WIDTH",
    "SessionColors",
    "SessionColumn",
    "display_width",
    "fit",
    "natural_key",
    "neutralize",
    "pad",
    "palette_index",
    "truncate",
]

RESET = "\x1b[0m"

# --- neutralising --------------------------------------------------------------

# (first, last, what): every code point printed escaped. The rule table is
# the documentation; tests check it covers every Cc, Cf, Cs, Zl and Zp
# character of the running Python's Unicode database.
ESCAPED_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0000, 0x001F, "C0 controls: BEL, BS, HT, LF, CR, ESC (CSI, OSC, DCS...)"),
    (0x007F, 0x009F, "DEL and the C1 controls (8-bit CSI U+009B, OSC U+009D, NEL)"),
    (0x00AD, 0x00AD, "soft hyphen"),
    (0x034F, 0x034F, "combining grapheme joiner"),
    (0x0600, 0x0605, "Arabic prepended number marks (Cf)"),
    (0x061C, 0x061C, "Arabic letter mark (bidi)"),
    (0x06DD, 0x06DD, "Arabic end of ayah (Cf)"),
    (0x070F, 0x070F, "Syriac abbreviation mark (Cf)"),
    (0x0890, 0x0891, "Arabic pound and piastre marks (Cf)"),
    (0x08E2, 0x08E2, "Arabic disputed end of ayah (Cf)"),
    (0x115F, 0x1160, "Hangul fillers (blank)"),
    (0x17B4, 0x17B5, "Khmer inherent vowels (blank)"),
    (0x180B, 0x180F, "Mongolian variation selectors and vowel separator"),
    (0x200B, 0x200D, "zero-width space, non-joiner, joiner"),
    (0x200E, 0x200F, "left-to-right and right-to-left marks (bidi)"),
    (0x2028, 0x2029, "line and paragraph separators"),
    (0x202A, 0x202E, "bidi embeddings and overrides"),
    (0x2060, 0x2065, "word joiner, invisible operators"),
    (0x2066, 0x2069, "bidi isolates"),
    (0x206A, 0x206F, "deprecated format characters"),
    (0x3164, 0x3164, "Hangul filler (blank)"),
    (0xD800, 0xDFFF, "lone surrogates (not encodable as UTF-8)"),
    (0xFEFF, 0xFEFF, "zero-width no-break space, byte order mark"),
    (0xFFA0, 0xFFA0, "halfwidth Hangul filler (blank)"),
    (0xFFF0, 0xFFFB, "specials and interlinear annotation (Cf)"),
    (0x110BD, 0x110BD, "Kaithi number sign (Cf)"),
    (0x110CD, 0x110CD, "Kaithi number sign above (Cf)"),
    (0x13430, 0x13438, "Egyptian hieroglyph format controls (Cf)"),
    (0x1BCA0, 0x1BCA3, "shorthand format controls (Cf)"),
    (0x1D173, 0x1D17A, "musical symbol format controls (Cf)"),
    (0xE0000, 0xE0FFF, "tags and variation selectors 17-256 (hidden text)"),
)

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _class(ranges: list[tuple[int, int]]) -> re.Pattern[str]:
    parts = (
        f"\\U{first:08x}" if first == last else f"\\U{first:08x}-\\U{last:08x}"
        for first, last in ranges
    )
    return re.compile(f"[{''.join(parts)}]+")


_RANGES = [(first, last) for first, last, _ in ESCAPED_RANGES]
_UNSAFE = _class(_RANGES)
# The same without HT: a tab only moves the cursor right, and stack traces
# indent with it.
_UNSAFE_BUT_TAB = _class([(0x00, 0x08), (0x0A, 0x1F), *_RANGES[1:]])


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_run(match: re.Match[str]) -> str:
    return "".join(map(_escape_char, match.group()))


def neutralize(text: str, *, keep_tab: bool = False) -> str:
    """``text`` with every character of ``ESCAPED_RANGES`` escaped
    (``\\x1b``, ``\\r``, ``\\n``, ``\\u202e``). ``keep_tab`` keeps ``\\t``
    (for log messages); elsewhere it would break a column."""
    if text.isascii() and text.isprintable():
        return text
    pattern = _UNSAFE_BUT_TAB if keep_tab else _UNSAFE
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escape_run, text)


# --- widths --------------------------------------------------------------------


def _char_width(char: str) -> int:
    if unicodedata.category(char) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal columns of neutralised ``text`` (wide CJK and emoji count 2,
    combining marks 0)."""
    if text.isascii():
        return len(text)
    return sum(map(_char_width, text))


def _take(text: str, columns: int, *, from_end: bool = False) -> str:
    """The longest start (or end) of ``text`` at most ``columns`` wide."""
    taken = 0
    chars = reversed(text) if from_end else iter(text)
    kept: list[str] = []
    for char in chars:
        width = _char_width(char)
        if taken + width > columns:
            break
        taken += width
        kept.append(char)
    if from_end:
        kept.reverse()
    return "".join(kept)


def fit(text: str, width: int) -> str:
    """``text`` cut in the middle with ``…`` to at most ``width`` columns."""
    if display_width(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    budget = width - 1
    head = _take(text, budget - budget // 2)
    tail = _take(text, budget - display_width(head), from_end=True)
    return f"{head}…{tail}"


def truncate(text: str, width: int) -> str:
    """``text`` cut at the end with ``…`` to at most ``width`` columns."""
    if display_width(text) <= width:
        return text
    return _take(text, max(width - 1, 0)) + "…"


def pad(text: str, width: int) -> str:
    """``text`` followed by spaces up to ``width`` columns."""
    return text + " " * max(width - display_width(text), 0)


# --- sorting -------------------------------------------------------------------

_DIGITS = re.compile(r"([0-9]+)")


def natural_key(text: str) -> tuple[tuple[int, str], ...]:
    """Sort key putting ``agent-2`` before ``agent-10``.

    Digit runs compare by value (length of the run without leading zeros,
    then the digits: no ``int()``, so a 5,000-digit id cannot hit Python's
    conversion limit); text compares case-insensitively; the id itself breaks
    ties. ``re.split`` alternates text and digits, so two keys never compare a
    text part with a number part.
    """
    key: list[tuple[int, str]] = []
    for index, part in enumerate(_DIGITS.split(text)):
        if index % 2:
            digits = part.lstrip("0")
            key.append((len(digits), digits))
        else:
            key.append((0, part.casefold()))
    key.append((0, text))
    return tuple(key)


# --- session colours -----------------------------------------------------------

# xterm 256-colour indices: contrast >= 3:1 against both #000 and #fff,
# chroma >= 35 (no greys), CIELAB distance >= 30 from red, picked greedily
# farthest-first (minimum pairwise distance 23.9), in that order, so
# neighbours in this tuple differ as much as the palette allows.
SESSION_PALETTE: tuple[int, ...] = (
    32, 28, 197, 93, 130, 170, 27, 131, 100, 29, 201, 162, 97, 69, 135, 168,
)  # fmt: skip

SESSION_WIDTH = 24
_REMEMBER = 4096  # ids kept per view before the assignments start over


def palette_index(session_id: str) -> int:
    """The preferred ``SESSION_PALETTE`` slot of ``session_id``: the same in
    every process (unlike ``hash()``, which is salted per process)."""
    digest = hashlib.blake2s(session_id.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big") % len(SESSION_PALETTE)


class SessionColors:
    """The SGR colour of each session of one view: its hashed palette slot,
    or, if another id of this view holds that slot, the next free one."""

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        self._holders: dict[int, str] = {}

    def code(self, session_id: str) -> str:
        slot = self._slots.get(session_id)
        if slot is None:
            slot = self._assign(session_id)
        return f"\x1b[38;5;{SESSION_PALETTE[slot]}m"

    def _assign(self, session_id: str) -> int:
        if len(self._slots) >= _REMEMBER:
            self._slots.clear()
            self._holders.clear()
        preferred = palette_index(session_id)
        slot = preferred
        size = len(SESSION_PALETTE)
        for step in range(size):
            candidate = (preferred + step) % size
            if candidate not in self._holders:
                slot = candidate
                break
        self._holders.setdefault(slot, session_id)
        self._slots[session_id] = slot
        return slot


class SessionColumn:
    """The session cell of ``pcclog tail``: neutralised, coloured when
    ``color``; on a terminal (``pad``) also cut in the middle past ``cap``
    columns and padded to the widest id seen so far."""

    def __init__(self, *, color: bool, pad: bool = True, cap: int = SESSION_WIDTH) -> None:
        self.color = color
        self.pad = pad
        self.cap = cap
        self.width = 0
        self._colors = SessionColors()
        self._cells: dict[str, tuple[str, int]] = {}

    def cell(self, session_id: str) -> str:
        known = self._cells.get(session_id)
        if known is None:
            if len(self._cells) >= _REMEMBER:
                self._cells.clear()
            text = neutralize(session_id)
            if self.pad:
                text = fit(text, self.cap)
            known = (text, display_width(text))
            self._cells[session_id] = known
        text, width = known
        padding = ""
        if self.pad:
            self.width = max(self.width, width)
            padding = " " * (self.width - width)
        if self.color:
            return f"{self._colors.code(session_id)}{text}{RESET}{padding}"
        return text + padding
