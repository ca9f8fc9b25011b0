"""The one place that decides what a catalogue name, a tag or a note may contain.

Names and tags are shown in tables, terminals, file dialogs and model cards, and typed
back on command lines. Characters that a reader cannot see or that rearrange what is
shown around them have no place there:

* control characters (C0, DEL, C1), e.g. a terminal escape or the list separator U+001F;
* bidirectional overrides, embeddings and isolates (U+202A-U+202E, U+2066-U+2069) and
  the invisible direction marks (U+200E, U+200F, U+061C), which can make a name read
  differently from what it is ("Trojan Source");
* zero-width characters (U+200B-U+200D, U+2060-U+2064, U+FEFF), which make two
  different names look the same;
* line and paragraph separators (U+2028, U+2029) and lone surrogates (bytes that were
  not UTF-8 on the command line).

Names follow the catalogue's naming rules besides (1-200 characters, no ':' and no
backslash, not '.' or '..'). Notes may hold several lines and tabs, so only control
characters other than newline and tab are refused there.

Old libraries may already hold such names or tags; :func:`printable` shows them with
the hidden characters spelled out (``\\u202e``), and :func:`same_text` lets a command
find them again from that spelling or from what a terminal showed.
"""

from __future__ import annotations

import unicodedata

from adapterstudio.core.errors import InvalidInput

MAX_NAME = 200
MAX_TAG = 100

_INVISIBLE = frozenset(
    [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A),  # bidi controls and marks
     *range(0x200B, 0x200E), *range(0x2060, 0x2065), 0xFEFF,  # zero-width
     0x2028, 0x2029]  # line and paragraph separators
)


def _is_hidden(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F or o in _INVISIBLE or 0xD800 <= o <= 0xDFFF


def _describe(ch: str) -> str:
    o = ord(ch)
    if o < 0x20 or 0x7F <= o <= 0x9F:
        kind = "a control character"
    elif 0xD800 <= o <= 0xDFFF:
        kind = "bytes that are not valid UTF-8"
    elif o in (0x2028, 0x2029):
        kind = "a line break"
    elif o in (0x200E, 0x200F, 0x061C) or 0x202A <= o <= 0x202E or 0x2066 <= o <= 0x2069:
        kind = "an invisible text-direction control"
    else:
        kind = "an invisible zero-width character"
    label = unicodedata.name(ch, "")
    return f"U+{o:04X}{f' {label}' if label else ''}, {kind}"


def first_hidden(text: str, allow: str = "") -> str | None:
    """The first character of *text* a reader cannot see (None if there is none)."""
    for ch in text:
        if ch not in allow and _is_hidden(ch):
            return ch
    return None


def validate_name(name: str, what: str = "adapter") -> str:
    """The *name* (stripped) if it is a valid catalogue name, else :class:`InvalidInput`.

    *what* names the kind of thing in the message: "adapter", "base model", ...
    """
    if not isinstance(name, str):
        raise InvalidInput(f"The {what} name must be text, not {type(name).__name__}.")
    name = name.strip()
    bad = first_hidden(name)
    if bad is not None:
        raise InvalidInput(f"{name!r} is not a valid {what} name: it contains {_describe(bad)}; "
                           "use visible characters only.")
    if not name or len(name) > MAX_NAME or ":" in name or "\\" in name or name in (".", ".."):
        raise InvalidInput(f"{name!r} is not a valid {what} name (1-{MAX_NAME} characters, no ':', backslash "
                           "or control characters).")
    return name


def validate_tag(tag: str) -> str:
    """The *tag* (stripped) if it may be stored, else :class:`InvalidInput`."""
    tag = tag.strip()
    bad = first_hidden(tag)
    if bad is not None:
        raise InvalidInput(f"The tag {tag!r} contains {_describe(bad)}; use visible characters only.")
    if not tag or len(tag) > MAX_TAG:
        raise InvalidInput(f"The tag {tag!r} must have 1-{MAX_TAG} characters.")
    return tag


def validate_notes(notes: str) -> str:
    """*notes* with Windows line ends made plain, if they hold no control characters but newline and tab."""
    notes = notes.replace("\r\n", "\n")
    for ch in notes:
        o = ord(ch)
        if (o < 0x20 and ch not in "\n\t") or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF:
            raise InvalidInput(f"The notes contain {_describe(ch)} (of the control characters, only line breaks and "
                               "tabs are allowed); remove it.")
    return notes


def printable(text: str) -> str:
    """*text* with each hidden character spelled as an escape (``\\x1f``, ``\\u202e``), for display."""
    if first_hidden(text) is None:
        return text
    out = []
    for ch in text:
        if _is_hidden(ch):
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def same_text(stored: str, typed: str) -> bool:
    """Whether *typed* names *stored*: exactly, as :func:`printable` shows it, or as a terminal shows it
    (hidden characters left out); case-insensitive, like the catalogue."""
    s, t = stored.casefold(), typed.casefold()
    if s == t:
        return True
    if first_hidden(stored) is None:
        return False
    visible = "".join(ch for ch in stored if not _is_hidden(ch)).casefold()
    return t in (printable(stored).casefold(), visible)
