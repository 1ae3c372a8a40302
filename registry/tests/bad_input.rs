//! Each bad request gets a clear status and leaves the registry exactly as it was: the same experts,
//! revision and category map.
mod common;

use coe_proto::v1 as pb;
use coe_registry::Limits;
use common::{add_request, map_of, sha256_hex, visible, TestRegistry};
use tonic::Code;

/// Starts a registry holding expert "base" (llama) mapped from category "general" with "base" as
/// fallback, so "nothing changed" is checked against a non-empty state.
async fn seeded(limits: Limits) -> TestRegistry {
    let registry = TestRegistry::start_with(limits).await;
    let path = registry.gguf("base.gguf", "llama");
    let mut client = registry.client().await;
    client.add_expert(add_request("base", &path)).await.unwrap();
    client
        .set_category_map(pb::SetCategoryMapRequest {
            map: Some(map_of(&[("general", "base")], "base")),
        })
        .await
        .unwrap();
    registry
}

/// Runs `call`, asserts its code and that the message mentions `needle`, and that nothing changed.
macro_rules! assert_refused {
    ($registry:expr, $code:expr, $needle:expr, $call:expr) => {{
        let mut client = $registry.client().await;
        let before = visible(&mut client).await;
        let status = $call.await.expect_err("the request should be refused");
        assert_eq!(status.code(), $code, "{status:?}");
        assert!(
            status.message().contains($needle),
            "message {:?} does not mention {:?}",
            status.message(),
            $needle
        );
        assert_eq!(
            visible(&mut client).await,
            before,
            "a refused request changed the registry"
        );
    }};
}

#[tokio::test]
async fn add_checks_the_file_and_records_it() {
    let registry = TestRegistry::start().await;
    let path = registry.gguf("coder.gguf", "qwen2");
    let mut client = registry.client().await;
    let mut request = add_request("coder", &path);
    request.sha256 = sha256_hex(&path).to_uppercase();
    request.categories = vec!["code".into(), "code".into()];
    let record = client.add_expert(request).await.unwrap().into_inner();
    assert_eq!(record.architecture, "qwen2");
    assert_eq!(record.sha256, sha256_hex(&path));
    assert_eq!(record.size_bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(record.categories, vec!["code".to_string()]);
    assert_eq!(record.revision, 1);
    let seen = visible(&mut client).await;
    assert_eq!(seen.experts, vec![record]);
    // The new category went into a new map version, one revision after the record.
    assert_eq!(seen.revision, 2);
    assert_eq!(seen.map.version, 1);
    assert_eq!(seen.map.category_to_expert["code"], "coder");
    // The first map made by an add takes that expert as fallback, so it stays a valid rollback target.
    assert_eq!(seen.map.fallback_expert, "coder");
    let path = registry.gguf("chat.gguf", "llama");
    client.add_expert(add_request("chat", &path)).await.unwrap();
    client
        .set_category_map(pb::SetCategoryMapRequest {
            map: Some(map_of(&[("code", "chat")], "chat")),
        })
        .await
        .unwrap();
    let restored = client
        .rollback_category_map(pb::RollbackCategoryMapRequest { to_version: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (restored.version, restored.fallback_expert.as_str()),
        (3, "coder")
    );
}

#[tokio::test]
async fn duplicate_name_is_already_exists() {
    let registry = seeded(Limits::default()).await;
    let path = registry.gguf("other.gguf", "gemma3");
    let mut client = registry.client().await;
    assert_refused!(
        registry,
        Code::AlreadyExists,
        "base",
        client.add_expert(add_request("base", &path))
    );
}

#[tokio::test]
async fn unsafe_name_is_invalid_argument() {
    let registry = seeded(Limits::default()).await;
    let path = registry.path("base.gguf");
    let mut client = registry.client().await;
    for name in ["../escape", "a/b", "", ".hidden", "sp ace"] {
        assert_refused!(
            registry,
            Code::InvalidArgument,
            "invalid expert name",
            client.add_expert(add_request(name, &path))
        );
    }
}

#[tokio::test]
async fn missing_file_is_not_found() {
    let registry = seeded(Limits::default()).await;
    let path = registry.path("nowhere.gguf");
    let mut client = registry.client().await;
    assert_refused!(
        registry,
        Code::NotFound,
        "nowhere.gguf",
        client.add_expert(add_request("ghost", &path))
    );
}

#[tokio::test]
async fn truncated_gguf_is_invalid_argument() {
    let registry = seeded(Limits::default()).await;
    let path = registry.gguf("cut.gguf", "llama");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let mut client = registry.client().await;
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "truncated",
        client.add_expert(add_request("cut", &path))
    );
}

#[tokio::test]
async fn garbage_file_is_invalid_argument() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    let garbage = registry.path("garbage.gguf");
    std::fs::write(
        &garbage,
        b"this is not a model at all, just some text bytes".repeat(20),
    )
    .unwrap();
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "garbage.gguf",
        client.add_expert(add_request("junk", &garbage))
    );
    let empty = registry.path("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "empty.gguf",
        client.add_expert(add_request("junk", &empty))
    );
    let header_only = registry.path("header.gguf");
    let full = std::fs::read(registry.path("base.gguf")).unwrap();
    std::fs::write(&header_only, &full[..20]).unwrap();
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "header.gguf",
        client.add_expert(add_request("junk", &header_only))
    );
}

#[tokio::test]
async fn unsupported_architecture_is_invalid_argument() {
    let registry = seeded(Limits::default()).await;
    let path = registry.gguf("gpt2.gguf", "gpt2");
    let mut client = registry.client().await;
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "\"gpt2\" is not supported",
        client.add_expert(add_request("old", &path))
    );
}

#[tokio::test]
async fn sha256_mismatch_is_invalid_argument() {
    let registry = seeded(Limits::default()).await;
    let path = registry.gguf("m.gguf", "llama");
    let mut client = registry.client().await;
    let mut request = add_request("m", &path);
    request.sha256 = "0".repeat(64);
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "sha256",
        client.add_expert(request.clone())
    );
    request.sha256 = "not-hex".into();
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "not 64 hexadecimal digits",
        client.add_expert(request)
    );
}

#[tokio::test]
async fn budget_too_small_is_failed_precondition() {
    let registry = seeded(Limits {
        max_expert_bytes: Some(common::TINY_WEIGHT_BYTES),
    })
    .await;
    let path = registry.path("big.gguf");
    let tensor =
        candle_core::Tensor::zeros(128, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    let qtensor =
        candle_core::quantized::QTensor::quantize(&tensor, candle_core::quantized::GgmlDType::F32)
            .unwrap();
    let arch = candle_core::quantized::gguf_file::Value::String("llama".into());
    candle_core::quantized::gguf_file::write(
        &mut std::fs::File::create(&path).unwrap(),
        &[("general.architecture", &arch)],
        &[("w", &qtensor)],
    )
    .unwrap();
    let mut client = registry.client().await;
    assert_refused!(
        registry,
        Code::FailedPrecondition,
        "budget",
        client.add_expert(add_request("big", &path))
    );
}

#[tokio::test]
async fn bare_package_source_is_unimplemented() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    let request = pb::AddExpertRequest {
        name: "pkg".into(),
        source: Some(pb::ExpertSource {
            source: Some(pb::expert_source::Source::Package(pb::PackageSource {
                requirements: vec!["some-model==1.0".into()],
            })),
        }),
        ..Default::default()
    };
    assert_refused!(
        registry,
        Code::Unimplemented,
        "--model",
        client.add_expert(request)
    );
    let no_source = pb::AddExpertRequest {
        name: "nosrc".into(),
        ..Default::default()
    };
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "source",
        client.add_expert(no_source)
    );
}

fn model_request(name: &str, model: &str) -> pb::AddExpertRequest {
    pb::AddExpertRequest {
        name: name.into(),
        source: Some(pb::ExpertSource {
            source: Some(pb::expert_source::Source::Model(model.into())),
        }),
        categories: vec!["code".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn unknown_manifest_model_is_not_found() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    assert_refused!(
        registry,
        Code::NotFound,
        "no model named \"no-such-model\"",
        client.add_expert(model_request("coder", "no-such-model"))
    );
}

#[tokio::test]
async fn manifest_model_with_a_different_sha256_is_invalid_argument() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    let mut request = model_request("coder", "qwen2.5-coder-0.5b-instruct");
    request.sha256 = "ab".repeat(32);
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "the manifest's qwen2.5-coder-0.5b-instruct has sha256",
        client.add_expert(request)
    );
}

/// A manifest model is fetched into the cache (already there in CI after the first fetch), checked
/// against the manifest's sha256, and its category becomes routable to it.
#[tokio::test]
async fn manifest_model_is_fetched_verified_and_mapped() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    let record = client
        .add_expert(model_request("coder", "qwen2.5-coder-0.5b-instruct"))
        .await
        .unwrap()
        .into_inner();
    let manifest = coe_fetch::Manifest::embedded();
    let file = &manifest.model("qwen2.5-coder-0.5b-instruct").unwrap().files[0];
    assert_eq!(record.sha256, file.sha256);
    assert_eq!(record.size_bytes, file.size);
    assert_eq!(record.architecture, "qwen2");
    assert!(record.path.ends_with(&file.name), "{}", record.path);
    let map = visible(&mut client).await.map;
    assert_eq!(map.category_to_expert["code"], "coder");
    assert_eq!(map.category_to_expert["general"], "base");
}

#[tokio::test]
async fn bad_category_or_skill_is_invalid_argument() {
    let registry = seeded(Limits::default()).await;
    let path = registry.path("base.gguf");
    let mut client = registry.client().await;
    let mut request = add_request("x", &path);
    request.categories = vec!["../etc".into()];
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "category",
        client.add_expert(request)
    );
    let mut request = add_request("x", &path);
    request.skills = vec![pb::Skill {
        name: "math".into(),
        score: 1.5,
    }];
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "score",
        client.add_expert(request)
    );
}

#[tokio::test]
async fn remove_unknown_expert_is_not_found() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    let request = pb::RemoveExpertRequest {
        name: "nobody".into(),
        force: true,
    };
    assert_refused!(
        registry,
        Code::NotFound,
        "nobody",
        client.remove_expert(request)
    );
}

#[tokio::test]
async fn remove_of_mapped_expert_is_refused_unless_forced() {
    let registry = seeded(Limits::default()).await;
    let path = registry.gguf("math.gguf", "llama");
    let mut client = registry.client().await;
    let mut request = add_request("math", &path);
    request.categories = vec!["algebra".into(), "geometry".into()];
    client.add_expert(request).await.unwrap();
    let remove = pb::RemoveExpertRequest {
        name: "math".into(),
        force: false,
    };
    assert_refused!(
        registry,
        Code::FailedPrecondition,
        "[\"algebra\", \"geometry\"]",
        client.remove_expert(remove)
    );
    // The fallback itself cannot be remapped to itself, forced or not.
    let remove_fallback = pb::RemoveExpertRequest {
        name: "base".into(),
        force: true,
    };
    assert_refused!(
        registry,
        Code::FailedPrecondition,
        "fallback",
        client.remove_expert(remove_fallback)
    );

    let before = visible(&mut client).await;
    let removed = client
        .remove_expert(pb::RemoveExpertRequest {
            name: "math".into(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.remapped_categories, vec!["algebra", "geometry"]);
    assert_eq!(removed.revision, before.revision + 2);
    let after = visible(&mut client).await;
    assert_eq!(after.experts.len(), 1);
    assert_eq!(after.map.version, before.map.version + 1);
    assert_eq!(after.map.category_to_expert["algebra"], "base");
    assert_eq!(after.map.category_to_expert["geometry"], "base");
}

#[tokio::test]
async fn map_naming_a_missing_expert_is_failed_precondition() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    let request = pb::SetCategoryMapRequest {
        map: Some(map_of(&[("general", "base"), ("poetry", "bard")], "base")),
    };
    assert_refused!(
        registry,
        Code::FailedPrecondition,
        "bard",
        client.set_category_map(request)
    );
    let no_fallback = pb::SetCategoryMapRequest {
        map: Some(map_of(&[("general", "base")], "")),
    };
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "fallback",
        client.set_category_map(no_fallback)
    );
    let missing_fallback = pb::SetCategoryMapRequest {
        map: Some(map_of(&[("general", "base")], "ghost")),
    };
    assert_refused!(
        registry,
        Code::FailedPrecondition,
        "ghost",
        client.set_category_map(missing_fallback)
    );
}

#[tokio::test]
async fn rollback_to_a_missing_version_is_not_found() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    for to_version in [0, 7] {
        let request = pb::RollbackCategoryMapRequest { to_version };
        assert_refused!(
            registry,
            Code::NotFound,
            "does not exist",
            client.rollback_category_map(request)
        );
    }
    let request = pb::GetCategoryMapRequest { version: 9 };
    assert_refused!(
        registry,
        Code::NotFound,
        "version 9",
        client.get_category_map(request)
    );
}

#[tokio::test]
async fn rollback_restores_an_earlier_map_as_a_new_version() {
    let registry = seeded(Limits::default()).await;
    let path = registry.gguf("chef.gguf", "gemma3");
    let mut client = registry.client().await;
    client.add_expert(add_request("chef", &path)).await.unwrap();
    let v1 = client
        .get_category_map(pb::GetCategoryMapRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    let v2 = client
        .set_category_map(pb::SetCategoryMapRequest {
            map: Some(map_of(&[("general", "base"), ("cooking", "chef")], "chef")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v1.version, v2.version), (1, 2));
    let v3 = client
        .rollback_category_map(pb::RollbackCategoryMapRequest { to_version: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v3.version, 3);
    assert_eq!(v3.category_to_expert, v1.category_to_expert);
    assert_eq!(v3.fallback_expert, v1.fallback_expert);
    let old = client
        .get_category_map(pb::GetCategoryMapRequest { version: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old, v2);
}

#[tokio::test]
async fn rollback_to_a_map_naming_a_removed_expert_is_refused() {
    let registry = seeded(Limits::default()).await;
    let path = registry.gguf("chef.gguf", "gemma3");
    let mut client = registry.client().await;
    client.add_expert(add_request("chef", &path)).await.unwrap();
    let with_chef = client
        .set_category_map(pb::SetCategoryMapRequest {
            map: Some(map_of(&[("cooking", "chef")], "base")),
        })
        .await
        .unwrap()
        .into_inner();
    client
        .remove_expert(pb::RemoveExpertRequest {
            name: "chef".into(),
            force: true,
        })
        .await
        .unwrap();
    let request = pb::RollbackCategoryMapRequest {
        to_version: with_chef.version,
    };
    assert_refused!(
        registry,
        Code::FailedPrecondition,
        "chef",
        client.rollback_category_map(request)
    );
}

#[tokio::test]
async fn assign_places_pins_and_checks_the_expert() {
    let registry = seeded(Limits::default()).await;
    let mut client = registry.client().await;
    let placement = pb::Placement {
        worker: "worker-0".into(),
        tier: pb::Tier::Device as i32,
        pinned: true,
    };
    let record = client
        .assign_expert(pb::AssignExpertRequest {
            name: "base".into(),
            placement: Some(placement.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.placement, Some(placement.clone()));
    let unknown = pb::AssignExpertRequest {
        name: "nobody".into(),
        placement: Some(placement),
    };
    assert_refused!(
        registry,
        Code::NotFound,
        "nobody",
        client.assign_expert(unknown)
    );
    let bad_tier = pb::AssignExpertRequest {
        name: "base".into(),
        placement: Some(pb::Placement {
            worker: "w".into(),
            tier: 42,
            pinned: false,
        }),
    };
    assert_refused!(
        registry,
        Code::InvalidArgument,
        "tier",
        client.assign_expert(bad_tier)
    );
}
