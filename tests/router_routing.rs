//! Routed streaming end to end over loopback with the real models: the decision comes first, then
//! the mapped expert's tokens; each of the eight categories reaches its mapped expert; a client may
//! name the expert; an unsure classifier sends the query to the fallback.
use std::sync::OnceLock;
use std::time::Duration;

use coe_e2e_tests::*;
use coe_proto::v1 as pb;

const READY: Duration = Duration::from_secs(300);

/// One worker hosting the three default experts and a router with the shipped map in front of it.
fn shared() -> &'static (TestWorker, TestRouter) {
    static SHARED: OnceLock<(TestWorker, TestRouter)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let worker = TestWorker::start(worker_config(&ALL_EXPERTS));
        let router = TestRouter::start(router_config(&[worker.addr]));
        (worker, router)
    })
}

async fn router_client() -> pb::router_client::RouterClient<tonic::transport::Channel> {
    let (_, router) = shared();
    router.wait_serving(READY).await;
    router.client().await
}

fn mapped(category: &str) -> String {
    coe_router::CategoryMap::embedded_default().categories[category].clone()
}

#[tokio::test]
async fn routed_generate_streams_the_decision_then_the_code_experts_tokens() {
    let mut client = router_client().await;
    let out = collect_routed(
        &mut client,
        route_request("write a python function that reverses a list", "", 24),
    )
    .await
    .unwrap();
    assert!(out.decision_first, "the decision must be the first message");
    let decision = out.decision.unwrap();
    assert_eq!(decision.categories[0].category, "code");
    assert_eq!(decision.experts, vec![QWEN.to_string()]);
    assert_eq!(decision.reason, pb::RouteReason::TopCategory as i32);
    assert!(decision.classify_ms > 0.0);
    let probs: f32 = decision.categories.iter().map(|c| c.probability).sum();
    assert!((probs - 1.0).abs() < 1e-3, "probabilities sum to {probs}");
    assert!(out.answer.chunks > 1, "tokens stream in several chunks");
    assert!(!out.answer.text.trim().is_empty());
    assert_eq!(out.answer.done.unwrap().expert, QWEN);
}

#[tokio::test]
async fn each_category_reaches_its_mapped_expert() {
    let mut client = router_client().await;
    let prompts: [(&str, &[&str]); 8] = [
        (
            "code",
            &[
                "write a python function that reverses a list",
                "How do I fix a segmentation fault in my C program?",
            ],
        ),
        (
            "math",
            &[
                "Solve for x: 3x + 7 = 22",
                "What is the derivative of x^3 + 2x?",
            ],
        ),
        (
            "science",
            &[
                "Why does ice float on water?",
                "What is the speed of light in a vacuum?",
            ],
        ),
        (
            "general_chat",
            &[
                "what is the capital of France",
                "Hi! How are you doing today?",
            ],
        ),
        (
            "history_humanities",
            &[
                "Who was the first emperor of Rome?",
                "What caused the French Revolution?",
            ],
        ),
        (
            "law",
            &[
                "Can my landlord evict me without notice?",
                "What is the difference between a misdemeanor and a felony?",
            ],
        ),
        (
            "medicine_biology",
            &[
                "What are the symptoms of type 2 diabetes?",
                "How does the immune system fight a virus?",
            ],
        ),
        (
            "creative_writing",
            &[
                "Write a short poem about the ocean at night",
                "Write a story about a dragon who is afraid of fire",
            ],
        ),
    ];
    let mut wrong = Vec::new();
    for (category, texts) in prompts {
        for text in texts {
            let out = collect_routed(&mut client, route_request(text, "", 2))
                .await
                .unwrap();
            let decision = out.decision.unwrap();
            let done = out.answer.done.expect("the generation finished");
            if decision.categories[0].category != category || done.expert != mapped(category) {
                wrong.push(format!(
                    "{text:?}: top {:?}, answered by {} (want {category} -> {})",
                    decision.categories[0],
                    done.expert,
                    mapped(category)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "misrouted:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn explicit_expert_skips_classification() {
    let mut client = router_client().await;
    let out = collect_routed(
        &mut client,
        route_request("write a python function that reverses a list", GEMMA, 4),
    )
    .await
    .unwrap();
    let decision = out.decision.unwrap();
    assert_eq!(decision.reason, pb::RouteReason::ExplicitExpert as i32);
    assert_eq!(decision.experts, vec![GEMMA.to_string()]);
    assert!(decision.categories.is_empty());
    assert_eq!(out.answer.done.unwrap().expert, GEMMA);
}

#[tokio::test]
async fn classify_returns_the_decision_generate_would_take() {
    let mut client = router_client().await;
    let decision = classify(&mut client, "what is the capital of France").await;
    assert_eq!(decision.experts, vec![SMOLLM.to_string()]);
    assert_eq!(decision.categories.len(), 8);
}

#[tokio::test]
async fn low_confidence_goes_to_the_fallback_expert() {
    let (worker, _) = shared();
    let dir = tempfile::tempdir().unwrap();
    // Every category maps to the code expert, but nothing is 99% sure: the fallback answers.
    let mut config = router_config(&[worker.addr]);
    config.category_map = Some(write_category_map(dir.path(), QWEN, SMOLLM, 0.99));
    let router = TestRouter::start(config);
    router.wait_serving(READY).await;
    let mut client = router.client().await;
    let out = collect_routed(
        &mut client,
        route_request("tell me something interesting", "", 2),
    )
    .await
    .unwrap();
    let decision = out.decision.unwrap();
    assert_eq!(
        decision.reason,
        pb::RouteReason::LowConfidenceFallback as i32
    );
    assert!(decision.categories[0].probability < 0.99);
    assert_eq!(decision.threshold, 0.99);
    assert_eq!(out.answer.done.unwrap().expert, SMOLLM);
}
