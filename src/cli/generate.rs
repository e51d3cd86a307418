//! `qrt generate`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use qrt_bench::Throughput;
use qrt_runtime::backend::Backend;
use qrt_runtime::engine::SeqRequest;
use qrt_runtime::model_file::ModelFile;
use qrt_runtime::sampling::SamplingParams;
use qrt_runtime::textgen::{generate, GenerationEvent};
use qrt_runtime::tokenizer::{render_chat, ChatMessage, CHATML_TEMPLATE};

/// Arguments of `qrt generate`.
#[derive(clap::Args)]
pub struct Args {
    /// The .qrt model.
    #[arg(long)]
    model: PathBuf,
    /// The prompt; repeat to generate for several prompts in one batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Wrap the prompt in the model's chat template (ChatML when it has none).
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the output contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    device: super::device::DeviceArgs,
}

/// Generates, streaming the text of a single prompt, then prints throughput.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.prompt.iter().any(|p| p.is_empty()) {
        bail!("the prompt is empty");
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) || args.temperature < 0.0 {
        bail!("--top-p must be in (0, 1] and --temperature at least 0");
    }
    let mf = ModelFile::open(&args.model)?;
    let mut requests = Vec::new();
    for (i, prompt) in args.prompt.iter().enumerate() {
        let text = if args.chat {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage {
                    role: "system".into(),
                    content: system.clone(),
                });
            }
            messages.push(ChatMessage {
                role: "user".into(),
                content: prompt.clone(),
            });
            let token_text =
                |id: Option<u32>| id.and_then(|i| mf.tokenizer.token(i)).unwrap_or_default();
            let template = mf.chat_template.as_deref().unwrap_or(CHATML_TEMPLATE);
            render_chat(
                template,
                &messages,
                &token_text(mf.config.bos_token_id),
                &token_text(mf.config.eos_token_ids.first().copied()),
            )?
        } else {
            prompt.clone()
        };
        requests.push(SeqRequest {
            prompt: mf.tokenizer.encode(&text)?,
            max_new_tokens: args.max_tokens,
            sampling: SamplingParams {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
            },
            seed: args.seed.wrapping_add(i as u64),
        });
    }
    let kv_tokens: usize = requests
        .iter()
        .map(|r| r.prompt.len() + r.max_new_tokens)
        .sum();
    super::device::with_engine!(args.device, &mf, kv_tokens, |engine| {
        stream(&mut engine, &mf, &args, requests)
    })
}

/// Runs `requests` on `engine`, streaming a single prompt's text, and prints throughput.
fn stream<B: Backend>(
    engine: &mut qrt_runtime::engine::Engine<B>,
    mf: &ModelFile,
    args: &Args,
    requests: Vec<SeqRequest>,
) -> anyhow::Result<()> {
    let single = requests.len() == 1;
    if single {
        print!("{}", args.prompt[0]);
    }
    let mut stdout = std::io::stdout();
    let (completions, timing) = generate(
        engine,
        &mf.tokenizer,
        requests,
        &mf.config.eos_token_ids,
        &args.stop,
        |event| {
            if let (true, GenerationEvent::Text(_, text)) = (single, event) {
                print!("{text}");
                let _ = stdout.flush();
            }
        },
    )?;
    if single {
        println!();
    } else {
        for (i, c) in completions.iter().enumerate() {
            println!("--- [{i}] {:?}\n{}{}", c.finish, args.prompt[i], c.text);
        }
    }
    let generated: usize = completions.iter().map(|c| c.tokens.len()).sum();
    let throughput = Throughput::new(
        timing.prompt_tokens,
        timing.prefill,
        timing.decode_tokens,
        timing.decode,
    );
    eprintln!(
        "\n{generated} tokens generated; {throughput} [{}]",
        engine.backend().describe()
    );
    Ok(())
}
