//! `coe status`: what a worker hosts, in which tier, and how full each tier is.
use anyhow::Context;
use clap::Args;
use coe_proto::v1 as pb;
use pb::expert_worker_client::ExpertWorkerClient;

#[derive(Args)]
pub struct StatusArgs {
    /// The worker's address (`coe serve` mounts the worker on its public port).
    #[arg(long, env = "COE_SERVER", default_value = "127.0.0.1:50051")]
    pub server: String,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let endpoint = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let mut client = ExpertWorkerClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&status))?);
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

fn tier_name(tier: i32) -> &'static str {
    match pb::Tier::try_from(tier) {
        Ok(pb::Tier::Storage) => "storage",
        Ok(pb::Tier::Host) => "host",
        Ok(pb::Tier::Device) => "device",
        Ok(pb::Tier::Active) => "active",
        _ => "-",
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn table(status: &pb::WorkerStatus) -> String {
    let mut out = format!("worker {}\n", status.worker_id);
    out += &format!(
        "{:<32} {:<12} {:<8} {:>6} {:>12} {:>10} {:>6} {:>6}\n",
        "expert", "architecture", "tier", "pinned", "resident MiB", "file MiB", "queued", "active"
    );
    for e in &status.experts {
        out += &format!(
            "{:<32} {:<12} {:<8} {:>6} {:>12} {:>10} {:>6} {:>6}\n",
            e.name,
            e.architecture,
            tier_name(e.tier),
            if e.pinned { "yes" } else { "no" },
            mib(e.resident_bytes),
            mib(e.file_bytes),
            e.queued_requests,
            e.active_requests
        );
    }
    if !status.tiers.is_empty() {
        out += &format!("\n{:<8} {:>12} {:>12}\n", "tier", "used MiB", "budget MiB");
        for t in &status.tiers {
            let budget = if t.budget_bytes == u64::MAX {
                "unlimited".to_string()
            } else {
                mib(t.budget_bytes)
            };
            out += &format!(
                "{:<8} {:>12} {:>12}\n",
                tier_name(t.tier),
                mib(t.used_bytes),
                budget
            );
        }
    }
    out
}

fn to_json(status: &pb::WorkerStatus) -> serde_json::Value {
    serde_json::json!({
        "worker_id": status.worker_id,
        "experts": status.experts.iter().map(|e| serde_json::json!({
            "name": e.name,
            "architecture": e.architecture,
            "tier": tier_name(e.tier),
            "pinned": e.pinned,
            "resident_bytes": e.resident_bytes,
            "file_bytes": e.file_bytes,
            "queued_requests": e.queued_requests,
            "active_requests": e.active_requests,
            "path": e.path,
        })).collect::<Vec<_>>(),
        "tiers": status.tiers.iter().map(|t| serde_json::json!({
            "tier": tier_name(t.tier),
            "budget_bytes": t.budget_bytes,
            "used_bytes": t.used_bytes,
        })).collect::<Vec<_>>(),
    })
}
