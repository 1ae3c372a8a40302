//! `coe ask`: asks the router, prints its routing decision, then streams the answer to the terminal.
use std::io::Write;

use anyhow::Context;
use clap::Args;
use coe_proto::v1 as pb;
use pb::router_client::RouterClient;

#[derive(Args)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    /// Send to this expert and skip classification; default: the expert the router picks.
    #[arg(long, env = "COE_EXPERT")]
    pub expert: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Server address.
    #[arg(long, env = "COE_SERVER", default_value = "127.0.0.1:50051")]
    pub server: String,
}

pub async fn run(args: AskArgs) -> anyhow::Result<()> {
    let endpoint = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let mut client = RouterClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let request = pb::RouteRequest {
        messages: vec![pb::ChatMessage {
            role: pb::Role::User as i32,
            content: args.question,
        }],
        sampling: Some(pb::SamplingParams {
            max_tokens: Some(args.max_tokens),
            temperature: Some(args.temperature),
            seed: args.seed,
            ..Default::default()
        }),
        expert: args.expert.unwrap_or_default(),
        ..Default::default()
    };
    let mut stream = match client.generate(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => anyhow::bail!(
            "{endpoint} serves no router (a worker or registry alone?); ask `coe serve` or `coe router`"
        ),
        Err(status) => anyhow::bail!("{}: {}", status.code(), status.message()),
    };
    let mut stdout = std::io::stdout();
    while let Some(message) = stream
        .message()
        .await
        .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?
    {
        match message.event {
            Some(pb::route_response::Event::Decision(decision)) => {
                writeln!(stdout, "{}", describe(&decision))?;
            }
            Some(pb::route_response::Event::Chunk(chunk)) => {
                stdout.write_all(chunk.text.as_bytes())?;
                stdout.flush()?;
            }
            Some(pb::route_response::Event::Done(done)) => {
                println!();
                let usage = done.usage.unwrap_or_default();
                eprintln!(
                    "[{:?}: {} prompt + {} completion tokens, first token {:.0} ms, {:.1} tokens/s]",
                    pb::FinishReason::try_from(done.finish_reason).unwrap_or_default(),
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.time_to_first_token_ms,
                    usage.decode_tokens_per_second
                );
            }
            None => {}
        }
    }
    Ok(())
}

/// The decision as the user sees it, e.g.
/// `[route] expert=qwen2.5-coder-0.5b-instruct reason=top_category categories: code 0.91, math 0.04 ...`
fn describe(d: &pb::RouteDecision) -> String {
    let reason = match pb::RouteReason::try_from(d.reason).unwrap_or_default() {
        pb::RouteReason::TopCategory => "top_category",
        pb::RouteReason::LowConfidenceFallback => "low_confidence_fallback",
        pb::RouteReason::ExplicitExpert => "explicit_expert",
        pb::RouteReason::MultiExpert => "multi_expert",
        pb::RouteReason::Unspecified => "unspecified",
    };
    let categories: Vec<String> = d
        .categories
        .iter()
        .map(|c| format!("{} {:.2}", c.category, c.probability))
        .collect();
    let mut line = format!(
        "[route] expert={} reason={reason} threshold={:.2} classify_ms={:.1}",
        d.experts.join("+"),
        d.threshold,
        d.classify_ms
    );
    if !categories.is_empty() {
        line.push_str(&format!("\n[route] categories: {}", categories.join(", ")));
    }
    line
}
