"""The text a model reads in a request and writes in an answer, as the tokenizer counts it.

One walker per shape, shared by every counter: Anthropic content blocks, OpenAI message
parts and tool calls, tool definitions.  What is yielded is the text the model sees
(names, arguments, tool inputs as JSON); images and binary documents yield nothing.
Pure and total: any JSON value is accepted, and what is not understood is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

__all__ = ["request_texts", "response_texts", "tool_call_texts"]


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _block_texts(content: object) -> Iterator[str]:
    """Text in a content field: a string, or a list of Anthropic blocks / OpenAI parts."""
    if isinstance(content, str):
        yield content
        return
    if not isinstance(content, list):
        return
    for block in content:
        if isinstance(block, str):
            yield block
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_use" or kind == "server_tool_use":
            name = block.get("name")
            if isinstance(name, str):
                yield name
            if "input" in block:
                yield _json_text(block["input"])
        elif kind == "tool_result" or kind == "web_search_tool_result":
            yield from _block_texts(block.get("content"))
        elif kind == "thinking":
            thinking = block.get("thinking")
            if isinstance(thinking, str):
                yield thinking
        elif kind == "document":
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "text":
                data = source.get("data")
                if isinstance(data, str):
                    yield data
        else:
            # text, input_text, and unknown kinds that carry text the same way
            text = block.get("text")
            if isinstance(text, str):
                yield text


def tool_call_texts(calls: object) -> Iterator[str]:
    if not isinstance(calls, list):
        return
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            for key in ("name", "arguments"):
                value = fn.get(key)
                if isinstance(value, str):
                    yield value


def _tool_definition_texts(tools: object) -> Iterator[str]:
    if not isinstance(tools, list):
        return
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        # OpenAI nests the definition under "function"; Anthropic does not.
        fn = tool.get("function")
        spec = fn if isinstance(fn, dict) else tool
        for key in ("name", "description"):
            value = spec.get(key)
            if isinstance(value, str):
                yield value
        for key in ("input_schema", "parameters"):
            if key in spec:
                yield _json_text(spec[key])


def request_texts(obj: dict[str, object]) -> Iterator[str]:
    yield from _block_texts(obj.get("system"))
    yield from _tool_definition_texts(obj.get("tools"))
    prompt = obj.get("prompt")
    if isinstance(prompt, str):
        yield prompt
    elif isinstance(prompt, list):
        yield from (p for p in prompt if isinstance(p, str))
    messages = obj.get("messages")
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        yield from _block_texts(message.get("content"))
        for key in ("name", "reasoning_content"):
            value = message.get(key)
            if isinstance(value, str):
                yield value
        yield from tool_call_texts(message.get("tool_calls"))


def response_texts(obj: dict[str, object]) -> Iterator[str]:
    yield from _block_texts(obj.get("content"))
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        if isinstance(text, str):
            yield text
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        for key in ("reasoning_content", "content"):
            yield from _block_texts(message.get(key))
        yield from tool_call_texts(message.get("tool_calls"))
