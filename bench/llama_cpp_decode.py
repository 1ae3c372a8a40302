#!/usr/bin/env python3
"""Baseline llama.cpp (llama-cpp-python) prompt-processing and decode speed.

Measures, for one GGUF model:

* prompt processing (pp): wall time of a single ``eval`` of an N-token prompt
  (a fixed English text repeated and truncated to N token ids), from an empty
  KV cache;
* decode: greedy generation of M tokens, one token per ``eval``; only the
  decode loop is timed (argmax over the last logits is included, sampling
  overhead is negligible);
* peak resident set size of this process (``ru_maxrss``, converted to bytes).

Each of R repeats resets the KV cache; the median (default) or best run is
reported. Prints exactly one JSON line on stdout, e.g.::

    {"pp_tok_s": 812.3, "decode_tok_s": 95.1, "peak_rss_bytes": 254803968,
     "prompt_tokens": 128, "gen_tokens": 64, ...}

Usage::

    python bench/llama_cpp_decode.py --model /tmp/models/smollm2-135m-instruct-q4_1.gguf

llama-cpp-python must be built from source with native flags but without AMX on
machines whose VM faults on AMX tile instructions (see scripts/record_fixtures.py):
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TOOLS=OFF \
      -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
      -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" \
      pip install --no-cache-dir llama-cpp-python==0.3.36
The default OpenMP build busy-waits, so results are very sensitive to other load
on a 2-core machine: keep the machine otherwise idle, and look at the per-run
numbers (pp_runs / decode_runs) for outliers.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import time

FILLER = (
    "The history of computing is a story of abstraction layered on abstraction. "
    "Early machines were programmed by rewiring panels; later, stored programs, "
    "assemblers and compilers let people describe what they wanted instead of how "
    "the hardware should do it. "
)


def peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS reports bytes.
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="path to a GGUF model")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length N in tokens (default 128)")
    ap.add_argument("--gen-tokens", type=int, default=64, help="tokens to decode M (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="n_threads and n_threads_batch (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="number of measured runs R (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured warm-up runs (default 1)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--stat", choices=("median", "best"), default="median",
                    help="aggregate over repeats (default median)")
    args = ap.parse_args(argv)

    if args.prompt_tokens < 1 or args.gen_tokens < 1 or args.repeats < 1:
        ap.error("--prompt-tokens, --gen-tokens and --repeats must be >= 1")
    if args.prompt_tokens + args.gen_tokens > args.n_ctx:
        ap.error("prompt + generated tokens exceed --n-ctx")
    if args.prompt_tokens > args.n_batch:
        ap.error("--prompt-tokens must be <= --n-batch so the prompt is one batch")
    if not os.path.isfile(args.model):
        ap.error(f"model not found: {args.model}")

    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(
        model_path=args.model,
        n_ctx=args.n_ctx,
        n_batch=args.n_batch,
        n_ubatch=args.n_batch,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    ids: list[int] = []
    text = FILLER
    while len(ids) < args.prompt_tokens:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        text += FILLER
    prompt = ids[: args.prompt_tokens]

    def last_argmax() -> int:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        return int(np.argmax(logits))

    def one_run():
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        tok = last_argmax()
        n = 0
        t2 = time.perf_counter()
        for _ in range(args.gen_tokens):
            # Keep generating past EOG so every run decodes exactly M tokens.
            llm.eval([tok])
            tok = last_argmax()
            n += 1
        t3 = time.perf_counter()
        return len(prompt) / (t1 - t0), n / (t3 - t2)

    for _ in range(args.warmup):
        one_run()
    pps, decs = [], []
    for _ in range(args.repeats):
        pp, dec = one_run()
        pps.append(pp)
        decs.append(dec)

    agg = statistics.median if args.stat == "median" else max
    out = {
        "pp_tok_s": round(agg(pps), 2),
        "decode_tok_s": round(agg(decs), 2),
        "peak_rss_bytes": peak_rss_bytes(),
        "prompt_tokens": len(prompt),
        "gen_tokens": args.gen_tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "stat": args.stat,
        "pp_runs": [round(x, 2) for x in pps],
        "decode_runs": [round(x, 2) for x in decs],
        "model": os.path.basename(args.model),
        "llama_cpp_python": llama_cpp.__version__,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
