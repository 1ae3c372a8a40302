#!/usr/bin/env python3
"""The sentence-transformers baseline of `coe bench classify` (CPU torch).

Reads a cases file, JSON ``{"short": str, "long": str, "batch": [str, ...]}``, and measures with
all-MiniLM-L6-v2 from a local directory (Transformer -> mean Pooling -> Normalize, truncated at 256
tokens, as the model's sentence-transformers configuration defines it):

* single-query latency of ``model.encode([short])`` and ``model.encode([long])``, ``--samples``
  times each after warm-up; p50 / p99 in milliseconds;
* batch throughput: ``model.encode(batch, batch_size=len(batch))``, best of ``--repeats``; texts/s.

Prints one JSON line on stdout. Usage::

    python bench/st_embed.py --model-dir DIR --cases cases.json [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def load_model(model_dir: str):
    from sentence_transformers import SentenceTransformer, models

    # The cache holds the weights, config and tokenizer only; these are the modules the model's
    # own modules.json / sentence_bert_config.json declare.
    word = models.Transformer(model_dir, max_seq_length=256)
    pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--cases", required=True, help="JSON file with short, long and batch texts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=100, help="timed single-query encodes per text")
    ap.add_argument("--repeats", type=int, default=5, help="timed batch encodes (best is kept)")
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    with open(args.cases, encoding="utf-8") as f:
        cases = json.load(f)

    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    model = load_model(args.model_dir)
    model.eval()
    out = {"threads": args.threads, "torch": torch.__version__}
    with torch.inference_mode():
        for name in ("short", "long"):
            text = cases[name]
            for _ in range(args.warmup):
                model.encode([text], show_progress_bar=False)
            lat = []
            for _ in range(args.samples):
                t0 = time.perf_counter()
                model.encode([text], show_progress_bar=False)
                lat.append((time.perf_counter() - t0) * 1000.0)
            out[f"{name}_p50_ms"] = percentile(lat, 50)
            out[f"{name}_p99_ms"] = percentile(lat, 99)
            out[f"{name}_tokens"] = len(model.tokenize([text])["input_ids"][0])
        batch = cases["batch"]
        model.encode(batch, batch_size=len(batch), show_progress_bar=False)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.encode(batch, batch_size=len(batch), show_progress_bar=False)
            best = min(best, time.perf_counter() - t0)
        out["throughput_texts_per_s"] = len(batch) / best
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
