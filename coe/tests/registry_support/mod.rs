//! Starts the real `coe` binary (a registry, or `coe serve`) on a port of its own and talks to it
//! over gRPC, for the registry's CLI and kill -9 tests and the `coe serve` test.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use coe_proto::v1 as pb;
use pb::registry_client::RegistryClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const LISTENING: &str = "coe registry listening on ";

pub fn coe_bin() -> &'static str {
    env!("CARGO_BIN_EXE_coe")
}

/// The GGUF of a manifest model, fetched into the cache on first use.
pub fn model_gguf(name: &str) -> PathBuf {
    coe_fetch::fetch_gguf(&coe_fetch::coe_home(), name, &mut |_| {}).expect("fetching a test model")
}

/// A `coe registry` process serving the database `db`; killed on drop.
pub struct RegistryProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl RegistryProcess {
    /// Starts it on 127.0.0.1:0 and returns once its health reports SERVING.
    pub async fn start(db: &Path, extra_args: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> = ["registry", "--listen", "127.0.0.1:0", "--db"]
            .iter()
            .map(Into::into)
            .collect();
        args.push(db.into());
        args.extend(extra_args.iter().map(Into::into));
        let (child, addr) = spawn_listening(&args, LISTENING).await;
        wait_serving(addr).await;
        Self { child, addr }
    }

    pub async fn client(&self) -> RegistryClient<Channel> {
        RegistryClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Starts `coe ARGS` (killed on drop) and returns once it printed `<prefix><address>` on stdout.
pub async fn spawn_listening(args: &[std::ffi::OsString], prefix: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(coe_bin())
        .args(args)
        .env("COE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting coe");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("coe {args:?} exited before listening"));
        if let Some(addr) = line.strip_prefix(prefix) {
            break addr.trim().parse().unwrap();
        }
    };
    (child, addr)
}

/// Follows grpc.health.v1 Watch until the registry reports SERVING: it answers NOT_SERVING until its
/// store is open.
pub async fn wait_serving(addr: SocketAddr) {
    wait_health(addr, "coe.v1.Registry").await
}

/// Follows grpc.health.v1 Watch of `service` ("" for the whole server) until SERVING.
pub async fn wait_health(addr: SocketAddr, service: &str) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the registry's port is bound before it is printed");
    let mut statuses = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(status) = statuses.next().await {
        if status.unwrap().status == ServingStatus::Serving as i32 {
            return;
        }
    }
    panic!("the server at {addr} closed its health stream before SERVING");
}

pub fn add_request(name: &str, path: &Path) -> pb::AddExpertRequest {
    pb::AddExpertRequest {
        name: name.to_string(),
        source: Some(pb::ExpertSource {
            source: Some(pb::expert_source::Source::Path(path.display().to_string())),
        }),
        ..Default::default()
    }
}
