//! The etcd backend against a real etcd server started here (the `etcd` binary from $ETCD_BIN or
//! PATH; Debian's etcd-server ships it). Without the binary each test prints why and passes.
#![cfg(feature = "etcd")]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use coe_proto::v1 as pb;
use coe_registry::store::etcd::EtcdStore;
use coe_registry::store::{Change, RegistryStore, StoreError};
use coe_registry::{Limits, StoreConfig};
use common::{add_request, map_of, visible, TestRegistry};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;

fn etcd_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An etcd server of its own, in a temp dir, on loopback ports; killed on drop.
struct Etcd {
    _dir: tempfile::TempDir,
    _child: Child,
    endpoint: String,
}

impl Etcd {
    async fn start() -> Option<Self> {
        let Some(bin) = etcd_binary() else {
            eprintln!("skipped: no etcd binary (install Debian's etcd-server or set ETCD_BIN)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(&bin)
            .args(["--name", "coe-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("coe-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let etcd = Self {
            _dir: dir,
            _child: child,
            endpoint: format!("127.0.0.1:{client_port}"),
        };
        etcd.wait_ready().await;
        Some(etcd)
    }

    /// Polls a read until etcd answers; gives up after 30 s.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let options =
                etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
            if let Ok(mut client) =
                etcd_client::Client::connect([&self.endpoint], Some(options)).await
            {
                if client.get("ready", None).await.is_ok() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn store_config(&self, prefix: &str) -> StoreConfig {
        StoreConfig::Etcd {
            endpoints: vec![self.endpoint.clone()],
            prefix: prefix.to_string(),
        }
    }

    async fn replica(&self, prefix: &str) -> TestRegistry {
        TestRegistry::start_with_store(
            tempfile::tempdir().unwrap(),
            self.store_config(prefix),
            Limits::default(),
        )
        .await
    }
}

#[tokio::test]
async fn a_stale_commit_is_a_conflict_and_writes_nothing() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), "/t/")
        .await
        .unwrap();
    let record = |name: &str| pb::ExpertRecord {
        name: name.into(),
        ..Default::default()
    };
    let mut map = map_of(&[("x", "a")], "a");
    map.version = 1;
    let events = store
        .commit(
            0,
            vec![
                Change::ExpertUpserted(record("a")),
                Change::CategoryMap(map),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [1, 2]
    );
    let before = store.snapshot().await.unwrap();
    assert_eq!(
        (before.revision, before.map.version, before.map_revision),
        (2, 1, 2)
    );
    assert_eq!(before.experts["a"].revision, 1);
    let err = store
        .commit(1, vec![Change::ExpertUpserted(record("b"))])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                actual: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.snapshot().await.unwrap(), before);
    assert_eq!(store.changes_since(0, 10).await.unwrap(), events);
}

#[tokio::test]
async fn replicas_share_state_and_watchers_see_each_others_commits() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let first = etcd.replica("/coe/").await;
    let second = etcd.replica("/coe/").await;
    let path = first.gguf("a.gguf", "llama");
    let mut on_second = second.client().await;
    let mut stream = on_second
        .watch(pb::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    // Writers on both replicas race; optimistic concurrency must give each add its own revision.
    let mut writers = Vec::new();
    for (w, replica) in [&first, &second, &first, &second].into_iter().enumerate() {
        let mut client = replica.client().await;
        let path = path.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..4 {
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
    for _ in 0..16 {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("no watch event within 30 s")
            .unwrap()
            .unwrap();
        revisions.push(event.revision);
    }
    assert_eq!(revisions, (1..=16).collect::<Vec<u64>>());
    let mut on_first = first.client().await;
    assert_eq!(visible(&mut on_first).await, visible(&mut on_second).await);
    assert_eq!(visible(&mut on_first).await.experts.len(), 16);
}

#[tokio::test]
async fn refused_requests_change_nothing_and_state_survives_a_registry_restart() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let registry = etcd.replica("/r/").await;
    let path = registry.gguf("a.gguf", "qwen2");
    let mut client = registry.client().await;
    let mut request = add_request("a", &path);
    request.categories = vec!["general".into()];
    client.add_expert(request.clone()).await.unwrap();
    let before = visible(&mut client).await;
    let duplicate = client.add_expert(request).await.unwrap_err();
    assert_eq!(duplicate.code(), tonic::Code::AlreadyExists);
    let in_use = client
        .remove_expert(pb::RemoveExpertRequest {
            name: "a".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), tonic::Code::FailedPrecondition);
    let rollback = client
        .rollback_category_map(pb::RollbackCategoryMapRequest { to_version: 5 })
        .await
        .unwrap_err();
    assert_eq!(rollback.code(), tonic::Code::NotFound);
    assert_eq!(visible(&mut client).await, before);
    drop(client);
    registry.stop().await;
    let registry = etcd.replica("/r/").await;
    assert_eq!(visible(&mut registry.client().await).await, before);
    // Another prefix is another registry.
    let other = etcd.replica("/other/").await;
    assert_eq!(visible(&mut other.client().await).await.revision, 0);
}
