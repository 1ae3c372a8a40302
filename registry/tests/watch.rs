//! Watch: a snapshot from revision 0, every change after a given revision, resume after a reconnect
//! with no gap and no duplicate, and streams that end when the registry shuts down.
mod common;

use coe_proto::v1 as pb;
use common::{add_request, map_of, TestRegistry};
use pb::watch_event::Change;
use tokio_stream::StreamExt;
use tonic::Streaming;

async fn next(stream: &mut Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
        .await
        .expect("no watch event within 30 s")
        .expect("the watch stream ended")
        .expect("the watch stream failed")
}

fn describe(event: &pb::WatchEvent) -> String {
    match &event.change {
        Some(Change::ExpertUpserted(record)) => format!("{} +{}", event.revision, record.name),
        Some(Change::ExpertRemoved(name)) => format!("{} -{name}", event.revision),
        Some(Change::CategoryMap(map)) => format!("{} map v{}", event.revision, map.version),
        None => format!("{} ?", event.revision),
    }
}

#[tokio::test]
async fn watch_from_zero_sends_a_snapshot_then_live_changes() {
    let registry = TestRegistry::start().await;
    let path = registry.gguf("a.gguf", "llama");
    let mut client = registry.client().await;
    client.add_expert(add_request("a", &path)).await.unwrap();
    client.add_expert(add_request("b", &path)).await.unwrap();
    client.add_expert(add_request("gone", &path)).await.unwrap();
    client
        .remove_expert(pb::RemoveExpertRequest {
            name: "gone".into(),
            force: false,
        })
        .await
        .unwrap();
    client
        .set_category_map(pb::SetCategoryMapRequest {
            map: Some(map_of(&[("x", "a")], "b")),
        })
        .await
        .unwrap();
    let mut stream = client
        .watch(pb::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let snapshot = [
        next(&mut stream).await,
        next(&mut stream).await,
        next(&mut stream).await,
    ];
    let seen: Vec<String> = snapshot.iter().map(describe).collect();
    assert_eq!(seen, ["1 +a", "2 +b", "5 map v1"]);
    client.add_expert(add_request("c", &path)).await.unwrap();
    assert_eq!(describe(&next(&mut stream).await), "6 +c");
}

#[tokio::test]
async fn watch_resumes_from_a_revision_after_a_reconnect() {
    let registry = TestRegistry::start().await;
    let path = registry.gguf("a.gguf", "llama");
    let mut client = registry.client().await;
    client.add_expert(add_request("a", &path)).await.unwrap();
    let mut stream = client
        .watch(pb::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    assert_eq!(describe(&first), "1 +a");
    // The follower goes away; changes happen while it is disconnected.
    drop(stream);
    client.add_expert(add_request("b", &path)).await.unwrap();
    let mut request = add_request("c", &path);
    request.categories = vec!["cats".into()];
    client.add_expert(request).await.unwrap();
    client
        .remove_expert(pb::RemoveExpertRequest {
            name: "a".into(),
            force: false,
        })
        .await
        .unwrap();
    let mut stream = client
        .watch(pb::WatchRequest {
            from_revision: first.revision,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(describe(&next(&mut stream).await));
    }
    assert_eq!(seen, ["2 +b", "3 +c", "4 map v1", "5 -a"]);
    client.add_expert(add_request("d", &path)).await.unwrap();
    assert_eq!(describe(&next(&mut stream).await), "6 +d");
}

#[tokio::test]
async fn watch_sees_every_revision_once_under_concurrent_writers() {
    let registry = TestRegistry::start().await;
    let path = registry.gguf("a.gguf", "llama");
    let mut client = registry.client().await;
    client.add_expert(add_request("seed", &path)).await.unwrap();
    // Start from revision 1 so the watcher is mid-replay or live while the writers race.
    let mut stream = client
        .watch(pb::WatchRequest { from_revision: 1 })
        .await
        .unwrap()
        .into_inner();
    const WRITERS: usize = 4;
    const ADDS: usize = 8;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = registry.client().await;
        let path = path.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..ADDS {
                client
                    .add_expert(add_request(&format!("w{w}-{n}"), &path))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut revisions = Vec::new();
    for _ in 0..WRITERS * ADDS {
        revisions.push(next(&mut stream).await.revision);
    }
    let expected: Vec<u64> = (2..2 + (WRITERS * ADDS) as u64).collect();
    assert_eq!(revisions, expected);
}

#[tokio::test]
async fn watch_from_a_future_revision_is_out_of_range() {
    let registry = TestRegistry::start().await;
    let mut client = registry.client().await;
    let mut stream = client
        .watch(pb::WatchRequest { from_revision: 99 })
        .await
        .unwrap()
        .into_inner();
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let registry = TestRegistry::start().await;
    let mut client = registry.client().await;
    let mut stream = client
        .watch(pb::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    // A graceful stop returns even with a follower connected.
    registry.stop().await;
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// `coe serve` mounts the registry on its own tonic server beside other services: the pieces work
/// there, and `Registry::shutdown` ends the Watch streams so that server's graceful stop returns.
#[tokio::test]
async fn registry_mounts_on_another_server_and_its_shutdown_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let config = coe_registry::RegistryConfig {
        store: coe_registry::StoreConfig::Redb(dir.path().join("r.redb")),
        limits: coe_registry::Limits::default(),
    };
    let registry = coe_registry::open_registry(&config).await.unwrap();
    let (_health, health_service) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopping = registry.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(coe_registry::registry_grpc_service(registry))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopped.await;
                    stopping.shutdown();
                },
            ),
    );
    let mut client = common::client(addr).await;
    let path = dir.path().join("m.gguf");
    common::write_gguf(&path, "llama");
    client.add_expert(add_request("m", &path)).await.unwrap();
    let mut stream = client
        .watch(pb::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(describe(&next(&mut stream).await), "1 +m");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}
