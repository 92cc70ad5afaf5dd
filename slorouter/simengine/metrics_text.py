"""Prometheus text exposition (format 0.0.4) of a simulated engine's state.

vLLM names and labels (``{engine="0",model_name="..."}``; every simulated server is its
own "vLLM process", so ``engine`` is always ``"0"``, as in vLLM): ``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (a fraction, 1 = full),
``vllm:num_preemptions_total``, ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
``vllm:request_success_total{finished_reason}``. TGI names: ``tgi_queue_size``,
``tgi_batch_current_size``, ``tgi_batch_current_max_tokens``, ``tgi_request_count``,
``tgi_request_success``. Plus ``slorouter_sim_steps_total`` and ``slorouter_sim_resyncs_total``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slorouter.simengine.runtime import SimEngine


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _f(x: float) -> str:
    return repr(float(x))


def vllm_metrics(eng: SimEngine) -> str:
    m, c = eng.model, eng.counters
    lab = f'engine="0",model_name="{_esc(eng.limits.model)}"'
    out: list[str] = []

    def one(name: str, kind: str, help_: str, value: float) -> None:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{name}{{{lab}}} {_f(value)}\n")

    one("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", m.num_running)
    one("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", m.num_waiting)
    one("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", m.kv_usage)
    one(
        "vllm:num_preemptions_total",
        "counter",
        "Cumulative number of preemption from the engine.",
        m.num_preemptions_total,
    )
    one("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", c.prompt_tokens)
    one(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        c.generation_tokens,
    )
    name = "vllm:request_success_total"
    out.append(f"# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter\n")
    for reason in ("stop", "length", "abort"):
        out.append(
            f'{name}{{engine="0",finished_reason="{reason}",model_name="{_esc(eng.limits.model)}"}} '
            f"{_f(c.finished[reason])}\n"
        )
    _sim(out, eng)
    return "".join(out)


def tgi_metrics(eng: SimEngine) -> str:
    m, c = eng.model, eng.counters
    out: list[str] = []
    for name, kind, value in (
        ("tgi_queue_size", "gauge", m.num_waiting),
        ("tgi_batch_current_size", "gauge", m.num_running),
        ("tgi_batch_current_max_tokens", "gauge", m.kv_tokens),
        ("tgi_request_count", "counter", c.requests),
        ("tgi_request_success", "counter", c.finished["length"] + c.finished["stop"]),
    ):
        out.append(f"# TYPE {name} {kind}\n{name} {value}\n")
    _sim(out, eng)
    return "".join(out)


def _sim(out: list[str], eng: SimEngine) -> None:
    out.append("# HELP slorouter_sim_steps_total Steps run by the simulated engine.\n")
    out.append(
        f"# TYPE slorouter_sim_steps_total counter\nslorouter_sim_steps_total {eng.model.steps_done}\n"
    )
    out.append("# HELP slorouter_sim_resyncs_total Times the step clock fell behind and restarted.\n")
    out.append(f"# TYPE slorouter_sim_resyncs_total counter\nslorouter_sim_resyncs_total {eng.resyncs}\n")
