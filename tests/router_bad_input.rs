//! Bad input to the router gets a clear gRPC status (or, for bad configuration, a clear error at
//! start), and the router keeps answering afterwards.
use std::sync::OnceLock;
use std::time::Duration;

use coe_e2e_tests::*;
use coe_proto::v1 as pb;
use tonic::Code;

const READY: Duration = Duration::from_secs(300);
const LIMIT: usize = 200;

/// A worker with SmolLM2 and a router sending everything to it, with a small prompt limit.
fn shared() -> &'static (TestWorker, TestRouter, tempfile::TempDir) {
    static SHARED: OnceLock<(TestWorker, TestRouter, tempfile::TempDir)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let worker = TestWorker::start(worker_config(&[SMOLLM]));
        let mut config = router_config(&[worker.addr]);
        config.category_map = Some(write_category_map(dir.path(), SMOLLM, SMOLLM, 0.3));
        config.max_prompt_bytes = LIMIT;
        let router = TestRouter::start(config);
        (worker, router, dir)
    })
}

async fn client() -> pb::router_client::RouterClient<tonic::transport::Channel> {
    let (_, router, _) = shared();
    router.wait_serving(READY).await;
    router.client().await
}

async fn refused(request: pb::RouteRequest) -> tonic::Status {
    let mut client = client().await;
    let err = collect_routed(&mut client, request)
        .await
        .expect_err("the request must be refused");
    // And the router still answers a good request.
    let ok = collect_routed(&mut client, route_request("Hello!", "", 2))
        .await
        .unwrap();
    assert_eq!(ok.answer.done.unwrap().expert, SMOLLM);
    err
}

#[tokio::test]
async fn empty_and_blank_prompts_are_invalid_argument() {
    for text in ["", "   \n\t "] {
        let err = refused(route_request(text, "", 4)).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("empty"), "{}", err.message());
    }
    let mut client = client().await;
    let err = client
        .classify(pb::ClassifyRequest {
            text: " ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn prompt_past_the_byte_limit_is_invalid_argument_stating_the_limit() {
    let long = "a".repeat(LIMIT + 1);
    let err = refused(route_request(&long, "", 4)).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&format!("limit is {LIMIT} bytes")),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn unknown_explicit_expert_is_not_found() {
    let err = refused(route_request("Hello", "no-such-expert", 4)).await;
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("no-such-expert"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains(SMOLLM),
        "names what is hosted: {}",
        err.message()
    );
}

#[tokio::test]
async fn category_map_naming_a_missing_expert_is_rejected_at_start_with_its_name() {
    let (worker, _, _) = shared();
    let dir = tempfile::tempdir().unwrap();
    let mut config = router_config(&[worker.addr]);
    config.category_map = Some(write_category_map(dir.path(), "ghost-expert", SMOLLM, 0.3));
    let mut router = TestRouter::start(config);
    let err = router
        .wait_exit()
        .unwrap()
        .expect_err("the router must refuse the map");
    let msg = err.to_string();
    assert!(msg.contains("\"ghost-expert\""), "{msg}");
}

#[tokio::test]
async fn corrupt_classifier_artefact_is_a_clear_error_at_start() {
    let (worker, _, _) = shared();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("classifier.json"),
        b"{\"format\": \"coe-cla",
    )
    .unwrap();
    let mut config = router_config(&[worker.addr]);
    config.classifier = Some(dir.path().to_path_buf());
    let mut router = TestRouter::start(config);
    let err = router
        .wait_exit()
        .expect("no panic")
        .expect_err("the router must refuse the artefact");
    let msg = err.to_string();
    assert!(msg.contains("classifier"), "{msg}");
    assert!(msg.contains("classifier.json"), "names the file: {msg}");
}
