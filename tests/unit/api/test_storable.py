"""What no column can hold, found in JSON bodies, query strings and headers, with where it is."""

from api.storable import OutOfRangeInt, header_problem, json_problem, parse_int64, query_problem, text_problem


def test_storable_text():
    assert text_problem("plain, é, \U0001f600") is None
    assert "NUL" in text_problem("a\x00b")
    assert "surrogate" in text_problem("a\ud800")


def test_json_problems_name_the_path():
    assert json_problem(b'{"a": [1, {"b": "ok"}], "c": 9223372036854775807, "d": -9223372036854775808}') is None
    assert json_problem(b'{"a": [1, {"b": "x\\u0000"}]}') == ("a[1].b", 'a[1].b: contains a NUL character '
                                                               "(\\u0000), which cannot be stored")
    param, message = json_problem(b'{"m": {"k\\ud800": "v"}}')
    assert param == "m" and "a key contains a lone surrogate" in message
    assert json_problem(b'{"s": "\\ud83d\\ude00"}') is None  # a surrogate pair is one character
    param, message = json_problem(b'{"n": 9223372036854775808}')
    assert param == "n" and "9223372036854775808 is out of the 64-bit range" in message
    param, message = json_problem(b'{"h": {"max_steps": ' + b"9" * 5000 + b"}}")
    assert param == "h.max_steps" and "5000 digits" in message
    param, message = json_problem(b'[1e999]')
    assert param == "[0]" and "floating-point range" in message
    assert json_problem(b'"\\u0000"') == (None, "the JSON body contains a NUL character (\\u0000), which cannot "
                                                "be stored")


def test_json_that_does_not_parse_is_left_to_the_route_unless_it_is_not_utf8():
    assert json_problem(b'{"a": ') is None
    assert json_problem(b'{"a": "\xff"}') == (None, "the JSON body is not valid UTF-8 (byte 7)")


def test_query_and_header_problems():
    assert query_problem(b"limit=5&after=job_1") is None
    assert query_problem(b"limit=5&after=job%00x")[0] == "after"
    assert header_problem([(b"idempotency-key", b"abc\xff")]) is None
    assert header_problem([(b"idempotency-key", b"a\x00")])[0] == "idempotency-key"


def test_parse_int64_keeps_64_bit_integers_and_stands_in_for_the_rest():
    assert parse_int64("9223372036854775807") == 2**63 - 1
    assert parse_int64("-9223372036854775808") == -(2**63)
    assert parse_int64("0") == 0
    past = parse_int64("9223372036854775808")
    assert isinstance(past, OutOfRangeInt) and (past.digits, past.value) == (19, 2**63)
    huge = parse_int64("-" + "9" * 5000)  # never built: Python would refuse a literal this long
    assert isinstance(huge, OutOfRangeInt) and (huge.digits, huge.value) == (5000, None)
