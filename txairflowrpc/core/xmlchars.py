"""What XML 1.0 cannot carry at all, for the gateway's writer and the client's checks alike."""

from __future__ import annotations

import re

__all__ = ["NOT_IN_XML"]

#: The characters XML 1.0 has no place for, not even as a character
#: reference: the C0 controls but tab, line feed and carriage return, U+FFFE,
#: U+FFFF and lone surrogates (JSON's ``"\ud83d"``, or an undecodable byte of
#: a command line).  No parser takes a document holding one.
NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
