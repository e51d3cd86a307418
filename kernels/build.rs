//! Build script of qrt-kernels.
//!
//! 1. bindgen turns `cuda/qrt_kernels.h` (kernel argument structs shared with
//!    the CUDA sources) into `$OUT_DIR/layouts.rs`. This needs libclang.
//! 2. nvcc compiles every `cuda/*.cu` to PTX for each of [`ARCHS`] into
//!    `$OUT_DIR`, and `$OUT_DIR/kernels.rs` embeds the PTX texts. Without nvcc
//!    the build still succeeds, with a warning and an empty table.
//! 3. Build facts go out as links metadata (`DEP_QRT_KERNELS_*` for dependents)
//!    and as `QRT_KERNELS_*` compile-time environment variables for this crate.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Real GPU architectures we ship PTX for (compiled as `compute_XX` virtual
/// architectures; the driver JIT-compiles the PTX for the actual device).
const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// Modules that use Hopper's architecture-specific instructions (wgmma): their sm_90 PTX
/// targets `sm_90a`, which the driver loads on compute capability 9.0 exactly; the launchers
/// take their kernels only there.
const ARCH_SPECIFIC: [&str; 2] = ["gemm_wgmma", "gemm_tma"];

/// The PTX target of `module` for `arch`: `arch`, or `sm_90a` for [`ARCH_SPECIFIC`] modules.
fn ptx_target(module: &str, arch: &str) -> String {
    if arch == "sm_90" && ARCH_SPECIFIC.contains(&module) {
        "sm_90a".to_string()
    } else {
        arch.to_string()
    }
}

/// Newest PTX ISA the target driver (R580, CUDA 13.0) accepts.
const MAX_PTX_VERSION: (u32, u32) = (9, 0);

/// nvcc flags besides `-arch`, `-I` and `-o`. No `--use_fast_math`: it
/// changes results (flush-to-zero, approximate division and square root).
const NVCC_FLAGS: [&str; 3] = ["--ptx", "-O3", "-std=c++17"];

/// Where tools/setup.sh puts nvcc, relative to `$QRT_HOME`.
const SETUP_NVCC: &str = "cuda-13.0/nvidia/cu13/bin/nvcc";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let cuda_dir = manifest_dir.join("cuda");
    let header = cuda_dir.join("qrt_kernels.h");

    println!("cargo::rerun-if-changed=build.rs");
    // A directory is scanned recursively: new, removed and edited sources.
    println!("cargo::rerun-if-changed={}", cuda_dir.display());
    for var in ["QRT_NVCC", "QRT_HOME", "HOME", "PATH", "LIBCLANG_PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    generate_layouts(&header, &out_dir);

    let sources = cuda_sources(&cuda_dir);
    let qrt_home = qrt_home();
    let built = match find_nvcc(qrt_home.as_deref()) {
        Some(nvcc) => {
            // Rebuild when the compiler is replaced (e.g. setup.sh re-run).
            println!("cargo::rerun-if-changed={}", nvcc.path.display());
            let modules = compile_all(&nvcc, &cuda_dir, &sources, &out_dir);
            Some((nvcc.path, nvcc.version, modules))
        }
        None => {
            println!(
                "cargo::warning=CUDA kernels were not built: no nvcc found (tried $QRT_NVCC, \
                 $QRT_HOME/{SETUP_NVCC}, nvcc on PATH, /usr/local/cuda/bin/nvcc). The build \
                 continues without GPU support; run tools/setup.sh to install the pinned CUDA \
                 13.0 compiler, then build again."
            );
            // Re-run once setup.sh has populated $QRT_HOME (only if it exists:
            // a missing path would make cargo re-run this script every build).
            if let Some(home) = qrt_home.as_ref().filter(|h| h.is_dir()) {
                println!("cargo::rerun-if-changed={}", home.display());
            }
            None
        }
    };

    // (nvcc's directory: for tests that assemble the PTX with its ptxas.)
    let (cuda_kernels, nvcc_version, nvcc_dir, modules) = match &built {
        Some((path, version, modules)) => (
            true,
            version.as_str(),
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            modules.as_slice(),
        ),
        None => (false, "", PathBuf::new(), &[][..]),
    };
    let archs = if cuda_kernels {
        ARCHS.join(",")
    } else {
        String::new()
    };
    write_kernel_table(&out_dir, cuda_kernels, modules);

    let flag = if cuda_kernels { "1" } else { "0" };
    println!("cargo::metadata=cuda_kernels={flag}");
    println!("cargo::metadata=nvcc_version={nvcc_version}");
    println!("cargo::metadata=archs={archs}");
    println!("cargo::rustc-env=QRT_KERNELS_CUDA_KERNELS={flag}");
    println!("cargo::rustc-env=QRT_KERNELS_NVCC_VERSION={nvcc_version}");
    println!("cargo::rustc-env=QRT_KERNELS_ARCHS={archs}");
    println!(
        "cargo::rustc-env=QRT_KERNELS_NVCC_DIR={}",
        nvcc_dir.display()
    );
    // Where tools/setup.sh installs (its nvdisasm, for the SASS test).
    let home = qrt_home.unwrap_or_default();
    println!("cargo::rustc-env=QRT_KERNELS_HOME={}", home.display());
}

/// Stops the build with `message` (cargo shows the script's stderr).
fn fail(message: &str) -> ! {
    eprintln!("\nerror: {message}\n");
    std::process::exit(1);
}

/// `$QRT_HOME`, else `$HOME/.cache/qrt`.
fn qrt_home() -> Option<PathBuf> {
    match env::var_os("QRT_HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
        _ => env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache/qrt")),
    }
}

/// Runs bindgen on the shared header, writing `$OUT_DIR/layouts.rs`.
fn generate_layouts(header: &Path, out_dir: &Path) {
    let builder = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type("qrt_.*")
        .allowlist_var("QRT_.*")
        .derive_copy(true)
        .derive_debug(true)
        .derive_default(true)
        .clang_arg("-fparse-all-comments");

    // bindgen panics (rather than returning an error) when it cannot load
    // libclang; turn that into a build error that says what to install.
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| builder.generate()));
    panic::set_hook(default_hook);

    let bindings = match result {
        Ok(Ok(bindings)) => bindings,
        Ok(Err(e)) => fail(&format!(
            "bindgen could not process {}: {e}",
            header.display()
        )),
        Err(payload) => {
            let reason = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("bindgen panicked");
            fail(&format!(
                "bindgen failed: {reason}\n\
                 qrt-kernels needs libclang at build time to read {}.\n\
                 Install it (Debian/Ubuntu: `apt-get install libclang-dev`), or run tools/setup.sh, \
                 or point LIBCLANG_PATH at the directory that holds libclang.so.",
                header.display()
            ))
        }
    };
    let path = out_dir.join("layouts.rs");
    if let Err(e) = bindings.write_to_file(&path) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
}

/// The `*.cu` files in `dir`, sorted.
fn cuda_sources(dir: &Path) -> Vec<PathBuf> {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", dir.display())));
    let mut sources: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", dir.display())))
                .path()
        })
        .filter(|path| path.extension().is_some_and(|ext| ext == "cu"))
        .collect();
    sources.sort();
    sources
}

/// An nvcc that ran `--version` successfully.
struct Nvcc {
    path: PathBuf,
    /// The "release X.Y, VX.Y.Z" part of `nvcc --version`.
    version: String,
}

/// Runs `path --version`; the error says why it is not usable.
fn probe_nvcc(path: &Path) -> Result<Nvcc, String> {
    let output = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{} --version failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let version = stdout
        .lines()
        .find_map(|line| {
            line.find("release ")
                .map(|at| line[at..].trim().to_string())
        })
        .ok_or_else(|| {
            format!(
                "{} --version printed no 'release' line:\n{stdout}",
                path.display()
            )
        })?;
    Ok(Nvcc {
        path: path.to_path_buf(),
        version,
    })
}

/// nvcc from `$QRT_NVCC` (which must work if set), else the first working one
/// of `$QRT_HOME/cuda-13.0/...`, `nvcc` on PATH, `/usr/local/cuda/bin/nvcc`.
fn find_nvcc(qrt_home: Option<&Path>) -> Option<Nvcc> {
    if let Some(explicit) = env::var_os("QRT_NVCC").filter(|v| !v.is_empty()) {
        return match probe_nvcc(Path::new(&explicit)) {
            Ok(nvcc) => Some(nvcc),
            Err(e) => fail(&format!("QRT_NVCC is set but not usable: {e}")),
        };
    }
    let mut candidates = Vec::new();
    if let Some(home) = qrt_home {
        candidates.push(home.join(SETUP_NVCC));
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|dir| dir.join("nvcc")));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/bin/nvcc"));
    for candidate in candidates.iter().filter(|c| c.is_file()) {
        match probe_nvcc(candidate) {
            Ok(nvcc) => return Some(nvcc),
            Err(e) => println!("cargo::warning=skipping {}: {e}", candidate.display()),
        }
    }
    None
}

/// One compiled PTX file.
struct PtxFile {
    /// Source file stem, e.g. `norm`.
    module: String,
    /// e.g. `sm_80`.
    arch: &'static str,
    path: PathBuf,
}

/// Compiles every source for every arch, a few nvcc processes at a time.
fn compile_all(
    nvcc: &Nvcc,
    include_dir: &Path,
    sources: &[PathBuf],
    out_dir: &Path,
) -> Vec<PtxFile> {
    let jobs: Vec<PtxFile> = sources
        .iter()
        .flat_map(|source| {
            let module = source
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_else(|| fail(&format!("non-UTF-8 source name {}", source.display())))
                .to_string();
            ARCHS.iter().map(move |&arch| PtxFile {
                path: out_dir.join(format!("{module}.{arch}.ptx")),
                module: module.clone(),
                arch,
            })
        })
        .collect();
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    for batch in jobs.chunks(parallel) {
        let children: Vec<_> = batch
            .iter()
            .map(|job| {
                let source = include_dir.join(format!("{}.cu", job.module));
                let virtual_arch = ptx_target(&job.module, job.arch).replace("sm_", "compute_");
                let child = Command::new(&nvcc.path)
                    .arg(format!("-arch={virtual_arch}"))
                    .args(NVCC_FLAGS)
                    .arg("-I")
                    .arg(include_dir)
                    .arg("-o")
                    .arg(&job.path)
                    .arg(&source)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.path.display())));
                (job, source, child)
            })
            .collect();
        for (job, source, child) in children {
            let output = child
                .wait_with_output()
                .unwrap_or_else(|e| fail(&format!("waiting for nvcc: {e}")));
            check_nvcc_output(nvcc, &source, job.arch, &output);
            check_ptx(nvcc, job);
        }
    }
    jobs
}

/// Fails on an nvcc error; forwards its warnings.
fn check_nvcc_output(nvcc: &Nvcc, source: &Path, arch: &str, output: &Output) {
    let messages = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        fail(&format!(
            "nvcc ({}, {}) failed to compile {} for {arch}:\n{messages}",
            nvcc.path.display(),
            nvcc.version,
            source.display()
        ));
    }
    for line in messages.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo::warning=nvcc ({arch}): {line}");
    }
}

/// Checks the PTX header: ISA `.version` at most [`MAX_PTX_VERSION`] and the
/// expected `.target`.
fn check_ptx(nvcc: &Nvcc, ptx: &PtxFile) {
    let text = fs::read_to_string(&ptx.path)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", ptx.path.display())));
    let directive = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| fail(&format!("{} has no `{name}` line", ptx.path.display())))
    };
    let version = directive(".version ");
    let parsed = version
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)));
    match parsed {
        Some(v) if v <= MAX_PTX_VERSION => {}
        Some(_) => fail(&format!(
            "{} has PTX ISA .version {version}, newer than {}.{} which the target driver (R580, \
             CUDA 13.0) accepts: the nvcc picked up ({}, {}) is too new. Use the pinned CUDA 13.0 \
             toolchain: run tools/setup.sh, or point QRT_NVCC at a CUDA 13.0 nvcc.",
            ptx.path.display(),
            MAX_PTX_VERSION.0,
            MAX_PTX_VERSION.1,
            nvcc.path.display(),
            nvcc.version
        )),
        None => fail(&format!(
            "{}: cannot parse `.version {version}`",
            ptx.path.display()
        )),
    }
    let target = directive(".target ");
    let expected = ptx_target(&ptx.module, ptx.arch);
    if target.split([',', ' ']).next() != Some(expected.as_str()) {
        fail(&format!(
            "{}: `.target {target}`, expected {expected}",
            ptx.path.display(),
        ));
    }
}

/// Writes `$OUT_DIR/kernels.rs`: the arch list and the embedded PTX table.
fn write_kernel_table(out_dir: &Path, cuda_kernels: bool, modules: &[PtxFile]) {
    let mut code = String::from("// Generated by kernels/build.rs.\n\n");
    let archs: &[&str] = if cuda_kernels { &ARCHS } else { &[] };
    writeln!(
        code,
        "/// Architectures the embedded PTX was built for (empty without nvcc)."
    )
    .unwrap();
    writeln!(code, "pub const ARCHS: &[&str] = &{archs:?};").unwrap();
    writeln!(code, "/// The embedded PTX, one entry per module and arch.").unwrap();
    writeln!(code, "pub static PTX_MODULES: &[crate::PtxModule] = &[").unwrap();
    for m in modules {
        let path = m
            .path
            .to_str()
            .unwrap_or_else(|| fail(&format!("non-UTF-8 path {}", m.path.display())));
        writeln!(
            code,
            "    crate::PtxModule {{ name: {:?}, arch: {:?}, target: {:?}, ptx: include_str!({path:?}) }},",
            m.module,
            m.arch,
            ptx_target(&m.module, m.arch)
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
    let path = out_dir.join("kernels.rs");
    if let Err(e) = fs::write(&path, code) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
}
