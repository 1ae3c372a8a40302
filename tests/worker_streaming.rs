//! Streaming answers from the real experts over loopback gRPC: one per architecture, llama.cpp's greedy
//! tokens, seeded sampling, stop sequences.
use std::sync::OnceLock;
use std::time::Duration;

use coe_e2e_tests::*;
use coe_proto::v1 as pb;

fn shared_worker() -> &'static TestWorker {
    static WORKER: OnceLock<TestWorker> = OnceLock::new();
    WORKER.get_or_init(|| TestWorker::start(worker_config(&ALL_EXPERTS)))
}

async fn ready_client() -> pb::expert_worker_client::ExpertWorkerClient<tonic::transport::Channel> {
    let worker = shared_worker();
    worker.wait_serving(Duration::from_secs(300)).await;
    worker.client().await
}

fn chat_request(
    expert: &str,
    question: &str,
    sampling: Option<pb::SamplingParams>,
) -> pb::GenerateRequest {
    pb::GenerateRequest {
        expert: expert.into(),
        messages: vec![user(question)],
        sampling,
        ..Default::default()
    }
}

#[tokio::test]
async fn each_architecture_streams_an_answer() {
    let mut client = ready_client().await;
    let cases = [
        (
            SMOLLM,
            chat_request(SMOLLM, "What is the capital of France?", greedy(24)),
        ),
        (
            QWEN,
            chat_request(
                QWEN,
                "Write a Python function that reverses a list.",
                greedy(48),
            ),
        ),
        (
            GEMMA,
            pb::GenerateRequest {
                expert: GEMMA.into(),
                prompt: "The capital of France is".into(),
                sampling: greedy(12),
                ..Default::default()
            },
        ),
    ];
    for (expert, request) in cases {
        let out = collect(&mut client, request).await.unwrap();
        let done = out.done.as_ref().expect("a final message");
        let usage = done.usage.as_ref().unwrap();
        println!("{expert}: {:?} ({} chunks)", out.text, out.chunks);
        assert!(out.chunks >= 2, "{expert} streamed {} chunks", out.chunks);
        assert!(
            usage.completion_tokens >= 2 && usage.prompt_tokens > 0,
            "{expert}: {usage:?}"
        );
        assert!(usage.time_to_first_token_ms > 0.0);
        assert!(!out.text.trim().is_empty(), "{expert} answered nothing");
    }
    let water = collect(
        &mut client,
        chat_request(
            SMOLLM,
            "What is the boiling point of water in Celsius?",
            greedy(24),
        ),
    )
    .await
    .unwrap();
    assert!(water.text.contains("100"), "smollm2 said {:?}", water.text);
    let paris = collect(
        &mut client,
        chat_request(QWEN, "What is the capital of France?", greedy(24)),
    )
    .await
    .unwrap();
    assert!(paris.text.contains("Paris"), "qwen said {:?}", paris.text);
    let code = collect(
        &mut client,
        chat_request(
            QWEN,
            "Write a Python function that reverses a list.",
            greedy(64),
        ),
    )
    .await
    .unwrap();
    assert!(
        code.text.contains("def "),
        "qwen coder said {:?}",
        code.text
    );
    let gemma = collect(
        &mut client,
        pb::GenerateRequest {
            expert: GEMMA.into(),
            prompt: "Water boils at".into(),
            sampling: greedy(8),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(gemma.text.contains("100"), "gemma said {:?}", gemma.text);
}

#[derive(serde::Deserialize)]
struct GreedyFixture {
    cases: Vec<GreedyCase>,
}

#[derive(serde::Deserialize)]
struct GreedyCase {
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    margins: Vec<f32>,
}

/// Below this top-2 logit margin, llama.cpp's choice is a near-tie that rounding can flip.
const NEAR_TIE: f32 = 0.1;

#[tokio::test]
async fn greedy_tokens_equal_llama_cpp_over_grpc() {
    let mut client = ready_client().await;
    for expert in ALL_EXPERTS {
        let path = fixtures_dir().join("greedy").join(format!("{expert}.json"));
        let fixture: GreedyFixture =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("greedy fixture")).unwrap();
        let mut compared_total = 0;
        for case in &fixture.cases {
            let compare = case
                .margins
                .iter()
                .position(|m| *m < NEAR_TIE)
                .unwrap_or(case.greedy_ids.len())
                .min(16);
            if compare == 0 {
                continue;
            }
            let out = collect(
                &mut client,
                pb::GenerateRequest {
                    expert: expert.into(),
                    prompt: case.prompt.clone(),
                    sampling: greedy(compare as u32),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let usage = out.done.as_ref().unwrap().usage.unwrap();
            assert_eq!(
                usage.prompt_tokens as usize,
                case.prompt_ids.len(),
                "{expert}: prompt tokenised differently: {:?}",
                case.prompt
            );
            let got: Vec<u32> = out.token_ids.iter().copied().take(compare).collect();
            let want = &case.greedy_ids[..compare.min(case.greedy_ids.len())];
            // An EOS ends the stream without a chunk: compare what was produced.
            assert_eq!(&got[..], &want[..got.len()], "{expert}: {:?}", case.prompt);
            compared_total += got.len();
        }
        assert!(
            compared_total >= 16,
            "{expert}: only {compared_total} tokens compared"
        );
    }
}

#[tokio::test]
async fn same_seed_gives_the_same_answer() {
    let mut client = ready_client().await;
    let sampled = |seed| {
        chat_request(
            SMOLLM,
            "Tell me a short story about a robot.",
            Some(pb::SamplingParams {
                max_tokens: Some(24),
                temperature: Some(0.9),
                top_p: Some(0.95),
                top_k: Some(50),
                seed: Some(seed),
                ..Default::default()
            }),
        )
    };
    let a = collect(&mut client, sampled(42)).await.unwrap();
    let b = collect(&mut client, sampled(42)).await.unwrap();
    let c = collect(&mut client, sampled(43)).await.unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    assert_ne!(a.token_ids, c.token_ids);
}

#[tokio::test]
async fn stop_sequence_ends_the_answer_without_it() {
    let mut client = ready_client().await;
    let full = collect(
        &mut client,
        chat_request(
            SMOLLM,
            "Count from 1 to 10, separated by commas.",
            greedy(40),
        ),
    )
    .await
    .unwrap();
    let stop = "5";
    assert!(
        full.text.contains(stop),
        "the unstopped answer {:?} has no {stop:?}",
        full.text
    );
    let request = chat_request(
        SMOLLM,
        "Count from 1 to 10, separated by commas.",
        Some(pb::SamplingParams {
            max_tokens: Some(40),
            temperature: Some(0.0),
            stop: vec![stop.into()],
            ..Default::default()
        }),
    );
    let stopped = collect(&mut client, request).await.unwrap();
    let done = stopped.done.unwrap();
    assert_eq!(done.finish_reason, pb::FinishReason::StopSequence as i32);
    assert!(!stopped.text.contains(stop));
    assert_eq!(stopped.text, full.text[..full.text.find(stop).unwrap()]);
}

#[tokio::test]
async fn max_tokens_ends_with_length() {
    let mut client = ready_client().await;
    let out = collect(
        &mut client,
        chat_request(QWEN, "Explain recursion in detail.", greedy(5)),
    )
    .await
    .unwrap();
    let done = out.done.unwrap();
    assert_eq!(done.finish_reason, pb::FinishReason::Length as i32);
    assert_eq!(done.usage.unwrap().completion_tokens, 5);
}
