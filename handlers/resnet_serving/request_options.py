"""Options a request may carry, validated one way whichever envelope carried them (an
``X-TopK`` header, a multipart or JSON field, a KServe parameter).

Only plain ASCII digits count as a number: ``str.isdigit`` also accepts "³" or "①", which
``int()`` then refuses, and ``int()`` refuses more than 4,300 digits; either would raise outside
a request's own error path and fail its whole batch.
"""

from __future__ import annotations

import re
from typing import Any

from resnet_serving.input_errors import bad_request

#: More digits than any class count needs; the value is clamped to the classes anyway.
MAX_DIGITS = 6
_POSITIVE_INTEGER = re.compile(rf"\+?[0-9]{{1,{MAX_DIGITS}}}")


def parse_topk(raw: Any, num_classes: int) -> int:
    """A positive integer, clamped to the number of classes; a 400 for anything else."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, (str, bytes, bytearray)):
        text = raw.decode("latin-1") if isinstance(raw, (bytes, bytearray)) else raw
        if not _POSITIVE_INTEGER.fullmatch(text.strip()):
            raise bad_request(
                "InvalidOption",
                f"topk must be a positive integer of at most {MAX_DIGITS} ASCII digits, "
                f"got {preview(text)}",
            )
        value = int(text.strip())
    else:
        raise bad_request(
            "InvalidOption", f"topk must be a positive integer, got a {type(raw).__name__}"
        )
    if value < 1:
        raise bad_request("InvalidOption", f"topk must be a positive integer, got {value}")
    return min(value, num_classes)


def preview(text: str, limit: int = 40) -> str:
    """A value quoted for an error message, cut to ``limit`` characters: a client's input is
    never echoed whole."""
    shown = repr(text[:limit])
    return shown + f"... ({len(text)} characters)" if len(text) > limit else shown
