//! `coe expert …`, `coe map …` (the registry's command-line client) and `coe registry` (the registry
//! server alone). Tables for people, `--json` for scripts, and exit codes that say what went wrong:
//! 0 ok, 2 usage, 3 not found, 4 already exists, 5 invalid argument, 6 refused in the current state
//! (failed precondition), 7 registry unreachable or shutting down, 1 anything else.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use coe_proto::v1 as pb;
use pb::registry_client::RegistryClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

/// Where the registry is and how to print.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The address serving the registry: `coe serve` (default port 50051) or `coe registry` alone
    /// (50052).
    #[arg(
        long,
        alias = "registry",
        env = "COE_SERVER",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Manages the registry's experts.
#[derive(Args)]
pub struct ExpertArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ExpertCommand,
}

#[derive(Subcommand)]
pub enum ExpertCommand {
    /// Registers an expert after checking its GGUF file.
    Add(AddArgs),
    /// Removes an expert.
    Rm {
        name: String,
        /// Remap the categories that still name it to the fallback expert instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Lists the experts.
    Ls,
    /// Shows one expert.
    Show { name: String },
    /// Keeps an expert resident: its worker never evicts it.
    Pin { name: String },
    /// Lets the worker evict an expert again.
    Unpin { name: String },
    /// Places an expert on a tier (and optionally another worker).
    Move {
        name: String,
        #[arg(long, value_enum)]
        tier: TierArg,
        #[arg(long)]
        worker: Option<String>,
    },
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["file", "model"]))]
pub struct AddArgs {
    pub name: String,
    /// The GGUF file, on the registry's host.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A model of coe's manifest (e.g. qwen2.5-coder-1.5b), fetched and verified here with a progress
    /// bar, then by the registry into its cache (the same one when both share a host).
    #[arg(long)]
    pub model: Option<String>,
    /// Expected sha256 (hex); the add is refused when the file differs.
    #[arg(long)]
    pub sha256: Option<String>,
    /// A category this expert serves; new categories are mapped to it. Repeatable.
    #[arg(long = "category")]
    pub categories: Vec<String>,
    /// NAME=SCORE, the expert's accuracy (0..1) on a skill. Repeatable.
    #[arg(long = "skill", value_parser = parse_skill)]
    pub skills: Vec<(String, f32)>,
    /// The worker to place it on.
    #[arg(long)]
    pub worker: Option<String>,
    /// The tier to place it on.
    #[arg(long, value_enum)]
    pub tier: Option<TierArg>,
    /// Pin it on its worker.
    #[arg(long)]
    pub pin: bool,
}

/// Shows, replaces or rolls back the category map.
#[derive(Args)]
pub struct MapArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: MapCommand,
}

#[derive(Subcommand)]
pub enum MapCommand {
    /// Shows the current category map, or an earlier version.
    Show {
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
    /// Replaces the category map with a new version.
    Set {
        /// CATEGORY=EXPERT. Repeatable.
        #[arg(long = "category", value_parser = parse_pair)]
        categories: Vec<(String, String)>,
        /// The expert that answers when no category is confident enough.
        #[arg(long)]
        fallback: String,
        /// Top-category confidence under which the fallback answers.
        #[arg(long, default_value_t = 0.5)]
        threshold: f32,
    },
    /// Makes an earlier version current again (as a new version).
    Rollback { version: u64 },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn parse_skill(text: &str) -> Result<(String, f32), String> {
    let (name, score) = parse_pair(text)?;
    let score = score
        .parse()
        .map_err(|_| format!("{text:?}: the score is not a number"))?;
    Ok((name, score))
}

/// A tier as typed on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TierArg {
    Storage,
    Host,
    Device,
    Active,
}

impl From<TierArg> for pb::Tier {
    fn from(tier: TierArg) -> Self {
        match tier {
            TierArg::Storage => pb::Tier::Storage,
            TierArg::Host => pb::Tier::Host,
            TierArg::Device => pb::Tier::Device,
            TierArg::Active => pb::Tier::Active,
        }
    }
}

fn tier_name(tier: i32) -> String {
    pb::Tier::try_from(tier)
        .ok()
        .filter(|t| *t != pb::Tier::Unspecified)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("TIER_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "-".into())
}

/// `coe registry`: serves the registry until ctrl-c or SIGTERM.
pub async fn run_registry(args: coe_registry::RegistryArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    // On stdout, so scripts and tests that ask for port 0 learn the port.
    println!("coe registry listening on {}", listener.local_addr()?);
    coe_registry::serve(args.config(), listener, crate::shutdown::signal()).await?;
    Ok(())
}

pub async fn run_expert(args: ExpertArgs) -> anyhow::Result<()> {
    let json = args.client.json;
    let result = expert(args).await;
    finish(result, json)
}

pub async fn run_map(args: MapArgs) -> anyhow::Result<()> {
    let json = args.client.json;
    let result = map(args).await;
    finish(result, json)
}

/// Prints a registry refusal and exits with its code; other errors go back to `main` (exit 1).
fn finish(result: anyhow::Result<()>, json: bool) -> anyhow::Result<()> {
    let Err(error) = result else { return Ok(()) };
    let Some(status) = error.downcast_ref::<tonic::Status>() else {
        return Err(error);
    };
    let code = match status.code() {
        Code::NotFound => 3,
        Code::AlreadyExists => 4,
        Code::InvalidArgument | Code::OutOfRange => 5,
        Code::FailedPrecondition => 6,
        Code::Unavailable | Code::DeadlineExceeded => 7,
        _ => 1,
    };
    if json {
        let body =
            json!({"error": {"code": format!("{:?}", status.code()), "message": status.message()}});
        println!("{body}");
    }
    eprintln!("error: {}", status.message());
    std::process::exit(code);
}

async fn connect(client: &ClientArgs) -> anyhow::Result<RegistryClient<Channel>> {
    let endpoint = if client.server.contains("://") {
        client.server.clone()
    } else {
        format!("http://{}", client.server)
    };
    let channel = Channel::from_shared(endpoint.clone())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            tonic::Status::unavailable(format!("cannot reach the registry at {endpoint}: {e}"))
        })?;
    Ok(RegistryClient::new(channel))
}

async fn expert(args: ExpertArgs) -> anyhow::Result<()> {
    let json = args.client.json;
    let mut client = connect(&args.client).await?;
    match args.command {
        ExpertCommand::Add(add) => {
            let record = add_expert(&mut client, add, json).await?;
            print_record(&record, json);
        }
        ExpertCommand::Rm { name, force } => {
            let removed = client
                .remove_expert(pb::RemoveExpertRequest { name, force })
                .await?
                .into_inner();
            if json {
                let body = json!({"name": removed.name, "revision": removed.revision, "remapped_categories": removed.remapped_categories});
                println!("{body}");
            } else if removed.remapped_categories.is_empty() {
                println!("removed {} (revision {})", removed.name, removed.revision);
            } else {
                println!(
                    "removed {} (revision {}); remapped to the fallback: {}",
                    removed.name,
                    removed.revision,
                    removed.remapped_categories.join(", ")
                );
            }
        }
        ExpertCommand::Ls => {
            let list = client
                .list_experts(pb::ListExpertsRequest {})
                .await?
                .into_inner();
            if json {
                let experts: Vec<Value> = list.experts.iter().map(record_json).collect();
                println!("{}", json!({"revision": list.revision, "experts": experts}));
            } else {
                print_table(&list.experts);
            }
        }
        ExpertCommand::Show { name } => {
            let record = client
                .get_expert(pb::GetExpertRequest { name })
                .await?
                .into_inner();
            print_record(&record, json);
        }
        ExpertCommand::Pin { name } => place(&mut client, name, json, |p| p.pinned = true).await?,
        ExpertCommand::Unpin { name } => {
            place(&mut client, name, json, |p| p.pinned = false).await?
        }
        ExpertCommand::Move { name, tier, worker } => {
            let tier = pb::Tier::from(tier);
            place(&mut client, name, json, |p| {
                p.tier = tier as i32;
                if let Some(worker) = worker {
                    p.worker = worker;
                }
            })
            .await?
        }
    }
    Ok(())
}

/// Sends the add. A manifest model is fetched and verified here first, with a progress bar; then a
/// spinner runs while the registry checks and hashes the file, which takes seconds for a large model.
async fn add_expert(
    client: &mut RegistryClient<Channel>,
    add: AddArgs,
    json: bool,
) -> anyhow::Result<pb::ExpertRecord> {
    let (source, shown) = match (add.file, add.model) {
        (Some(file), _) => {
            // The registry resolves paths on its own host: send an absolute one.
            let path = std::path::absolute(&file)
                .with_context(|| format!("resolving {}", file.display()))?;
            let shown = path.display().to_string();
            (pb::expert_source::Source::Path(shown.clone()), shown)
        }
        (None, Some(model)) => {
            if let Err(e) = coe_fetch::Manifest::embedded().model(&model) {
                return Err(tonic::Status::not_found(e.to_string()).into());
            }
            // A taken name fails now rather than after a download of a gigabyte; the registry
            // checks again.
            let name = pb::GetExpertRequest {
                name: add.name.clone(),
            };
            if client.get_expert(name).await.is_ok() {
                return Err(tonic::Status::already_exists(format!(
                    "expert {:?} already exists; remove it first or pick another name",
                    add.name
                ))
                .into());
            }
            let home = coe_fetch::coe_home();
            let name = model.clone();
            tokio::task::spawn_blocking(move || crate::models::fetch_with_progress(&home, &name))
                .await??;
            (pb::expert_source::Source::Model(model.clone()), model)
        }
        (None, None) => anyhow::bail!("give --file PATH or --model NAME"),
    };
    let placement = if add.worker.is_some() || add.tier.is_some() || add.pin {
        Some(pb::Placement {
            worker: add.worker.unwrap_or_default(),
            tier: add.tier.map_or(pb::Tier::Storage, pb::Tier::from) as i32,
            pinned: add.pin,
        })
    } else {
        None
    };
    let request = pb::AddExpertRequest {
        name: add.name.clone(),
        source: Some(pb::ExpertSource {
            source: Some(source),
        }),
        sha256: add.sha256.unwrap_or_default(),
        categories: add.categories,
        skills: add
            .skills
            .into_iter()
            .map(|(name, score)| pb::Skill { name, score })
            .collect(),
        placement,
    };
    let spinner = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("the registry is checking and hashing {shown}"));
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    };
    let result = client.add_expert(request).await;
    spinner.finish_and_clear();
    Ok(result?.into_inner())
}

/// Reads the expert, changes its placement, and writes it back.
async fn place(
    client: &mut RegistryClient<Channel>,
    name: String,
    json: bool,
    change: impl FnOnce(&mut pb::Placement),
) -> anyhow::Result<()> {
    let record = client
        .get_expert(pb::GetExpertRequest { name: name.clone() })
        .await?
        .into_inner();
    // No placement yet: any worker, and the tier left to the worker's policy (a pin alone must not
    // move the expert).
    let mut placement = record.placement.unwrap_or(pb::Placement {
        worker: String::new(),
        tier: pb::Tier::Unspecified as i32,
        pinned: false,
    });
    change(&mut placement);
    let record = client
        .assign_expert(pb::AssignExpertRequest {
            name,
            placement: Some(placement),
        })
        .await?
        .into_inner();
    print_record(&record, json);
    Ok(())
}

async fn map(args: MapArgs) -> anyhow::Result<()> {
    let json = args.client.json;
    let mut client = connect(&args.client).await?;
    let map = match args.command {
        MapCommand::Show { version } => {
            client
                .get_category_map(pb::GetCategoryMapRequest { version })
                .await?
        }
        MapCommand::Set {
            categories,
            fallback,
            threshold,
        } => {
            let map = pb::CategoryMap {
                version: 0,
                category_to_expert: categories.into_iter().collect(),
                fallback_expert: fallback,
                confidence_threshold: threshold,
            };
            client
                .set_category_map(pb::SetCategoryMapRequest { map: Some(map) })
                .await?
        }
        MapCommand::Rollback { version } => {
            client
                .rollback_category_map(pb::RollbackCategoryMapRequest {
                    to_version: version,
                })
                .await?
        }
    }
    .into_inner();
    if json {
        let body = json!({
            "version": map.version,
            "category_to_expert": map.category_to_expert,
            "fallback_expert": map.fallback_expert,
            "confidence_threshold": f32_json(map.confidence_threshold),
        });
        println!("{body}");
    } else if map.version == 0 {
        println!("no category map yet; set one with `coe map set`");
    } else {
        println!(
            "version {}  fallback {}  threshold {}",
            map.version, map.fallback_expert, map.confidence_threshold
        );
        let mut rows: Vec<Vec<String>> = vec![vec!["CATEGORY".into(), "EXPERT".into()]];
        let mut pairs: Vec<_> = map.category_to_expert.into_iter().collect();
        pairs.sort();
        rows.extend(pairs.into_iter().map(|(c, e)| vec![c, e]));
        print_rows(&rows);
    }
    Ok(())
}

fn record_json(record: &pb::ExpertRecord) -> Value {
    let placement = record
        .placement
        .as_ref()
        .map(|p| json!({"worker": p.worker, "tier": tier_name(p.tier), "pinned": p.pinned}));
    let skills: Vec<Value> = record
        .skills
        .iter()
        .map(|s| json!({"name": s.name, "score": f32_json(s.score)}))
        .collect();
    json!({
        "name": record.name,
        "path": record.path,
        "sha256": record.sha256,
        "size_bytes": record.size_bytes,
        "architecture": record.architecture,
        "categories": record.categories,
        "skills": skills,
        "placement": placement,
        "revision": record.revision,
    })
}

/// Through the f32's shortest decimal, so 0.3 prints as 0.3, not 0.30000001192092896.
fn f32_json(value: f32) -> Value {
    json!(value.to_string().parse::<f64>().unwrap_or_default())
}

fn print_record(record: &pb::ExpertRecord, json: bool) {
    if json {
        println!("{}", record_json(record));
        return;
    }
    let placement = record.placement.clone().unwrap_or_default();
    let skills: Vec<String> = record
        .skills
        .iter()
        .map(|s| format!("{}={:.2}", s.name, s.score))
        .collect();
    let fields = [
        ("name", record.name.clone()),
        ("path", record.path.clone()),
        ("sha256", record.sha256.clone()),
        ("size", human_bytes(record.size_bytes)),
        ("architecture", record.architecture.clone()),
        ("categories", or_dash(record.categories.join(", "))),
        ("skills", or_dash(skills.join(", "))),
        ("worker", or_dash(placement.worker)),
        ("tier", tier_name(placement.tier)),
        ("pinned", placement.pinned.to_string()),
        ("revision", record.revision.to_string()),
    ];
    for (key, value) in fields {
        println!("{key:<13}{value}");
    }
}

fn print_table(experts: &[pb::ExpertRecord]) {
    let header = [
        "NAME",
        "ARCH",
        "SIZE",
        "CATEGORIES",
        "WORKER",
        "TIER",
        "PINNED",
        "REV",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for record in experts {
        let placement = record.placement.clone().unwrap_or_default();
        rows.push(vec![
            record.name.clone(),
            record.architecture.clone(),
            human_bytes(record.size_bytes),
            or_dash(record.categories.join(",")),
            or_dash(placement.worker),
            tier_name(placement.tier),
            if placement.pinned { "yes" } else { "no" }.into(),
            record.revision.to_string(),
        ]);
    }
    print_rows(&rows);
}

fn print_rows(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
