//! The list of kernels the launchers may launch.

use super::attention::DECODE_GROUPS;
use super::*;

/// Every (module, kernel) the launchers of this crate may launch, so that a build can be
/// checked for all of them without a GPU.
pub fn kernel_inventory() -> Vec<(&'static str, String)> {
    let mut all = Vec::new();
    for ty in [Half16::F16, Half16::Bf16] {
        let t = ty.name();
        all.push(("gemv_one", format!("qrt_gemv_one_{t}")));
        all.push(("gemv_one", format!("qrt_gemv_one_gated_{t}")));
        all.push(("gemv_one", format!("qrt_gemv_one_lean_{t}")));
        all.push(("gemv_one", format!("qrt_gemv_one_lean_gated_{t}")));
        for groups in 3..=7 {
            all.push(("gemv_one", format!("qrt_gemv_one_stream{groups}_{t}")));
            all.push(("gemv_one", format!("qrt_gemv_one_tiled{groups}_{t}")));
        }
        for batch in 1..=QRT_GEMV_MAX_BATCH {
            for rows in [1, 2, 4] {
                all.push(("gemv", format!("qrt_gemv_{t}_b{batch}_r{rows}")));
            }
            for rows in [2, 4] {
                all.push(("gemv", format!("qrt_gemv_gated_{t}_b{batch}_r{rows}")));
            }
        }
        for variant in ["", "gated_"] {
            for bm in [64, 128] {
                all.push(("gemm", format!("qrt_gemm_{variant}{t}_m{bm}")));
            }
            for warpgroups in [1, 2] {
                all.push((
                    "gemm_wgmma",
                    format!("qrt_gemm_wg_{variant}{t}_w{warpgroups}"),
                ));
            }
            all.push(("gemm", format!("qrt_gemm_gsplit_{variant}{t}")));
            all.push(("gemm_tma", format!("qrt_gemm_tma_{variant}{t}")));
        }
        all.push(("gemm_tma", format!("qrt_gemm_tma_n128_{t}")));
        all.push(("gemm_tma", format!("qrt_gemm_skinny_{t}")));
        all.push(("gemm_tma", format!("qrt_gemm_skinny_gated_{t}")));
        all.push(("gemm_tma", format!("qrt_gemm_skinny_ahead_{t}")));
        all.push(("gemm_tma", format!("qrt_gemm_skinny_gated_ahead_{t}")));
        for (warps, cols) in [8, 16].into_iter().flat_map(|w| [(w, ""), (w, "_c16")]) {
            for tiles in ["t1", "tw"] {
                all.push(("gemv_tc", format!("qrt_gemv_tc_{t}_w{warps}_{tiles}{cols}")));
                all.push((
                    "gemv_tc",
                    format!("qrt_gemv_tc_gated_{t}_w{warps}_{tiles}{cols}"),
                ));
            }
            for variant in ["merge", "x16"] {
                all.push((
                    "gemv_tc",
                    format!("qrt_gemv_tc_{t}_w{warps}_tw_{variant}{cols}"),
                ));
            }
            all.push((
                "gemv_tc",
                format!("qrt_gemv_tc_gated_{t}_w{warps}_tw_y16{cols}"),
            ));
        }
        all.push(("elementwise", format!("qrt_to_{t}")));
    }
    for d in [64, 128] {
        all.push(("attention", format!("qrt_attn_prefill_d{d}")));
        for g in DECODE_GROUPS {
            all.push(("attention", format!("qrt_attn_decode_d{d}_g{g}")));
            all.push(("attention", format!("qrt_attn_decode_d{d}_g{g}_cluster")));
            all.push(("attention", format!("qrt_attn_decode_tc_d{d}_g{g}")));
            all.push(("attention", format!("qrt_attn_decode_tc_d{d}_g{g}_cluster")));
            all.push(("attention", format!("qrt_attn_decode_tc_ring_d{d}_g{g}")));
        }
    }
    for name in [
        "qrt_embed_f16",
        "qrt_embed_bf16",
        "qrt_rope_kv",
        "qrt_silu_mul",
        "qrt_gather_rows",
        "qrt_argmax",
        "qrt_argmax_finalize",
        "qrt_target_log_probs",
    ] {
        all.push(("elementwise", name.to_string()));
    }
    all.push(("norm", "qrt_rms_norm_f32".to_string()));
    for ty in [Half16::F16, Half16::Bf16] {
        all.push(("norm", crate::norm::rms_norm_to_half16_kernel(ty)));
    }
    all.push(("sample", "qrt_sample".to_string()));
    all
}
