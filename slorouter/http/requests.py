"""Reading and classifying a generation request: body limits, JSON and field checks,
tier resolution, prompt-size estimate, and the admission/forward/finalize sequence
shared by the OpenAI and TGI routes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from slorouter.config.entitlement import Refusal, bearer, resolve
from slorouter.http.context import SERVICES, Services
from slorouter.proxy.engines import Prepared
from slorouter.proxy.errors import error_response
from slorouter.state.backends import Backend
from slorouter.values import Engine, Reject, RequestInfo, SloClass, Status, Tier

WORKFLOW_HEADER = "x-slo-workflow-id"
KIND_HEADER = "x-workflow-kind"  # stage budgets are learned per kind (default: the tier)
STAGE_HEADER = "x-workflow-stage"  # 1-based stage of this call, when the client knows it
STAGES_HEADER = "x-workflow-stages"  # the workflow's number of stages, when the client knows it
_MAX_WORKFLOW_ID = 256  # characters; ids are kept until their deadline passes (bounded memory)
_MAX_KIND = 64
_MAX_STAGES = 10_000


class BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.code)


async def read_json(request: web.Request, timeout_s: float) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed JSON object (400 otherwise; 413 from the app limit;
    408 when the client takes longer than ``timeout_s`` to send it)."""
    try:
        if request.content.is_eof():  # read already (the middleware), or all of it arrived
            raw = await request.read()
        else:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
    except TimeoutError:
        raise BadRequest(408, f"the request body did not arrive within {timeout_s:g} s", "timeout") from None
    if not raw:
        raise BadRequest(400, "the request body is empty; send a JSON object", "invalid_json")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(400, f"the request body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(parsed, dict):
        raise BadRequest(400, "the request body must be a JSON object", "invalid_json")
    return raw, parsed


def _int_field(body: dict[str, Any], name: str, lo: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(400, f"'{name}' must be an integer, got {type(v).__name__}", "invalid_value")
    if v < lo:
        raise BadRequest(400, f"'{name}' must be >= {lo}, got {v}", "invalid_value")
    return v


def _text_len(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        n = 0
        for part in content:
            if isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    n += len(t)
        return n
    return 0


def check_openai(body: dict[str, Any], chat: bool) -> tuple[int, int | None, bool]:
    """Validate what the router reads; return (prompt-token estimate, max_tokens, stream).

    The estimate is ~4 characters per token plus a few tokens per chat message; it is
    corrected from the engine's ``usage`` when that arrives."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(400, "'model' must be a string", "invalid_value")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(400, "'stream' must be true or false", "invalid_value")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise BadRequest(400, "'stream_options' must be an object", "invalid_value")
    max_tokens = _int_field(body, "max_tokens", 0)
    mct = _int_field(body, "max_completion_tokens", 0)
    if max_tokens is None:
        max_tokens = mct
    n = _int_field(body, "n", 1)
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest(400, "'messages' must be a non-empty list", "invalid_value")
        chars = 0
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise BadRequest(400, f"'messages[{i}]' must be an object", "invalid_value")
            chars += _text_len(m.get("content"))
        estimate = chars // 4 + 4 * len(msgs) + 3
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            estimate = len(prompt) // 4 + 1
        elif isinstance(prompt, list) and prompt:
            if all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
                estimate = len(prompt)
            elif all(isinstance(x, str) for x in prompt):
                estimate = sum(len(x) for x in prompt) // 4 + len(prompt)
            elif all(isinstance(x, list) for x in prompt):
                estimate = sum(len(x) for x in prompt)
            else:
                raise BadRequest(
                    400, "'prompt' must be a string, a list of strings or token ids", "invalid_value"
                )
        else:
            raise BadRequest(400, "'prompt' must be a non-empty string or list", "invalid_value")
    if n is not None and n > 1 and max_tokens is not None:
        max_tokens *= n
    return max(1, estimate), max_tokens, stream is True


def classify(
    svc: Services,
    request: web.Request,
    arrival: float,
    model: str | None,
    prompt_tokens: int,
    max_tokens: int | None,
    stream: bool,
) -> tuple[RequestInfo, str] | Refusal:
    """Resolve the tier (key, header, alias) and build the request's RequestInfo."""
    cfg = svc.cfg
    wid = request.headers.get(WORKFLOW_HEADER)
    if wid is not None and not (0 < len(wid) <= _MAX_WORKFLOW_ID and wid.isprintable()):
        return Refusal(
            400,
            f"{WORKFLOW_HEADER} must be 1..{_MAX_WORKFLOW_ID} printable characters",
            "invalid_workflow_id",
        )
    key = bearer(request.headers.get("Authorization")) or request.headers.get("x-api-key") or None
    res = resolve(cfg, key, request.headers.get(cfg.routing.header), model)
    if isinstance(res, Refusal):
        return res
    tier = res.tier
    got = _deadline(svc, request, tier, arrival)
    if isinstance(got, Refusal):
        return got
    deadline_at, target_at, path_stages = got
    bound = svc.lengths.bound(tier.name, 0, max_tokens)
    info = RequestInfo(
        rid=svc.next_rid(),
        tier=tier,
        arrival=arrival,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        output_bound=bound,
        model=res.model,
        stream=stream,
        workflow_id=request.headers.get(WORKFLOW_HEADER),
        deadline_at=deadline_at,
        key_id=res.key_id,
        target_at=target_at,
        path_stages=path_stages,
    )
    return info, res.model


def _stage_header(request: web.Request, name: str) -> int | Refusal | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        v = int(raw.strip())
    except ValueError:
        v = 0
    if not 1 <= v <= _MAX_STAGES:
        return Refusal(
            400,
            f"{name} must be an integer from 1 to {_MAX_STAGES}, got {raw[:32]!r}",
            "invalid_workflow_stage",
        )
    return v


def _deadline(
    svc: Services, request: web.Request, tier: Tier, arrival: float
) -> tuple[float | None, float | None, int] | Refusal:
    """(the request's deadline, its own stage budget, the stages left on its workflow's
    path) — a workflow call's from the workflow book (slorouter.models.workflows), with
    the optional stage headers."""
    slo = tier.slo
    if slo.deadline_s is None:
        return None, None, 1
    if slo.slo_class is SloClass.WORKFLOW:
        wid = request.headers.get(WORKFLOW_HEADER)
        if wid:
            kind = request.headers.get(KIND_HEADER, tier.name)
            if not (0 < len(kind) <= _MAX_KIND and kind.isprintable()):
                return Refusal(
                    400, f"{KIND_HEADER} must be 1..{_MAX_KIND} printable characters", "invalid_workflow_kind"
                )
            stage = _stage_header(request, STAGE_HEADER)
            stages = _stage_header(request, STAGES_HEADER)
            if isinstance(stage, Refusal):
                return stage
            if isinstance(stages, Refusal):
                return stages
            if stage is not None and stages is not None and stage > stages:
                return Refusal(
                    400,
                    f"{STAGE_HEADER} ({stage}) is above {STAGES_HEADER} ({stages})",
                    "invalid_workflow_stage",
                )
            b = svc.workflows.call(
                wid,
                f"{tier.name}/{kind}" if kind != tier.name else kind,
                arrival,
                slo.deadline_s,
                stage=None if stage is None else stage - 1,
                stages=stages,
            )
            return b.deadline_at, b.target_at, b.path_stages
    return arrival + slo.deadline_s, None, 1


async def serve_generation(
    request: web.Request,
    info: RequestInfo,
    path: str,
    prepare: Callable[[Backend], Prepared],
    engines: frozenset[Engine] | None = None,
) -> web.StreamResponse:
    """Admit (policy, queue), forward with failover, and finalize exactly once."""
    svc = request.app[SERVICES]
    tracker = svc.tracker
    if engines is not None:
        info = replace(info, engines=engines)
    if not tracker.pools.configured(info):
        what = f"model {info.model!r}" if info.model else "this request"
        return error_response(503, f"no configured backend serves {what}", "no_backend")
    tracker.on_arrival(info)
    status = Status.ERROR
    try:
        d = await svc.dispatcher.admit(info)
        if isinstance(d, Reject):
            status = Status.REJECTED
            headers = {}
            if d.retry_after_s is not None:
                headers["Retry-After"] = str(max(1, math.ceil(d.retry_after_s)))
            code = "slo_unattainable" if d.status == 429 else "no_backend"
            return error_response(d.status, d.reason, code, headers=headers)
        # the policy ranked only backends that serve this request (its snapshot showed
        # no others); the admission core told it of the first, the failovers are told here
        first = d.backends[0]
        policy = svc.dispatcher.policy
        result = await svc.forwarder.forward(
            request,
            info,
            d.backends,
            path,
            prepare,
            on_attempt=lambda i, b: None if b == first else policy.on_dispatch(i, b),
        )
        status = result.status
        return result.response
    except asyncio.CancelledError:
        status = Status.CANCELLED
        raise
    finally:
        tracker.on_finish(info.rid, status)
