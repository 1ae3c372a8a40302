//! The redb store on its own: conflicts write nothing, the log folds to the state, and a reopened
//! file holds every committed change.
mod common;

use coe_proto::v1 as pb;
use coe_registry::store::redb::RedbStore;
use coe_registry::store::{apply, Change, RegistryStore, Snapshot, StoreError};
use common::{add_request, map_of, visible, TestRegistry};

fn record(name: &str) -> pb::ExpertRecord {
    pb::ExpertRecord {
        name: name.into(),
        path: format!("/models/{name}.gguf"),
        architecture: "llama".into(),
        ..Default::default()
    }
}

async fn fold_log(store: &RedbStore) -> Snapshot {
    let mut state = Snapshot::default();
    for event in store.changes_since(0, usize::MAX).await.unwrap() {
        assert_eq!(event.revision, state.revision + 1, "the log has a gap");
        apply(&mut state, &event);
    }
    state
}

#[tokio::test]
async fn a_stale_commit_is_a_conflict_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("r.redb")).await.unwrap();
    let events = store
        .commit(0, vec![Change::ExpertUpserted(record("a"))])
        .await
        .unwrap();
    assert_eq!(events[0].revision, 1);
    let before = store.snapshot().await.unwrap();
    let err = store
        .commit(0, vec![Change::ExpertUpserted(record("b"))])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 0,
                actual: 1
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.snapshot().await.unwrap(), before);
    assert_eq!(store.changes_since(0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_log_folds_to_the_state_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    {
        let store = RedbStore::open(&path).await.unwrap();
        let mut map = map_of(&[("x", "a")], "a");
        map.version = 1;
        store
            .commit(
                0,
                vec![
                    Change::ExpertUpserted(record("a")),
                    Change::CategoryMap(map),
                ],
            )
            .await
            .unwrap();
        store
            .commit(2, vec![Change::ExpertUpserted(record("b"))])
            .await
            .unwrap();
        store
            .commit(3, vec![Change::ExpertRemoved("b".into())])
            .await
            .unwrap();
    }
    let store = RedbStore::open(&path).await.unwrap();
    let state = store.snapshot().await.unwrap();
    assert_eq!(state.revision, 4);
    assert_eq!(state.map.version, 1);
    assert_eq!(state.map_revision, 2);
    assert_eq!(state.experts.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(state.experts["a"].revision, 1);
    assert_eq!(fold_log(&store).await, state);
    assert!(store.map_version(1).await.unwrap().is_some());
    assert!(store.map_version(2).await.unwrap().is_none());
}

#[tokio::test]
async fn registry_state_survives_a_restart() {
    let registry = TestRegistry::start().await;
    let path = registry.gguf("a.gguf", "llama");
    let mut client = registry.client().await;
    let mut request = add_request("a", &path);
    request.categories = vec!["general".into()];
    client.add_expert(request).await.unwrap();
    client.add_expert(add_request("b", &path)).await.unwrap();
    client
        .set_category_map(pb::SetCategoryMapRequest {
            map: Some(map_of(&[("general", "a"), ("extra", "b")], "a")),
        })
        .await
        .unwrap();
    let before = visible(&mut client).await;
    drop(client);
    let dir = registry.stop().await;
    let registry = TestRegistry::start_in(dir, Default::default()).await;
    let mut client = registry.client().await;
    assert_eq!(visible(&mut client).await, before);
    let v1 = client
        .get_category_map(pb::GetCategoryMapRequest { version: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.category_to_expert.len(), 1);
}
