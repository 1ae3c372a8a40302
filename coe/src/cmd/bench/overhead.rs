//! `coe bench overhead`: what routing adds to the time to first token. Starts a worker and a router
//! on loopback in this process, then alternates the same request sent through the router
//! (classified, then dispatched) and sent to the worker directly (the routed request's expert), and
//! compares the p50 times to the first token with the router's own classification p50.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use coe_core::ExpertName;
use coe_expert_worker::{ExpertSpec, WorkerConfig};
use coe_proto::v1 as pb;
use pb::expert_worker_client::ExpertWorkerClient;
use pb::router_client::RouterClient;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;

use crate::models::{gguf_path, DEFAULT_EXPERTS};

#[derive(Args)]
pub struct OverheadArgs {
    /// Request pairs (routed + direct) measured; at least 50.
    #[arg(long, default_value_t = 60)]
    pub requests: usize,
    /// Pairs run first and not counted.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// The user message of every request.
    #[arg(long, default_value = "What is the capital of France?")]
    pub prompt: String,
    #[arg(long, env = "COE_HOME")]
    pub home: Option<PathBuf>,
}

pub async fn run(args: OverheadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.requests >= 50, "--requests must be at least 50");
    let home = args.home.clone().unwrap_or_else(coe_fetch::coe_home);
    let mut experts = Vec::new();
    for name in DEFAULT_EXPERTS {
        let (h, n) = (home.clone(), name.to_string());
        let path = tokio::task::spawn_blocking(move || gguf_path(&h, &n)).await??;
        experts.push(ExpertSpec {
            name: ExpertName::parse(name)?,
            path,
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let worker_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let worker_addr = worker_listener.local_addr()?;
    let worker = tokio::spawn(coe_expert_worker::serve(
        WorkerConfig {
            worker_id: "bench-worker".into(),
            experts,
            queue_capacity: 8,
            max_active: 1,
            max_context: 2048,
            budgets: Default::default(),
            follow: None,
        },
        worker_listener,
        stopped(stop_rx.clone()),
    ));
    let router_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let router_addr = router_listener.local_addr()?;
    let mut config = coe_router::RouterConfig::new(vec![worker_addr.to_string()]);
    config.home = home;
    let router = tokio::spawn(coe_router::serve(
        config,
        router_listener,
        stopped(stop_rx.clone()),
    ));

    let router_channel = channel(router_addr).await?;
    wait_serving(router_channel.clone()).await?;
    let mut routed = RouterClient::new(router_channel);
    let mut direct = ExpertWorkerClient::new(channel(worker_addr).await?);

    let mut routed_ms = Vec::new();
    let mut direct_ms = Vec::new();
    let mut classify_ms = Vec::new();
    let mut expert = String::new();
    eprintln!("measuring {} request pairs ...", args.requests);
    for i in 0..args.warmup + args.requests {
        let (ttft, decision) = routed_ttft(&mut routed, &args.prompt).await?;
        expert = decision.experts.first().cloned().unwrap_or_default();
        let direct_ttft = direct_ttft(&mut direct, &args.prompt, &expert).await?;
        if i >= args.warmup {
            routed_ms.push(ttft);
            direct_ms.push(direct_ttft);
            classify_ms.push(decision.classify_ms);
        }
    }
    let _ = stop_tx.send(true);
    router.await??;
    worker.await??;

    println!(
        "time to first token, {} requests each, expert {expert}",
        args.requests
    );
    println!(
        "{:<26} {:>9} {:>9} {:>9}",
        "path", "p50 ms", "p90 ms", "mean ms"
    );
    for (name, xs) in [
        ("routed (router -> worker)", &routed_ms),
        ("direct (worker)", &direct_ms),
        ("classify (in router)", &classify_ms),
    ] {
        println!(
            "{name:<26} {:>9.2} {:>9.2} {:>9.2}",
            quantile(xs, 0.5),
            quantile(xs, 0.9),
            xs.iter().sum::<f64>() / xs.len() as f64
        );
    }
    // Each pair ran back to back, so the median of the pairs' differences cancels the drift of a
    // machine whose load changes during the run; the difference of the two medians is shown too.
    let paired: Vec<f64> = routed_ms
        .iter()
        .zip(&direct_ms)
        .map(|(r, d)| r - d)
        .collect();
    let overhead = quantile(&paired, 0.5);
    let classify = quantile(&classify_ms, 0.5);
    println!(
        "{:<26} {:>9.2} {:>9.2} {:>9.2}",
        "routed - direct (paired)",
        overhead,
        quantile(&paired, 0.9),
        paired.iter().sum::<f64>() / paired.len() as f64
    );
    let verdict = if overhead <= classify + 1.0 {
        "met"
    } else {
        "not met"
    };
    println!(
        "p50(routed) - p50(direct) = {:.2} ms; routed/direct p50 ratio {:.3}; goal overhead <= classify p50 + 1 ms: {verdict}",
        quantile(&routed_ms, 0.5) - quantile(&direct_ms, 0.5),
        quantile(&routed_ms, 0.5) / quantile(&direct_ms, 0.5),
    );
    println!("overhead_ms={overhead:.3} classify_p50_ms={classify:.3}");
    Ok(())
}

fn sampling() -> Option<pb::SamplingParams> {
    Some(pb::SamplingParams {
        max_tokens: Some(1),
        temperature: Some(0.0),
        ..Default::default()
    })
}

fn user(prompt: &str) -> Vec<pb::ChatMessage> {
    vec![pb::ChatMessage {
        role: pb::Role::User as i32,
        content: prompt.to_string(),
    }]
}

/// Milliseconds from sending to the first token chunk, and the router's decision.
async fn routed_ttft(
    client: &mut RouterClient<Channel>,
    prompt: &str,
) -> anyhow::Result<(f64, pb::RouteDecision)> {
    let started = Instant::now();
    let request = pb::RouteRequest {
        messages: user(prompt),
        sampling: sampling(),
        ..Default::default()
    };
    let mut stream = client.generate(request).await?.into_inner();
    let mut decision = None;
    let mut first = None;
    while let Some(m) = stream.message().await? {
        match m.event {
            Some(pb::route_response::Event::Decision(d)) => decision = Some(d),
            Some(pb::route_response::Event::Chunk(_)) if first.is_none() => {
                first = Some(started.elapsed())
            }
            _ => {}
        }
    }
    Ok((
        ms(first.context("the routed answer had no token")?),
        decision.context("the routed answer had no decision")?,
    ))
}

async fn direct_ttft(
    client: &mut ExpertWorkerClient<Channel>,
    prompt: &str,
    expert: &str,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let request = pb::GenerateRequest {
        expert: expert.to_string(),
        messages: user(prompt),
        sampling: sampling(),
        ..Default::default()
    };
    let mut stream = client.generate(request).await?.into_inner();
    let mut first = None;
    while let Some(m) = stream.message().await? {
        if let Some(pb::generate_response::Event::Chunk(_)) = m.event {
            first.get_or_insert_with(|| started.elapsed());
        }
    }
    Ok(ms(first.context("the direct answer had no token")?))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

async fn channel(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?,
    )
}

/// Polls the router's health until SERVING (it loads the embedder and waits for the worker).
async fn wait_serving(channel: Channel) -> anyhow::Result<()> {
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the router did not become SERVING in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
