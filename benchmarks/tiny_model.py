"""Build the tiny Llama model that the real-vLLM tests serve, fully offline.

Runs inside the vLLM environment (it needs torch, transformers, tokenizers):

    ENV/bin/python benchmarks/tiny_model.py --out ~/.cache/slorouter/tiny-llama

- weights: ``transformers.LlamaConfig`` (hidden 512, 8 layers, 8 heads, 4 KV heads, MLP 2048,
  vocab 4096 → ≈35.7M parameters), random (seed 0), float32 safetensors;
- tokenizer: byte-level BPE (vocab 4096) trained with ``tokenizers`` on Python's own stdlib
  sources, wrapped as ``PreTrainedTokenizerFast`` with ``<s>``/``</s>``/``<pad>``/``<unk>`` and a
  chat template.

Idempotent: a stamp file names the spec; an existing matching build is left alone. The build
goes to a temporary sibling directory and is renamed into place, so an interrupted build never
leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

SPEC = {
    "vocab_size": 4096,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "seed": 0,
    "corpus_bytes": 8_000_000,
    "version": 1,
}
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
STAMP = ".slorouter-model"


def spec_key() -> str:
    return hashlib.sha1(json.dumps(SPEC, sort_keys=True).encode()).hexdigest()[:12]


def corpus(limit: int) -> Iterator[str]:
    """Python stdlib sources (top level and packages, no site-packages), sorted, up to ``limit`` bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    used = 0
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        used += len(text)
        if used >= limit:
            return


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    t0 = time.monotonic()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=SPEC["vocab_size"],
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(SPEC["corpus_bytes"]), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=SPEC["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    t1 = time.monotonic()

    torch.manual_seed(SPEC["seed"])
    config = LlamaConfig(
        vocab_size=SPEC["vocab_size"],
        hidden_size=SPEC["hidden_size"],
        intermediate_size=SPEC["intermediate_size"],
        num_hidden_layers=SPEC["num_hidden_layers"],
        num_attention_heads=SPEC["num_attention_heads"],
        num_key_value_heads=SPEC["num_key_value_heads"],
        max_position_embeddings=SPEC["max_position_embeddings"],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())

    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    fast.save_pretrained(tmp)
    (tmp / STAMP).write_text(json.dumps({"spec": spec_key(), "params": n_params, **SPEC}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    t2 = time.monotonic()
    print(
        json.dumps(
            {
                "model_dir": str(out),
                "params": n_params,
                "tokenizer_s": round(t1 - t0, 1),
                "model_s": round(t2 - t1, 1),
            }
        )
    )


def is_built(out: Path) -> bool:
    try:
        return bool(json.loads((out / STAMP).read_text()).get("spec") == spec_key())
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="model directory to create")
    ap.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    args = ap.parse_args(argv)
    out: Path = args.out.expanduser().resolve()
    if is_built(out) and not args.force:
        print(json.dumps({"model_dir": str(out), "cached": True}))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    build(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
