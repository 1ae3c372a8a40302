//! Tiered memory in the real worker with real models: swaps under a Device budget for one expert
//! answer like resident experts, pins hold, a full budget is RESOURCE_EXHAUSTED with the budgets, a
//! budget too small for a model is a clear error, and concurrent requests share one promotion.
use std::sync::Arc;
use std::time::Duration;

use coe_e2e_tests::{collect, greedy, spec, user, worker_config, TestWorker};
use coe_expert_worker::{worker_grpc_service, TierBudgets, Worker, WorkerConfig};
use coe_proto::v1 as pb;
use pb::expert_worker_client::ExpertWorkerClient;
use tonic::transport::Channel;

const SMALL: &str = "smollm2-135m-instruct";
const OTHER: &str = "gemma-3-270m";
const QUESTION: &str = "Name three primary colors.";
const LIMIT: Duration = Duration::from_secs(300);

fn ask(expert: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        expert: expert.into(),
        messages: vec![user(QUESTION)],
        sampling: greedy(12),
        ..Default::default()
    }
}

async fn answer(client: &mut ExpertWorkerClient<Channel>, expert: &str) -> Vec<u32> {
    collect(client, ask(expert))
        .await
        .unwrap_or_else(|e| panic!("{expert}: {e}"))
        .token_ids
}

async fn status(client: &mut ExpertWorkerClient<Channel>) -> pb::WorkerStatus {
    client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn tier_of(status: &pb::WorkerStatus, expert: &str) -> pb::Tier {
    let e = status.experts.iter().find(|e| e.name == expert).unwrap();
    pb::Tier::try_from(e.tier).unwrap()
}

fn with_budgets(experts: &[&str], device_bytes: u64) -> WorkerConfig {
    let mut config = worker_config(experts);
    config.budgets = TierBudgets {
        device_bytes,
        wait: Duration::from_secs(2),
        ..TierBudgets::default()
    };
    config
}

/// Resident bytes of each expert and the greedy answers with both resident (default budgets).
async fn reference() -> (u64, u64, Vec<u32>, Vec<u32>) {
    let worker = TestWorker::start(worker_config(&[SMALL, OTHER]));
    worker.wait_serving(LIMIT).await;
    let mut client = worker.client().await;
    let status = status(&mut client).await;
    let bytes = |name: &str| {
        status
            .experts
            .iter()
            .find(|e| e.name == name)
            .unwrap()
            .resident_bytes
    };
    let (small, other) = (bytes(SMALL), bytes(OTHER));
    (
        small,
        other,
        answer(&mut client, SMALL).await,
        answer(&mut client, OTHER).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_questions_under_a_one_expert_budget_swap_and_answer_like_resident_experts() {
    let (small, other, small_answer, other_answer) = reference().await;
    // Room for the larger expert alone, never for both.
    let worker = TestWorker::start(with_budgets(
        &[SMALL, OTHER],
        small.max(other) + small.min(other) / 2,
    ));
    worker.wait_serving(LIMIT).await;
    let mut client = worker.client().await;
    let start = status(&mut client).await;
    assert_eq!(
        tier_of(&start, OTHER),
        pb::Tier::Device,
        "the last loaded is on Device"
    );
    assert_eq!(
        tier_of(&start, SMALL),
        pb::Tier::Host,
        "the first was demoted to Host"
    );
    for round in 0..2 {
        for (expert, expected, demoted) in
            [(SMALL, &small_answer, OTHER), (OTHER, &other_answer, SMALL)]
        {
            assert_eq!(
                &answer(&mut client, expert).await,
                expected,
                "round {round}: {expert}"
            );
            let now = status(&mut client).await;
            assert_eq!(
                tier_of(&now, expert),
                pb::Tier::Device,
                "round {round}: {expert} on Device"
            );
            assert_eq!(
                tier_of(&now, demoted),
                pb::Tier::Host,
                "round {round}: {demoted} swapped out"
            );
            let device = now
                .tiers
                .iter()
                .find(|t| t.tier == pb::Tier::Device as i32)
                .unwrap();
            assert!(device.used_bytes <= device.budget_bytes, "{device:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_expert_is_never_evicted_and_a_full_budget_is_resource_exhausted() {
    let big = std::fs::metadata(spec(OTHER).path).unwrap().len();
    let worker = TestWorker::start(with_budgets(&[], big * 5 / 4));
    worker.wait_serving(LIMIT).await;
    let mut client = worker.client().await;
    let load = |name: &str, tier: pb::Tier, pin: bool| pb::LoadExpertRequest {
        expert: Some(pb::ExpertSpec {
            name: name.into(),
            path: spec(name).path.display().to_string(),
            ..Default::default()
        }),
        target_tier: tier as i32,
        pin,
    };
    let pinned = client
        .load_expert(load(OTHER, pb::Tier::Device, true))
        .await
        .unwrap()
        .into_inner();
    assert!(pinned.pinned);
    let cold = client
        .load_expert(load(SMALL, pb::Tier::Storage, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cold.tier, pb::Tier::Storage as i32);

    let refused = collect(&mut client, ask(SMALL)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("device") && refused.message().contains("B"),
        "{}",
        refused.message()
    );
    let now = status(&mut client).await;
    assert_eq!(
        tier_of(&now, OTHER),
        pb::Tier::Device,
        "the pinned expert stayed"
    );
    assert_eq!(tier_of(&now, SMALL), pb::Tier::Storage);

    // Unpinned, it gives way.
    let moved = client
        .move_expert(pb::MoveExpertRequest {
            name: OTHER.into(),
            target_tier: 0,
            pin: Some(false),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!moved.pinned);
    assert!(!answer(&mut client, SMALL).await.is_empty());
    let now = status(&mut client).await;
    assert_eq!(tier_of(&now, SMALL), pb::Tier::Device);
    assert_eq!(tier_of(&now, OTHER), pb::Tier::Host);

    // An explicit move puts it back on Storage and frees its bytes.
    client
        .move_expert(pb::MoveExpertRequest {
            name: SMALL.into(),
            target_tier: pb::Tier::Storage as i32,
            pin: None,
        })
        .await
        .unwrap();
    let now = status(&mut client).await;
    let small = now.experts.iter().find(|e| e.name == SMALL).unwrap();
    assert_eq!(
        (small.tier, small.resident_bytes),
        (pb::Tier::Storage as i32, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_too_small_for_a_model_is_a_clear_error() {
    let worker = TestWorker::start(with_budgets(&[], 1 << 20));
    worker.wait_serving(LIMIT).await;
    let mut client = worker.client().await;
    let refused = client
        .load_expert(pb::LoadExpertRequest {
            expert: Some(pb::ExpertSpec {
                name: SMALL.into(),
                path: spec(SMALL).path.display().to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("--device-budget"),
        "{}",
        refused.message()
    );
    assert!(
        status(&mut client).await.experts.is_empty(),
        "nothing was registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_cold_expert_share_one_promotion() {
    // The worker embedded the way the coordinator mounts it: built from a config, its service on a
    // tonic server of our own.
    let config = worker_config(&[]);
    let worker: Arc<Worker> = Worker::from_config(&config);
    let registering = worker.clone();
    tokio::task::spawn_blocking(move || {
        registering.load_blocking_in(spec(SMALL), Some(coe_core::Tier::Storage), false)
    })
    .await
    .unwrap()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(worker_grpc_service(worker.clone(), "embedded"))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let client = ExpertWorkerClient::new(coe_e2e_tests::connect(addr).await);
    let answers = futures_join(client, 4).await;
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "greedy answers differ: {answers:?}"
    );
    assert!(!answers[0].is_empty());
    let status = worker.status();
    assert_eq!(
        status[0].promotions, 1,
        "one promotion served every request"
    );
    assert_eq!(status[0].tier, coe_core::Tier::Device);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    tokio::task::spawn_blocking(move || worker.shutdown_blocking())
        .await
        .unwrap();
}

async fn futures_join(client: ExpertWorkerClient<Channel>, n: usize) -> Vec<Vec<u32>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { answer(&mut client, SMALL).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}
