//! `coe router train` and `coe router eval` on a small labelled file with the real MiniLM embedder,
//! run as a user runs them (the `router_cli` example is the same source file as `coe router`,
//! built with this crate's tests), checking what they print and what they save.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cli() -> PathBuf {
    // Tests live in target/<profile>/deps; cargo builds the examples beside them in ../examples.
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("router_cli");
    assert!(
        path.exists(),
        "{} is missing: run through `cargo test`",
        path.display()
    );
    path
}

fn write_jsonl(path: &Path, rows: &[(&str, &str, &str)]) {
    let text: String = rows
        .iter()
        .map(|(p, c, s)| {
            serde_json::json!({"prompt": p, "category": c, "source": s}).to_string() + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn run(args: &[&str]) -> String {
    let out = Command::new(cli()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

const COOKING: [&str; 6] = [
    "How long should I boil an egg for a runny yolk?",
    "What can I use instead of butter when baking cookies?",
    "How do I make a simple tomato sauce for pasta?",
    "Why does my bread dough not rise?",
    "What is the best way to season a cast iron pan?",
    "How do I cook rice so it is not sticky?",
];
const SPACE: [&str; 6] = [
    "How far is the Moon from the Earth?",
    "Why does Mars look red in the night sky?",
    "What is a black hole made of?",
    "How many planets are in the solar system?",
    "What causes a solar eclipse?",
    "How hot is the surface of the Sun?",
];

#[test]
fn train_reports_held_out_scores_and_eval_ends_with_the_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let train_file = dir.path().join("train.jsonl");
    let mut rows = Vec::new();
    for (i, (c, s)) in COOKING.iter().zip(SPACE).enumerate() {
        let source = if i % 2 == 0 { "forum" } else { "faq" };
        rows.push((*c, "cooking", source));
        rows.push((s, "astronomy", source));
    }
    write_jsonl(&train_file, &rows);
    let model = dir.path().join("model");
    let cache = dir.path().join("cache");
    let train_out = run(&[
        "train",
        "--data",
        train_file.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--alpha",
        "0.1",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(
        train_out.contains("held-out evaluation (held_out_sources)"),
        "{train_out}"
    );
    assert!(
        train_out.contains("precision") && train_out.contains("recall"),
        "{train_out}"
    );
    assert!(train_out.contains("confusion matrix"), "{train_out}");
    assert!(model.join("classifier.json").exists());

    let eval_file = dir.path().join("eval.jsonl");
    write_jsonl(
        &eval_file,
        &[
            ("Give me a recipe for pancakes", "cooking", "new"),
            ("How do I roast vegetables in the oven?", "cooking", "new"),
            ("What is the largest planet?", "astronomy", "new"),
            ("How old is the universe?", "astronomy", "new"),
        ],
    );
    let eval_out = run(&[
        "eval",
        "--data",
        eval_file.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(eval_out.contains("confusion matrix"), "{eval_out}");
    let last = eval_out.lines().last().unwrap();
    let fields: Vec<(&str, f64)> = last
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    let keys: Vec<&str> = fields.iter().map(|f| f.0).collect();
    assert_eq!(keys, ["macro_accuracy", "ece", "n"], "{last}");
    assert_eq!(fields[2].1, 4.0, "{last}");
    // Cooking and astronomy are far apart for MiniLM: every query lands in its category.
    assert_eq!(fields[0].1, 1.0, "{eval_out}");
    assert!((0.0..=1.0).contains(&fields[1].1), "{last}");
}
