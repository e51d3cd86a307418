//! `qrt inspect`.

use std::path::PathBuf;

use qrt_format::container::{MetaValue, QrtFile};

/// Arguments of `qrt inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The .qrt file.
    model: PathBuf,
    /// Recompute and check every tensor's checksum.
    #[arg(long)]
    verify: bool,
    /// List every tensor (default: a summary per storage type).
    #[arg(long)]
    tensors: bool,
}

fn show(v: &MetaValue) -> String {
    match v {
        MetaValue::Str(s) if s.len() > 72 => format!(
            "{:?}… ({} bytes)",
            s.chars().take(60).collect::<String>(),
            s.len()
        ),
        MetaValue::Str(s) => format!("{s:?}"),
        MetaValue::Array(a) if a.len() > 8 => format!("[{} items]", a.len()),
        MetaValue::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}")
            .split_once('(')
            .map_or(String::new(), |(_, r)| r.trim_end_matches(')').to_string()),
    }
}

/// Prints metadata, tensors and sizes; with `--verify`, checks checksums.
pub fn run(args: Args) -> anyhow::Result<()> {
    let file = QrtFile::open(&args.model)?;
    let (major, minor) = file.version();
    println!(
        "{}: qrt format {major}.{minor}, {} bytes",
        args.model.display(),
        file.file_size()
    );
    println!("\nmetadata ({} keys):", file.metadata().len());
    for (k, v) in file.metadata().iter() {
        println!("  {k:<48} {}", show(v));
    }
    let mut by_type: Vec<(String, usize, u64, u64)> = Vec::new();
    if args.tensors {
        println!(
            "\n{:<52} {:<16} {:<8} {:>12} {:>6}",
            "tensor", "shape", "storage", "bytes", "bpw"
        );
    }
    let (mut total_bytes, mut total_params) = (0u64, 0u64);
    for t in file.tensors() {
        let bpw = t.nbytes() as f64 * 8.0 / t.numel() as f64;
        if args.tensors {
            let shape = format!("{:?}", t.shape);
            println!(
                "{:<52} {:<16} {:<8} {:>12} {:>6.2}",
                t.name,
                shape,
                t.storage.name,
                t.nbytes(),
                bpw
            );
        }
        match by_type.iter_mut().find(|e| e.0 == t.storage.name) {
            Some(e) => {
                e.1 += 1;
                e.2 += t.numel();
                e.3 += t.nbytes();
            }
            None => by_type.push((t.storage.name.clone(), 1, t.numel(), t.nbytes())),
        }
        total_bytes += t.nbytes();
        total_params += t.numel();
    }
    println!(
        "\n{:<10} {:>8} {:>14} {:>14} {:>6}",
        "storage", "tensors", "parameters", "bytes", "bpw"
    );
    for (name, n, params, bytes) in &by_type {
        println!(
            "{name:<10} {n:>8} {params:>14} {bytes:>14} {:>6.2}",
            *bytes as f64 * 8.0 / *params as f64
        );
    }
    println!(
        "{:<10} {:>8} {total_params:>14} {total_bytes:>14} {:>6.2}",
        "total",
        file.tensors().len(),
        total_bytes as f64 * 8.0 / total_params.max(1) as f64
    );
    if args.verify {
        file.verify()?;
        println!("\nchecksums: all {} tensors verified", file.tensors().len());
    }
    Ok(())
}
