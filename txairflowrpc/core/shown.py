"""
Text from files or the network made safe to show on a terminal or in a
CI log: nothing in it can move, hide, colour or break the text around it.
"""

from __future__ import annotations

import re

#: Characters that move, hide or break the text around them where a
#: terminal or a CI log shows it -- line and paragraph separators, the
#: bidirectional marks (ARABIC LETTER MARK too), embeddings, overrides and
#: isolates, and the invisible ones that hide what stands around them (ZERO
#: WIDTH SPACE, WORD JOINER and the invisible operators, ZERO WIDTH NO-BREAK
#: SPACE) -- as a regex class body.
LAYOUT_CONTROLS = ("\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064"
                   "\u2066-\u2069\ufeff")

_UNSHOWABLE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{LAYOUT_CONTROLS}]")


def shown(text: str, limit: int = 2000) -> str:
    """
    ``text`` as one line that shows what it holds: control characters (line
    ends, escapes), DEL, the C1 controls and `LAYOUT_CONTROLS` as ``\\xNN``
    or ``\\uNNNN``; cut at ``limit`` characters, the rest counted.
    """
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit:,} more characters)"
    return _UNSHOWABLE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
        else f"\\u{ord(m.group()):04x}", text)
