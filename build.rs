//! Build script of the `qrt` binary: records build facts for `qrt --version`
//! as compile-time environment variables (read them with `env!`):
//!
//! - `QRT_GIT_REV`: `git rev-parse --short=12 HEAD`, plus `-dirty` when
//!   `git status --porcelain` lists anything; `unknown` without git or a repository
//!   (e.g. a build from a source tarball) or before the first commit.
//! - `QRT_CUDA_KERNELS` (`1`/`0`), `QRT_NVCC_VERSION` (e.g. `release 13.0, V13.0.88`,
//!   empty without kernels), `QRT_CUDA_ARCHS` (e.g. `sm_80,sm_90`): from the
//!   qrt-kernels build script's links metadata.
//! - `QRT_BUILD_PROFILE`: cargo's profile (`release`, `debug`).
//!
//! The `-dirty` flag is as of the last time this script ran: it re-runs when
//! HEAD moves (a commit, a checkout), not on every edit.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));

    let git_rev = git_revision(&manifest_dir).unwrap_or_else(|| "unknown".to_string());
    println!("cargo::rustc-env=QRT_GIT_REV={git_rev}");

    let kernels = |key: &str| env::var(format!("DEP_QRT_KERNELS_{key}")).unwrap_or_default();
    let cuda_kernels = if kernels("CUDA_KERNELS") == "1" {
        "1"
    } else {
        "0"
    };
    println!("cargo::rustc-env=QRT_CUDA_KERNELS={cuda_kernels}");
    println!(
        "cargo::rustc-env=QRT_NVCC_VERSION={}",
        kernels("NVCC_VERSION")
    );
    println!("cargo::rustc-env=QRT_CUDA_ARCHS={}", kernels("ARCHS"));

    let profile = env::var("PROFILE").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo::rustc-env=QRT_BUILD_PROFILE={profile}");
}

/// Output of `git args...` run in `dir`, trimmed; `None` if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The short revision with `-dirty` if the work tree has changes, and
/// rerun-if-changed lines for HEAD and the ref it points to.
fn git_revision(dir: &Path) -> Option<String> {
    // Only this project's own repository counts, not one the sources sit inside.
    let top_level = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top_level.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let git_dir = PathBuf::from(git(dir, &["rev-parse", "--absolute-git-dir"])?);
    watch_head(dir, &git_dir);
    let rev = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(dir, &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

/// Re-run when HEAD changes: `HEAD` itself, and the branch ref it names (a
/// loose ref file, else `packed-refs`). Only existing files are watched: cargo
/// re-runs the script on every build for a path that does not exist.
fn watch_head(dir: &Path, git_dir: &Path) {
    let watch = |path: &Path| {
        if path.exists() {
            println!("cargo::rerun-if-changed={}", path.display());
            true
        } else {
            false
        }
    };
    watch(&git_dir.join("HEAD"));
    let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) else {
        return; // detached HEAD: the HEAD file holds the commit
    };
    // Worktrees keep branch refs in the common directory.
    let common_dir = git(dir, &["rev-parse", "--git-common-dir"])
        .map(|d| dir.join(d))
        .unwrap_or_else(|| git_dir.to_path_buf());
    let watched = [git_dir, common_dir.as_path()]
        .iter()
        .any(|d| watch(&d.join(&branch)));
    if !watched {
        // A packed ref, or no commit yet: the next commit writes a loose ref
        // under refs/heads (a directory is watched recursively).
        watch(&common_dir.join("packed-refs"));
        watch(&common_dir.join("refs/heads"));
    }
}
