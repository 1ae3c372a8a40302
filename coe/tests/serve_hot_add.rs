//! `coe serve` runs registry, router and worker in one process: `coe expert add` with a category makes
//! a new expert answer that category without a restart, and a rollback of the map plus `coe expert rm`
//! take it away again; `coe expert move|pin` reach the worker's tiers. Everything goes through the
//! real binary and its CLI, as a user would.
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use tokio::process::Command;

mod registry_support;
use registry_support::{coe_bin, spawn_listening, wait_health};

const LISTENING: &str = "coe serve listening on ";
const CODE_PROMPT: &str = "write a python function that reverses a list";
const ORIGINAL_CODE_EXPERT: &str = "qwen2.5-coder-0.5b-instruct";
const NEW_EXPERT: &str = "tiny-coder";

fn coe() -> Command {
    let mut command = Command::new(coe_bin());
    command.env("COE_LOG", "warn");
    command
}

async fn cli(addr: SocketAddr, args: &[&str]) -> Output {
    coe()
        .args(args)
        .env("COE_SERVER", addr.to_string())
        .output()
        .await
        .expect("running coe")
}

/// The expert `coe ask` reports in its `[route]` line.
async fn routed_expert(addr: SocketAddr) -> String {
    let out = cli(
        addr,
        &[
            "ask",
            CODE_PROMPT,
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "coe ask failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("[route] expert="))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no routing decision printed: {stdout}"))
        .to_string()
}

/// Asks until the code prompt reaches `want` (a worker needs a moment to load an added expert).
async fn wait_routed_to(addr: SocketAddr, want: &str) {
    let since = Instant::now();
    loop {
        let got = routed_expert(addr).await;
        if got == want {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "the code prompt still reaches {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (tier, pinned) of one expert in `coe status --json`.
fn placement(status_json: &[u8], expert: &str) -> Option<(String, bool)> {
    let status: serde_json::Value = serde_json::from_slice(status_json).expect("coe status --json");
    status["experts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == expert)
        .map(|e| {
            (
                e["tier"].as_str().unwrap().to_string(),
                e["pinned"].as_bool().unwrap(),
            )
        })
}

/// Polls `coe status` until `expert` is in `tier` with `pinned`.
async fn wait_placed(addr: SocketAddr, expert: &str, tier: &str, pinned: bool) {
    let since = Instant::now();
    loop {
        let status = cli(addr, &["status", "--json"]).await;
        assert!(status.status.success());
        let got = placement(&status.stdout, expert);
        if got == Some((tier.to_string(), pinned)) {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "{expert} is {got:?}, not ({tier}, pinned={pinned})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hosted(status_json: &[u8]) -> Vec<String> {
    let status: serde_json::Value = serde_json::from_slice(status_json).expect("coe status --json");
    status["experts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_expert_added_to_a_running_serve_answers_its_category_and_goes_away_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        dir.path().join("registry.redb").into(),
    ];
    let (_server, addr) = spawn_listening(&args, LISTENING).await;
    tokio::time::timeout(Duration::from_secs(600), wait_health(addr, ""))
        .await
        .expect("coe serve did not report SERVING");

    // Seeded on first start: the three default experts and the shipped map.
    let listed = cli(addr, &["expert", "ls", "--json"]).await;
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(ORIGINAL_CODE_EXPERT), "{listed}");
    assert_eq!(routed_expert(addr).await, ORIGINAL_CODE_EXPERT);

    let file = coe_fetch::fetch_gguf(&coe_fetch::coe_home(), "smollm2-135m-instruct", &mut |_| {})
        .unwrap();
    let added = cli(
        addr,
        &[
            "expert",
            "add",
            NEW_EXPERT,
            "--file",
            file.to_str().unwrap(),
            "--category",
            "code",
        ],
    )
    .await;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    wait_routed_to(addr, NEW_EXPERT).await;

    // Still named by the map: refused (exit code 6), nothing removed.
    let refused = cli(addr, &["expert", "rm", NEW_EXPERT]).await;
    assert_eq!(refused.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("code"));
    assert_eq!(routed_expert(addr).await, NEW_EXPERT);

    // Back to the seeded map (version 1), then the expert can go.
    let rolled_back = cli(addr, &["map", "rollback", "1"]).await;
    assert!(rolled_back.status.success());
    wait_routed_to(addr, ORIGINAL_CODE_EXPERT).await;
    let removed = cli(addr, &["expert", "rm", NEW_EXPERT]).await;
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let since = Instant::now();
    loop {
        let status = cli(addr, &["status", "--json"]).await;
        assert!(status.status.success());
        if !hosted(&status.stdout).contains(&NEW_EXPERT.to_string()) {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the worker still hosts {NEW_EXPERT}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = cli(addr, &["expert", "show", NEW_EXPERT]).await;
    assert_eq!(
        shown.status.code(),
        Some(3),
        "a removed expert is not found"
    );

    // Placements recorded in the registry reach the worker: a move to Host, then a pin.
    let moved = cli(addr, &["expert", "move", "gemma-3-270m", "--tier", "host"]).await;
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    wait_placed(addr, "gemma-3-270m", "host", false).await;
    let pinned = cli(addr, &["expert", "pin", "smollm2-135m-instruct"]).await;
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    wait_placed(addr, "smollm2-135m-instruct", "device", true).await;
}
