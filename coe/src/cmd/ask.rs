//! `coe ask`: streams an answer to the terminal.
use std::io::Write;

use anyhow::Context;
use clap::Args;
use coe_proto::v1 as pb;
use pb::expert_worker_client::ExpertWorkerClient;

#[derive(Args)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    /// Send to this expert; default: the first chat expert the server hosts.
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
    let mut client = ExpertWorkerClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let expert = match args.expert {
        Some(expert) => expert,
        None => {
            let status = client
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            status
                .experts
                .iter()
                .find(|e| e.has_chat_template)
                .or(status.experts.first())
                .map(|e| e.name.clone())
                .context("the server hosts no experts")?
        }
    };
    let request = pb::GenerateRequest {
        request_id: String::new(),
        expert: expert.clone(),
        messages: vec![pb::ChatMessage {
            role: pb::Role::User as i32,
            content: args.question,
        }],
        prompt: String::new(),
        sampling: Some(pb::SamplingParams {
            max_tokens: Some(args.max_tokens),
            temperature: Some(args.temperature),
            seed: args.seed,
            ..Default::default()
        }),
    };
    eprintln!("[expert: {expert}]");
    let mut stream = client.generate(request).await?.into_inner();
    let mut stdout = std::io::stdout();
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(pb::generate_response::Event::Chunk(chunk)) => {
                stdout.write_all(chunk.text.as_bytes())?;
                stdout.flush()?;
            }
            Some(pb::generate_response::Event::Done(done)) => {
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
