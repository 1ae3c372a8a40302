#!/usr/bin/env python3
"""Record llama.cpp reference fixtures for coe's tokenizer and inference tests.

For each known GGUF model this writes two JSON fixtures:

* ``<out-dir>/tokenizer/<model_key>.json`` -- token ids produced by llama.cpp's
  tokenizer for a fixed list of strings (with and without special-token
  parsing), plus llama.cpp's detokenization of those ids.
* ``<out-dir>/greedy/<model_key>.json`` -- greedy (argmax) continuations of a
  handful of prompts, decoded one token at a time, with the top-1 logit and the
  top-1/top-2 logit margin for every step so that tests can tell genuine
  mismatches from near-ties.

The reference implementation is llama-cpp-python (pinned in the fixture files).
The script is deterministic: fixed prompts, greedy decoding, fixed thread count.

Usage::

    python scripts/record_fixtures.py --models-dir /tmp/models --out-dir tests/fixtures

Requires ``llama-cpp-python`` and ``numpy`` (e.g. in ~/.cache/coe/bench-venv).
The fixtures in tests/fixtures were recorded with llama-cpp-python 0.3.36 built
with ``CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TOOLS=OFF"`` plus
``-mno-amx-tile -mno-amx-int8 -mno-amx-bf16`` in CMAKE_C_FLAGS/CMAKE_CXX_FLAGS:
the CPU advertises AMX but the VM faults on ``ldtilecfg``, so a plain native
build segfaults in ``ggml_backend_amx_mul_mat`` on the first decode.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np

import llama_cpp
from llama_cpp import Llama

N_CTX = 2048
N_THREADS = 2
GREEDY_TOKENS = 32

# model_key -> (gguf file name, kind). "chatml" models get ChatML-formatted
# prompts; "base" models get plain completion prompts.
MODELS = {
    "smollm2-135m-instruct": ("smollm2-135m-instruct-q4_1.gguf", "chatml"),
    "qwen2.5-coder-0.5b-instruct": ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "chatml"),
    "gemma-3-270m": ("gemma-3-270m-q4_k_m.gguf", "base"),
}

# ---------------------------------------------------------------------------
# Tokenizer strings (shared by every model).
# ---------------------------------------------------------------------------
BASE_STRINGS = [
    # empty / whitespace
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "Hello world",
    " Hello world",
    "Hello world ",
    "  leading two spaces",
    "trailing two spaces  ",
    "multiple    spaces   between     words",
    "tab\tseparated\tvalues",
    "line one\nline two\n\nline four\r\nline five",
    "   \n\t  mixed whitespace \t\n",
    # digits and numbers
    "1",
    "12",
    "123",
    "1234567",
    "3.14159",
    "2024-01-01",
    "The year 1999 had 365 days and 8760 hours.",
    "Call +1 (555) 010-9999 or pay $1,234.56 (~15%).",
    # code
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(f\"{i} is even\")\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    '{"name": "coe", "version": [0, 1, 2], "ok": true, "nested": {"k": null}}',
    "#include <stdio.h>\nint main(void) { return 0; }",
    # punctuation runs
    "Wait... what?!?! No way!!!",
    "----- ===== ***** ##### ~~~~~",
    "a->b => c :: d <= e != f && g || h",
    "(((nested))) [[brackets]] {{braces}}",
    # contractions
    "it's don't they're we've I'm you'll he'd",
    "IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D",
    "O'Neil's rock 'n' roll",
    # unicode
    "café naïve résumé Zürich señor",
    "日本語のテキストです。中文文本。",
    "한국어 텍스트",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "مرحبا بالعالم",
    "Привет, мир! Ёлка.",
    "Combining: e\u0301 a\u0308 n\u0303 (decomposed)",
    "Greek: αβγ ΔΕΖ, math: ∑∫√∞ ≤≥",
    "zero\u200bwidth\u00a0nbsp",
    # special-token-like text that is not a special token
    "<|not_a_token|> <|im_start |> < |im_end|>",
    "<start_of_turns> </s > <s> [INST] <<SYS>>",
    "Use the <|endoftext|>-style marker in prose",
    # mixed sentence
    "The quick brown fox jumps over the lazy dog.",
    "Mixed CASE and camelCase and snake_case_words and SCREAMING_SNAKE",
    "https://example.com/path?query=1&x=y#frag",
]

CHATML_MARKUP = [
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "text before<|im_end|>text after",
    "<|endoftext|>",
]

GEMMA_MARKUP = [
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text",
    "text<eos>",
    "<start_of_turn>model\nHello!<end_of_turn>",
]

# ---------------------------------------------------------------------------
# Greedy prompts.
# ---------------------------------------------------------------------------
CHAT_QUESTIONS = [
    "What is the capital of France?",
    "Write a Python function that reverses a list.",
    "What is 12 times 7?",
    "Name three primary colors.",
    "Explain in one sentence what a CPU does.",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Give me a short tip for writing clean code.",
    "hi",
]

BASE_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at",
    "Once upon a time, there was a",
    "The three primary colors are",
    "import numpy as np\n\n",
    "Q: What is 12 times 7?\nA:",
    "The quick brown fox",
    "In 1969, Neil Armstrong",
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



def meta_bool(meta: dict, key: str):
    v = meta.get(key)
    if v is None:
        return None
    return str(v).strip().lower() in ("true", "1")


def meta_int(meta: dict, key: str):
    v = meta.get(key)
    return None if v is None else int(v)


def load(path: Path) -> Llama:
    return Llama(
        model_path=str(path),
        n_ctx=N_CTX,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        n_batch=512,
        seed=0,
        verbose=False,
    )


def vocab_ptr(llm: Llama):
    return llama_cpp.llama_model_get_vocab(llm.model)


def eog_ids(llm: Llama) -> list[int]:
    """All ids llama.cpp treats as end-of-generation (EOS, EOT, <|im_end|>, ...)."""
    vocab = vocab_ptr(llm)
    return [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]


def tokenizer_info(llm: Llama) -> dict:
    meta = llm.metadata
    return {
        "tokenizer.ggml.model": meta.get("tokenizer.ggml.model"),
        "tokenizer.ggml.pre": meta.get("tokenizer.ggml.pre"),
        "tokenizer.ggml.add_bos_token": meta_bool(meta, "tokenizer.ggml.add_bos_token"),
        "tokenizer.ggml.add_eos_token": meta_bool(meta, "tokenizer.ggml.add_eos_token"),
        "tokenizer.ggml.add_space_prefix": meta_bool(meta, "tokenizer.ggml.add_space_prefix"),
        "tokenizer.ggml.bos_token_id": meta_int(meta, "tokenizer.ggml.bos_token_id"),
        "tokenizer.ggml.eos_token_id": meta_int(meta, "tokenizer.ggml.eos_token_id"),
        "tokenizer.ggml.padding_token_id": meta_int(meta, "tokenizer.ggml.padding_token_id"),
        "llama_token_bos": llm.token_bos(),
        "llama_token_eos": llm.token_eos(),
        "llama_eog_ids": eog_ids(llm),
        "n_vocab": llm.n_vocab(),
    }


def default_add_bos(llm: Llama) -> bool:
    """What llama.cpp itself does when asked to add special tokens."""
    return bool(llama_cpp.llama_vocab_get_add_bos(vocab_ptr(llm)))


def detok(llm: Llama, ids: list[int], special: bool = False) -> str:
    """llama-cpp-python's detokenize (concatenated token pieces, special tokens
    rendered only when ``special``; drops one leading space after BOS)."""
    return llm.detokenize(ids, special=special).decode("utf-8", errors="replace")


def detok_c(llm: Llama, ids: list[int]) -> str:
    """llama.cpp's own ``llama_detokenize`` (remove_special=False,
    unparse_special=True), used to cross-check ``detok(special=True)``."""
    vocab = vocab_ptr(llm)
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, True)
    if n < 0:
        raise RuntimeError(f"llama_detokenize needs {-n} bytes")
    return buf.raw[:n].decode("utf-8", errors="replace")


def record_tokenizer(key: str, llm: Llama, markup: list[str], common: dict) -> dict:
    cases = []
    for text in BASE_STRINGS + markup:
        b = text.encode("utf-8")
        ids = llm.tokenize(b, add_bos=False, special=True)
        ids_ns = llm.tokenize(b, add_bos=False, special=False)
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_no_special": ids_ns,
                "detok": detok(llm, ids),
                "detok_special": detok(llm, ids, special=True),
                "detok_no_special": detok(llm, ids_ns),
            }
        )
        c = detok_c(llm, ids)
        if c != cases[-1]["detok_special"]:
            print(f"[{key}] note: llama_detokenize differs for {text!r}: {c!r}", file=sys.stderr)
    return {
        "model": key,
        **common,
        "add_bos": False,
        "parse_special": True,
        "note": "ids: llm.tokenize(text, add_bos=False, special=True); "
        "ids_no_special: special=False; detok: llm.detokenize(ids) (special pieces omitted); "
        "detok_special: llm.detokenize(ids, special=True); detok_no_special: llm.detokenize(ids_no_special); "
        "all decoded with utf-8 errors='replace'",
        "cases": cases,
    }


def chatml_prompt(system: str | None, question: str) -> str:
    s = ""
    if system is not None:
        s += f"<|im_start|>system\n{system}<|im_end|>\n"
    return s + f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def render_chat(llm: Llama, question: str) -> str:
    """Render a single-user-turn chat with the model's own jinja template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tmpl = llm.metadata["tokenizer.chat_template"]
    fmt = Jinja2ChatFormatter(template=tmpl, eos_token="", bos_token="")
    return fmt(messages=[{"role": "user", "content": question}]).prompt


def last_logits(llm: Llama) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    arr = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(llm.n_vocab(),))
    return arr.copy()


def greedy(llm: Llama, prompt_ids: list[int], eog: set[int]) -> dict:
    llm.reset()
    llm.eval(prompt_ids)
    out, margins, top1 = [], [], []
    stop = "length"
    for _ in range(GREEDY_TOKENS):
        logits = last_logits(llm)
        # np.argmax returns the lowest index among exact ties.
        tok = int(np.argmax(logits))
        second = float(np.partition(logits, -2)[-2])  # 2nd-largest value (== top1 on a tie)
        out.append(tok)
        top1.append(round(float(logits[tok]), 5))
        margins.append(round(float(logits[tok]) - second, 5))
        if tok in eog:
            stop = "eog"
            break
        llm.eval([tok])
    gen_text_ids = [t for t in out if t not in eog]
    return {
        "greedy_ids": out,
        "margins": margins,
        "top1_logits": top1,
        "stop_reason": stop,
        "min_margin": min(margins) if margins else None,
        "text": detok(llm, gen_text_ids),
    }


def record_greedy(key: str, kind: str, llm: Llama, common: dict, tinfo: dict) -> dict:
    meta = llm.metadata
    eog = set(tinfo["llama_eog_ids"])
    template = meta.get("tokenizer.chat_template")
    add_bos_meta = meta_bool(meta, "tokenizer.ggml.add_bos_token")
    if kind == "chatml":
        add_bos = bool(add_bos_meta) if add_bos_meta is not None else False
        prompts = []
        for q in CHAT_QUESTIONS:
            # Use the model's own template (this reproduces any default system
            # prompt); fall back to generic ChatML if it cannot be rendered.
            try:
                p = render_chat(llm, q)
            except Exception as e:  # pragma: no cover - depends on template
                print(f"[{key}] template render failed ({e}); using plain ChatML", file=sys.stderr)
                p = chatml_prompt("You are a helpful assistant.", q)
            prompts.append(p)
    else:
        add_bos = bool(add_bos_meta) if add_bos_meta is not None else True
        prompts = list(BASE_PROMPTS)

    cases = []
    for p in prompts:
        ids = llm.tokenize(p.encode("utf-8"), add_bos=add_bos, special=True)
        r = greedy(llm, ids, eog)
        cases.append({"prompt": p, "prompt_ids": ids, **r})
        print(f"[{key}] {p!r:.60} -> {r['text']!r:.80} (min margin {r['min_margin']})", file=sys.stderr)
    return {
        "model": key,
        **common,
        "n_threads": N_THREADS,
        "n_ctx": N_CTX,
        "max_new_tokens": GREEDY_TOKENS,
        "add_bos": add_bos,
        "parse_special": True,
        "prompt_format": "model chat template (tokenizer.chat_template), single user turn"
        if kind == "chatml"
        else "plain completion",
        "chat_template": template,
        "eog_ids": sorted(eog),
        "note": "greedy = argmax of last-position logits after each single-token eval; "
        "stops after emitting an end-of-generation token (included in greedy_ids) or "
        "after max_new_tokens; text = detokenized greedy_ids without the EOG token; "
        "margins = top1 - top2 logit",
        "cases": cases,
    }


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps_compact(obj))
        f.write("\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/models"), help="directory holding the GGUF files")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures",
                    help="fixture root (tokenizer/ and greedy/ are created under it)")
    ap.add_argument("--models", nargs="*", choices=sorted(MODELS), default=sorted(MODELS),
                    help="subset of models to record (default: all)")
    ap.add_argument("--skip-greedy", action="store_true", help="only record tokenizer fixtures")
    args = ap.parse_args(argv)

    for key in args.models:
        fname, kind = MODELS[key]
        path = args.models_dir / fname
        if not path.is_file():
            print(f"missing model file: {path}", file=sys.stderr)
            return 1
        llm = load(path)
        common = {
            "gguf_file": fname,
            "gguf_sha256": sha256_file(path),
            "llama_cpp_python": llama_cpp.__version__,
        }
        tinfo = tokenizer_info(llm)
        tinfo["llama_vocab_get_add_bos"] = default_add_bos(llm)
        markup = CHATML_MARKUP if kind == "chatml" else GEMMA_MARKUP
        tok = record_tokenizer(key, llm, markup, common)
        tok["tokenizer_info"] = tinfo
        write_json(args.out_dir / "tokenizer" / f"{key}.json", tok)
        if not args.skip_greedy:
            g = record_greedy(key, kind, llm, common, tinfo)
            write_json(args.out_dir / "greedy" / f"{key}.json", g)
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
