//! Bad input gets a clear gRPC status, and the worker keeps serving every expert afterwards.
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use coe_e2e_tests::*;
use coe_proto::v1 as pb;
use tonic::Code;

fn shared_worker() -> &'static TestWorker {
    static WORKER: OnceLock<TestWorker> = OnceLock::new();
    WORKER.get_or_init(|| TestWorker::start(worker_config(&[SMOLLM, GEMMA])))
}

async fn ready_client() -> pb::expert_worker_client::ExpertWorkerClient<tonic::transport::Channel> {
    let worker = shared_worker();
    worker.wait_serving(Duration::from_secs(300)).await;
    worker.client().await
}

fn request(
    expert: &str,
    content: &str,
    sampling: Option<pb::SamplingParams>,
) -> pb::GenerateRequest {
    pb::GenerateRequest {
        expert: expert.into(),
        messages: vec![user(content)],
        sampling,
        ..Default::default()
    }
}

async fn status_of(request: pb::GenerateRequest) -> tonic::Status {
    let mut client = ready_client().await;
    match client.generate(request).await {
        Ok(_) => panic!("the request was accepted"),
        Err(status) => status,
    }
}

/// Every expert still answers.
async fn assert_still_serving() {
    let mut client = ready_client().await;
    for expert in [SMOLLM, GEMMA] {
        let out = collect(&mut client, request(expert, "Hello", greedy(3)))
            .await
            .unwrap();
        assert!(out.done.is_some(), "{expert} stopped answering");
    }
}

#[tokio::test]
async fn empty_messages_are_invalid_argument() {
    let status = status_of(pb::GenerateRequest {
        expert: SMOLLM.into(),
        ..Default::default()
    })
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("empty"), "{}", status.message());
    let status = status_of(request(SMOLLM, "   ", None)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut no_role = request(SMOLLM, "hi", None);
    no_role.messages[0].role = pb::Role::Unspecified as i32;
    assert_eq!(status_of(no_role).await.code(), Code::InvalidArgument);
    assert_still_serving().await;
}

#[tokio::test]
async fn unknown_expert_is_not_found() {
    let status = status_of(request("no-such-expert", "hi", None)).await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("no-such-expert") && status.message().contains(SMOLLM),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn zero_or_past_context_max_tokens_is_invalid_argument() {
    let status = status_of(request(SMOLLM, "hi", greedy(0))).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("max_tokens"),
        "{}",
        status.message()
    );
    let status = status_of(request(SMOLLM, "hi", greedy(1_000_000))).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("1000000") && status.message().contains("context"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn prompt_longer_than_context_states_both_lengths() {
    let long = "word ".repeat(5000);
    let status = status_of(request(SMOLLM, &long, greedy(4))).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    let message = status.message();
    assert!(
        message.contains("2048") && message.contains("tokens"),
        "{message}"
    );
    let prompt_tokens: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .filter(|n| *n > 2048)
        .collect();
    assert!(
        !prompt_tokens.is_empty(),
        "the prompt's length is missing from {message}"
    );
    assert_still_serving().await;
}

#[tokio::test]
async fn negative_or_nan_sampling_is_invalid_argument() {
    let bad = [
        pb::SamplingParams {
            temperature: Some(-1.0),
            ..Default::default()
        },
        pb::SamplingParams {
            temperature: Some(f32::NAN),
            ..Default::default()
        },
        pb::SamplingParams {
            top_p: Some(-0.5),
            ..Default::default()
        },
        pb::SamplingParams {
            top_p: Some(f32::NAN),
            ..Default::default()
        },
    ];
    for params in bad {
        let status = status_of(request(SMOLLM, "hi", Some(params.clone()))).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{params:?}");
        assert!(
            status.message().contains("temperature") || status.message().contains("top_p"),
            "{}",
            status.message()
        );
    }
}

#[tokio::test]
async fn full_queue_is_resource_exhausted() {
    // A worker of its own: filling the shared one would make the other tests' requests fail.
    let mut config = worker_config(&[GEMMA]);
    config.max_active = 1;
    config.queue_capacity = 1;
    let worker = TestWorker::start(config);
    worker.wait_serving(Duration::from_secs(300)).await;
    let mut client = worker.client().await;
    // One sequence computing (max_active 1) and one waiting (queue 1) fill the expert.
    let long = || request(GEMMA, "Write a very long essay about the sea.", greedy(400));
    let mut first = client.generate(long()).await.unwrap().into_inner();
    first.message().await.unwrap();
    let mut second = client.generate(long()).await.unwrap().into_inner();
    let status = client
        .generate(long())
        .await
        .expect_err("a third request must be refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("queue"), "{}", status.message());
    drop(first);
    // The waiting request is served once the first one is cancelled.
    let message = tokio::time::timeout(Duration::from_secs(60), second.message())
        .await
        .unwrap()
        .unwrap();
    assert!(message.is_some());
    drop(second);
}

async fn load(path: &std::path::Path, name: &str) -> tonic::Status {
    let mut client = ready_client().await;
    let result = client
        .load_expert(pb::LoadExpertRequest {
            expert: Some(pb::ExpertSpec {
                name: name.into(),
                path: path.display().to_string(),
                sha256: String::new(),
            }),
            target_tier: pb::Tier::Device as i32,
            pin: false,
        })
        .await;
    result.expect_err("loading a bad file must fail")
}

async fn expert_names() -> Vec<String> {
    let mut client = ready_client().await;
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = status.experts.into_iter().map(|e| e.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn bad_gguf_files_fail_to_load_and_unload_nothing() {
    let before = expert_names().await;
    let dir = tempfile::tempdir().unwrap();

    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(model_gguf(SMOLLM)).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let status = load(&truncated, "truncated").await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("truncated.gguf") && status.message().contains("truncated"),
        "{}",
        status.message()
    );

    let garbage = dir.path().join("garbage.gguf");
    let mut f = std::fs::File::create(&garbage).unwrap();
    f.write_all(
        &(0..100_000u32)
            .map(|i| ((i * 2654435761u32) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let status = load(&garbage, "garbage").await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("garbage.gguf") && status.message().contains("GGUF"),
        "{}",
        status.message()
    );

    let unsupported = dir.path().join("mamba.gguf");
    write_gguf_with_architecture(&unsupported, "mamba");
    let status = load(&unsupported, "mamba").await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("mamba.gguf") && status.message().contains("architecture"),
        "{}",
        status.message()
    );

    let missing = dir.path().join("missing.gguf");
    let status = load(&missing, "missing").await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("missing.gguf"),
        "{}",
        status.message()
    );

    assert_eq!(expert_names().await, before);
    assert_still_serving().await;
}

#[tokio::test]
async fn unsafe_expert_name_is_invalid_argument() {
    let mut client = ready_client().await;
    let status = client
        .load_expert(pb::LoadExpertRequest {
            expert: Some(pb::ExpertSpec {
                name: "../etc".into(),
                path: model_gguf(SMOLLM).display().to_string(),
                sha256: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// A valid GGUF header with one small tensor, claiming `architecture`.
fn write_gguf_with_architecture(path: &std::path::Path, architecture: &str) {
    use candle_core::quantized::{gguf_file, QTensor};
    let tensor =
        candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    let qtensor = QTensor::quantize(&tensor, candle_core::quantized::GgmlDType::F32).unwrap();
    let arch = gguf_file::Value::String(architecture.to_string());
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(
        &mut file,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &qtensor)],
    )
    .unwrap();
}
