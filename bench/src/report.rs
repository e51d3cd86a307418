//! Results of `qrt bench`: per-batch-size measurements, the report around them, its text
//! tables and its JSON file.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::stats::Summary;

const MIB: f64 = (1u64 << 20) as f64;
const GB: f64 = 1e9;

/// Measurements at one batch size: every sequence in the batch reads a `prompt_len`-token
/// prompt, then `gen_len` tokens are generated for each.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchResult {
    /// Sequences processed together.
    pub batch: usize,
    /// Prompt tokens per sequence.
    pub prompt_len: usize,
    /// Generated tokens per sequence.
    pub gen_len: usize,
    /// Milliseconds to read the whole batch of prompts and produce the first token.
    pub prefill_ms: Summary,
    /// Milliseconds of one decode step for the whole batch.
    pub decode_step_ms: Summary,
    /// Generated tokens per second: `batch * 1000 / decode_step_ms.median`.
    pub decode_tokens_per_s: f64,
    /// Prompt tokens read per second: `batch * prompt_len * 1000 / prefill_ms.median`.
    pub prefill_tokens_per_s: f64,
    /// KV cache bytes in use at the end of the run.
    pub kv_bytes: u64,
    /// Bytes one decode step must read: the weights plus the KV cache.
    pub bytes_per_step: u64,
    /// Achieved fraction of the memory roofline, from [`roofline_fraction`] with the median
    /// step time; 0 when the copy bandwidth is unknown.
    pub roofline_fraction: f64,
    /// Device memory at its peak while this batch size ran.
    #[serde(flatten)]
    pub peak_memory: PeakMemory,
}

/// Device memory at its peak over a stretch of work; `None` where it is not measured (the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PeakMemory {
    /// What qrt's allocator held: the weights, the KV cache and the activations.
    pub peak_device_bytes_allocator: Option<u64>,
    /// What NVML saw in use on the whole device: qrt's allocations, its CUDA context and
    /// whatever other processes hold.
    pub peak_device_bytes_nvml: Option<u64>,
}

impl BatchResult {
    /// Derives the rates and the roofline fraction from the measurements.
    /// `copy_bandwidth_gbs` is the measured device copy bandwidth as in
    /// [`BenchReport::copy_bandwidth_gbs`]; `None` gives a roofline fraction of 0.
    #[allow(clippy::too_many_arguments)] // every argument is a distinct measurement
    pub fn new(
        batch: usize,
        prompt_len: usize,
        gen_len: usize,
        prefill_ms: Summary,
        decode_step_ms: Summary,
        kv_bytes: u64,
        bytes_per_step: u64,
        copy_bandwidth_gbs: Option<f64>,
    ) -> BatchResult {
        let step_seconds = decode_step_ms.median / 1000.0;
        BatchResult {
            batch,
            prompt_len,
            gen_len,
            prefill_ms,
            decode_step_ms,
            decode_tokens_per_s: per_second(batch as f64, decode_step_ms.median),
            prefill_tokens_per_s: per_second((batch * prompt_len) as f64, prefill_ms.median),
            kv_bytes,
            bytes_per_step,
            roofline_fraction: roofline_fraction(
                bytes_per_step,
                step_seconds,
                copy_bandwidth_gbs.unwrap_or(0.0) * GB,
            ),
            peak_memory: PeakMemory::default(),
        }
    }

    /// The same result with its peak device memory.
    pub fn with_peak_memory(self, peak_memory: PeakMemory) -> BatchResult {
        BatchResult {
            peak_memory,
            ..self
        }
    }
}

/// `count` items per `ms` milliseconds, as a per-second rate; 0 when `ms` is not a positive
/// finite number.
fn per_second(count: f64, ms: f64) -> f64 {
    if ms > 0.0 && ms.is_finite() {
        count * 1000.0 / ms
    } else {
        0.0
    }
}

/// How close a memory-bound step came to the device's measured copy speed:
/// `bytes_per_step / step_seconds / copy_bytes_per_s`. 0 when any input is 0, negative or
/// not finite (an unknown bandwidth is passed as 0).
pub fn roofline_fraction(bytes_per_step: u64, step_seconds: f64, copy_bytes_per_s: f64) -> f64 {
    let valid = |x: f64| x > 0.0 && x.is_finite();
    if bytes_per_step == 0 || !valid(step_seconds) || !valid(copy_bytes_per_s) {
        return 0.0;
    }
    bytes_per_step as f64 / step_seconds / copy_bytes_per_s
}

/// One `qrt bench` run: what was measured, on what, and the results per batch size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// Version of qrt that ran the benchmark.
    pub qrt_version: String,
    /// Path of the model file.
    pub model: String,
    /// Model name from its metadata.
    pub model_name: String,
    /// Weight storage type.
    pub dtype: String,
    /// Description of the device that ran the model.
    pub device: String,
    /// Size of the model's weights in bytes.
    pub model_bytes: u64,
    /// Measured device copy bandwidth in GB/s (1e9 bytes per second), counting both the
    /// bytes read and the bytes written.
    pub copy_bandwidth_gbs: Option<f64>,
    /// Untimed iterations before the timed ones.
    pub warmup: usize,
    /// Timed iterations.
    pub iters: usize,
    /// One entry per batch size.
    pub results: Vec<BatchResult>,
    /// Command line that produced the report.
    pub command: String,
    /// When the run finished, in seconds since the Unix epoch.
    pub timestamp_unix: u64,
}

impl BenchReport {
    /// A fixed-width text rendering: a header block describing the run, then one row per
    /// batch size. Values that were not measured print as "n/a".
    pub fn table(&self) -> String {
        let mut out = String::new();
        let header = [
            ("qrt version", self.qrt_version.clone()),
            (
                "model",
                if self.model_name.is_empty() {
                    self.model.clone()
                } else {
                    format!("{} ({})", self.model_name, self.model)
                },
            ),
            ("dtype", self.dtype.clone()),
            ("device", self.device.clone()),
            ("model size", format!("{} MiB", mib(self.model_bytes))),
            (
                "copy bandwidth",
                opt(self.copy_bandwidth_gbs, |g| format!("{g:.1} GB/s")),
            ),
            (
                "iterations",
                format!("{} warmup, {} timed", self.warmup, self.iters),
            ),
        ];
        for (key, value) in header {
            // "copy bandwidth:" is the longest label, 15 characters.
            let _ = writeln!(out, "{:<15} {value}", format!("{key}:"));
        }
        out.push('\n');
        let columns = [
            ("batch", Align::Right),
            ("prompt", Align::Right),
            ("gen", Align::Right),
            ("prefill ms", Align::Right),
            ("decode ms/step", Align::Right),
            ("tok/s", Align::Right),
            ("KV MiB", Align::Right),
            ("peak MiB", Align::Right),
            ("NVML MiB", Align::Right),
            ("GB/step", Align::Right),
            ("roofline %", Align::Right),
        ];
        let rows: Vec<Vec<String>> = self
            .results
            .iter()
            .map(|r| {
                vec![
                    r.batch.to_string(),
                    r.prompt_len.to_string(),
                    r.gen_len.to_string(),
                    plus_minus(&r.prefill_ms),
                    plus_minus(&r.decode_step_ms),
                    format!("{:.1}", r.decode_tokens_per_s),
                    format!("{:.1}", r.kv_bytes as f64 / MIB),
                    opt(r.peak_memory.peak_device_bytes_allocator, mib),
                    opt(r.peak_memory.peak_device_bytes_nvml, mib),
                    format!("{:.3}", r.bytes_per_step as f64 / GB),
                    percent(Some(r.roofline_fraction)),
                ]
            })
            .collect();
        out.push_str(&render(&columns, &rows));
        out
    }
}

/// Speed of one kernel at one shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelResult {
    /// Kernel name.
    pub kernel: String,
    /// Problem shape, for example "m=1 n=4096 k=4096".
    pub shape: String,
    /// Data type of the kernel's weights or inputs.
    pub dtype: String,
    /// Median time per call in microseconds.
    pub median_us: f64,
    /// Fastest call in microseconds.
    pub min_us: f64,
    /// Memory throughput at the median time, GB/s (1e9 bytes per second).
    pub gbs: f64,
    /// Arithmetic throughput at the median time, TFLOP/s.
    pub tflops: f64,
    /// Fraction of the memory roofline reached, when the copy bandwidth is known.
    pub roofline_fraction: Option<f64>,
}

/// A fixed-width text table with one row per kernel result; an unknown roofline fraction
/// prints as "n/a".
pub fn kernel_table(rows: &[KernelResult]) -> String {
    let columns = [
        ("kernel", Align::Left),
        ("shape", Align::Left),
        ("dtype", Align::Left),
        ("median us", Align::Right),
        ("min us", Align::Right),
        ("GB/s", Align::Right),
        ("TFLOP/s", Align::Right),
        ("roofline %", Align::Right),
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.kernel.clone(),
                r.shape.clone(),
                r.dtype.clone(),
                format!("{:.2}", r.median_us),
                format!("{:.2}", r.min_us),
                format!("{:.1}", r.gbs),
                format!("{:.3}", r.tflops),
                percent(r.roofline_fraction),
            ]
        })
        .collect();
    render(&columns, &cells)
}

/// The results of `qrt bench kernels`.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    /// The `qrt` version that measured.
    pub qrt_version: String,
    /// The device.
    pub device: String,
    /// Measured device copy bandwidth, GB/s (bytes read plus written).
    pub copy_bandwidth_gbs: f64,
    /// One row per kernel and shape.
    pub results: Vec<KernelResult>,
}

/// Writes `report` (a [`BenchReport`] or any other serializable result) as pretty-printed JSON
/// to `path`, atomically (see [`write_atomic`]).
pub fn write_json<T: Serialize>(report: &T, path: &Path) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(report)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically: they go to `<path>.tmp` in the same directory, are
/// flushed to disk, and the file is then renamed over `path`. An interrupted write leaves at
/// most a stray `.tmp` file, never a truncated `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = write_synced(bytes, &tmp).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        // Best effort: the error being returned is the one that matters.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

fn write_synced(bytes: &[u8], path: &Path) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Lays out `rows` under `columns` (title, alignment), each column as wide as its widest
/// cell, with a dashed rule under the titles.
fn render(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([title.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let _ = match columns[i].1 {
                Align::Left => write!(s, "{cell:<w$}", w = widths[i]),
                Align::Right => write!(s, "{cell:>w$}", w = widths[i]),
            };
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut columns.iter().map(|(title, _)| *title));
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    out.push_str(&line(&mut rule.iter().map(String::as_str)));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// "median ± spread", in milliseconds.
fn plus_minus(s: &Summary) -> String {
    format!("{:.3} ± {:.3}", s.median, s.spread())
}

/// A fraction as a percentage; "n/a" when unknown (`None`, or the 0 that
/// [`roofline_fraction`] returns when it cannot be computed).
fn percent(fraction: Option<f64>) -> String {
    match fraction {
        Some(f) if f > 0.0 && f.is_finite() => format!("{:.1}", f * 100.0),
        _ => "n/a".to_string(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

fn opt<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "n/a".to_string(), show)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(samples: &[f64]) -> Summary {
        Summary::of(samples).unwrap()
    }

    fn report(copy_bandwidth_gbs: Option<f64>) -> BenchReport {
        let results = [1usize, 8, 64]
            .iter()
            .map(|&batch| {
                BatchResult::new(
                    batch,
                    128,
                    32,
                    summary(&[10.0, 12.0, 11.0]),
                    summary(&[2.0, 2.5, 3.0]),
                    batch as u64 * 160 * 4608,
                    270_000_000,
                    copy_bandwidth_gbs,
                )
                .with_peak_memory(PeakMemory {
                    peak_device_bytes_allocator: Some((256 + batch as u64) << 20),
                    peak_device_bytes_nvml: None,
                })
            })
            .collect();
        BenchReport {
            qrt_version: "0.1.0".into(),
            model: "models/smollm2-135m.qrt".into(),
            model_name: "SmolLM2-135M".into(),
            dtype: "f16".into(),
            device: "NVIDIA H200".into(),
            model_bytes: 269_060_736,
            copy_bandwidth_gbs,
            warmup: 2,
            iters: 10,
            results,
            command: "qrt bench models/smollm2-135m.qrt --batch 1,8,64".into(),
            timestamp_unix: 1_790_000_000,
        }
    }

    #[test]
    fn roofline_on_hand_numbers() {
        // 4.8 GB in 2 ms is 2.4e12 B/s; against 3.0e12 B/s that is 0.8.
        let f = roofline_fraction(4_800_000_000, 0.002, 3.0e12);
        assert!((f - 0.8).abs() < 1e-12, "{f}");
        assert_eq!(roofline_fraction(0, 0.002, 3.0e12), 0.0);
        assert_eq!(roofline_fraction(100, 0.0, 3.0e12), 0.0);
        assert_eq!(roofline_fraction(100, 0.002, 0.0), 0.0);
        assert_eq!(roofline_fraction(100, f64::NAN, 3.0e12), 0.0);
        assert_eq!(roofline_fraction(100, 0.002, f64::INFINITY), 0.0);
        assert_eq!(roofline_fraction(100, -1.0, 3.0e12), 0.0);
    }

    #[test]
    fn batch_result_derives_rates_and_roofline() {
        // Median step 2.5 ms for batch 8: 8 * 1000 / 2.5 = 3200 tok/s. Median prefill 11 ms
        // for 8 * 128 = 1024 tokens: 1024000 / 11 tok/s. 270 MB per 2.5 ms = 108 GB/s, which
        // against 3000 GB/s is 0.036.
        let r = BatchResult::new(
            8,
            128,
            32,
            summary(&[10.0, 12.0, 11.0]),
            summary(&[2.0, 2.5, 3.0]),
            1,
            270_000_000,
            Some(3000.0),
        );
        assert!((r.decode_tokens_per_s - 3200.0).abs() < 1e-9);
        assert!((r.prefill_tokens_per_s - 1_024_000.0 / 11.0).abs() < 1e-9);
        assert!((r.roofline_fraction - 0.036).abs() < 1e-12);
        let unknown = BatchResult::new(1, 1, 1, r.prefill_ms, r.decode_step_ms, 1, 1, None);
        assert_eq!(unknown.roofline_fraction, 0.0);
    }

    #[test]
    fn table_has_header_and_every_batch_row() {
        let table = report(Some(3000.0)).table();
        for needle in [
            "SmolLM2-135M (models/smollm2-135m.qrt)",
            "f16",
            "NVIDIA H200",
            "256.6 MiB",
            "3000.0 GB/s",
            "peak MiB",
            "NVML MiB",
            "2 warmup, 10 timed",
            "decode ms/step",
            "11.000 ± 1.000",
            "2.500 ± 0.500",
            "3200.0",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from\n{table}");
        }
        let lines: Vec<&str> = table.lines().collect();
        let title = lines.iter().position(|l| l.starts_with("batch")).unwrap();
        let rows = &lines[title + 2..];
        assert_eq!(rows.len(), 3, "{table}");
        for (row, (batch, peak)) in
            rows.iter()
                .zip([("1", "257.0"), ("8", "264.0"), ("64", "320.0")])
        {
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cells[0], batch, "{row}");
            assert_eq!(cells[1], "128");
            assert_eq!(cells[2], "32");
            // The allocator's peak, then NVML's (not measured).
            assert_eq!(
                cells[cells.len() - 4..cells.len() - 2],
                [peak, "n/a"],
                "{row}"
            );
            // 270 MB per 2.5 ms is 108 GB/s: 3.6 % of 3000 GB/s.
            assert_eq!(cells.last(), Some(&"3.6"), "{row}");
        }
        // All rows and the titles share one width, so the columns line up.
        let width = lines[title].chars().count();
        assert!(rows.iter().all(|r| r.chars().count() == width), "{table}");
    }

    #[test]
    fn a_model_without_a_name_is_shown_by_its_path() {
        let mut unnamed = report(None);
        unnamed.model_name.clear();
        let table = unnamed.table();
        assert!(
            table.contains("model:          models/smollm2-135m.qrt\n"),
            "{table}"
        );
    }

    #[test]
    fn table_prints_n_a_for_missing_values() {
        let table = report(None).table();
        assert!(table.contains("copy bandwidth: n/a"), "{table}");
        let lines: Vec<&str> = table.lines().collect();
        let title = lines.iter().position(|l| l.starts_with("batch")).unwrap();
        for row in &lines[title + 2..] {
            assert!(row.ends_with("n/a"), "{row}");
        }
    }

    #[test]
    fn kernel_table_rows() {
        let rows = [
            KernelResult {
                kernel: "gemv_q4".into(),
                shape: "n=4096 k=4096".into(),
                dtype: "q4".into(),
                median_us: 12.345,
                min_us: 11.0,
                gbs: 2500.0,
                tflops: 0.672,
                roofline_fraction: Some(0.75),
            },
            KernelResult {
                kernel: "rmsnorm".into(),
                shape: "n=4096".into(),
                dtype: "f16".into(),
                median_us: 1.5,
                min_us: 1.25,
                gbs: 10.9,
                tflops: 0.0,
                roofline_fraction: None,
            },
        ];
        let table = kernel_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[2].starts_with("gemv_q4  n=4096 k=4096  q4 "),
            "{table}"
        );
        assert!(
            lines[2].contains("12.35") && lines[2].ends_with("75.0"),
            "{table}"
        );
        assert!(lines[3].starts_with("rmsnorm  n=4096"), "{table}");
        assert!(lines[3].ends_with("n/a"), "{table}");
    }

    #[test]
    fn write_json_round_trips_and_leaves_no_tmp() {
        let dir = std::env::temp_dir().join(format!("qrt-bench-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bench.json");
        fs::write(&path, "old contents").unwrap();
        let report = report(Some(3000.0));
        write_json(&report, &path).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        let read: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(read, serde_json::to_value(&report).unwrap());
        assert_eq!(read["results"][1]["batch"], 8);
        assert_eq!(read["results"][1]["decode_step_ms"]["median"], 2.5);
        assert_eq!(
            read["results"][1]["peak_device_bytes_allocator"],
            264u64 << 20
        );
        assert_eq!(
            read["results"][1].get("peak_device_bytes_nvml"),
            Some(&serde_json::Value::Null)
        );
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["bench.json"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_json_failure_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("qrt-bench-missing-{}", std::process::id()));
        let path = dir.join("bench.json");
        assert!(write_json(&report(None), &path).is_err());
        assert!(!dir.exists());
    }
}
