"""Text for a terminal: what a document says, never what it would make the terminal do.

Documents are untrusted. Their text may hold escape sequences (CSI cursor moves and screen
clears, OSC window titles and hyperlinks, DCS/APC strings), C0 and C1 control characters
and rich markup such as ``[bold]`` or ``[link=...]``. The CLI prints document text only
through :func:`shown`, which

* shows every control character escaped, Python-style (``ESC`` → ``\\x1b``, ``BEL`` →
  ``\\x07``, C1 ``CSI`` → ``\\x9b``), so a sequence is visible as the characters the document
  holds, dimmed, and the terminal never receives it; tab and line feed stay as they are, and
  a carriage return is a line end (``\\r\\n`` and a lone ``\\r`` both print as ``\\n``);
* returns a :class:`rich.text.Text`, which rich never parses as markup: ``[bold]`` and a
  trailing backslash print literally.
"""

from __future__ import annotations

import re

from rich.text import Text

ESCAPED_STYLE = "dim"

# One escape sequence (ECMA-48), matched whole so that it is dimmed as one piece:
# CSI (7- or 8-bit) with parameters, intermediates and final byte; a control string (OSC,
# DCS, SOS, PM, APC, 7- or 8-bit) up to its terminator (BEL, ST) or the end of the line;
# any other ESC + intermediates + final byte; then any lone control character.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CARRIAGE_RETURN = re.compile(r"\r\n?")


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def plain(text: str) -> str:
    """``text`` with line ends made ``\\n`` and every other control character escaped.

    Shape: str → str; printable characters (markup brackets, backslashes, any script) are
    unchanged, so ``plain(t) == t`` for text without control characters. Raises nothing.
    """
    return _escape_controls(_CARRIAGE_RETURN.sub("\n", text))


def shown(text: str, style: str = "") -> Text:
    """Document text as a rich ``Text`` that is safe to print to a terminal.

    ``Text.plain`` equals :func:`plain` of ``text``; each escape sequence or control
    character is shown escaped in the ``dim`` style (on top of ``style``). Never parsed as
    markup. Raises nothing.
    """
    text = _CARRIAGE_RETURN.sub("\n", text)
    out = Text(style=style)
    last = 0
    for match in _SEQUENCE.finditer(text):
        out.append(text[last : match.start()])
        out.append(_escape_controls(match.group()), style=ESCAPED_STYLE)
        last = match.end()
    out.append(text[last:])
    return out


def json_for_terminal(text: str) -> str:
    """JSON text with DEL and C1 controls written as ``\\u00XX`` escapes.

    JSON escapes C0 controls already but lets U+007F-U+009F through raw, and some terminals
    take U+009B as CSI. Inside JSON these characters occur only in strings, where the
    ``\\u`` escape means the same character, so the data are unchanged.
    """
    return re.sub(r"[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}", text)


__all__ = ["json_for_terminal", "plain", "shown"]
