"""Where a request goes: the base-path rule, the refusals, the route label, the API style."""

from __future__ import annotations

import pytest

from zai_proxy.errors import BadRequest
from zai_proxy.proxy import ROUTES, Target, api_style, route_label, upstream_path
from zai_proxy.proxy.paths import upstream_target

ABSOLUTE = "request path must be an absolute path starting with a single '/'"
FORBIDDEN = "request path contains a forbidden sequence"
DOTS = "request path may not contain '.' or '..' segments"
CONTROL = "request path contains control characters"
TOO_DEEP = "request path is encoded too many times"
FRAGMENT = "the request target may not contain '#'"


def anthropic() -> Target:
    return Target.parse("https://api.z.ai/api/anthropic/")


def bare() -> Target:
    return Target.parse("http://127.0.0.1:9000")


def refusal(raw: bytes, query: bytes = b"") -> str:
    with pytest.raises(BadRequest) as caught:
        upstream_target(raw, query, anthropic())
    return caught.value.message


def test_a_target_is_its_origin_and_its_base_path_without_a_trailing_slash() -> None:
    assert anthropic() == Target(origin="https://api.z.ai", base_path="/api/anthropic")
    assert bare() == Target(origin="http://127.0.0.1:9000", base_path="")
    assert Target.parse("http://h/v4X/").base_path == "/v4X"


def test_a_path_without_the_base_gets_it_prepended() -> None:
    assert upstream_path(b"/v1/messages", anthropic()) == b"/api/anthropic/v1/messages"


def test_a_path_that_already_has_the_base_keeps_it_once() -> None:
    path = b"/api/anthropic/v1/messages"
    assert upstream_path(path, anthropic()) == path
    assert upstream_path(b"/api/anthropic", anthropic()) == b"/api/anthropic"


def test_a_path_that_only_starts_like_the_base_gets_the_base_prepended() -> None:
    assert upstream_path(b"/api/anthropicx/v1", anthropic()) == b"/api/anthropic/api/anthropicx/v1"


def test_a_target_without_a_base_path_gets_the_path_as_sent() -> None:
    assert upstream_path(b"/v1/messages?beta=true", bare()) == b"/v1/messages?beta=true"


def test_the_path_goes_up_still_percent_encoded() -> None:
    path = upstream_path(b"/v1/models/glm%2D4.6", anthropic())
    assert path == b"/api/anthropic/v1/models/glm%2D4.6"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"v1/messages", ABSOLUTE),
        (b"//evil.example/v1", ABSOLUTE),
        (b"/v1\\..\\admin", FORBIDDEN),
        (b"/v1/%5c", FORBIDDEN),
        (b"/v1/%00", FORBIDDEN),
        (b"/v1//messages", FORBIDDEN),
        (b"/v1/%2F/messages", FORBIDDEN),
        (b"/v1/../admin", DOTS),
        (b"/v1/./messages", DOTS),
        (b"/v1/%2e%2e/admin", DOTS),
        (b"/v1/%252e%252e/admin", DOTS),
        (b"/v1/..", DOTS),
        (b"/v1/%0a", CONTROL),
        (b"/v1/%1f", CONTROL),
        (b"/v1/%7f", CONTROL),
    ],
)
def test_a_path_that_could_leave_the_base_is_refused(raw: bytes, message: str) -> None:
    assert refusal(raw) == message


def test_dots_inside_a_segment_are_not_dot_segments() -> None:
    assert upstream_path(b"/v1/..a/.b/c.", anthropic()) == b"/api/anthropic/v1/..a/.b/c."


def test_a_space_and_non_ascii_are_not_control_characters() -> None:
    assert upstream_path(b"/v1/a%20b/%C3%A9", anthropic()) == b"/api/anthropic/v1/a%20b/%C3%A9"


def test_three_levels_of_percent_encoding_are_decoded_and_a_fourth_is_refused() -> None:
    # %252561 decodes to %2561, %61, then "a": three levels, and checked at each.
    assert upstream_path(b"/v1/%252561", anthropic()) == b"/api/anthropic/v1/%252561"
    assert refusal(b"/v1/%25252561") == TOO_DEEP


def test_the_query_goes_up_as_sent_after_the_path() -> None:
    sent = upstream_target(b"/v1/messages", b"beta=true&x=%2F", anthropic())
    assert sent == b"/api/anthropic/v1/messages?beta=true&x=%2F"
    assert upstream_target(b"/v1/messages", b"", anthropic()) == b"/api/anthropic/v1/messages"


def test_a_fragment_in_the_path_or_the_query_is_refused() -> None:
    assert refusal(b"/v1/messages#top") == FRAGMENT
    assert refusal(b"/v1/messages", b"a=1#top") == FRAGMENT


def test_the_query_does_not_excuse_a_bad_path() -> None:
    assert refusal(b"/v1/../admin", b"a=1") == DOTS


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_is_its_own_label_with_or_without_the_base(route: str) -> None:
    assert route_label(route.encode(), anthropic()) == route
    assert route_label(b"/api/anthropic" + route.encode(), anthropic()) == route


def test_the_route_label_ignores_a_trailing_slash_and_decodes_the_path() -> None:
    assert route_label(b"/v1/messages/", anthropic()) == "/v1/messages"
    assert route_label(b"/v1/%6Dessages", anthropic()) == "/v1/messages"


@pytest.mark.parametrize(
    "raw",
    [
        b"/",
        b"/api/anthropic",
        b"/api/anthropic/",
        b"/v1/messages/123",
        b"/api/anthropicx/v1/messages",
        b"/v2/messages",
        b"/v1/modelsX",
        b"/\xff\xfe",
    ],
)
def test_any_other_path_is_labelled_other(raw: bytes) -> None:
    assert route_label(raw, anthropic()) == "other"


def test_without_a_base_path_the_route_label_is_the_path() -> None:
    assert route_label(b"/v1/chat/completions", bare()) == "/v1/chat/completions"
    assert route_label(b"/api/anthropic/v1/messages", bare()) == "other"


@pytest.mark.parametrize(
    ("raw", "style"),
    [
        (b"/v1/chat/completions", "openai"),
        (b"/api/paas/v4/chat/completions", "openai"),
        (b"/v1/completions", "openai"),
        (b"/v1/embeddings", "openai"),
        (b"/v1/responses", "openai"),
        (b"/v1/chat/completions/", "openai"),
        (b"/v1/chat/completions?stream=true", "openai"),
        (b"/v1/messages", "anthropic"),
        (b"/v1/messages?x=/chat/completions", "anthropic"),
        (b"/v1/models", "anthropic"),
        (b"/v1/chat/completions/extra", "anthropic"),
        (b"/v1/embeddingsX", "anthropic"),
        (b"/v1/chat/completions?a=1?b", "openai"),
    ],
)
def test_openai_style_paths_are_told_apart_by_their_ending(raw: bytes, style: str) -> None:
    assert api_style(raw) == style
