"""Properties of the request-body scanner: on any JSON body it answers what `json.loads`
would, whatever the key order, whitespace or size; on any bytes it answers something."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zai_proxy.proxy import extract_model, is_streaming_request

# Deterministic and database-free, so CI runs the same examples every time.
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=80,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HEAD = 64 * 1024  # the scanner's exact window; past it the long path runs

# Keys the scanner looks for, and keys that contain them or their quotes.
keys = st.one_of(
    st.sampled_from(
        ["model", "stream", "messages", "Model", "model ", 'mo"del', 'model"', "model\\", "\\"]
    ),
    st.text(max_size=8),
)
# Strings that look like members when read without regard to quoting.
tricky_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            '"model": "evil"',
            '\\"model\\": "evil",',
            '{"stream": true}',
            "}",
            '"}',
            "\\",
            "\\\\",
            "é\u2028😀",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    tricky_text,
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=20,
)
# The fields themselves, usually of the expected type and sometimes not.
models = st.one_of(tricky_text, values)
streams = st.one_of(st.booleans(), values)


@st.composite
def objects(draw: st.DrawFn) -> dict[str, Any]:
    members = draw(st.dictionaries(keys, values, max_size=5))
    if draw(st.booleans()):
        members["model"] = draw(models)
    if draw(st.booleans()):
        members["stream"] = draw(streams)
    items = draw(st.permutations(list(members.items())))
    return dict(items)


@st.composite
def padding(draw: st.DrawFn) -> str:
    """A string that carries the object past 64 KiB, at or across the window's edge."""
    unit = draw(tricky_text.filter(bool) | st.just("x"))
    size = draw(
        st.one_of(
            st.integers(HEAD - 300, HEAD + 50),
            st.integers(HEAD + 1, 4 * HEAD),
            st.integers(17 * HEAD, 18 * HEAD),
        )
    )
    return (unit * (size // len(unit) + 1))[:size]


@st.composite
def large_objects(draw: st.DrawFn, nested_models: int = 0) -> dict[str, Any]:
    """An object past 64 KiB: the padding at the top level or nested, anywhere in order,
    so the model may come before, inside or after the first 64 KiB, and nested models
    before it or after it."""
    members = list(draw(objects()).items())
    pad = draw(padding())
    where = draw(st.sampled_from(["top", "nested", "nested model"]))
    if where == "top":
        padded: Any = pad
    elif where == "nested":
        padded = [{"role": "user", "content": pad}, {"model": "nested", "stream": True}]
    else:
        padded = {"model": "nested", "stream": True, "content": pad, "more": [{"model": 1}]}
    if nested_models:
        # Enough candidates to spend the scanner's work budget (its full-parse fallback).
        padded = [{"model": f"n{i}", "stream": True} for i in range(nested_models)] + [padded]
    position = draw(st.integers(0, len(members)))
    name = draw(st.sampled_from(["messages", "system", "padding"]))
    members = [(k, v) for k, v in members if k != name]
    members.insert(min(position, len(members)), (name, padded))
    return dict(members)


@st.composite
def encoded(draw: st.DrawFn, obj: dict[str, Any]) -> bytes:
    """`obj` as JSON with any of the whitespace and escaping a client may use."""
    indent = draw(st.sampled_from([None, 0, 1, "\t", "\r\n"]))
    item, colon = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    text = json.dumps(
        obj,
        indent=indent,
        separators=(item, colon),
        ensure_ascii=draw(st.booleans()),
    )
    lead, trail = draw(st.sampled_from([" \t\r\n", ""])), draw(st.sampled_from(["\n", "", " "]))
    return (lead + text + trail).encode()


def expected_model(body: bytes) -> str | None:
    obj = json.loads(body)
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, str) else None


def expected_stream(body: bytes) -> bool:
    obj = json.loads(body)
    return isinstance(obj, dict) and obj.get("stream") is True


@settings(PROPERTY, max_examples=60)
@given(data=st.data())
def test_a_body_within_the_window_is_read_as_json_loads_reads_it(data: st.DataObject) -> None:
    body = data.draw(objects().flatmap(encoded))
    assert extract_model(body) == expected_model(body)
    assert is_streaming_request(body) is expected_stream(body)


@settings(PROPERTY, max_examples=60)
@given(data=st.data())
def test_a_body_past_the_window_is_read_as_json_loads_reads_it(data: st.DataObject) -> None:
    body = data.draw(large_objects().flatmap(encoded))
    assert len(body) > HEAD - 300
    assert extract_model(body) == expected_model(body)
    assert is_streaming_request(body) is expected_stream(body)


@settings(PROPERTY, max_examples=30)
@given(data=st.data())
def test_a_body_with_many_nested_models_is_read_as_json_loads_reads_it(
    data: st.DataObject,
) -> None:
    count = data.draw(st.integers(5, 80))
    body = data.draw(large_objects(nested_models=count).flatmap(encoded))
    assert extract_model(body) == expected_model(body)
    assert is_streaming_request(body) is expected_stream(body)


@settings(PROPERTY, max_examples=60)
@given(members=st.lists(st.tuples(st.sampled_from(["model", "stream", "x"]), values), max_size=6))
def test_a_body_within_the_window_with_repeated_keys_keeps_the_last(
    members: list[tuple[str, object]],
) -> None:
    body = ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}").encode()
    assert extract_model(body) == expected_model(body)
    assert is_streaming_request(body) is expected_stream(body)


@PROPERTY
@given(value=values)
def test_a_body_that_is_not_an_object_has_no_model(value: object) -> None:
    body = json.dumps(value).encode()
    assert extract_model(body) == expected_model(body)
    assert is_streaming_request(body) is expected_stream(body)


@settings(PROPERTY, max_examples=200)
@given(body=st.binary(max_size=200))
def test_any_bytes_give_an_answer(body: bytes) -> None:
    assert extract_model(body) is None or isinstance(extract_model(body), str)
    assert is_streaming_request(body) in (True, False)


@settings(PROPERTY, max_examples=60)
@given(data=st.data())
def test_a_damaged_json_body_gives_an_answer(data: st.DataObject) -> None:
    body = data.draw(st.one_of(objects(), large_objects()).flatmap(encoded))
    cut = data.draw(st.integers(0, len(body)))
    junk = data.draw(st.binary(max_size=8))
    damaged = body[:cut] + junk + body[cut + len(junk) :]
    assert extract_model(damaged) is None or isinstance(extract_model(damaged), str)
    assert is_streaming_request(damaged) in (True, False)
