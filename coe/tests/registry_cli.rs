//! `coe expert …` and `coe map …` against a running `coe registry`: what a user sees in tables and
//! `--json`, and the exit codes scripts rely on (0 ok, 3 not found, 4 already exists, 5 invalid
//! argument, 6 refused in the current state, 7 unreachable), with the registry's message on stderr.
mod registry_support;

use std::net::SocketAddr;

use registry_support::{coe_bin, model_gguf, RegistryProcess};
use serde_json::Value;

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

async fn coe(server: SocketAddr, args: &[&str]) -> Outcome {
    let output = tokio::process::Command::new(coe_bin())
        .args(args)
        .args(["--server", &server.to_string()])
        .env("COE_LOG", "warn")
        .output()
        .await
        .expect("running coe");
    Outcome {
        code: output.status.code().expect("coe exited by a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a command that must succeed and returns its JSON answer.
async fn ok_json(server: SocketAddr, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = coe(server, &with_json).await;
    assert_eq!(
        out.code, 0,
        "coe {args:?} failed: {}{}",
        out.stdout, out.stderr
    );
    out.json()
}

/// Runs a command that must fail with `code` and a message on stderr containing `needle`.
async fn refused(server: SocketAddr, args: &[&str], code: i32, needle: &str) {
    let out = coe(server, args).await;
    assert_eq!(
        out.code, code,
        "coe {args:?}: exit {} (stdout {:?}, stderr {:?})",
        out.code, out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains(needle),
        "coe {args:?}: stderr {:?} does not mention {needle:?}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experts_and_map_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryProcess::start(&dir.path().join("r.redb"), &[]).await;
    let server = registry.addr;
    let smol = model_gguf("smollm2-135m-instruct");
    let gemma = model_gguf("gemma-3-270m");
    let (smol, gemma) = (smol.to_str().unwrap(), gemma.to_str().unwrap());

    // Adding with a category maps it to the new expert: routable at once.
    let added = ok_json(
        server,
        &[
            "expert",
            "add",
            "chat",
            "--file",
            smol,
            "--category",
            "general_chat",
        ],
    )
    .await;
    assert_eq!(added["name"], "chat");
    assert_eq!(added["architecture"], "llama");
    let added = ok_json(
        server,
        &[
            "expert",
            "add",
            "writer",
            "--file",
            gemma,
            "--category",
            "creative_writing",
        ],
    )
    .await;
    assert_eq!(added["architecture"], "gemma3");
    let map = ok_json(server, &["map", "show"]).await;
    assert_eq!(map["version"], 2);
    assert_eq!(map["category_to_expert"]["general_chat"], "chat");
    assert_eq!(map["category_to_expert"]["creative_writing"], "writer");
    assert_eq!(map["fallback_expert"], "chat");

    // The human table lists both, one row each under a header.
    let table = coe(server, &["expert", "ls"]).await;
    assert_eq!(table.code, 0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("TIER"),
        "{}",
        table.stdout
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("chat ") && l.contains("llama")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("writer ") && l.contains("gemma3")));

    // Placement: pin, move and unpin are recorded on the expert for its worker to apply.
    let pinned = ok_json(server, &["expert", "pin", "writer"]).await;
    assert_eq!(pinned["placement"]["pinned"], true);
    let moved = ok_json(
        server,
        &[
            "expert", "move", "writer", "--tier", "host", "--worker", "w1",
        ],
    )
    .await;
    assert_eq!(moved["placement"]["tier"], "host");
    assert_eq!(moved["placement"]["worker"], "w1");
    assert_eq!(moved["placement"]["pinned"], true);
    let unpinned = ok_json(server, &["expert", "unpin", "writer"]).await;
    assert_eq!(unpinned["placement"]["pinned"], false);
    assert_eq!(unpinned["placement"]["tier"], "host");
    let shown = ok_json(server, &["expert", "show", "writer"]).await;
    assert_eq!(shown, unpinned);

    // Removing an expert the map still names is refused, naming the categories; --force remaps them.
    refused(server, &["expert", "rm", "writer"], 6, "creative_writing").await;
    let removed = ok_json(server, &["expert", "rm", "writer", "--force"]).await;
    assert_eq!(
        removed["remapped_categories"],
        serde_json::json!(["creative_writing"])
    );
    let map = ok_json(server, &["map", "show"]).await;
    assert_eq!(map["version"], 3);
    assert_eq!(map["category_to_expert"]["creative_writing"], "chat");

    // Rolling back to a version that names the removed expert is refused; to version 1 works.
    refused(server, &["map", "rollback", "2"], 6, "writer").await;
    let rolled = ok_json(server, &["map", "rollback", "1"]).await;
    assert_eq!(rolled["version"], 4);
    assert_eq!(
        rolled["category_to_expert"],
        serde_json::json!({"general_chat": "chat"})
    );
    refused(
        server,
        &["map", "rollback", "99"],
        3,
        "version 99 does not exist",
    )
    .await;

    // `map set` replaces the map as a new version; one naming a missing expert is refused.
    let set = ok_json(
        server,
        &[
            "map",
            "set",
            "--category",
            "code=chat",
            "--fallback",
            "chat",
        ],
    )
    .await;
    assert_eq!(set["version"], 5);
    refused(
        server,
        &[
            "map",
            "set",
            "--category",
            "code=ghost",
            "--fallback",
            "chat",
        ],
        6,
        "ghost",
    )
    .await;
    assert_eq!(ok_json(server, &["map", "show"]).await, set);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryProcess::start(&dir.path().join("r.redb"), &[]).await;
    let server = registry.addr;
    let smol = model_gguf("smollm2-135m-instruct");
    let smol = smol.to_str().unwrap();
    ok_json(server, &["expert", "add", "chat", "--file", smol]).await;

    refused(
        server,
        &["expert", "add", "chat", "--file", smol],
        4,
        "already exists",
    )
    .await;
    refused(
        server,
        &["expert", "add", "../etc", "--file", smol],
        5,
        "../etc",
    )
    .await;
    refused(
        server,
        &["expert", "add", "other", "--file", "/nonexistent/x.gguf"],
        3,
        "no such file",
    )
    .await;
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model file at all").unwrap();
    let out = coe(
        server,
        &[
            "expert",
            "add",
            "other",
            "--file",
            garbage.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("not a usable GGUF"), "{}", out.stderr);
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "one line, no backtrace: {}",
        out.stderr
    );
    let wrong = "0".repeat(64);
    refused(
        server,
        &["expert", "add", "other", "--file", smol, "--sha256", &wrong],
        5,
        "sha256",
    )
    .await;
    refused(
        server,
        &["expert", "add", "other", "--model", "no-such-model"],
        3,
        "no-such-model",
    )
    .await;
    refused(
        server,
        &["expert", "rm", "ghost"],
        3,
        "unknown expert \"ghost\"",
    )
    .await;
    refused(server, &["expert", "show", "ghost"], 3, "ghost").await;

    // --json keeps stdout parseable on errors too.
    let out = coe(server, &["expert", "rm", "ghost", "--json"]).await;
    assert_eq!(out.code, 3);
    assert_eq!(out.json()["error"]["code"], "NotFound");

    // Nothing above changed the registry.
    let list = ok_json(server, &["expert", "ls"]).await;
    let names: Vec<&str> = list["experts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chat"]);

    // Nobody listening: exit 7 with the address in the message.
    registry.kill9().await;
    refused(server, &["expert", "ls"], 7, &server.to_string()).await;
}
