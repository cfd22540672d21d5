"""HTTP/1.1 chunked framing, read the strict way: the SSE write-path tests check that every
chunk a stream sends is whole and says its own size."""

from __future__ import annotations

import re


def take_chunks(raw: bytes) -> tuple[bytes, bytes, bool]:
    """The whole chunks at the start of ``raw``, checked byte for byte: (their body bytes, what
    is left of ``raw``, whether the last chunk, of size 0, came)."""
    body = []
    while True:
        line_end = raw.find(b"\r\n")
        if line_end < 0:
            assert len(raw) < 16, f"no chunk size line: {raw[:40]!r}"
            return b"".join(body), raw, False
        size_text = raw[:line_end]
        assert re.fullmatch(rb"[0-9A-F]+", size_text), f"bad chunk size line {size_text[:40]!r}"
        size = int(size_text, 16)
        if size == 0:  # the last chunk: the body ends
            return b"".join(body), raw, True
        chunk_end = line_end + 2 + size
        if len(raw) < chunk_end + 2:
            return b"".join(body), raw, False
        assert raw[chunk_end:chunk_end + 2] == b"\r\n", "a chunk does not end where its size says"
        body.append(raw[line_end + 2:chunk_end])
        raw = raw[chunk_end + 2:]
