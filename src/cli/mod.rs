//! One module per subcommand.

pub mod bench;
pub mod convert;
pub mod device;
pub mod eval;
pub mod generate;
pub mod init;
pub mod inspect;
pub mod quantize;
pub mod selftest;

/// The version recorded in files this binary writes.
pub fn qrt_version() -> String {
    format!(
        "qrt {} (git {})",
        env!("CARGO_PKG_VERSION"),
        env!("QRT_GIT_REV")
    )
}

/// A progress bar with an ETA, drawn on stderr.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Storage dtype from its command-line name (`f16`, `bf16` or `f32`; clap restricts the values).
pub fn parse_dtype(name: &str) -> qrt_format::container::ElemType {
    use qrt_format::container::ElemType;
    match name {
        "bf16" => ElemType::BF16,
        "f32" => ElemType::F32,
        _ => ElemType::F16,
    }
}

/// `$QRT_HOME`, default `~/.cache/qrt`.
pub fn qrt_home() -> std::path::PathBuf {
    std::env::var_os("QRT_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/qrt")
        })
}
