"""The text/event-stream framing rules, on the encoder alone."""

import pytest

from relay.event import Event, InvalidEvent
from relay.sse import encode_comment, encode_event, encode_retry


def test_single_line_event():
    assert encode_event("hi", "emote", "1") == b"id: 1\nevent: emote\ndata: hi\n\n"


def test_data_split_on_lf_cr_and_crlf_only():
    frame = encode_event("a\nb\rc\r\nd", "m")
    assert frame == b"event: m\ndata: a\ndata: b\ndata: c\ndata: d\n\n"


def test_other_unicode_line_breaks_stay_inside_one_data_line():
    text = "one\u2028two\u2029three\x85four\x0bfive\x0csix"
    assert encode_event(text) == ("data: " + text + "\n\n").encode()


def test_empty_data_still_has_a_data_line():
    assert encode_event("", "ping") == b"event: ping\ndata: \n\n"


def test_trailing_newline_gives_an_empty_last_data_line():
    assert encode_event("x\n") == b"data: x\ndata: \n\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_id_and_event_never_carry_cr_lf_nul(bad):
    with pytest.raises(ValueError):
        encode_event("d", event=bad)
    with pytest.raises(ValueError):
        encode_event("d", id=bad)


def test_multiline_comment_has_a_colon_on_every_line():
    assert encode_comment("one\ntwo") == b": one\n: two\n\n"
    assert encode_comment("") == b":\n\n"


def test_retry_is_digits_only():
    assert encode_retry(2500) == b"retry: 2500\n\n"
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(ValueError):
            encode_retry(bad)


def test_event_serialises_json_once_and_compactly():
    event = Event("demo", "emote", {"emote": "dolphin", "n": [1, 2]}, id="7")
    assert event.frame == b'id: 7\nevent: emote\ndata: {"emote":"dolphin","n":[1,2]}\n\n'
    assert event.frame is event.frame  # built once, shared by every client


def test_event_keeps_unicode_as_utf8():
    event = Event("demo", "emote", {"emote": "🐬 ünï"}, id="1")
    assert "🐬 ünï".encode() in event.frame


@pytest.mark.parametrize("field,kwargs", [
    ("channel", {"channel": "a\nb"}), ("event", {"event": ""}), ("event", {"event": "x\r"}),
    ("id", {"id": "1\0"}), ("id", {"id": ""}), ("event", {"event": 5}), ("channel", {"channel": "c" * 300}),
    ("data", {"data": float("nan")}), ("data", {"data": object()}),
])
def test_invalid_events_name_the_field(field, kwargs):
    values = {"channel": "demo", "event": "emote", "data": None, **kwargs}
    with pytest.raises(InvalidEvent) as info:
        Event(values["channel"], values["event"], values["data"], id=values.get("id"))
    assert info.value.field == field
