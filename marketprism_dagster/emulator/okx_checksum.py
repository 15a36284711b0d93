"""OKX `books` checksum (documented rule, documented/okx_orderbook_books.json).

Take the first 25 bids and 25 asks of the merged book, interleave them as
``bid_px:bid_sz:ask_px:ask_sz:...`` using the venue's own price and size strings; when one
side runs out the other continues alone. The checksum is CRC32 of that string read as a
signed 32-bit integer.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

Level = Sequence[str]


def checksum_string(bids: Sequence[Level], asks: Sequence[Level], depth: int = 25) -> str:
    """The string the checksum is computed over (bids descending, asks ascending)."""
    parts: list[str] = []
    nb = min(depth, len(bids))
    na = min(depth, len(asks))
    for i in range(max(nb, na)):
        if i < nb:
            parts.append(bids[i][0])
            parts.append(bids[i][1])
        if i < na:
            parts.append(asks[i][0])
            parts.append(asks[i][1])
    return ":".join(parts)


def signed_crc32(text: str) -> int:
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def okx_checksum(bids: Sequence[Level], asks: Sequence[Level]) -> int:
    """Signed CRC32 over the top 25 levels per side, as OKX sends it in `checksum`."""
    return signed_crc32(checksum_string(bids, asks))
