//! Worker lifecycle: health is NOT_SERVING until the models are loaded, cancellation frees the slot,
//! and a graceful shutdown finishes in-flight streams.
use std::time::{Duration, Instant};

use coe_e2e_tests::*;
use coe_proto::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_goes_serving_only_after_models_load() {
    let worker = TestWorker::start(worker_config(&[QWEN, SMOLLM]));
    let mut health = HealthClient::new(worker.channel().await);
    let first = health_status(&mut health, "").await;
    assert_eq!(
        first,
        ServingStatus::NotServing,
        "health answered {first:?} before the models loaded"
    );
    worker.wait_serving(Duration::from_secs(300)).await;
    let service = health_status(&mut health, "coe.v1.ExpertWorker").await;
    assert_eq!(service, ServingStatus::Serving);
    let mut client = worker.client().await;
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<_> = status.experts.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(names, [QWEN, SMOLLM]);
}

#[tokio::test]
async fn cancelled_stream_frees_its_slot() {
    let mut config = worker_config(&[QWEN]);
    config.max_active = 1;
    config.queue_capacity = 1;
    let worker = TestWorker::start(config);
    worker.wait_serving(Duration::from_secs(300)).await;
    let mut client = worker.client().await;
    let long = pb::GenerateRequest {
        expert: QWEN.into(),
        messages: vec![user("Write a very long story about a lighthouse keeper.")],
        sampling: greedy(1500),
        ..Default::default()
    };
    let mut stream = client.generate(long).await.unwrap().into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().expect("a chunk");
    }
    drop(stream);
    let cancelled_at = Instant::now();
    loop {
        let status = client
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let expert = &status.experts[0];
        if expert.active_requests == 0 && expert.queued_requests == 0 {
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(5),
            "generation still running after cancel: {expert:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slot is free: a new request is answered at once, not after 1500 tokens.
    let out = collect(
        &mut client,
        pb::GenerateRequest {
            expert: QWEN.into(),
            messages: vec![user("Say hi.")],
            sampling: greedy(4),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(out.done.is_some());
    assert!(cancelled_at.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_streams() {
    let mut worker = TestWorker::start(worker_config(&[SMOLLM]));
    worker.wait_serving(Duration::from_secs(300)).await;
    let mut client = worker.client().await;
    let request = pb::GenerateRequest {
        expert: SMOLLM.into(),
        messages: vec![user("Write a poem about autumn leaves.")],
        sampling: Some(pb::SamplingParams {
            max_tokens: Some(48),
            temperature: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stream = client.generate(request).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("a first chunk");
    let stopped = worker.begin_shutdown();
    let mut done = None;
    let mut chunks = 1;
    while let Some(message) = stream.message().await.expect("the stream ends cleanly") {
        match message.event {
            Some(pb::generate_response::Event::Done(d)) => done = Some(d),
            Some(_) => chunks += 1,
            None => {}
        }
    }
    let done = done.expect("the in-flight stream finished with a final message");
    assert_ne!(done.finish_reason, pb::FinishReason::Cancelled as i32);
    assert!(chunks > 5, "only {chunks} chunks before the end");
    let result = tokio::task::spawn_blocking(move || stopped.join().unwrap())
        .await
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        tokio::net::TcpStream::connect(worker.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let worker = TestWorker::start(worker_config(&[SMOLLM]));
    let channel = worker.channel().await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"coe.v1.ExpertWorker".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    assert!(list.service.iter().any(|s| s.name == "coe.v1.ExpertWorker"));
}
