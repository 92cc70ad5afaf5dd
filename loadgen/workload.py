"""Workload files: what to send, to which tiers, and when. Documented in docs/loadgen.md.

A workload is a YAML mapping::

    name: smoke
    tiers_from: ../example.yaml    # the router's YAML (its `tiers:` list), relative to this file
    # tiers: [{name: chat, class: latency, ttft_ms: 500, tpot_ms: 50}, ...]   # or inline
    tier_by: header                # header: send x-slo-tier (see tier_header) | api_key: the key alone picks
    api_keys: {chat: sk-chat}      # tier -> API key sent with that tier's requests (both modes;
                                   # "${ENV_VAR}" reads the environment); others use --api-key
    model: auto                    # or a served model name; auto = first entry of GET /v1/models
    endpoint: /v1/chat/completions # or /v1/completions
    ignore_eos: true               # send ignore_eos so outputs are exactly max_tokens long
    priority: none                 # due: send vLLM's `priority` = the call's due time (EDF at
                                   # engines run with --scheduling-policy priority; loadgen/client.py)
    prompt_overhead_tokens: 7      # tokens the server adds around the prompt text (chat template,
                                   # BOS); subtracted from each target. Default: the simulated
                                   # engine's 7 for chat (3 + 4 per message), 1 for completions (BOS)
    seed: 1
    duration_s: 10                 # or requests: N (the CLI's --duration / --requests win)
    arrival: {process: poisson, rate: 6}
    mix:                           # each arrival picks one entry by share
      - tier: chat
        share: 3
        prompt_tokens: {dist: uniform, min: 64, max: 256}
        output_tokens: 64
      - tier: agent                # a workflow tier: one arrival = one workflow of several calls
        share: 1
        workflow: {shape: chain, calls: 3}

One unit of work is a request, or a whole workflow for ``workflow`` tiers.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.arrivals import ArrivalSpec, parse_arrival
from loadgen.errors import WorkloadError
from loadgen.lengths import LengthSpec, parse_length
from loadgen.tiers import TierSpec, load_router_tiers, parse_tiers
from loadgen.traces import load as load_trace
from loadgen.traces import resolve as resolve_trace
from loadgen.yamlcheck import Node, read_yaml
from slojudge.shapes import CHAIN, FANOUT, Deps, chain_deps, fanout_deps

TOP_KEYS = {
    "name", "description", "tiers_from", "tiers", "tier_by", "tier_header", "api_keys", "workflow_header",
    "model", "endpoint", "ignore_eos", "extra_body", "headers", "seed", "duration_s", "requests",
    "arrival", "mix", "request_timeout_s", "drain_s", "prompt_overhead_tokens", "priority",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    """``chain``: call k waits for call k-1. ``fanout``: an optional root call, then
    ``width`` parallel calls, then an optional join call that waits for all of them."""

    shape: str
    calls: int = 3
    width: int = 3
    root: bool = True
    join: bool = True

    def deps(self) -> Deps:
        """For each call (in send order), the indices of the calls it waits for."""
        if self.shape == CHAIN:
            return chain_deps(self.calls)
        return fanout_deps(self.width, self.root, self.join)

    def to_json(self) -> dict[str, object]:
        if self.shape == CHAIN:
            return {"shape": CHAIN, "calls": self.calls}
        return {"shape": FANOUT, "width": self.width, "root": self.root, "join": self.join}


@dataclass(frozen=True, slots=True)
class MixEntry:
    tier: TierSpec
    share: float  # normalized to sum 1 over the mix
    stream: bool
    prompt: LengthSpec
    output: LengthSpec
    workflow: WorkflowSpec | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    file: str
    name: str
    tiers: dict[str, TierSpec]
    mix: tuple[MixEntry, ...]
    arrival: ArrivalSpec
    duration_s: float | None = None
    requests: int | None = None
    seed: int = 1
    model: str = "auto"
    endpoint: str = "/v1/chat/completions"
    ignore_eos: bool = True
    priority: str = "none"  # none | due (client.due_priority)
    tier_by: str = "header"
    tier_header: str = "x-slo-tier"
    workflow_header: str = "x-slo-workflow-id"
    api_keys: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    request_timeout_s: float = 300.0
    drain_s: float = 60.0
    description: str = ""
    prompt_overhead_tokens: int = 7

    @property
    def chat(self) -> bool:
        return self.endpoint.rstrip("/").endswith("chat/completions")

    def with_overrides(
        self,
        *,
        rate: float | None = None,
        duration_s: float | None = None,
        requests: int | None = None,
        seed: int | None = None,
        concurrency: int | None = None,
        model: str | None = None,
    ) -> Workload:
        """The CLI flags win over the file. A duration or a count given replaces the other."""
        arrival = self.arrival
        if rate is not None:
            if arrival.closed_loop:
                raise WorkloadError(
                    self.file, "arrival.process", "--rate needs an open-loop process, not concurrency"
                )
            arrival = arrival.with_rate(rate)
        if concurrency is not None:
            if not arrival.closed_loop:
                raise WorkloadError(self.file, "arrival.process", "--concurrency needs process: concurrency")
            arrival = arrival.with_concurrency(concurrency)
        dur, req = self.duration_s, self.requests
        if duration_s is not None or requests is not None:
            dur, req = duration_s, requests
        return dataclasses.replace(
            self,
            arrival=arrival,
            duration_s=dur,
            requests=req,
            seed=self.seed if seed is None else seed,
            model=model or self.model,
        )


def load_workload(path: str | Path) -> Workload:
    p = Path(path)
    data = read_yaml(p, "the workload")
    return parse_workload(data, str(path), p.resolve().parent)


def parse_workload(data: object, file: str, base_dir: Path) -> Workload:
    top = Node(file, "", data)
    top.check_keys(TOP_KEYS)
    tiers = _tiers(top, base_dir)
    mix_nodes = top.nodes("mix")
    entries = [_mix_entry(n, tiers, base_dir) for n in mix_nodes]
    total = sum(e.share for e in entries)
    mix = tuple(dataclasses.replace(e, share=e.share / total) for e in entries)
    arrival = parse_arrival(top.node("arrival"), base_dir)
    for n, e in zip(mix_nodes, mix, strict=True):
        for key, spec in (("prompt_tokens", e.prompt), ("output_tokens", e.output)):
            if spec.from_row and arrival.process != "trace":
                raise n.fail(
                    key, "{dist: trace} without a path needs arrival.process: trace (or give a path)"
                )
    tier_by = top.str_("tier_by", "header", choices=("header", "api_key"))
    api_keys = {k: _expand(v, top, f"api_keys.{k}") for k, v in top.str_map("api_keys").items()}
    if tier_by == "api_key":
        for i, e in enumerate(mix):
            if e.tier.name not in api_keys:
                raise top.fail(f"mix[{i}].tier", f"tier_by: api_key needs api_keys.{e.tier.name}")
    extra = top.data.get("extra_body") or {}
    if not isinstance(extra, dict):
        raise top.fail("extra_body", "must be a mapping")
    duration = top.opt_num("duration_s", gt=0)
    requests = top.opt_int("requests", ge=1)
    endpoint = "/" + top.str_("endpoint", "/v1/chat/completions").lstrip("/")
    chat = endpoint.rstrip("/").endswith("chat/completions")
    return Workload(
        file=file,
        name=top.str_("name", Path(file).stem),
        description=str(top.data.get("description") or ""),
        tiers=tiers,
        mix=mix,
        arrival=arrival,
        duration_s=duration,
        requests=requests,
        seed=top.int_("seed", 1),
        model=top.str_("model", "auto"),
        endpoint=endpoint,
        ignore_eos=top.bool_("ignore_eos", True),
        priority=top.str_("priority", "none", ("none", "due")),
        tier_by=tier_by,
        tier_header=top.str_("tier_header", "x-slo-tier"),
        workflow_header=top.str_("workflow_header", "x-slo-workflow-id"),
        api_keys=api_keys,
        extra_body=dict(extra),
        headers={k: _expand(v, top, f"headers.{k}") for k, v in top.str_map("headers").items()},
        request_timeout_s=top.num("request_timeout_s", 300.0, gt=0),
        drain_s=top.num("drain_s", 60.0, ge=0),
        prompt_overhead_tokens=top.int_("prompt_overhead_tokens", 7 if chat else 1, ge=0),
    )


def _tiers(top: Node, base_dir: Path) -> dict[str, TierSpec]:
    tiers: dict[str, TierSpec] = {}
    if top.has("tiers_from"):
        ref = top.str_("tiers_from")
        path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        if not path.is_file() and (Path.cwd() / ref).is_file():
            path = Path.cwd() / ref
        if not path.is_file():
            raise top.fail("tiers_from", f"router config {ref!r} not found (relative to {base_dir})")
        tiers.update(load_router_tiers(path))
    if top.has("tiers"):
        for name, tier in parse_tiers(top.nodes("tiers"), strict=True).items():
            tiers[name] = tier  # inline definitions override the router file's
    if not tiers:
        raise top.fail("tiers", "give tier definitions (tiers: [...]) or a router config (tiers_from: FILE)")
    return tiers


def _mix_entry(n: Node, tiers: dict[str, TierSpec], base_dir: Path) -> MixEntry:
    n.check_keys({"tier", "share", "stream", "prompt_tokens", "output_tokens", "workflow"})
    name = n.str_("tier")
    if name not in tiers:
        raise n.fail("tier", f"unknown tier {name!r} (known: {', '.join(tiers)})")
    tier = tiers[name]
    prompt = _with_trace_values(parse_length(n, "prompt_tokens", 128), n, "prompt_tokens", base_dir, True)
    output = _with_trace_values(parse_length(n, "output_tokens", 128), n, "output_tokens", base_dir, False)
    workflow = None
    if tier.slo_class == "workflow":
        workflow = _workflow(n.opt_node("workflow"))
    elif n.has("workflow"):
        raise n.fail("workflow", f"only for workflow-class tiers ({name!r} is {tier.slo_class})")
    return MixEntry(
        tier=tier,
        share=n.num("share", gt=0),
        stream=n.bool_("stream", tier.slo_class != "deadline"),
        prompt=prompt,
        output=output,
        workflow=workflow,
    )


def _with_trace_values(spec: LengthSpec, n: Node, key: str, base_dir: Path, prompt: bool) -> LengthSpec:
    if spec.trace_path is None:
        return spec
    path = resolve_trace(spec.trace_path, base_dir, n.file, f"{n.sub(key)}.path")
    trace = load_trace(path)
    return dataclasses.replace(spec, values=trace.prompts if prompt else trace.outputs)


def _workflow(node: Node | None) -> WorkflowSpec:
    if node is None:
        return WorkflowSpec(CHAIN, calls=3)
    node.check_keys({"shape", "calls", "width", "root", "join"})
    shape = node.str_("shape", choices=(CHAIN, FANOUT))
    if shape == CHAIN:
        return WorkflowSpec(shape, calls=node.int_("calls", 3, ge=1))
    return WorkflowSpec(
        shape, width=node.int_("width", 3, ge=1), root=node.bool_("root", True), join=node.bool_("join", True)
    )


_ENV = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _expand(value: str, top: Node, where: str) -> str:
    m = _ENV.match(value)
    if not m:
        return value
    got = os.environ.get(m.group(1))
    if got is None:
        raise WorkloadError(top.file, where, f"environment variable {m.group(1)} is not set")
    return got
