#!/usr/bin/env bash
# Rebuilds router/artifacts/minilm-8cat/classifier.json, the eight-category classifier coe ships
# (compiled into the binary), and its training report. Deterministic: the same data gives the same
# weights. A few minutes with a warm embedding cache, ten more on two cores without one.
# The head is the linear one: on source-held-out data it beat every MLP tried (see
# router/artifacts/minilm-8cat/EXPERIMENTS.md). data/router/llm_written_queries.jsonl is committed
# output of router/scripts/make_llm_queries.py (half an hour of the project's 1.5B coder expert), not
# regenerated here.
# Run from the repository root.
set -euo pipefail
out=router/artifacts/minilm-8cat
python3 router/scripts/make_synthetic_queries.py
cargo run --release -p coe-router --example router_cli -- train \
    --data data/router/router_train.jsonl \
    --data data/router/synthetic_short_queries.jsonl \
    --data data/router/llm_written_queries.jsonl \
    --head linear \
    --alpha 10 \
    --out "$out" | tee "$out/train_report.txt"
