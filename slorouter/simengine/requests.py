"""Parse and validate request bodies for the simulated engines (pure; no I/O).

:func:`parse_vllm` and :func:`parse_tgi` turn a decoded JSON body into a :class:`GenSpec`
(prompt tokens, the output length the engine will produce and why it stops, stream
options) or raise :class:`ApiError` with the status and message the real server would use.

Output length: ``max_tokens`` (chat: ``max_completion_tokens`` first) defaults to, and is
clamped at, ``max_model_len - prompt_tokens`` (as vLLM does). With ``ignore_eos`` the
engine produces exactly that many (``finish_reason: "length"``); otherwise an EOS position
is drawn from the request key (geometric, mean ``eos_mean``, never before ``min_tokens``):
if it comes first the last token is EOS (empty text, counted in usage) and
``finish_reason`` is ``"stop"`` (TGI: ``"eos_token"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from slorouter.simengine.text import CHAT_PER_MESSAGE, CHAT_PRIMER, RequestKey, count_text, message_text


class Kind(Enum):
    CHAT = "chat"  # vLLM /v1/chat/completions
    COMPLETION = "completion"  # vLLM /v1/completions
    TGI_GENERATE = "tgi_generate"  # TGI /generate, /generate_stream
    TGI_CHAT = "tgi_chat"  # TGI /v1/chat/completions


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param


@dataclass(frozen=True, slots=True)
class Limits:
    model: str
    max_model_len: int
    eos_mean: float
    seed: int


@dataclass(frozen=True, slots=True)
class GenSpec:
    kind: Kind
    stream: bool
    prompt_tokens: int
    output_tokens: int  # tokens the engine produces (the last is EOS when eos is True)
    eos: bool  # stops at an EOS token (finish "stop"/"eos_token") rather than at the limit
    key: RequestKey
    model: str
    include_usage: bool = False
    continuous_usage: bool = False
    details: bool = False  # TGI: include `details` in the final event / response
    priority: int = 0  # vLLM: lower is served first (needs --scheduling-policy priority)


def _bad(msg: str, param: str | None = None) -> ApiError:
    return ApiError(400, msg, "BadRequestError", param)


def _opt_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"{name} must be an integer, got {v!r}. (parameter={name}, value={v!r})", name)
    if v < minimum:
        raise _bad(f"{name} must be at least {minimum}, got {v}. (parameter={name}, value={v})", name)
    return v


def _opt_bool(body: dict[str, Any], name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _bad(f"{name} must be a boolean, got {v!r}. (parameter={name}, value={v!r})", name)
    return v


def _priority(body: dict[str, Any]) -> int:
    """vLLM's ``priority`` (an integer, default 0; an integral float is taken as vLLM's
    validator takes it)."""
    if "priority" not in body:
        return 0
    v = body["priority"]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"priority must be an integer, got {v!r}. (parameter=priority, value={v!r})", "priority")
    return v


def _length(
    key: RequestKey, limit: int, min_tokens: int, ignore_eos: bool, eos_mean: float
) -> tuple[int, bool]:
    if ignore_eos:
        return limit, False
    at = max(key.eos_length(eos_mean), min_tokens + 1)
    return (at, True) if at <= limit else (limit, False)


def parse_vllm(kind: Kind, body: Any, lim: Limits) -> GenSpec:
    """A vLLM OpenAI request (``Kind.CHAT`` or ``Kind.COMPLETION``)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", "body")
    model = body.get("model")
    if model is not None and model != lim.model:
        raise ApiError(
            404, f"The model `{model}` does not exist. Valid aliases: {lim.model}.", "NotFoundError", "model"
        )
    stream = _opt_bool(body, "stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise _bad("stream_options must be an object", "stream_options")
    if so and not stream:
        raise _bad("Stream options can only be defined when `stream=True`.", "stream_options")
    include_usage = bool(so and so.get("include_usage"))
    continuous = include_usage and bool(so and so.get("continuous_usage_stats"))
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad(f"n must be 1 on the simulated engine, got {n!r}. (parameter=n, value={n!r})", "n")
    if kind is Kind.CHAT:
        prompt = _chat_prompt_tokens(body)
        max_tokens = _opt_int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _opt_int(body, "max_tokens", 1)
    else:
        prompt = _completion_prompt_tokens(body)
        max_tokens = _opt_int(body, "max_tokens", 1)
    if prompt >= lim.max_model_len:
        raise _bad(
            f"Input length ({prompt}) exceeds model's maximum context length ({lim.max_model_len}).",
            "input_tokens",
        )
    limit = lim.max_model_len - prompt if max_tokens is None else min(max_tokens, lim.max_model_len - prompt)
    min_tokens = _opt_int(body, "min_tokens", 0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise _bad(f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.")
    key = RequestKey.of(lim.seed, body)
    out, eos = _length(key, limit, min_tokens, _opt_bool(body, "ignore_eos"), lim.eos_mean)
    return GenSpec(
        kind, stream, prompt, out, eos, key, lim.model, include_usage, continuous, priority=_priority(body)
    )


def _chat_prompt_tokens(body: dict[str, Any]) -> int:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages: field required: a non-empty list of {role, content} objects", "messages")
    total = CHAT_PRIMER
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}]: must be an object with a string `role`", f"messages[{i}]")
        text = message_text(m.get("content"))
        if text is None:
            raise _bad(f"messages[{i}].content: must be a string or a list of content parts", "messages")
        total += CHAT_PER_MESSAGE + count_text(text)
    return total


def _completion_prompt_tokens(body: dict[str, Any]) -> int:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        return 1 + count_text(p)
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return len(p)
    if p is None:
        raise _bad("prompt: field required (a string or a list of token ids)", "prompt")
    raise _bad("prompt: must be a string, a list of token ids, or a list of one of those", "prompt")


def _tgi_error(msg: str) -> ApiError:
    return ApiError(422, f"Input validation error: {msg}", "validation")


def parse_tgi(kind: Kind, body: Any, lim: Limits, *, stream: bool = False) -> GenSpec:
    """A TGI request: ``Kind.TGI_GENERATE`` (``{"inputs", "parameters"}``; ``stream`` from the
    route) or ``Kind.TGI_CHAT`` (OpenAI chat shape, TGI defaults: ``max_tokens`` 100).

    ``parameters.ignore_eos`` (chat: top-level ``ignore_eos``) is honoured as a simulator
    extension (TGI ignores unknown
    parameters)."""
    if not isinstance(body, dict):
        raise _tgi_error("the request body must be a JSON object")
    if kind is Kind.TGI_CHAT:
        stream = body.get("stream") is True
        so = body.get("stream_options")
        include_usage = isinstance(so, dict) and so.get("include_usage") is True
        try:
            prompt = _chat_prompt_tokens(body)
        except ApiError as e:
            raise _tgi_error(e.message) from None
        params = body
        max_new = params.get("max_tokens", 100)
        details = True
    else:
        inputs = body.get("inputs")
        if not isinstance(inputs, str) or not inputs:
            raise _tgi_error("`inputs` cannot be empty")
        prompt = max(1, count_text(inputs))
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise _tgi_error("`parameters` must be an object")
        max_new = params.get("max_new_tokens", 100)
        details = params.get("details") is True
        include_usage = False
    if max_new is None:
        max_new = 100
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new <= 0:
        raise _tgi_error("`max_new_tokens` must be strictly positive")
    if prompt + max_new > lim.max_model_len:
        raise _tgi_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {lim.max_model_len}. "
            f"Given: {prompt} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    key = RequestKey.of(lim.seed, body)
    out, eos = _length(key, max_new, 0, params.get("ignore_eos") is True, lim.eos_mean)
    return GenSpec(kind, stream, prompt, out, eos, key, lim.model, include_usage, False, details)
