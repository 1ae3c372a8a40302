//! Training end to end on a toy embedder: held-out sources are the evaluation, synthetic rows are
//! trained on but never scored, and the saved artefact evaluates to the summary line the CLI prints.

use coe_router::classify::{
    evaluate, train, AnyClassifier, Classifier, EmbeddingCache, Example, FitParams, HeadKind,
    Holdout, LinearClassifier, MlpParams, TrainOptions,
};
use coe_router::embed::{EmbedError, Embedder, EmbedderIdentity};

/// Puts the topic words on their own axes and the style (exam options, length) on others, as a
/// sentence embedder would, so that generalising across sources means ignoring style.
struct Toy(EmbedderIdentity);

impl Embedder for Toy {
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts
            .iter()
            .map(|t| {
                let v = [
                    t.contains("apple") as u8 as f32,
                    t.contains("banana") as u8 as f32,
                    t.contains("\nA.") as u8 as f32,
                    (t.len() % 7) as f32 / 7.0,
                ];
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter().map(|x| x / n).collect()
            })
            .collect())
    }

    fn identity(&self) -> &EmbedderIdentity {
        &self.0
    }
}

fn toy() -> Toy {
    Toy(EmbedderIdentity {
        model: "toy".into(),
        weights_sha256: "00".repeat(32),
        dim: 4,
    })
}

fn ex(prompt: &str, category: &str, source: &str) -> Example {
    Example {
        prompt: prompt.into(),
        category: category.into(),
        source: source.into(),
    }
}

fn data() -> Vec<Example> {
    let mut d = Vec::new();
    for i in 0..20 {
        d.push(ex(
            &format!("Which apple is red {i}?\nA. one\nB. two"),
            "fruit_a",
            "exams",
        ));
        d.push(ex(
            &format!("Which banana is ripe {i}?\nA. one\nB. two"),
            "fruit_b",
            "exams",
        ));
        d.push(ex(
            &format!("tell me about apple number {i}"),
            "fruit_a",
            "chat",
        ));
        d.push(ex(&format!("banana bread recipe {i}"), "fruit_b", "chat"));
    }
    d.push(ex("apple pie", "fruit_a", "synthetic_templates"));
    d.push(ex("banana split", "fruit_b", "synthetic_templates"));
    d
}

#[test]
fn held_out_sources_generalise_and_synthetic_rows_are_never_scored() {
    let examples = data();
    let mut embedder = toy();
    let mut cache = EmbeddingCache::in_memory(4);
    let options = TrainOptions {
        fit: FitParams {
            alpha: 0.1,
            max_iterations: 200,
        },
        ..TrainOptions::default()
    };
    let out = train(
        &examples,
        &mut embedder,
        &mut cache,
        &options,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out.protocol, "held_out_sources");
    assert_eq!(
        out.held_out.n,
        examples.len() - 2,
        "synthetic rows were scored"
    );
    let sources: Vec<&str> = out.by_group.iter().map(|g| g.source.as_str()).collect();
    assert!(!sources.contains(&"synthetic_templates"));
    assert!(
        out.held_out.macro_accuracy() > 0.95,
        "{}",
        out.held_out.summary_line()
    );
    assert_eq!(out.classifier.labels(), ["fruit_a", "fruit_b"]);
    let t = out.classifier.temperature();
    assert!(t.is_finite() && t > 0.0);

    let dir = tempfile::tempdir().unwrap();
    out.classifier.save(dir.path()).unwrap();
    let loaded = LinearClassifier::load(dir.path()).unwrap();
    let mut eval_data = vec![
        ex("a crisp apple", "fruit_a", ""),
        ex("green banana", "fruit_b", ""),
    ];
    eval_data.push(ex("cherry", "fruit_c", ""));
    let report = evaluate(
        &eval_data,
        &loaded,
        &mut embedder,
        &mut cache,
        8,
        &mut |_, _| {},
    )
    .unwrap();
    let line = report.summary_line();
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 3, "{line}");
    assert!(parts[0].starts_with("macro_accuracy=") && parts[1].starts_with("ece="));
    assert_eq!(parts[2], "n=3");
    // Two of three categories right; the unknown one cannot be.
    assert!((report.macro_accuracy() - 2.0 / 3.0).abs() < 1e-9, "{line}");
}

#[test]
fn without_sources_a_random_split_is_held_out() {
    let examples: Vec<Example> = data()
        .into_iter()
        .map(|mut e| {
            e.source.clear();
            e
        })
        .collect();
    let options = TrainOptions {
        holdout: Holdout::Auto,
        ..TrainOptions::default()
    };
    let out = train(
        &examples,
        &mut toy(),
        &mut EmbeddingCache::in_memory(4),
        &options,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out.protocol, "random_split");
    assert!(out.held_out.n > 0 && out.held_out.n < examples.len());
}

#[test]
fn a_single_category_is_refused() {
    let examples = vec![ex("x", "only", "a"), ex("y", "only", "b")];
    let err = train(
        &examples,
        &mut toy(),
        &mut EmbeddingCache::in_memory(4),
        &TrainOptions::default(),
        &mut |_, _| {},
    )
    .err()
    .expect("one category cannot train a classifier");
    assert!(err.to_string().contains("two categories"), "{err}");
}

#[test]
fn the_mlp_head_trains_saves_and_loads_as_its_own_kind() {
    let examples = data();
    let mut embedder = toy();
    let options = TrainOptions {
        head: HeadKind::Mlp(MlpParams {
            hidden: 16,
            epochs: 40,
            learning_rate: 1e-2,
            ..MlpParams::default()
        }),
        // Not whole sources: an MLP's hidden units keep their random weights on input directions
        // one source never uses, so it does not carry over to the other style on this toy data.
        holdout: Holdout::Random(0.25),
        ..TrainOptions::default()
    };
    let out = train(
        &examples,
        &mut embedder,
        &mut EmbeddingCache::in_memory(4),
        &options,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out.classifier.kind(), "mlp");
    assert!(
        out.held_out.macro_accuracy() > 0.95,
        "{}",
        out.held_out.summary_line()
    );
    let dir = tempfile::tempdir().unwrap();
    out.classifier.save(dir.path()).unwrap();
    let loaded = AnyClassifier::load(dir.path()).unwrap();
    assert_eq!(loaded, out.classifier);
    let apple = embedder.embed(&["an apple"]).unwrap().remove(0);
    assert_eq!(loaded.scores(&apple)[0].category, "fruit_a");
    // The linear loader does not misread an MLP's weights.
    let err = LinearClassifier::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("kind"), "{err}");
}
