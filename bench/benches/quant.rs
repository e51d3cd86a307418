//! Each quantized storage type on the CPU: quantizing a `[1536, 576]` matrix (the default
//! model's MLP up-projection shape), and multiplying by it with dequantization inside the
//! product, for one input row (decode) and 64 rows (prefill).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use qrt_format::quant::bnb4::{Bnb4Kind, Bnb4Params, Bnb4Tensor};
use qrt_format::quant::int8::{Int8Params, Int8Tensor};
use qrt_format::quant::{awq, gptq, QuantizedMatrix};
use qrt_runtime::cpu::linear::{matmul_nt, Weights};
use qrt_runtime::cpu::QuantizedRows;
use qrt_runtime::sampling::Rng;

const N: usize = 1536;
const K: usize = 576;

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(3);
    let w: Vec<f32> = (0..N * K).map(|_| 0.02 * rng.next_normal()).collect();
    let shape = [N as u64, K as u64];
    let nf4 = || Bnb4Tensor::quantize(&w, &shape, &Bnb4Params::new(Bnb4Kind::Nf4)).unwrap();
    let fp4 = || Bnb4Tensor::quantize(&w, &shape, &Bnb4Params::new(Bnb4Kind::Fp4)).unwrap();
    let int8 = || Int8Tensor::quantize(&w, N, K, &Int8Params { threshold: 0.0 }).unwrap();
    let rtn = || gptq::rtn_quantize(&w, N, K, 4, 128, false).unwrap();
    let awq4 = || awq::rtn_quantize(&w, N, K, 128).unwrap();

    let mut q = c.benchmark_group("quantize_1536x576");
    q.sample_size(10);
    q.bench_function("nf4", |b| b.iter(nf4));
    q.bench_function("fp4", |b| b.iter(fp4));
    q.bench_function("int8", |b| b.iter(int8));
    q.bench_function("gptq_rtn_4bit_g128", |b| b.iter(rtn));
    q.bench_function("awq_layout_4bit_g128", |b| b.iter(awq4));
    q.finish();

    let (t_nf4, t_fp4, t_int8, t_rtn, t_awq) = (nf4(), fp4(), int8(), rtn(), awq4());
    let views: [(&str, Box<dyn QuantizedMatrix + Send + Sync + '_>); 5] = [
        ("nf4", Box::new(t_nf4.view())),
        ("fp4", Box::new(t_fp4.view())),
        ("int8", Box::new(t_int8.view())),
        ("gptq_4bit_g128", Box::new(t_rtn.view())),
        ("awq_4bit_g128", Box::new(t_awq.view())),
    ];
    let mut g = c.benchmark_group("dequant_matmul_1536x576");
    g.sample_size(20);
    for (name, view) in &views {
        let rows = QuantizedRows {
            inner: view.as_ref(),
            dtype: None,
        };
        for m in [1usize, 64] {
            let x: Vec<f32> = (0..m * K).map(|_| rng.next_normal()).collect();
            let mut out = vec![0f32; m * N];
            g.bench_with_input(BenchmarkId::new(*name, m), &m, |b, &m| {
                b.iter(|| matmul_nt(&x, m, K, Weights::Decoded(&rows), N, &mut out))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
