#!/usr/bin/env python3
"""LLM-cascade study: would asking a small local LLM for the category of a prompt raise the router's
source-held-out accuracy?

    PY=~/.cache/coe/bench-venv/bin/python
    $PY router/scripts/llm_cascade_study.py tokens  MODEL.gguf            # label first-token check
    $PY router/scripts/llm_cascade_study.py llm     MODEL.gguf OUT.jsonl --n 20 --wording 0
    $PY router/scripts/llm_cascade_study.py analyze OUT1.jsonl [OUT2.jsonl ...]

Sample: for every (source, category) pair of router_train.jsonl up to N prompts (seed 0; the first N of
one fixed permutation, so smaller N gives nested subsets), truncated to 800 characters.
LLM score: Qwen chat template built by hand; the assistant turn is opened so the next token is the
label; log-probabilities of the first token of each of the 8 labels, softmaxed over those 8.
Linear baseline: source held out, multinomial logistic regression (C=0.1) on the cached MiniLM
embeddings of the other sources + synthetic, sample weights balanced per (category, source).
"""
import argparse
import collections
import json
import math
import os
import sys
import time

import numpy as np

from embedding_cache import fnv, load_cache

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TRAIN = os.path.join(ROOT, "data/router/router_train.jsonl")
SYNTH = os.path.join(ROOT, "data/router/synthetic_short_queries.jsonl")
CATS = ["code", "creative_writing", "general_chat", "history_humanities", "law", "math",
        "medicine_biology", "science"]
# one-word label the LLM answers with, per category (same order as CATS)
WORDS = ["code", "writing", "chat", "history", "law", "math", "medicine", "science"]
MAXCH = 800


def load_jsonl(p):
    return [json.loads(l) for l in open(p) if l.strip()]


def sample(n, seed=0):
    ex = load_jsonl(TRAIN)
    groups = collections.defaultdict(list)
    for e in ex:
        groups[(e["source"], e["category"])].append(e)
    out = []
    for k in sorted(groups):
        g = groups[k]
        rng = np.random.RandomState(seed)
        perm = rng.permutation(len(g))
        out += [g[i] for i in perm[:n]]
    return out


# ---------------------------------------------------------------- prompt wordings
DESC = {
    "code": "programming, software, SQL, algorithms, computers",
    "math": "arithmetic, algebra, geometry, statistics, word problems",
    "science": "physics, chemistry, astronomy, earth science, engineering",
    "medicine": "medicine, biology, health, drugs, anatomy, nutrition",
    "law": "law, legal questions, contracts, privacy policies, regulations",
    "history": "history, philosophy, religion, politics, humanities",
    "writing": "creative writing, stories, poems, essays, scripts",
    "chat": "everyday questions, trivia, finance, advice, small talk",
}
ORDER = ["code", "math", "science", "medicine", "law", "history", "writing", "chat"]


def wording(k, text):
    """Return the full prompt text (Qwen template) for wording k."""
    labels = ", ".join(ORDER)
    if k == 0:
        sys_ = ("You are a router. Classify the user's request into exactly one category. "
                "Categories:\n" + "\n".join(f"{w}: {DESC[w]}" for w in ORDER) +
                "\nAnswer with the category word only.")
        user = text
    elif k == 1:
        sys_ = "You are a helpful assistant."
        user = ("Classify the following request into exactly one of these categories:\n" +
                "\n".join(f"- {w}: {DESC[w]}" for w in ORDER) +
                "\n\nRequest:\n\"\"\"\n" + text + "\n\"\"\"\n\nAnswer with one word from: " + labels + ".")
    elif k == 2:
        sys_ = ("You are a router. Classify the user's request into exactly one category. "
                "Categories:\n" + "\n".join(f"{w}: {DESC[w]}" for w in ORDER) +
                "\nAnswer with the category word only.")
        user = ("Request:\n\"\"\"\n" + text + "\n\"\"\"\nWhich category (" + labels +
                ")? Answer with one word.")
    else:
        raise ValueError(k)
    return (f"<|im_start|>system\n{sys_}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


# ---------------------------------------------------------------- llm
def load_llm(path):
    from llama_cpp import Llama
    return Llama(model_path=os.path.expanduser(path), n_ctx=1024, n_threads=1, n_threads_batch=1,
                 logits_all=False, verbose=False)


def label_tokens(llm, verbose=True):
    """First token of each label as the template produces it (no leading space, right after
    'assistant\n'), for the lowercase and the Capitalised spelling; returns a list of id lists."""
    ids = []
    base = llm.tokenize(b"assistant\n", add_bos=False, special=False)
    for w in WORDS:
        v = []
        for form in (w, w.capitalize()):
            full = llm.tokenize(("assistant\n" + form).encode(), add_bos=False, special=False)
            assert full[:len(base)] == base, (form, base, full)
            t = full[len(base)]
            sp = llm.tokenize((" " + form).encode(), add_bos=False)
            if verbose:
                print(f"{form:10s} first={t} {llm.detokenize([t])!r} all={full[len(base):]} "
                      f"| with-space first={sp[0]} {llm.detokenize([sp[0]])!r}")
            v.append(t)
        ids.append(v)
    flat = [t for v in ids for t in v]
    assert len(set(flat)) == len(flat), ids
    return ids


def score(llm, ids, text, k, cache):
    """8-way probabilities over WORDS (CATS order). cache: dict holding the evaluated prefix."""
    toks = llm.tokenize(wording(k, text).encode(), add_bos=False, special=True)
    if len(toks) > 1000:
        toks = toks[-1000:]
    # reuse the common prefix (system prompt) in the KV cache
    prev = cache.get("toks", [])
    n = 0
    m = min(len(prev), len(toks) - 1)
    while n < m and prev[n] == toks[n]:
        n += 1
    llm.n_tokens = n
    llm.eval(toks[n:])
    cache["toks"] = toks
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
    z = logits - logits.max()
    logp_full = z - np.log(np.exp(z).sum())
    sel = np.array([np.logaddexp.reduce(logp_full[v]) for v in ids])
    p = np.exp(sel - sel.max()); p /= p.sum()
    return p, float(np.exp(sel).sum()), int(np.argmax(logits)), len(toks), n


def run_llm(args):
    llm = load_llm(args.model)
    ids = label_tokens(llm)
    smp = sample(args.n)
    done = set()
    if os.path.exists(args.out):
        done = {json.loads(l)["id"] for l in open(args.out) if l.strip()}
    f = open(args.out, "a")
    cache = {}
    t_all = time.time(); k = 0
    for e in smp:
        if e["id"] in done:
            continue
        t0 = time.time()
        p, mass, top, ntok, reused = score(llm, ids, e["prompt"][:MAXCH], args.wording, cache)
        dt = time.time() - t0
        rec = {"id": e["id"], "source": e["source"], "category": e["category"],
               "probs": {c: round(float(x), 5) for c, x in zip(CATS, p)},
               "pred": CATS[int(np.argmax(p))], "label_mass": round(mass, 4),
               "top_token": llm.detokenize([top]).decode("utf-8", "replace"),
               "n_tokens": ntok, "reused": reused, "seconds": round(dt, 3),
               "wording": args.wording}
        f.write(json.dumps(rec) + "\n"); f.flush()
        k += 1
        if k % 20 == 0:
            print(f"{k} done, {(time.time()-t_all)/k:.2f}s/prompt", flush=True)


# ---------------------------------------------------------------- linear baseline
def linear_heldout(ids_needed):
    """Held-out 8-way probabilities (CATS order) for the examples whose id is in ids_needed."""
    from sklearn.linear_model import LogisticRegression
    idx, V = load_cache()
    ex = load_jsonl(TRAIN) + load_jsonl(SYNTH)
    keep = [i for i, e in enumerate(ex) if fnv(e["prompt"]) in idx]
    print("embeddings missing for", len(ex) - len(keep), "prompts", file=sys.stderr)
    ex = [ex[i] for i in keep]
    X = np.stack([V[idx[fnv(e["prompt"])]] for e in ex])
    y = np.array([CATS.index(e["category"]) for e in ex])
    src = np.array([e["source"] for e in ex])
    syn = np.array([s.startswith("synthetic") for s in src])
    eid = [e["id"] for e in ex]
    out = {}
    for s in sorted(set(src[~syn])):
        tr = src != s
        ys, ss = y[tr], src[tr]
        g = collections.Counter(zip(ys, ss)); gpl = collections.Counter(c for c, _ in g)
        w = np.array([1.0 / (len(gpl) * gpl[c] * g[(c, q)]) for c, q in zip(ys, ss)])
        w *= len(w) / w.sum()
        clf = LogisticRegression(C=0.1, max_iter=2000)
        clf.fit(X[tr], ys, sample_weight=w)
        te = [i for i in np.where(src == s)[0] if eid[i] in ids_needed]
        if not te:
            continue
        pr = clf.predict_proba(X[te])
        full = np.full((len(te), 8), 1e-9)
        full[:, clf.classes_] = pr
        for i, row in zip(te, full):
            out[eid[i]] = row / row.sum()
        print(f"held out {s}: {len(te)} sampled, trained on {tr.sum()}", file=sys.stderr)
    return out


# ---------------------------------------------------------------- analysis
def macro(pred, truth):
    acc = [(pred[truth == c] == c).mean() for c in range(8) if (truth == c).any()]
    return float(np.mean(acc)), {CATS[c]: float((pred[truth == c] == c).mean())
                                 for c in range(8) if (truth == c).any()}


def analyze(args):
    runs = []
    for path in args.files:
        recs = [json.loads(l) for l in open(path) if l.strip()]
        runs.append((os.path.basename(path), recs))
    need = set(r["id"] for _, recs in runs for r in recs)
    lin = linear_heldout(need)
    lines = []
    P = lambda *a: lines.append(" ".join(str(x) for x in a))
    for name, recs in runs:
        recs = [r for r in recs if r["id"] in lin]
        t = np.array([CATS.index(r["category"]) for r in recs])
        pl = np.array([[r["probs"][c] for c in CATS] for r in recs])
        pn = np.stack([lin[r["id"]] for r in recs])
        secs = np.array([r["seconds"] for r in recs])
        P(f"\n### {name}: n={len(recs)}, mean {secs.mean():.2f} s/LLM call (median {np.median(secs):.2f}), "
          f"mean label mass {np.mean([r['label_mass'] for r in recs]):.3f}\n")
        P("| setting | macro acc | micro acc | sent to LLM |")
        P("|---|---|---|---|")
        results = []
        def add(label, pred, frac):
            m, per = macro(pred, t)
            results.append((m, label, per))
            P(f"| {label} | {m:.3f} | {(pred == t).mean():.3f} | {frac:.2f} |")
        add("LLM alone", pl.argmax(1), 1.0)
        add("linear alone (held-out)", pn.argmax(1), 0.0)
        # label-free bias correction of the LLM ("contextual calibration" with the sample mean):
        # subtract each label's mean log-probability over the sample; uses no category labels.
        lg = np.log(pl + 1e-9); lg = lg - lg.mean(0)
        plc = np.exp(lg - lg.max(1, keepdims=True)); plc /= plc.sum(1, keepdims=True)
        results_raw_end = None
        for tag, q in (("", pl), ("cal. ", plc)):
            if tag:
                add("cal. LLM alone (label-prior removed)", q.argmax(1), 1.0)
            for th in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01]:
                use = pn.max(1) < th
                pred = np.where(use, q.argmax(1), pn.argmax(1))
                add(f"{tag}cascade: LLM if linear top < {th}", pred, use.mean())
            for w in [0.5, 1, 2]:
                add(f"{tag}product: log p_lin + {w}*log p_llm", (np.log(pn + 1e-9) + w * np.log(q + 1e-9)).argmax(1), 1.0)
        best = max(results[2:], key=lambda r: r[0])
        calres = [r for r in results if r[1].startswith("cal. LLM alone")][0]
        P("\nPer-category accuracy (LLM alone / cal. LLM alone / linear alone / best setting = " + best[1] + "):\n")
        P("| category | n | LLM | cal. LLM | linear | best |")
        P("|---|---|---|---|---|---|")
        for c in CATS:
            if (t == CATS.index(c)).any():
                P(f"| {c} | {(t == CATS.index(c)).sum()} | {results[0][2][c]:.3f} | {calres[2][c]:.3f} | {results[1][2][c]:.3f} | {best[2][c]:.3f} |")
        # per source
        P("\nPer-source accuracy (micro, within the sample):\n")
        P("| source | n | LLM | linear | best |")
        P("|---|---|---|---|---|")
        bl = best[1]
        q = plc if bl.startswith("cal.") else pl
        if "alone" in bl:
            bpred = q.argmax(1)
        elif "cascade" in bl:
            th = float(bl.split("<")[1]); use = pn.max(1) < th
            bpred = np.where(use, q.argmax(1), pn.argmax(1))
        else:
            w = float(bl.split("+")[1].split("*")[0]); bpred = (np.log(pn + 1e-9) + w * np.log(q + 1e-9)).argmax(1)
        # paired bootstrap (prompts resampled within each category) of macro(best) - macro(linear)
        rng = np.random.RandomState(1); diffs = []
        byc = [np.where(t == c)[0] for c in range(8) if (t == c).any()]
        for _ in range(2000):
            ii = np.concatenate([rng.choice(b, len(b)) for b in byc])
            diffs.append(macro(bpred[ii], t[ii])[0] - macro(pn.argmax(1)[ii], t[ii])[0])
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        P(f"\nBest setting ({bl}) minus linear alone, macro: {best[0] - results[1][0]:+.3f} "
          f"(95% paired bootstrap CI {lo:+.3f} .. {hi:+.3f}; the best setting is chosen on this same sample, "
          "so the point estimate is optimistic)\n")
        srcs = np.array([r["source"] for r in recs])
        for s in sorted(set(srcs)):
            m = srcs == s
            P(f"| {s} | {m.sum()} | {(pl.argmax(1)[m] == t[m]).mean():.3f} | {(pn.argmax(1)[m] == t[m]).mean():.3f} | {(bpred[m] == t[m]).mean():.3f} |")
        # LLM confusion
        P("\nLLM confusion (rows truth, cols predicted, order " + ",".join(WORDS) + "):\n")
        cm = np.zeros((8, 8), int)
        for a, b in zip(t, pl.argmax(1)):
            cm[a, b] += 1
        P("```"); [P(f"{CATS[i]:20s}", " ".join(f"{v:3d}" for v in cm[i])) for i in range(8)]; P("```")
    txt = "\n".join(lines)
    print(txt)
    if args.write:
        open(args.write, "w").write(txt + "\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("tokens"); a.add_argument("model")
    a = sub.add_parser("show"); a.add_argument("--wording", type=int, default=0)
    a = sub.add_parser("llm"); a.add_argument("model"); a.add_argument("out")
    a.add_argument("--n", type=int, default=20); a.add_argument("--wording", type=int, default=0)
    a = sub.add_parser("analyze"); a.add_argument("files", nargs="+"); a.add_argument("--write")
    args = ap.parse_args()
    if args.cmd == "tokens":
        label_tokens(load_llm(args.model))
    elif args.cmd == "show":
        print(wording(args.wording, "What is the capital of France?"))
    elif args.cmd == "llm":
        run_llm(args)
    else:
        analyze(args)


if __name__ == "__main__":
    main()
