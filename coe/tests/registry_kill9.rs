//! `kill -9` of the real `coe registry` process in the middle of a stream of adds and removes, over and
//! over: every acknowledged change survives, no half-written change appears, and the change log still
//! folds to the state.
mod registry_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use coe_proto::v1 as pb;
use coe_registry::store::redb::RedbStore;
use coe_registry::store::{apply, RegistryStore, Snapshot};
use registry_support::{add_request, model_gguf, RegistryProcess};
use tokio::sync::mpsc;

const CYCLES: usize = 24;
const WRITERS: usize = 3;

async fn client(
    addr: std::net::SocketAddr,
) -> pb::registry_client::RegistryClient<tonic::transport::Channel> {
    pb::registry_client::RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// What the test knows: changes acknowledged, and changes sent whose answer never came.
#[derive(Default)]
struct Ledger {
    added: BTreeSet<String>,
    removed: BTreeSet<String>,
    uncertain: BTreeSet<String>,
}

/// Adds experts and removes every other one until the registry stops answering.
async fn writer(
    addr: std::net::SocketAddr,
    gguf: PathBuf,
    prefix: String,
    ledger: Arc<Mutex<Ledger>>,
    acks: mpsc::UnboundedSender<()>,
) {
    let mut client = client(addr).await;
    for n in 0.. {
        let name = format!("{prefix}-{n}");
        ledger.lock().unwrap().uncertain.insert(name.clone());
        if client.add_expert(add_request(&name, &gguf)).await.is_err() {
            return;
        }
        {
            let mut ledger = ledger.lock().unwrap();
            ledger.uncertain.remove(&name);
            ledger.added.insert(name.clone());
        }
        let _ = acks.send(());
        if n % 2 == 1 {
            let remove = pb::RemoveExpertRequest {
                name: name.clone(),
                force: false,
            };
            ledger.lock().unwrap().uncertain.insert(name.clone());
            if client.remove_expert(remove).await.is_err() {
                return;
            }
            {
                let mut ledger = ledger.lock().unwrap();
                ledger.uncertain.remove(&name);
                ledger.removed.insert(name);
            }
            let _ = acks.send(());
        }
    }
}

/// Checks the registry against the ledger, then settles the uncertain names by what the registry has.
async fn check_and_settle(addr: std::net::SocketAddr, ledger: &mut Ledger, cycle: usize) {
    let mut client = client(addr).await;
    let list = client
        .list_experts(pb::ListExpertsRequest {})
        .await
        .unwrap()
        .into_inner();
    let present: BTreeSet<String> = list.experts.iter().map(|e| e.name.clone()).collect();
    let settled = ledger
        .added
        .difference(&ledger.removed)
        .filter(|name| !ledger.uncertain.contains(*name));
    for name in settled {
        assert!(
            present.contains(name),
            "cycle {cycle}: acknowledged add of {name} was lost"
        );
    }
    for name in &ledger.removed {
        assert!(
            !present.contains(name),
            "cycle {cycle}: acknowledged remove of {name} was lost"
        );
    }
    for name in &present {
        let known = ledger.added.contains(name) || ledger.uncertain.contains(name);
        assert!(known, "cycle {cycle}: {name} appeared without being added");
    }
    for record in &list.experts {
        assert!(
            !record.sha256.is_empty() && !record.path.is_empty() && record.revision > 0,
            "cycle {cycle}: half-written record {record:?}"
        );
    }
    for name in std::mem::take(&mut ledger.uncertain) {
        if present.contains(&name) {
            ledger.added.insert(name);
        } else if ledger.added.contains(&name) {
            ledger.removed.insert(name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_never_loses_an_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("registry.redb");
    // The smallest real model: every add hashes it, as a real add does.
    let gguf = model_gguf("smollm2-135m-instruct");
    let mut ledger = Ledger::default();
    let mut killed_mid_request = 0;
    for cycle in 0..CYCLES {
        let registry = RegistryProcess::start(&db, &[]).await;
        let addr = registry.addr;
        check_and_settle(addr, &mut ledger, cycle).await;
        let shared = Arc::new(Mutex::new(std::mem::take(&mut ledger)));
        let (acks_tx, mut acks) = mpsc::unbounded_channel();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let prefix = format!("c{cycle}w{w}");
                tokio::spawn(writer(
                    addr,
                    gguf.clone(),
                    prefix,
                    shared.clone(),
                    acks_tx.clone(),
                ))
            })
            .collect();
        drop(acks_tx);
        // Kill after a varying number of acknowledgements, while the writers have requests in flight.
        let kill_after = 2 + cycle % 7;
        for _ in 0..kill_after {
            acks.recv()
                .await
                .expect("every writer stopped before the kill");
        }
        registry.kill9().await;
        for w in writers {
            w.await.unwrap();
        }
        ledger = Arc::try_unwrap(shared).ok().unwrap().into_inner().unwrap();
        killed_mid_request += usize::from(!ledger.uncertain.is_empty());
    }
    eprintln!(
        "{CYCLES} kills, {killed_mid_request} with a request in flight; {} adds and {} removes acknowledged",
        ledger.added.len(),
        ledger.removed.len()
    );
    let registry = RegistryProcess::start(&db, &[]).await;
    check_and_settle(registry.addr, &mut ledger, CYCLES).await;
    registry.kill9().await;

    // The log and the state were written together: folding the log gives the state exactly.
    let store = RedbStore::open(&db).await.unwrap();
    let state = store.snapshot().await.unwrap();
    let mut folded = Snapshot::default();
    for event in store.changes_since(0, usize::MAX).await.unwrap() {
        assert_eq!(
            event.revision,
            folded.revision + 1,
            "the change log has a gap"
        );
        apply(&mut folded, &event);
    }
    assert_eq!(folded, state);
    assert!(
        ledger.added.len() >= CYCLES * 2,
        "too few adds were acknowledged: {}",
        ledger.added.len()
    );
}
