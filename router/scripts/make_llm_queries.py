#!/usr/bin/env python3
"""Writes data/router/llm_written_queries.jsonl: user-style queries for the eight router categories,
written by one of coe's own expert models (Qwen2.5-Coder-1.5B-Instruct by default) served by coe
itself. The project writes the instructions (category, topic, style, below); the model writes the
query. Nothing comes from a benchmark.

Why: the labelled data shows most categories in one or two styles (history only as MMLU exam
questions, code as long arena tasks or SQL exercises), and a classifier on it learns the style as
much as the topic. The template queries of make_synthetic_queries.py add short questions, but from
a few fixed sentence patterns; a language model varies wording and length far more.

The script starts `coe serve` with the writer model on a free port, sends every instruction through
`coe ask --expert` (four at a time: the worker batches them), keeps the first non-empty line of
each answer, drops echoes, duplicates and implausible queries (`plausible_query`), and writes the file. Each instruction has its own sampling
seed, so a rerun asks the same questions; the answers can still differ in the last bits between
machines, which is why the output is committed with this script.

    cargo build --release -p coe
    python3 router/scripts/make_llm_queries.py [--per-category 150] [--model qwen2.5-coder-1.5b]
"""
import argparse
import concurrent.futures
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What each category means to the router, in the words the writer model is given.
TOPICS = {
    "code": [
        "a bug in a Python script", "writing a SQL query", "a JavaScript front-end problem",
        "Rust ownership and borrowing", "Git commands", "a regular expression", "Docker containers",
        "sorting algorithms", "unit testing", "a REST API in Go", "Java exceptions",
        "C pointers and memory", "Bash scripting", "data structures such as hash maps and trees",
        "asynchronous code and threads", "parsing JSON or CSV files", "a TypeScript type error",
        "database indexes", "object-oriented design", "time complexity of an algorithm",
    ],
    "math": [
        "solving a linear equation", "fractions and percentages", "probability of dice or cards",
        "derivatives", "integrals", "a word problem about speed and distance", "prime numbers",
        "matrices and determinants", "geometry of triangles and circles", "statistics: mean, median, variance",
        "logarithms and exponents", "sequences and series", "a proof by induction", "combinatorics",
        "quadratic equations", "trigonometry", "compound interest calculation", "vectors",
        "limits", "mental arithmetic",
    ],
    "science": [
        "Newton's laws of motion", "chemical reactions and balancing equations", "the solar system",
        "electricity and circuits", "plate tectonics and earthquakes", "the periodic table",
        "light and optics", "thermodynamics and heat", "weather and climate", "atoms and molecules",
        "black holes and stars", "acids and bases", "energy and work", "magnetism",
        "the water cycle", "quantum physics basics", "sound waves", "rocks and minerals",
        "gravity", "states of matter",
    ],
    "medicine_biology": [
        "symptoms of a common illness", "side effects of a medication", "how the immune system works",
        "genetics and DNA", "diabetes", "blood pressure", "vaccines", "cells and mitochondria",
        "nutrition and vitamins", "the human heart", "infections and antibiotics", "sleep and health",
        "pregnancy", "the nervous system", "evolution", "cancer treatment", "allergies",
        "mental health conditions", "bacteria and viruses", "first aid",
    ],
    "law": [
        "a rental lease and tenant rights", "copyright and fair use", "an employment contract",
        "privacy policies and personal data", "divorce and custody", "criminal charges and trials",
        "constitutional rights", "a small claims dispute", "writing a will", "contract breach",
        "immigration and visas", "traffic tickets", "intellectual property and patents",
        "terms of service of an app", "negligence and liability", "consumer refunds and warranties",
        "starting a company and its legal form", "evidence rules in court", "defamation",
        "international law and treaties",
    ],
    "history_humanities": [
        "the French Revolution", "ancient Rome", "World War II", "the Cold War",
        "the philosophy of Kant", "world religions", "the Renaissance", "colonialism in Africa",
        "the American civil rights movement", "ancient Egypt", "the Industrial Revolution",
        "Greek philosophers", "the history of China's dynasties", "the Ottoman Empire",
        "ethics and moral philosophy", "the causes of World War I", "medieval Europe",
        "political ideologies", "the history of art", "the Silk Road",
    ],
    "creative_writing": [
        "a short story", "a poem", "song lyrics", "a fantasy world", "a villain's monologue",
        "a haiku", "a science fiction plot", "a wedding speech", "a children's bedtime story",
        "dialogue for a screenplay", "a mystery novel opening", "a limerick", "a character backstory",
        "a love letter", "a horror scene", "a product slogan", "a fairy tale retelling",
        "a personal essay", "a stand-up comedy bit", "a travel blog post",
    ],
    "general_chat": [
        "planning a weekend trip", "cooking dinner with leftovers", "saving money and budgeting",
        "choosing a laptop", "a trivia fact about a famous landmark", "a fun fact about animals",
        "personal finance and investing", "fitness and a workout routine", "a movie recommendation",
        "gift ideas", "learning a new language", "how to be more productive", "small talk about the weather",
        "pop culture and celebrities", "sports results and rules", "gardening", "pet care",
        "making friends in a new city", "a quick general knowledge question", "buying a used car",
    ],
}

STYLES = [
    "a short casual question of under twelve words",
    "a question with a sentence of personal context first",
    "a direct request that starts with an imperative verb",
    "a question a student might ask while studying",
    "a detailed request of two or three sentences",
    "a question with lowercase letters and no punctuation, as people type quickly",
    "a question asking for a simple explanation for a beginner",
    "a question comparing two things",
]

DEFAULT_EXPERTS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]

INSTRUCTION = (
    "Write one message that a user could send to an AI assistant about {topic}. "
    "Make it {style}. Reply with the user's message only, without quotes or any other text."
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(coe, server, proc, model, timeout=900):
    """Until the writer model answers through the router (the first start fetches it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"coe serve exited with {proc.returncode}")
        r = subprocess.run([coe, "status", "--server", server, "--json"], capture_output=True, text=True)
        if r.returncode == 0 and f'"{model}"' in r.stdout:
            # The worker has it; the router answers once its embedder is loaded and it sees the worker.
            probe = subprocess.run([coe, "ask", "--server", server, "--expert", model, "--max-tokens", "1", "hello"],
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                return
        time.sleep(2)
    sys.exit("coe serve did not become ready")


def clean(answer, instruction):
    for line in answer.splitlines():
        line = line.strip().strip('"').strip("“”").strip()
        if line.startswith("[route]") or not line:
            continue
        if line.lower().startswith(("user:", "message:", "user's message:")):
            line = line.split(":", 1)[1].strip().strip('"')
        # An echo of the instruction, or a fragment, is not a query.
        if len(line) < 12 or "AI assistant about" in line or line == instruction:
            return None
        return line[:600]
    return None


# Openings of answers in which the model played the assistant instead of writing the user's message.
ASSISTANT_OPENINGS = (
    "sure", "certainly", "of course", "absolutely", "i'd be happy", "i would be happy", "hello! how",
    "is there a particular", "is there anything", "do you have a question", "what do you need",
    "how can i help", "how can i assist",
)


def plausible_query(text):
    """Drops what cannot teach the router a category: fragments that name no topic ("how does it
    work?", under five words) and answers where the model spoke as the assistant."""
    low = text.lower()
    return len(text.split()) >= 5 and not low.startswith(ASSISTANT_OPENINGS) and "what do you need" not in low


def refilter(path):
    """Applies `plausible_query` to an existing output file in place."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    kept = [r for r in rows if plausible_query(r["prompt"])]
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    print(f"kept {len(kept)} of {len(rows)} queries in {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-category", type=int, default=150)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--coe", default=str(ROOT / "target/release/coe"))
    ap.add_argument("--out", default=str(ROOT / "data/router/llm_written_queries.jsonl"))
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--refilter", action="store_true", help="only re-apply the query filter to --out")
    args = ap.parse_args()
    if args.refilter:
        refilter(args.out)
        return

    rng = random.Random(0)
    jobs = []
    for category, topics in TOPICS.items():
        combos = [(t, s) for t in topics for s in STYLES]
        rng.shuffle(combos)
        for i, (topic, style) in enumerate(combos[: args.per_category]):
            jobs.append((category, i, topic, style))

    port = free_port()
    server = f"127.0.0.1:{port}"
    serve = subprocess.Popen(
        # The default experts stay: the shipped category map names them.
        [args.coe, "serve", "--listen", server, "--max-active", str(args.parallel),
         "--experts", ",".join(DEFAULT_EXPERTS + ([args.model] if args.model not in DEFAULT_EXPERTS else []))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(args.coe, server, serve, args.model)

        def ask(job):
            category, i, topic, style = job
            instruction = INSTRUCTION.format(topic=topic, style=style)
            seed = rng_seed(category, i)
            for attempt in range(3):
                r = subprocess.run(
                    [args.coe, "ask", "--server", server, "--expert", args.model,
                     "--temperature", "0.8", "--seed", str(seed), "--max-tokens", "80", instruction],
                    capture_output=True, text=True,
                )
                if r.returncode == 0:
                    return job, instruction, seed, clean(r.stdout, instruction)
                print(f"coe ask failed ({attempt + 1}/3): {r.stderr.strip()[:300]}", file=sys.stderr)
                time.sleep(2)
            return job, instruction, seed, None

        rows, seen, done = [], set(), 0
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            for job, instruction, seed, query in pool.map(ask, jobs):
                done += 1
                if done % 50 == 0:
                    rate = (time.time() - started) / done
                    print(f"{done}/{len(jobs)} ({rate:.2f} s each)", file=sys.stderr)
                if query is None or not plausible_query(query) or query.lower() in seen:
                    continue
                seen.add(query.lower())
                category, i, topic, style = job
                rows.append({
                    "id": f"synthetic_llm_written:{category}:{i}",
                    "prompt": query,
                    "category": category,
                    "source": "synthetic_llm_written",
                    "label_quality": "synthetic",
                    "writer": args.model,
                    "topic": topic,
                    "style": style,
                    "seed": seed,
                })
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} queries of {len(jobs)} instructions to {args.out}", file=sys.stderr)


def rng_seed(category, i):
    return (sorted(TOPICS).index(category) * 1000 + i) * 7919 % 1_000_003


if __name__ == "__main__":
    main()
