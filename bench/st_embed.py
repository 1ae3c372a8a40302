#!/usr/bin/env python3
"""Baseline sentence-transformers embedding latency and throughput (CPU).

Measures, for a local sentence-transformers model directory:

* single-text latency: ``model.encode([t])`` for every text in the texts file,
  repeated K times; reports p50 / p99 / mean in milliseconds;
* batch throughput: ``model.encode(batch, batch_size=B)`` on the first B texts
  (cycled if the file has fewer), best of K; reports texts/s and tokens/s
  (tokens counted with the model's tokenizer, truncated to max_seq_length,
  including [CLS]/[SEP]).

Prints exactly one JSON line on stdout, e.g.::

    {"p50_ms": 6.1, "p99_ms": 11.4, "throughput_texts_per_s": 310.2,
     "batch_tok_s": 4200.0, ...}

Usage::

    HF_HUB_OFFLINE=1 python bench/st_embed.py --model-dir DIR --texts-file texts.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_TEXTS = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "Explain the difference between a process and a thread.",
    "The weather is lovely today.",
    "Write a haiku about the sea.",
    "SELECT name FROM users WHERE id = 1;",
    "Translate 'good morning' into Spanish.",
    "What are the health benefits of green tea?",
]


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="local sentence-transformers model directory")
    ap.add_argument("--texts-file", help="JSON file holding a list of strings (default: built-in 8 queries)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats K (default 5)")
    ap.add_argument("--batch", type=int, default=32, help="batch size for the throughput run (default 32)")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured warm-up encodes (default 3)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.threads < 1:
        ap.error("--repeats, --batch and --threads must be >= 1")
    if not os.path.isdir(args.model_dir):
        ap.error(f"model dir not found: {args.model_dir}")

    if args.texts_file:
        with open(args.texts_file, encoding="utf-8") as f:
            texts = json.load(f)
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            ap.error("--texts-file must hold a non-empty JSON list of strings")
    else:
        texts = DEFAULT_TEXTS

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()

    with torch.inference_mode():
        for i in range(args.warmup):
            model.encode([texts[i % len(texts)]], show_progress_bar=False)

        lat_ms = []
        for _ in range(args.repeats):
            for t in texts:
                t0 = time.perf_counter()
                model.encode([t], show_progress_bar=False)
                lat_ms.append((time.perf_counter() - t0) * 1000.0)

        batch = [texts[i % len(texts)] for i in range(args.batch)]
        tok = model.tokenizer
        batch_tokens = sum(
            len(tok(t, truncation=True, max_length=model.max_seq_length)["input_ids"]) for t in batch
        )
        model.encode(batch, batch_size=args.batch, show_progress_bar=False)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.encode(batch, batch_size=args.batch, show_progress_bar=False)
            best = min(best, time.perf_counter() - t0)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "p50_ms": round(percentile(lat_ms, 50), 3),
        "p99_ms": round(percentile(lat_ms, 99), 3),
        "mean_ms": round(statistics.fmean(lat_ms), 3),
        "throughput_texts_per_s": round(args.batch / best, 2),
        "batch_tok_s": round(batch_tokens / best, 1),
        "batch": args.batch,
        "batch_tokens": batch_tokens,
        "n_single": len(lat_ms),
        "threads": args.threads,
        "peak_rss_bytes": int(rss) if sys.platform == "darwin" else int(rss) * 1024,
        "torch": torch.__version__,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
