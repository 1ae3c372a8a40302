//! The Kubernetes manifests in deploy/k8s, validated offline: each resource against the Kubernetes
//! API schemas (kubernetes-validate, strict, in a virtual environment under ~/.cache/coe), and each
//! `coe` role and COE_* variable they use against the flags the binary really has.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const VALIDATOR: &str = "kubernetes-validate==1.37.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/k8s")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// The validator's venv, created on first use (pip reaches the package index, as model fetching does).
fn validator() -> PathBuf {
    let home = std::env::var_os("COE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/coe"));
    let venv = home.join("deploy-venv");
    let tool = venv.join("bin/kubernetes-validate");
    if !tool.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3");
        assert!(status.success(), "python3 -m venv {}", venv.display());
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", VALIDATOR])
            .status()
            .expect("pip");
        assert!(status.success(), "pip install {VALIDATOR}");
    }
    tool
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let files = manifests();
    assert!(
        files.len() >= 3,
        "expected registry, worker and router manifests"
    );
    let out = Command::new(validator())
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    for kind in [
        "statefulset/coe-registry",
        "statefulset/coe-worker",
        "deployment/coe-router",
    ] {
        assert!(
            report.contains(&format!("resource {kind} ")),
            "{kind} not validated:\n{report}"
        );
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    for file in manifests() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name == "registry-etcd.yaml" {
            continue; // the alternative to registry.yaml, applied instead of it
        }
        assert!(
            text.contains(&format!("- {name}")),
            "{name} missing from kustomization.yaml"
        );
    }
}

/// (role, variables) for every container: `args: ["role", ...]` and `- { name: COE_X` / `- name: COE_X`.
fn roles_and_variables(text: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("args: [\"") {
            let role = rest.split('"').next().unwrap().to_string();
            out.push((role, BTreeSet::new()));
        } else if let Some(pos) = line.find("name: COE_") {
            let var: String = line[pos + 6..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            out.last_mut().expect("env before args").1.insert(var);
        }
    }
    out
}

#[test]
fn every_role_and_variable_in_the_manifests_exists_in_the_binary() {
    let mut checked = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (role, vars) in roles_and_variables(&text) {
            let help = Command::new(env!("CARGO_BIN_EXE_coe"))
                .args([role.as_str(), "--help"])
                .output()
                .unwrap();
            assert!(
                help.status.success(),
                "{}: `coe {role}` is no command",
                file.display()
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for var in vars {
                // COE_HOME is read by the model cache of every role, not a flag of its own.
                if var == "COE_HOME" {
                    continue;
                }
                assert!(
                    help.contains(&format!("[env: {var}")),
                    "{}: `coe {role}` has no flag for {var}",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "only {checked} variables checked");
}
