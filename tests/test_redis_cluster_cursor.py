"""The Redis backbone's cursor text: base 36 numbers, partitions in increasing order whatever
order they were first heard in, a round trip through :func:`parse_cursor`, the plain stream id
of one partition and the head of a publisher-chosen id."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.redis_backbone.cursor import Positions, base36, cursor_text, parse_cursor
from relay.api import parse_stream_id


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


ids = st.tuples(st.integers(0, 10 ** 14), st.integers(0, 10 ** 12))


@pytest.mark.timeout(60)
@given(at=ids, chosen=st.text(min_size=1, max_size=40).filter(lambda t: parse_stream_id(t) is None),
       partitions=st.integers(1, 40))
def test_one_partition_drops_the_positions_and_a_chosen_id_keeps_them(at, chosen, partitions):
    """With one partition the stream id alone is the cursor (ids on one Redis stay ``<ms>-<seq>``);
    a chosen id is always followed by the positions, which are what a resume reads."""
    positions = Positions({partitions - 1: at})
    stream_id = f"{at[0]}-{at[1]}"
    text = cursor_text(stream_id, stream_id, positions, partitions)
    if partitions == 1:
        assert text is None and parse_cursor(stream_id, 1) == (at, {0: at})
    else:
        assert text == positions.cursor(stream_id) and parse_cursor(stream_id, partitions) is None
        assert parse_cursor(text, partitions) == (at, {partitions - 1: at})
    text = cursor_text(chosen, stream_id, positions, partitions)
    assert text == f"{chosen}~{positions.text()}"
    assert parse_cursor(text, partitions) == (at, {partitions - 1: at})  # the reference: the latest position
    assert parse_cursor(f"~{positions.text()}", partitions) is None
    assert parse_cursor(chosen, partitions) is None or "~" in chosen  # "a~b" is not ours either, but may parse
