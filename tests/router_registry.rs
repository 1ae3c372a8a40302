//! The router follows the registry's category map (`--registry`): a new map takes effect without a
//! restart, and a map naming an expert no worker hosts is refused while the previous map stays.
use std::time::{Duration, Instant};

use coe_e2e_tests::*;
use coe_proto::v1 as pb;
use coe_registry::{Limits, RegistryConfig, StoreConfig};
use pb::registry_client::RegistryClient;

const READY: Duration = Duration::from_secs(300);

fn map_to(expert: &str) -> pb::CategoryMap {
    let default = coe_router::CategoryMap::embedded_default();
    pb::CategoryMap {
        version: 0,
        category_to_expert: default
            .categories
            .keys()
            .map(|c| (c.clone(), expert.to_string()))
            .collect(),
        fallback_expert: expert.to_string(),
        confidence_threshold: 0.1,
    }
}

async fn expert_for(
    client: &mut pb::router_client::RouterClient<tonic::transport::Channel>,
) -> String {
    let decision = classify(client, "write a python function that reverses a list").await;
    decision.experts[0].clone()
}

/// Classifies until the decision names `want` (the map arrives asynchronously), failing if it ever
/// names `never`.
async fn wait_for_expert(
    client: &mut pb::router_client::RouterClient<tonic::transport::Channel>,
    want: &str,
    never: &str,
) {
    let since = Instant::now();
    loop {
        let got = expert_for(client).await;
        assert_ne!(got, never, "a map naming an unhosted expert was applied");
        if got == want {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "the router still routes to {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn router_follows_the_registrys_category_map_and_refuses_unhosted_experts() {
    let dir = tempfile::tempdir().unwrap();
    let registry_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_addr = registry_listener.local_addr().unwrap();
    let (_stop_registry, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(coe_registry::serve(
        RegistryConfig {
            store: StoreConfig::Redb(dir.path().join("registry.redb")),
            limits: Limits::default(),
        },
        registry_listener,
        async move {
            let _ = stopped.await;
        },
    ));
    wait_health(registry_addr, "", READY).await;
    let mut registry = RegistryClient::new(connect(registry_addr).await);
    for (name, model) in [(SMOLLM, SMOLLM), (GEMMA, GEMMA), ("ghost-expert", SMOLLM)] {
        registry
            .add_expert(pb::AddExpertRequest {
                name: name.into(),
                source: Some(pb::ExpertSource {
                    source: Some(pb::expert_source::Source::Path(
                        model_gguf(model).display().to_string(),
                    )),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let worker = TestWorker::start(worker_config(&[SMOLLM, GEMMA]));
    let mut config = router_config(&[worker.addr]);
    config.category_map = Some(write_category_map(dir.path(), SMOLLM, SMOLLM, 0.1));
    config.registry = Some(registry_addr.to_string());
    let router = TestRouter::start(config);
    router.wait_serving(READY).await;
    let mut client = router.client().await;
    assert_eq!(expert_for(&mut client).await, SMOLLM);

    registry
        .set_category_map(pb::SetCategoryMapRequest {
            map: Some(map_to(GEMMA)),
        })
        .await
        .unwrap();
    wait_for_expert(&mut client, GEMMA, "ghost-expert").await;

    // Refused by the router (no worker hosts it); the next good map shows it was processed.
    for expert in ["ghost-expert", SMOLLM] {
        registry
            .set_category_map(pb::SetCategoryMapRequest {
                map: Some(map_to(expert)),
            })
            .await
            .unwrap();
    }
    wait_for_expert(&mut client, SMOLLM, "ghost-expert").await;
}
