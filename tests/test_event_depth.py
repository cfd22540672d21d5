"""The depth limit on data holds whichever way it is checked.

``encode_data`` and the envelope parser skip walking a value whose JSON text has too few ``[``
and ``{`` to nest past the limit; these generated values (nesting around the limit, brackets
inside strings, wide shallow values) must get the same verdict as the walk itself.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.envelope import BadMessage, decode
from relay.event import MAX_DEPTH, InvalidEvent, encode_data, json_depth

bracket_text = st.text(alphabet="[]{}ab\"\\", max_size=40)
leaves = st.one_of(st.none(), st.integers(), bracket_text)


def nested(depth: int, leaf, key: str, wide: int):
    """A value nesting exactly ``depth`` containers, with ``wide`` siblings at the top."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {key: value}
    return [value] + [leaf] * wide if depth and wide else value


values = st.builds(nested, st.integers(0, MAX_DEPTH + 3), leaves, st.sampled_from(["k", "k[{"]), st.integers(0, 40))


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(values)
def test_encode_data_refuses_exactly_the_values_nesting_deeper_than_the_limit(value):
    too_deep = json_depth(value, MAX_DEPTH + 5) > MAX_DEPTH
    try:
        text = encode_data(value)
    except InvalidEvent as exc:
        assert too_deep, f"refused a value {json_depth(value)} deep: {exc}"
        assert "nests deeper" in str(exc)
    else:
        assert not too_deep, f"accepted a value {json_depth(value)} deep"
        assert (text if isinstance(value, str) else json.loads(text)) == value  # strings go as they are


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(values)
def test_an_envelope_is_refused_exactly_when_its_data_nests_deeper_than_the_limit(value):
    too_deep = json_depth(value, MAX_DEPTH + 5) > MAX_DEPTH
    payload = json.dumps({"event": "e", "data": value}).encode()
    try:
        event = decode(payload, channel="c", source="test")
    except BadMessage as exc:
        assert too_deep and exc.reason == "too_deep", exc
    else:
        assert not too_deep
        assert event.data == value


@pytest.mark.timeout(30)
def test_data_too_deep_to_encode_at_all_is_refused_for_its_depth():
    value: list = []
    for _ in range(5000):  # deeper than the encoder's recursion: it fails first, the message stays
        value = [value]
    with pytest.raises(InvalidEvent, match="nests deeper"):
        encode_data(value)
