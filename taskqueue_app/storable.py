"""What a database can store: the checks and the repair of JSON values before they are recorded."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import ValidationError

__all__ = ["check_storable", "storable_copy"]

_SURROGATE = re.compile("[\ud800-\udfff]")
# A NUL as JSON writes it: ``\u0000`` not itself escaped (an even run of backslashes before it).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def check_storable(value: Any, name: str) -> None:
    """Raise unless a database can store ``value`` (JSON) as it is: no lone surrogate, which
    UTF-8 cannot encode, no NUL character, which PostgreSQL refuses in text and JSON, and no
    NaN or infinity, which Python's ``json`` reads but no JSON column takes (SQLite's
    ``JSON_VALID`` check and PostgreSQL's ``jsonb`` both refuse them)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValidationError(
            f"{name} contains NaN or Infinity, which is not JSON a database can store"
        ) from None
    if _SURROGATE.search(text):
        raise ValidationError(
            f"{name} contains a lone surrogate (\\ud800-\\udfff without its pair), which is "
            "not text a database can store"
        )
    if _NUL.search(text):
        raise ValidationError(f"{name} contains a NUL character (\\u0000), which databases refuse")


def storable_copy(value: Any) -> Any:
    """``value`` with every lone surrogate and NUL in its strings replaced (U+FFFD), and every
    NaN or infinity by its name as a string, for what the server records of its own accord (a
    worker's error report, say)."""
    if isinstance(value, str):
        if _SURROGATE.search(value) or "\x00" in value:
            return _SURROGATE.sub("\ufffd", value).replace("\x00", "\ufffd")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {storable_copy(k): storable_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_copy(item) for item in value]
    return value
