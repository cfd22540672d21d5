"""The cluster backbone's cursor text: base 36 numbers, partitions in increasing order whatever
order they were first heard in, and a round trip through :func:`parse_cursor`."""

import random

import pytest

from plugins.redis_cluster_backbone.cursor import Positions, base36, parse_cursor


def reference_base36(number: int) -> str:
    digits, out = "0123456789abcdefghijklmnopqrstuvwxyz", ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


@pytest.mark.timeout(30)
def test_base36_writes_every_number_as_int_reads_it():
    rnd = random.Random(16)
    numbers = [*range(3000), *(36 ** k + d for k in range(1, 12) for d in (-1, 0, 1)),
               *(rnd.randrange(10 ** 15) for _ in range(20000))]
    for number in numbers:
        text = base36(number)
        assert text == reference_base36(number) and int(text, 36) == number


@pytest.mark.timeout(30)
def test_cursor_lists_partitions_in_order_and_parses_back():
    rnd = random.Random(61)
    for _ in range(200):
        positions, latest = Positions(), {}
        for _ in range(rnd.randrange(1, 120)):
            partition, at = rnd.randrange(32), (rnd.randrange(10 ** 13), rnd.randrange(10 ** 6))
            moved = positions.advance(partition, at)
            assert moved == (at > latest.get(partition, (-1, -1)))
            latest[partition] = max(at, latest.get(partition, (-1, -1)))
            assert dict(positions) == latest
        cursor = positions.cursor("1700000000000-7")
        named = [int(part.split("=")[0], 36) for part in cursor.split("~")[1].split(",")]
        assert named == sorted(latest)
        parsed = parse_cursor(cursor, 32)
        assert parsed is not None and parsed[0] == (1700000000000, 7) and dict(parsed[1]) == latest
        assert parsed[1].text() == positions.text() == Positions(dict(positions)).text()
