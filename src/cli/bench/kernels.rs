//! `qrt bench kernels`: the GEMV (decode) and GEMM (prefill) kernels at the matrix shapes of
//! Llama-3.2-1B and Llama-3.1-8B, timed with CUDA events over weights rotated among copies
//! that together exceed the L2 cache, so that every launch reads from device memory.

use std::path::PathBuf;

use anyhow::bail;
use qrt_bench::report::{kernel_table, write_json, KernelReport, KernelResult};
use qrt_kernels::{CudaDevice, DeviceBuffer, Fusion, GemvInput, Half16, InputNorm, Segment};
use qrt_runtime::sampling::Rng;

/// Arguments of `qrt bench kernels`.
#[derive(clap::Args)]
pub struct Args {
    /// GPU: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Launches per timing.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Timings per kernel and shape (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Results JSON.
    #[arg(long, default_value = "bench-kernels.json")]
    out: PathBuf,
    /// Skip the Llama-3.1-8B shapes.
    #[arg(long)]
    skip_8b: bool,
}

/// The matrices of one layer (and the output head) of a model: (name, [(n, k)] read together).
fn layer_shapes(
    hidden: usize,
    kv: usize,
    ffn: usize,
    vocab: usize,
) -> Vec<(&'static str, Vec<(usize, usize)>)> {
    vec![
        ("qkv", vec![(hidden, hidden), (kv, hidden), (kv, hidden)]),
        ("o", vec![(hidden, hidden)]),
        ("gate_up", vec![(ffn, hidden), (ffn, hidden)]),
        ("down", vec![(hidden, ffn)]),
        ("lm_head", vec![(vocab, hidden)]),
    ]
}

/// Device memory holding at least `count` random 16-bit values (finite, below 2 in magnitude).
fn random_halves(dev: &CudaDevice, count: usize, rng: &mut Rng) -> anyhow::Result<DeviceBuffer> {
    let words: Vec<u64> = (0..count.div_ceil(4))
        .map(|_| rng.next_u64() & 0xBFFF_BFFF_BFFF_BFFF)
        .collect();
    let buf = dev.alloc(words.len() * 8, "benchmark data")?;
    // SAFETY: the buffer holds words.len() u64.
    unsafe { dev.copy_to_device(&words, buf.ptr(), "benchmark data")? };
    Ok(buf)
}

/// (median, minimum) microseconds per launch of `launch(i)` (i rotating over copies of the
/// inputs). The `iters` launches are recorded once into a CUDA graph and the graph is replayed
/// `repeats` times, each replay timed by events: the kernels then follow each other as in a
/// decode step, without the host's launch cost between them, but each after a launch of
/// itself, where in a decode step a product follows a different kernel. With programmatic
/// launch a kernel's weights stream under the tail of the one before, so the figures depend
/// on that kernel (bench/RESULTS.md log 47: a form of the o projection 20% faster here slowed
/// the decode).
fn time_us(
    dev: &CudaDevice,
    iters: usize,
    repeats: usize,
    mut launch: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    launch(0)?;
    dev.synchronize("a warm-up launch")?;
    dev.begin_capture()?;
    let recorded = (0..iters).try_for_each(&mut launch);
    let graph = dev.end_capture();
    recorded?;
    let graph = graph?;
    dev.replay(&graph)?;
    let mut times = Vec::new();
    for _ in 0..repeats {
        let start = dev.record_event()?;
        dev.replay(&graph)?;
        let end = dev.record_event()?;
        times.push(start.elapsed_ms(&end)? as f64 * 1e3 / iters as f64);
    }
    dev.synchronize("the timed launches")?;
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

/// Runs the kernel benchmarks and writes the table and JSON.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ordinal = crate::cli::device::cuda_ordinal(&args.device)?;
    if args.iters == 0 || args.repeats == 0 {
        bail!("--iters and --repeats must be at least 1");
    }
    let dev = CudaDevice::new(ordinal)?;
    let copy_gbs = dev.copy_bandwidth(1 << 30, 10)? / 1e9;
    println!(
        "{}: copy bandwidth {copy_gbs:.0} GB/s (read + write)",
        dev.name()
    );
    let mut models = vec![("1B", layer_shapes(2048, 512, 8192, 128256))];
    if !args.skip_8b {
        models.push(("8B", layer_shapes(4096, 1024, 14336, 128256)));
    }
    let mut rng = Rng::new(7);
    let mut results = Vec::new();
    for (model, shapes) in &models {
        for (name, mats) in shapes {
            let k = mats[0].1;
            let shape = format!("{model} {name} {mats:?}");
            let set_bytes: usize = mats.iter().map(|(n, k)| n * k * 2).sum();
            // Enough copies to exceed the 50 MB L2 several times over.
            let copies = (256usize << 20).div_ceil(set_bytes).clamp(1, 16);
            let weights: Vec<Vec<DeviceBuffer>> = (0..copies)
                .map(|_| {
                    mats.iter()
                        .map(|(n, k)| random_halves(&dev, n * k, &mut rng))
                        .collect()
                })
                .collect::<anyhow::Result<_>>()?;
            let m_max = 512;
            // The input: f32 [16, k] or f16 [512, k].
            let x = random_halves(&dev, m_max * k * 2, &mut rng)?;
            // f32 norm weights (16-bit patterns read as f32: finite, below 2 in magnitude).
            let norm_weight = random_halves(&dev, 2 * k, &mut rng)?;
            let outs: Vec<DeviceBuffer> = mats
                .iter()
                .map(|(n, _)| dev.alloc(m_max * n * 4, "benchmark output"))
                .collect::<Result<_, _>>()?;
            // The launch arguments of each copy, made before timing.
            let segments: Vec<Vec<Segment>> = weights
                .iter()
                .map(|copy| {
                    mats.iter()
                        .zip(copy)
                        .zip(&outs)
                        .map(|(((n, _), w), y)| Segment {
                            w: w.ptr(),
                            bias: 0,
                            y: y.ptr(),
                            n: *n,
                        })
                        .collect()
                })
                .collect();
            // The products a model feeds a normalised input (q/k/v, gate/up) also with the
            // RMSNorm folded in, as a decode step runs them.
            let normed = matches!(*name, "qkv" | "gate_up");
            // 16 rows: the tensor-core GEMV of 16 batch columns (batched decode of 9 to 16
            // sequences), against the skinny GEMM of the same rows below.
            let mut variants = vec![
                (1usize, false, false),
                (1, true, false),
                (4, true, false),
                (8, true, false),
                (16, true, false),
            ];
            if normed {
                variants.extend([(1, false, true), (8, true, true), (16, true, true)]);
            }
            for (batch, tensor_cores, norm) in variants {
                // q, k and v planned as a decode step plans them, sparing multiprocessors.
                let fusion = Fusion {
                    norm: norm.then_some(InputNorm {
                        weight: norm_weight.ptr(),
                        eps: 1e-5,
                    }),
                    accumulate: false,
                    spare_multiprocessors: *name == "qkv",
                };
                let (median, min) = time_us(&dev, args.iters, args.repeats, |i| {
                    let segs = &segments[i % copies];
                    // SAFETY: every buffer was allocated for these shapes.
                    let input = GemvInput {
                        x: x.ptr(),
                        rows: batch,
                        k,
                    };
                    unsafe {
                        if tensor_cores {
                            dev.gemv_tc(Half16::F16, input, segs, fusion)?
                        } else {
                            dev.gemv(Half16::F16, input, segs, fusion)?
                        }
                    };
                    Ok(())
                })?;
                let gbs = set_bytes as f64 / (median * 1e-6) / 1e9;
                results.push(KernelResult {
                    kernel: format!(
                        "gemv{} b{batch}{}",
                        if tensor_cores { " tc" } else { "" },
                        if norm { " norm" } else { "" }
                    ),
                    shape: shape.clone(),
                    dtype: "f16".into(),
                    median_us: median,
                    min_us: min,
                    gbs,
                    tflops: 2.0 * (batch * set_bytes / 2) as f64 / (median * 1e-6) / 1e12,
                    roofline_fraction: Some(gbs / copy_gbs),
                });
            }
            // What the memory system gives a chain of small transfers: device-to-device copies
            // moving the same bytes (half read, half written), replayed like the kernels.
            let copy_bytes = (set_bytes / 2).min(mats[0].0 * k * 2);
            let copy_dst = dev.alloc(copy_bytes, "benchmark copy destination")?;
            let (median, min) = time_us(&dev, args.iters, args.repeats, |i| {
                // SAFETY: the first matrix of every copy and the destination hold copy_bytes.
                unsafe {
                    dev.copy_device(
                        weights[i % copies][0].ptr(),
                        copy_dst.ptr(),
                        copy_bytes,
                        "benchmark weights",
                    )?
                };
                Ok(())
            })?;
            let gbs = 2.0 * copy_bytes as f64 / (median * 1e-6) / 1e9;
            results.push(KernelResult {
                kernel: "copy (same bytes)".into(),
                shape: shape.clone(),
                dtype: "f16".into(),
                median_us: median,
                min_us: min,
                gbs,
                tflops: 0.0,
                roofline_fraction: Some(gbs / copy_gbs),
            });
            // GEMMs of 16 and 64 rows (batched decode: the skinny kernel on Hopper, against the
            // copy bandwidth as the GEMVs) and of a 512-token prefill.
            for m in [16, 64, m_max] {
                let decode = m <= 64;
                let iters = if decode {
                    args.iters
                } else {
                    args.iters.min(20)
                };
                let gemm_result = |kernel: String, (median, min): (f64, f64)| {
                    let gbs = set_bytes as f64 / (median * 1e-6) / 1e9;
                    KernelResult {
                        kernel,
                        shape: shape.clone(),
                        dtype: "f16".into(),
                        median_us: median,
                        min_us: min,
                        gbs,
                        tflops: 2.0 * (m * set_bytes / 2) as f64 / (median * 1e-6) / 1e12,
                        roofline_fraction: decode.then_some(gbs / copy_gbs),
                    }
                };
                let timing = time_us(&dev, iters, args.repeats, |i| {
                    // SAFETY: every buffer was allocated for these shapes.
                    unsafe { dev.gemm(Half16::F16, x.ptr(), m, k, &segments[i % copies], false)? };
                    Ok(())
                })?;
                results.push(gemm_result(format!("gemm m{m}"), timing));
                // Gate and up also as a prefill runs them: silu(gate)·up, 16-bit, never stored
                // as f32.
                if *name == "gate_up" {
                    let timing = time_us(&dev, iters, args.repeats, |i| {
                        let w = &weights[i % copies];
                        // SAFETY: the output holds [m, n] f32, more than the [m, n] 16-bit
                        // written.
                        unsafe {
                            dev.gemm_gated(
                                Half16::F16,
                                x.ptr(),
                                m,
                                k,
                                (w[0].ptr(), w[1].ptr()),
                                mats[0].0,
                                outs[0].ptr(),
                            )?
                        };
                        Ok(())
                    })?;
                    results.push(gemm_result(format!("gemm m{m} gated"), timing));
                }
            }
        }
    }
    println!("{}", kernel_table(&results));
    let report = KernelReport {
        qrt_version: super::super::qrt_version(),
        device: format!("{} (cuda:{ordinal})", dev.name()),
        copy_bandwidth_gbs: copy_gbs,
        results,
    };
    write_json(&report, &args.out)?;
    println!("results: {}", args.out.display());
    Ok(())
}
