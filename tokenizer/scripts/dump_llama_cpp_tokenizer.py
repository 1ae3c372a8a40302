#!/usr/bin/env python3
"""Dump llama.cpp's tokenizer behaviour on thousands of generated strings, for a deeper parity
check than the recorded fixtures (run examples/llama_cpp_dump_parity.rs on the output).

For each model this writes <out-dir>/<model_key>.json with:
  cases:  generated texts (word/markup soup, random code points from every plane, whitespace
          mixes, long runs) with llama.cpp's ids, parse_special on and off;
  pieces: every token's piece (hex), special rendering off and on;
  seqs:   random id sequences and their lossy UTF-8 detokenisation;
  eog, control, add_bos, bos, eos: llama.cpp's view of the special tokens.

Usage:
    ~/.cache/coe/bench-venv/bin/python tokenizer/scripts/dump_llama_cpp_tokenizer.py \
        --models-dir /tmp/models --out-dir /tmp/tokenizer-dumps

Requires llama-cpp-python (0.3.36 was used). Deterministic for a given --seed.
"""

import argparse
import ctypes
import json
import random
from pathlib import Path

import llama_cpp
from llama_cpp import Llama

MODELS = {
    "smollm2-135m-instruct": "smollm2-135m-instruct-q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
}

ATOMS = [
    "the", "The", "HELLO", "camelCase", "snake_case", "x", "I", "a",
    "0", "7", "42", "123", "2024", "3.14", "1,000", "٣٤", "²", "Ⅻ", "½", "１２",
    " ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", "\v", "\f",
    "\u00a0", "\u3000", "\u2028", "\u0085", "\u200b", " \n", "\n ", " \t ",
    ".", ",", "!", "?", "...", "!!", "--", "->", "=>", "::", "&&", "||", "(", ")", "[", "]",
    "{", "}", "<", ">", "</", "/>", "\"", "'", "`", "~", "$", "%", "^", "*", "#", "@", "\\", "|", "_",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re", "n't",
    "café", "naïve", "Zürich", "e\u0301", "a\u0308", "日本語", "テキスト", "中文", "한국어", "Привет",
    "Ёлка", "مرحبا", "שלום", "हिन्दी", "ไทย", "αβγ", "ΔΕΖ", "∑∫√∞", "≤≥", "€", "£", "©", "®", "™", "°",
    "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "\U0001F9E0", "\U00010348", "𝒜", "\U000E0001",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|repo_name|>", "<reponame>", "<file_sep>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",
    "<pad>", "<unk>", "<mask>", "[multimodal]", "<unused5>", "<table>", "</s>", "<s>", "<code>",
    "<start_of_image>", "<|im_start", "im_end|>", "<|", "|>", "[PAD151665]", "<0x41>", "▁", "▁▁", "Ġ", "Ċ",
    "def", "return", "fn main()", "println!", "#include", "std::vector<int>", "http://x.y/z?q=1",
]


def word_soup(rng):
    parts = []
    for _ in range(rng.randint(1, 25)):
        if rng.random() < 0.5:
            parts.append(" ")
        parts.append(rng.choice(ATOMS))
    return "".join(parts)


def random_code_points(rng):
    def one():
        r = rng.random()
        if r < 0.3:
            return chr(rng.randrange(0, 0x80))
        if r < 0.6:
            return chr(rng.randrange(0x80, 0x3000))
        if r < 0.8:
            return chr(rng.randrange(0x3000, 0xD800))
        if r < 0.9:
            return chr(rng.randrange(0xE000, 0x10000))
        return chr(rng.randrange(0x10000, 0x110000))
    return "".join(one() for _ in range(rng.randint(1, 30)))


def whitespace_mix(rng):
    return "".join(rng.choice(" \t\n\r\v\f\u00a0\u3000\u0085ab1.'") for _ in range(rng.randint(1, 20)))


def texts(rng, n):
    out = [word_soup(rng) for _ in range(n)]
    out += [random_code_points(rng) for _ in range(n)]
    out += [whitespace_mix(rng) for _ in range(n)]
    out += [" " * k for k in range(1, 70)] + ["\n" * k for k in range(1, 40)] + ["\t" * k for k in range(1, 40)]
    out += ["1" * k for k in range(1, 12)] + ["a " * 40, "x" * 300, " " * 5 + "\n" * 3 + " " * 5]
    return out


def dump(path, n, seed):
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(4096)

    def piece(token, special):
        k = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
        assert k >= 0, f"piece of {token} longer than {len(buf)} bytes"
        return buf.raw[:k]

    rng = random.Random(seed)
    cases = []
    for text in texts(rng, n):
        b = text.encode()
        cases.append({
            "text": text,
            "ids": llm.tokenize(b, add_bos=False, special=True),
            "ids_no_special": llm.tokenize(b, add_bos=False, special=False),
        })
    n_vocab = llm.n_vocab()
    seqs = []
    for _ in range(3000):
        ids = [rng.randrange(n_vocab) for _ in range(rng.randint(1, 8))]
        raw = b"".join(piece(i, False) for i in ids)
        seqs.append({"ids": ids, "text": raw.decode("utf-8", errors="replace")})
    return {
        "cases": cases,
        "pieces": [[piece(i, False).hex(), piece(i, True).hex()] for i in range(n_vocab)],
        "seqs": seqs,
        "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "control": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_control(vocab, i)],
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/models"))
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=3000, help="texts per generator")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for key, file in MODELS.items():
        data = dump(args.models_dir / file, args.cases, args.seed)
        with open(args.out_dir / f"{key}.json", "w") as f:
            json.dump(data, f, ensure_ascii=False)
        print(f"{key}: {len(data['cases'])} texts, {len(data['pieces'])} pieces")


if __name__ == "__main__":
    main()
