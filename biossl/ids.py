"""Patient IDs compared as a spreadsheet would rewrite them (used by the data readers and the privacy export)."""

from __future__ import annotations

import math


def id_key(value: object) -> str:
    """An ID as a spreadsheet would rewrite it: ``"0012"``, ``"12.0"``, ``" 12 "`` and ``12`` all give ``"12"``.

    Text that reads as a whole number (leading zeros, ``.0``, an exponent such as ``1e3``) becomes that
    number's digits; other text is stripped and case-folded. Two IDs with the same key but different
    text are the same patient written twice or two patients a spreadsheet can no longer tell apart.
    """
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text.casefold()
    if "_" not in text and math.isfinite(number) and number.is_integer():
        return str(int(number))
    return text.casefold()
