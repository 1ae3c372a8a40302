//! Dispatch from the router to a worker: a client hanging up, or its deadline passing, stops the
//! worker's generation (its slot frees), and a worker that went down is named in UNAVAILABLE.
use std::time::{Duration, Instant};

use coe_e2e_tests::*;
use coe_proto::v1 as pb;
use tonic::Code;

const READY: Duration = Duration::from_secs(300);

/// A worker hosting SmolLM2 alone and a router whose map sends everything to it.
async fn smollm_pair(dir: &std::path::Path) -> (TestWorker, TestRouter) {
    let worker = TestWorker::start(worker_config(&[SMOLLM]));
    let mut config = router_config(&[worker.addr]);
    config.category_map = Some(write_category_map(dir, SMOLLM, SMOLLM, 0.0));
    let router = TestRouter::start(config);
    router.wait_serving(READY).await;
    (worker, router)
}

/// Waits (bounded) until the worker reports no active or queued request for SmolLM2.
async fn wait_worker_idle(worker: &TestWorker, limit: Duration, why: &str) {
    let mut client = worker.client().await;
    let since = Instant::now();
    loop {
        let status = client
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let expert = status.experts.iter().find(|e| e.name == SMOLLM).unwrap();
        if expert.active_requests == 0 && expert.queued_requests == 0 {
            return;
        }
        assert!(
            since.elapsed() < limit,
            "{why}: still generating: {expert:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn active_requests(worker: &TestWorker) -> u32 {
    let status = worker
        .client()
        .await
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    status.experts[0].active_requests
}

#[tokio::test]
async fn client_hanging_up_stops_the_workers_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (worker, router) = smollm_pair(dir.path()).await;
    let mut client = router.client().await;
    let mut request = route_request("Tell me a very long story about the sea.", "", 1500);
    request.sampling.as_mut().unwrap().stop.clear();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    // The decision, then a few chunks: the worker is generating.
    for _ in 0..4 {
        stream.message().await.unwrap().expect("a message");
    }
    assert_eq!(active_requests(&worker).await, 1);
    drop(stream);
    wait_worker_idle(&worker, Duration::from_secs(5), "after the client hung up").await;
}

#[tokio::test]
async fn deadline_passes_to_the_worker_and_ends_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (worker, router) = smollm_pair(dir.path()).await;
    let mut client = router.client().await;
    let mut request = tonic::Request::new(route_request(
        "Tell me a very long story about the sea.",
        "",
        1500,
    ));
    request.set_timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let result = async {
        let mut stream = client.generate(request).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    }
    .await;
    let err = result.expect_err("1500 tokens do not fit in 1.5 s");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_worker_idle(&worker, Duration::from_secs(5), "after the deadline").await;
}

#[tokio::test]
async fn worker_down_is_unavailable_naming_the_expert_and_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (mut worker, router) = smollm_pair(dir.path()).await;
    let addr = worker.addr;
    worker.begin_shutdown().join().unwrap().unwrap();
    let mut client = router.client().await;
    let err = collect_routed(&mut client, route_request("Hello there", "", 4))
        .await
        .expect_err("no worker is up");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(SMOLLM), "{}", err.message());
    assert!(
        err.message().contains(&addr.to_string()),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn replicas_of_an_expert_share_the_load_and_a_down_replica_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestWorker::start(worker_config(&[SMOLLM]));
    let mut b = TestWorker::start(worker_config(&[SMOLLM]));
    // Both up before the router starts, so that its first discovery finds both replicas.
    a.wait_serving(READY).await;
    b.wait_serving(READY).await;
    let mut config = router_config(&[a.addr, b.addr]);
    config.category_map = Some(write_category_map(dir.path(), SMOLLM, SMOLLM, 0.0));
    let router = TestRouter::start(config);
    router.wait_serving(READY).await;
    let mut client = router.client().await;
    let long = || route_request("Tell me a very long story about the sea.", "", 1500);
    // Two streams at once: the second goes to the replica with fewer open streams.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = client.generate(long()).await.unwrap().into_inner();
        for _ in 0..2 {
            stream.message().await.unwrap().expect("a message");
        }
        streams.push(stream);
    }
    assert_eq!(
        (active_requests(&a).await, active_requests(&b).await),
        (1, 1)
    );
    drop(streams);
    // Let the hang-ups reach the workers before blocking this runtime on b's shutdown.
    wait_worker_idle(&a, Duration::from_secs(5), "replica a after the hang-up").await;
    wait_worker_idle(&b, Duration::from_secs(5), "replica b after the hang-up").await;

    let b_addr = b.addr;
    // Joined off this runtime: b's graceful shutdown waits for this test's connections to close.
    let stopping = b.begin_shutdown();
    tokio::task::spawn_blocking(move || stopping.join())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for _ in 0..4 {
        let out = collect_routed(&mut client, route_request("Hello!", "", 2))
            .await
            .unwrap_or_else(|e| panic!("a live replica must answer ({b_addr} is down): {e:?}"));
        assert_eq!(out.answer.done.unwrap().expert, SMOLLM);
    }
}
