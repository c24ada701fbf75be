"""Where a request goes: the path rule, escape checks, and the bounded `path` label.

A path that already starts with the target's base path keeps it; any other gets it
prepended, so `/v1/messages` and `/api/anthropic/v1/messages` both reach
`<target>/v1/messages`.  A path that could leave the base path after any amount of
percent-decoding (dot segments, backslashes, `//`, absolute URIs) is refused outright
rather than "cleaned", because a cleaned path is a path the caller did not send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_to_bytes, urlsplit

from ..errors import BadRequest

__all__ = [
    "IDEMPOTENT_METHODS",
    "JSON_ROUTES",
    "ROUTES",
    "ApiStyle",
    "Target",
    "api_style",
    "route_label",
    "upstream_path",
    "upstream_target",
]

ApiStyle = Literal["anthropic", "openai"]

# The `path` label of every request metric: these, or "other".
ROUTES = (
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/messages/batches",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
)
_ROUTE_SET = frozenset(ROUTES)

# Generation and counting: a success must carry a JSON body, and a retry after the
# upstream took the request is one the official SDKs make too.
JSON_ROUTES = frozenset(
    {
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }
)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_OPENAI_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", "/responses")


@dataclass(frozen=True, slots=True)
class Target:
    """The parsed upstream base: origin (scheme://host[:port]) and base path (no trailing /)."""

    origin: str
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        return cls(origin=f"{parts.scheme}://{parts.netloc}", base_path=parts.path.rstrip("/"))


def _fully_decoded(raw: bytes) -> bytes:
    # Decode until stable (bounded): an upstream or a middlebox that decodes once more
    # than we expect must still never see a dot segment.
    current = raw
    for _ in range(4):
        decoded = unquote_to_bytes(current)
        if decoded == current:
            return decoded
        current = decoded
    raise BadRequest("request path is encoded too many times")


def upstream_path(raw_path: bytes, target: Target) -> bytes:
    """The raw (still percent-encoded) path to request upstream, or BadRequest."""
    if not raw_path.startswith(b"/") or raw_path.startswith(b"//"):
        raise BadRequest("request path must be an absolute path starting with a single '/'")
    decoded = _fully_decoded(raw_path)
    if b"\\" in decoded or b"\x00" in decoded or b"//" in decoded:
        raise BadRequest("request path contains a forbidden sequence")
    segments = decoded.split(b"/")
    if any(segment in (b".", b"..") for segment in segments):
        raise BadRequest("request path may not contain '.' or '..' segments")
    if any(byte < 0x20 or byte == 0x7F for byte in decoded):
        raise BadRequest("request path contains control characters")
    # Decided on the raw path, the bytes that go upstream: `/api%2Fanthropic/v1` decodes
    # to the base path but is not under it for a router that does not decode %2F.
    base = target.base_path.encode()
    if base and (raw_path == base or raw_path.startswith(base + b"/")):
        return raw_path
    return base + raw_path


def upstream_target(raw_path: bytes, query: bytes, target: Target) -> bytes:
    """The request target to send upstream: `upstream_path` and the query as sent, or
    BadRequest.  A `#` is refused: a fragment never belongs in a request target, and
    the part after it would be lost or mean something else upstream."""
    if b"#" in raw_path or b"#" in query:
        raise BadRequest("the request target may not contain '#'")
    path = upstream_path(raw_path, target)
    return path + b"?" + query if query else path


def _relative(decoded_path: str, base_path: str) -> str:
    if base_path and (decoded_path == base_path or decoded_path.startswith(base_path + "/")):
        return decoded_path[len(base_path) :] or "/"
    return decoded_path


def route_label(raw_path: bytes, target: Target) -> str:
    """One of ROUTES or "other": bounded whatever the caller sends."""
    path = _relative(unquote_to_bytes(raw_path).decode("utf-8", "replace"), target.base_path)
    path = path.rstrip("/") or "/"
    return path if path in _ROUTE_SET else "other"


def api_style(raw_path: bytes) -> ApiStyle:
    """OpenAI-style paths get OpenAI-shaped errors and usage parsing; the rest Anthropic."""
    path = raw_path.split(b"?", 1)[0].rstrip(b"/").decode("latin-1")
    return "openai" if path.endswith(_OPENAI_SUFFIXES) else "anthropic"
