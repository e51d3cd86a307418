//! CPU matrix products at the default model's shapes (SmolLM2-135M, f16 weights):
//! decode (1 row), small batches, and prefill (512 rows).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use qrt_runtime::cpu::linear::{matmul_nt, DenseRows, Weights};
use qrt_runtime::sampling::Rng;

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("cpu_matmul_f16");
    group.sample_size(20);
    // (k, n): attention q/o, k/v, MLP up, MLP down, output head.
    for &(k, n) in &[
        (576usize, 576usize),
        (576, 192),
        (576, 1536),
        (1536, 576),
        (576, 49152),
    ] {
        let w: Vec<f16> = (0..n * k)
            .map(|_| f16::from_f32(rng.next_normal()))
            .collect();
        for &m in &[1usize, 8, 512] {
            if m == 512 && n == 49152 {
                continue;
            }
            let x: Vec<f32> = (0..m * k).map(|_| rng.next_normal()).collect();
            let mut out = vec![0f32; m * n];
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_with_input(BenchmarkId::new(format!("{k}x{n}"), m), &m, |b, &m| {
                b.iter(|| matmul_nt(&x, m, k, Weights::Dense(DenseRows::F16(&w)), n, &mut out))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
