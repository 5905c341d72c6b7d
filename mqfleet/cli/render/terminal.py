"""What may reach the operator's terminal from text that hosts wrote: no escape sequences, no control characters.

Adverts, progress, trainer output and error messages all come from the bus. A terminal acts on
escape sequences (retitle the window, rewrite the screen, OSC 52 to the clipboard), so the CLI
passes host-written text through `clean` before printing it (docs/SECURITY.md). No rich import
here: the agent loads the CLI package too and must stay small.
"""

from __future__ import annotations

import re

#: Terminal escape sequences (CSI, OSC, and other ESC-introduced ones, in 7- and 8-bit forms), removed whole
#: so no fragment like "[31m" is left behind.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -~]?"
)
#: C0 and C1 control characters (tab and newline handled apart) and the Unicode bidirectional overrides.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(value: object, *, newlines: bool = False) -> str:
    """Text a host wrote, safe for a terminal: escape sequences and control characters gone.

    Tabs become spaces; newlines too unless `newlines` (multi-line output such as a log tail).
    """
    text = _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", str(value)))
    text = text.replace("\t", " ")
    return text if newlines else text.replace("\n", " ")
