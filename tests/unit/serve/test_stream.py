"""TextStream: streamed pieces add up to the final text, a stop string is never sent even in
part, and half a UTF-8 character waits for the rest of its bytes."""

from __future__ import annotations

from llmtune.serve.stream import TextStream

# token id -> bytes; 9 and 10 are the two halves of "é"
PIECES = {
    1: b"Hello",
    2: b" wor",
    3: b"ld",
    4: b"\n",
    5: b"END",
    6: b" more",
    9: b"\xc3",
    10: b"\xa9",
}


def decode(ids: list[int]) -> str:
    return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


def test_pieces_add_up_to_the_text():
    stream = TextStream(decode, [])
    sent = [stream.push(t) for t in (1, 2, 3)]
    rest, finish = stream.final("length")
    assert "".join(sent) + rest == "Hello world" and finish == "length"
    assert sent[0] == "Hello"


def test_a_stop_string_ends_the_text_and_is_never_sent():
    stream = TextStream(decode, ["\nEND"])
    sent = "".join(stream.push(t) for t in (1, 2, 4, 5, 6))
    rest, finish = stream.final("length")
    assert sent + rest == "Hello wor" and finish == "stop"
    assert "\n" not in sent  # held back while it could still become "\nEND"


def test_half_a_character_waits_for_its_other_byte():
    stream = TextStream(decode, [])
    assert stream.push(1) == "Hello"
    assert stream.push(9) == ""  # "\xc3" alone decodes as U+FFFD
    assert stream.push(10) == "é"


def test_non_streamed_text_comes_whole_from_final():
    stream = TextStream(decode, ["wor"])
    stream.extend([1, 2, 3])
    assert stream.final("eos") == ("Hello ", "stop")
