//! Build-pipeline tests: they need no GPU.

use std::mem::{align_of, offset_of, size_of};
use std::path::Path;

use qrt_kernels::layouts::{
    qrt_attn_args, qrt_attn_seq, qrt_gemm_args, qrt_gemm_segment, qrt_gemv_args, qrt_gemv_segment,
    qrt_rms_norm_args, qrt_rope_kv_args, qrt_sample_row, QRT_GEMV_MAX_BATCH, QRT_GEMV_MAX_SEGMENTS,
    QRT_MAX_BLOCK_THREADS, QRT_SAMPLE_NO_TOKEN,
};
use qrt_kernels::{kernel_inventory, ptx, ptx_modules, CudaDevice, KernelError, BUILD_INFO};

/// Stems of the `kernels/cuda/*.cu` sources.
fn cuda_modules() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The value of PTX directive `name` (e.g. ".version ") in `text`.
fn directive<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no `{name}` line"))
        .trim()
}

#[test]
fn build_info_is_consistent() {
    assert_eq!(BUILD_INFO.archs.join(","), env!("QRT_KERNELS_ARCHS"));
    if BUILD_INFO.cuda_kernels {
        assert_eq!(BUILD_INFO.archs, ["sm_80", "sm_90"]);
        assert!(
            BUILD_INFO.nvcc_version.starts_with("release "),
            "{}",
            BUILD_INFO.nvcc_version
        );
        assert!(!ptx_modules().is_empty());
    } else {
        assert!(BUILD_INFO.archs.is_empty());
        assert!(BUILD_INFO.nvcc_version.is_empty());
        assert!(ptx_modules().is_empty());
    }
}

#[test]
fn every_module_has_ptx_for_every_arch() {
    if !BUILD_INFO.cuda_kernels {
        eprintln!("built without nvcc: no PTX to check");
        return;
    }
    let modules = cuda_modules();
    assert!(modules.iter().any(|m| m == "norm"));
    assert_eq!(ptx_modules().len(), modules.len() * BUILD_INFO.archs.len());
    for module in &modules {
        for &arch in BUILD_INFO.archs {
            assert!(ptx(module, arch).is_some(), "no {arch} PTX for {module}");
        }
    }
}

#[test]
fn ptx_headers_fit_the_driver() {
    for m in ptx_modules() {
        let version = directive(m.ptx, ".version ");
        let (major, minor) = version.split_once('.').unwrap();
        let v = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
        assert!(
            v <= (9, 0),
            "{}.{}: PTX ISA {version} > 9.0",
            m.name,
            m.arch
        );
        assert_eq!(directive(m.ptx, ".target "), m.target, "{}", m.name);
        assert!(m.target == m.arch || (m.arch, m.target) == ("sm_90", "sm_90a"));
        assert_eq!(directive(m.ptx, ".address_size "), "64", "{}", m.name);
    }
}

#[test]
fn norm_module_exports_its_kernels() {
    for &arch in BUILD_INFO.archs {
        let text = ptx("norm", arch).unwrap();
        for kernel in ["qrt_rms_norm_f32", "qrt_rms_norm_f16"] {
            assert!(
                text.contains(&format!(".visible .entry {kernel}(")),
                "{arch}: {kernel} missing"
            );
        }
    }
}

/// Every kernel a launcher may name is in the PTX of every arch.
#[test]
fn every_launched_kernel_is_built() {
    for &arch in BUILD_INFO.archs {
        for (module, kernel) in kernel_inventory() {
            let text = ptx(module, arch).unwrap_or_else(|| panic!("no {arch} PTX for {module}"));
            assert!(
                text.contains(&format!(".entry {kernel}(")),
                "{arch}: {kernel} missing from {module}"
            );
        }
    }
}

#[test]
fn layouts_match_the_header() {
    assert_eq!(size_of::<qrt_rms_norm_args>(), 20);
    assert_eq!(align_of::<qrt_rms_norm_args>(), 4);
    assert_eq!(offset_of!(qrt_rms_norm_args, rows), 0);
    assert_eq!(offset_of!(qrt_rms_norm_args, cols), 4);
    assert_eq!(offset_of!(qrt_rms_norm_args, x_stride), 8);
    assert_eq!(offset_of!(qrt_rms_norm_args, y_stride), 12);
    assert_eq!(offset_of!(qrt_rms_norm_args, eps), 16);
    assert_eq!(QRT_MAX_BLOCK_THREADS, 1024);
    let zero = qrt_rms_norm_args::default();
    assert_eq!((zero.rows, zero.cols, zero.eps), (0, 0, 0.0));
}

/// The sizes and the offsets of the last fields, as the header's static_asserts fix them.
#[test]
fn decoder_kernel_layouts_match_the_header() {
    assert_eq!(size_of::<qrt_gemv_segment>(), 32);
    assert_eq!(offset_of!(qrt_gemv_segment, first_block), 28);
    assert_eq!(size_of::<qrt_gemv_args>(), 128);
    // What the batch-one kernels read after their wait first (see the header).
    assert_eq!(offset_of!(qrt_gemv_args, x), 0);
    assert_eq!(offset_of!(qrt_gemv_args, num_segments), 20);
    assert_eq!(offset_of!(qrt_gemv_args, accumulate), 28);
    assert_eq!(offset_of!(qrt_gemv_args, seg), 32);
    assert_eq!(size_of::<qrt_gemm_segment>(), 32);
    assert_eq!(size_of::<qrt_gemm_args>(), 120);
    assert_eq!(offset_of!(qrt_gemm_args, a), 96);
    assert_eq!(offset_of!(qrt_gemm_args, num_segments), 112);
    assert_eq!(size_of::<qrt_attn_seq>(), 16);
    assert_eq!(size_of::<qrt_attn_args>(), 112);
    assert_eq!(offset_of!(qrt_attn_args, num_seqs), 56);
    assert_eq!(offset_of!(qrt_attn_args, scale), 84);
    assert_eq!(offset_of!(qrt_attn_args, inv_freq), 88);
    assert_eq!(offset_of!(qrt_attn_args, v_new), 104);
    assert_eq!(size_of::<qrt_rope_kv_args>(), 80);
    assert_eq!(offset_of!(qrt_rope_kv_args, rows), 64);
    assert_eq!(offset_of!(qrt_rope_kv_args, head_dim), 76);
    assert_eq!((QRT_GEMV_MAX_BATCH, QRT_GEMV_MAX_SEGMENTS), (8, 3));
    assert_eq!(size_of::<qrt_sample_row>(), 24);
    assert_eq!(offset_of!(qrt_sample_row, temperature), 8);
    assert_eq!(offset_of!(qrt_sample_row, top_p), 12);
    assert_eq!(offset_of!(qrt_sample_row, top_k), 16);
    assert_eq!(QRT_SAMPLE_NO_TOKEN, u32::MAX);
}

/// Without a GPU this must be an error, not a panic; with one, a usable device.
#[test]
fn opening_a_device_never_panics() {
    match CudaDevice::new(0) {
        Ok(dev) => {
            assert!(!dev.name().is_empty());
            assert!(dev.compute_capability() >= (8, 0));
            assert!(dev.total_memory() > 0);
            eprintln!("found {dev:?}");
        }
        Err(e @ (KernelError::NoDriver(_) | KernelError::NoDevice(_))) => {
            eprintln!("no GPU here: {e}");
        }
        Err(e) => panic!("unexpected error opening device 0: {e}"),
    }
    // An ordinal no machine has.
    match CudaDevice::new(1 << 20) {
        Err(KernelError::NoDriver(_) | KernelError::NoDevice(_)) => {}
        other => panic!("device 2^20: {other:?}"),
    }
}

/// nvdisasm as tools/setup.sh installs it (`$QRT_HOME/nvdisasm`, the QRT_HOME the build
/// used), else on PATH.
fn nvdisasm() -> Option<std::path::PathBuf> {
    let installed = Path::new(env!("QRT_KERNELS_HOME")).join("nvdisasm/nvidia/cu13/bin/nvdisasm");
    Some(installed).filter(|p| p.is_file()).or_else(|| {
        let found = std::process::Command::new("nvdisasm")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        found.then(|| "nvdisasm".into())
    })
}

/// What the SASS of one kernel does around its grid-dependency wait (`ACQBULK`).
#[derive(Debug, Default)]
struct AroundTheWait {
    name: String,
    /// Weight loads (non-coherent, L1 not allocated) issued before the wait; None without one.
    loads_before: Option<usize>,
    /// Offsets in the parameter bank (`c[0x0][...]`) read before the wait, and after it.
    params_before: Vec<u32>,
    params_after: Vec<u32>,
}

/// Each kernel of `sass` (nvdisasm's text) around its grid-dependency wait.
fn around_the_wait(sass: &str) -> Vec<AroundTheWait> {
    let mut kernels: Vec<AroundTheWait> = Vec::new();
    let mut loads = 0;
    for line in sass.lines() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix(".text.")
            .and_then(|l| l.strip_suffix(':'))
        {
            kernels.push(AroundTheWait {
                name: name.to_string(),
                ..Default::default()
            });
            loads = 0;
        } else if let Some(k) = kernels.last_mut() {
            let waited = k.loads_before.is_some();
            if line.contains("LDG.E.NA.") && !waited {
                loads += 1;
            } else if line.contains("ACQBULK") && !waited {
                k.loads_before = Some(loads);
            }
            let params = if waited {
                &mut k.params_after
            } else {
                &mut k.params_before
            };
            params.extend(
                line.split("c[0x0][0x")
                    .skip(1)
                    .filter_map(|rest| u32::from_str_radix(rest.split(']').next()?, 16).ok()),
            );
        }
    }
    kernels
}

/// The batch-one GEMVs' SASS, made once for the tests that read it: ptxas from beside the
/// build's nvcc on the embedded sm_90 PTX of gemv_one.cu, then nvdisasm; None (with a
/// message) where any of them is missing.
fn batch_one_gemvs() -> Option<&'static [AroundTheWait]> {
    static GEMVS: std::sync::OnceLock<Option<Vec<AroundTheWait>>> = std::sync::OnceLock::new();
    GEMVS.get_or_init(disassemble_batch_one_gemvs).as_deref()
}

fn disassemble_batch_one_gemvs() -> Option<Vec<AroundTheWait>> {
    let Some(ptx) = ptx("gemv_one", "sm_90") else {
        eprintln!("built without nvcc: no PTX to check");
        return None;
    };
    let ptxas = Path::new(env!("QRT_KERNELS_NVCC_DIR")).join("ptxas");
    let Some(nvdisasm) = nvdisasm().filter(|_| ptxas.is_file()) else {
        eprintln!("no ptxas beside nvcc or no nvdisasm (tools/setup.sh installs both): skipped");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("qrt-sass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ptx_path, cubin) = (dir.join("gemv_one.ptx"), dir.join("gemv_one.cubin"));
    std::fs::write(&ptx_path, ptx).unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(std::process::Command::new(&ptxas)
        .args(["-arch=sm_90", "-O3", "-o"])
        .arg(&cubin)
        .arg(&ptx_path));
    let sass = run(std::process::Command::new(&nvdisasm).arg("-c").arg(&cubin));
    std::fs::remove_dir_all(&dir).unwrap();
    let gemvs: Vec<_> = around_the_wait(&sass)
        .into_iter()
        .filter(|k| k.name.starts_with("qrt_gemv_one_"))
        .collect();
    // Per type: plain, gated, lean, lean gated, five streaming and five tiled kernels.
    assert_eq!(gemvs.len(), 2 * 14, "{gemvs:?}");
    Some(gemvs)
}

/// The batch-one GEMVs request their first weights before waiting for the previous kernel,
/// so that under programmatic launch they stream during its tail. ptxas is free to schedule
/// the wait first, and did (RESULTS log 48: the 1B's decode step 0.776 -> 0.798 ms), so the
/// order is read from the SASS that the pinned ptxas makes of the embedded sm_90 PTX.
#[test]
fn batch_one_gemvs_load_weights_before_the_grid_wait() {
    let Some(gemvs) = batch_one_gemvs() else {
        return;
    };
    for k in gemvs {
        // Lean kernels hold 8 chunks a lane before the wait, the others 16.
        let want = if k.name.contains("_lean_") { 8 } else { 16 };
        assert_eq!(
            k.loads_before,
            Some(want),
            "{}: weight loads before ACQBULK",
            k.name
        );
    }
}

/// Every parameter a batch-one GEMV reads after its grid-dependency wait lies in a 64-byte
/// line of the parameter bank that it read before the wait (the order of `qrt_gemv_args`'s
/// fields sees to it: RESULTS log 49, SmolLM2's decode step 0.446 -> 0.442 ms).
#[test]
fn batch_one_gemvs_read_no_parameter_line_first_after_the_grid_wait() {
    let Some(gemvs) = batch_one_gemvs() else {
        return;
    };
    // Kernel parameters start at 0x210 in the bank on sm_90; below are the launch's own.
    const FIRST_PARAM: u32 = 0x210;
    for k in gemvs {
        let cold: std::collections::BTreeSet<String> = k
            .params_after
            .iter()
            .filter(|&&o| o >= FIRST_PARAM && !k.params_before.iter().any(|b| b / 64 == o / 64))
            .map(|o| format!("{o:#x}"))
            .collect();
        assert!(
            cold.is_empty(),
            "{}: parameters first read after ACQBULK in lines not read before: {cold:?}",
            k.name
        );
    }
}
