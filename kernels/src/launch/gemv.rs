//! GEMV launchers for decode: batch one (`gemv_one.cu`), the FMA kernel (`gemv.cu`) and the
//! tensor-core kernels for batches of 2 to 16 rows (`gemv_tc.cu`), with their fusions (input
//! norm, residual add, SwiGLU, 16-bit inputs or outputs, merging a decode attention's
//! partitions).

use super::attention::MAX_DECODE_CLUSTER;
use super::carveout::{merge_reserve, GEMV_ONE_HEADROOM};
use super::gemv_plan::{tc_columns, tc_slice_bytes, tc_stem, tc_weight_bytes};
use super::*;

/// The activations a GEMV reads: `rows` rows (the batch) of `k` f32 at `x`.
#[derive(Clone, Copy, Debug)]
pub struct GemvInput {
    /// Device address of `x`, `[rows, k]` f32.
    pub x: u64,
    /// Rows of `x`: 1 to 8.
    pub rows: usize,
    /// Columns of `x`.
    pub k: usize,
}

/// A deferred decode attention's partitions as the input of the GEMV that follows it (its
/// output projection, [`CudaDevice::gemv_merging`]): per (query row, head), `splits`
/// unnormalised outputs of `head_dim` values with their maxima and sums, laid out as
/// [`CudaDevice::attention_decode`] leaves them when its `out` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitions {
    /// Dimension of one head; the GEMV's `k` is a multiple of it.
    pub head_dim: usize,
    /// Partitions per (row, head): 1 to [`MAX_MERGED_PARTITIONS`].
    pub splits: usize,
}

/// Most decode partitions a merging GEMV combines: as many as a context is split into before
/// the splits double (16, the largest decode cluster; up to 4 requested at once, more after a
/// first pass over their maxima, `merged_chunk` in `gemv_tc.cu`).
pub const MAX_MERGED_PARTITIONS: usize = MAX_DECODE_CLUSTER;

/// Longest input row a tensor-core GEMV of 16 batch columns merges a deferred decode
/// attention's partitions into. On an H200 (RESULTS log 55), the 1B's o projection (k = 2,048)
/// at 16 sequences merged them in 14.0 us a layer and the attention left them in 13.9,
/// against 17.7 for an attention merging them itself and 15.0 for the o GEMM after it; the
/// 8B's (k = 4,096) at 12 sequences took 41.5 and 18.9 against 22.6 and 24.2.
const WIDE_MERGE_MAX_K: usize = 2048;

/// Decode partitions a merging GEMV requests at once (`kMaxMerged` in `gemv_tc.cu`).
const MERGED_AT_ONCE: usize = 4;

/// The kernels of a tensor-core GEMV besides the plain ones (`gemv_tc.cu`), all with plans of a
/// tile a warp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcVariant {
    /// `_t1` or `_tw`: f32 input, f32 output; the plan sparing multiprocessors as
    /// [`Fusion::spare_multiprocessors`] says (the other variants take the plan their callers
    /// checked, which does not).
    Plain { spare: bool },
    /// `_tw_merge`: the input a deferred decode attention's partitions (argument: head_dim <<
    /// 8 | partitions).
    Merge(u32),
    /// `_tw_x16`: the input 16-bit values of the weights' type.
    Half16In,
    /// `_tw_y16` (gated): the output 16-bit values of the weights' type.
    Half16Out,
}

/// RMSNorm of a GEMV's input, applied on the fly: the product reads
/// `x / sqrt(mean(x^2) + eps) * weight` (see [`CudaDevice::gemv_fuses_norm`]).
#[derive(Clone, Copy, Debug)]
pub struct InputNorm {
    /// Device address of the `k` f32 norm weights.
    pub weight: u64,
    /// Added to the mean square.
    pub eps: f32,
}

/// What a GEMV does besides `y = w @ x (+ bias)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fusion {
    /// Normalise the input first.
    pub norm: Option<InputNorm>,
    /// `y += product` instead of `y = product` (a residual add).
    pub accumulate: bool,
    /// Where two tensor-core plans keep as many warps busy, take the one of fewer blocks,
    /// leaving whole multiprocessors free for the next kernel's blocks to start on: for q, k
    /// and v, which the attention reads next (H200, three machines: the 1B's decode step at
    /// batches 2 / 4 -0.5-0.8 / -0.8-1.0%, at batch 8 -0.4-0.9% on two and +0.1-0.3% on the
    /// third, the 8B's at batch 8 -0.7-1.2%; the same for gate/up lost 1-3%, RESULTS log 46).
    pub spare_multiprocessors: bool,
}

/// Checks a GEMV call and lays out its segments, `rows_per_block` weight rows per block;
/// returns the arguments and the number of blocks.
fn gemv_args(
    input: GemvInput,
    segments: &[Segment],
    rows_per_block: usize,
    k_multiple: usize,
    fusion: Fusion,
) -> Result<(qrt_gemv_args, u32), KernelError> {
    let GemvInput { x, rows: batch, k } = input;
    if !(1..=GEMV_TC_MAX_ROWS).contains(&batch) {
        return Err(KernelError::Shape(format!(
            "GEMV batch {batch} outside 1..={GEMV_TC_MAX_ROWS}"
        )));
    }
    if k == 0 || !k.is_multiple_of(k_multiple) {
        return Err(KernelError::Shape(format!(
            "this GEMV needs k a positive multiple of {k_multiple}, got {k}"
        )));
    }
    check_segments("GEMV", segments.len())?;
    let mut args = qrt_gemv_args {
        x,
        k: u32_of("k", k)?,
        num_segments: segments.len() as u32,
        norm: fusion.norm.map_or(0, |n| n.weight),
        eps: fusion.norm.map_or(0.0, |n| n.eps),
        accumulate: fusion.accumulate.into(),
        ..Default::default()
    };
    let mut blocks = 0usize;
    for (slot, s) in args.seg.iter_mut().zip(segments) {
        if s.n == 0 || !s.w.is_multiple_of(16) {
            return Err(KernelError::Shape(format!(
                "GEMV matrix of {} rows at {:#x}: needs rows and 16-byte alignment",
                s.n, s.w
            )));
        }
        *slot = qrt_gemv_segment {
            w: s.w,
            bias: s.bias,
            y: s.y,
            n: u32_of("n", s.n)?,
            first_block: u32_of("blocks", blocks)?,
        };
        blocks += s.n.div_ceil(rows_per_block);
    }
    Ok((args, u32_of("blocks", blocks)?))
}

/// Whether a merging GEMV of rows of `k`, its k split over `split` blocks, combines `splits`
/// partitions: up to [`MERGED_AT_ONCE`] always, more only where each lane stages one chunk of 8
/// values of its block's slice (4 chunks a k-step of 32; see
/// [`CudaDevice::gemv_merges_partials`]).
fn merge_fits(splits: usize, k: usize, split: usize) -> bool {
    let chunks = (k / 32).div_ceil(split.max(1)) * 4;
    splits <= MERGED_AT_ONCE || chunks <= 32
}

/// A gated GEMV takes no bias, no accumulation and 16-byte aligned matrices.
fn check_gated(gate: &Segment, up: u64, fusion: Fusion) -> Result<(), KernelError> {
    if gate.bias != 0 || !up.is_multiple_of(16) || fusion.accumulate {
        return Err(KernelError::Shape(
            "the gated GEMV takes no bias, no accumulation and 16-byte aligned matrices".into(),
        ));
    }
    Ok(())
}

/// [`gemv_args`] of a gated GEMV: gate and up (`[gate.n, k]` at `up`) as the two segments of
/// one launch.
fn gated_args(
    input: GemvInput,
    gate: Segment,
    up: u64,
    rows_per_block: usize,
    k_multiple: usize,
    fusion: Fusion,
) -> Result<(qrt_gemv_args, u32), KernelError> {
    let (mut args, blocks) = gemv_args(input, &[gate], rows_per_block, k_multiple, fusion)?;
    args.seg[1] = qrt_gemv_segment {
        w: up,
        n: args.seg[0].n,
        ..Default::default()
    };
    args.num_segments = 2;
    Ok((args, blocks))
}

/// Bytes of input the batch-one GEMV may stage in shared memory (`k` f32).
const GEMV_ONE_MAX_STAGED: usize = 200 * 1024;

/// Longest row the lean batch-one GEMV takes. Longer rows stream in sequential groups of 8
/// chunks per lane, which lost to the plain kernel at k = 8192 and 14336 on the H200 (the
/// Llama down projections) and won at 2048 and 4096.
const LEAN_MAX_K: usize = 4096;

/// Which batch-one GEMV kernel a product takes (`gemv_one.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OneVariant {
    /// Pairs of rows per warp, 16 loads in flight per lane.
    Plain,
    /// A row per warp in few registers, the next kernel let in early (short rows).
    Lean,
    /// A row per warp streamed as this many groups of 2048 values through two register sets.
    Stream(usize),
    /// Rows of this many groups of 2048 values ([`stream_groups`]) of one matrix, not
    /// normalised, in blocks of 8 rows whose warps read 32 KB in a row at each step.
    Tiled(usize),
}

impl OneVariant {
    /// The variant for rows of `k` values (`gated`: gate/up pairs) of `matrices` matrices, the
    /// input `normed` or not.
    fn for_row(k: usize, gated: bool, matrices: u32, normed: bool) -> Self {
        let lean_max = if gated { LEAN_GATED_MAX_K } else { LEAN_MAX_K };
        if k <= lean_max {
            OneVariant::Lean
        } else if gated {
            OneVariant::Plain
        } else {
            match stream_groups(k) {
                Some(groups) if matrices == 1 && !normed => OneVariant::Tiled(groups),
                Some(groups) => OneVariant::Stream(groups),
                None => OneVariant::Plain,
            }
        }
    }

    /// The variant's part of the kernel name.
    fn infix(self) -> String {
        match self {
            OneVariant::Plain => String::new(),
            OneVariant::Lean => "lean_".into(),
            OneVariant::Stream(groups) => format!("stream{groups}_"),
            OneVariant::Tiled(groups) => format!("tiled{groups}_"),
        }
    }
}

/// Groups of 2048 values a row of `k` streams as, where a streaming and a tiled kernel are
/// built for it (`QRT_GEMV_ONE_STREAM` and `QRT_GEMV_ONE_TILED` in `gemv_one.cu`: 3 to 7
/// groups, k = 6144 to 14336). The tiled kernel, for one matrix and an input that is not
/// normalised, took the 1B's down projection from 10.7 to 9.3 us on the H200, where the
/// streaming one leaves a block's loads in pieces of 8 KB (RESULTS logs 48, 49).
fn stream_groups(k: usize) -> Option<usize> {
    (k.is_multiple_of(2048) && (3..=7).contains(&(k / 2048))).then_some(k / 2048)
}

/// Longest row the lean gated batch-one GEMV takes (4 chunks per lane of gate and of up per
/// group): it won at k = 576 and 2048 on the H200.
const LEAN_GATED_MAX_K: usize = 2048;

/// A normalised input needs a kernel that normalises (see [`CudaDevice::gemv_fuses_norm`]).
fn check_norm(dev: &CudaDevice, input: GemvInput, fusion: Fusion) -> Result<(), KernelError> {
    if fusion.norm.is_some() && !dev.gemv_fuses_norm(input.rows, input.k) {
        return Err(KernelError::Shape(format!(
            "a GEMV of {} rows of {} values cannot normalise its input",
            input.rows, input.k
        )));
    }
    Ok(())
}

/// The FMA GEMV kernels (`gemv.cu`) take at most [`QRT_GEMV_MAX_BATCH`] rows and cannot
/// normalise their input: an error rather than a silently unnormalised product, should a
/// normalised input ever reach them.
fn fma_takes(input: GemvInput, fusion: Fusion) -> Result<(), KernelError> {
    if input.rows > QRT_GEMV_MAX_BATCH as usize {
        return Err(KernelError::Shape(format!(
            "no tensor-core plan for {} rows of {} values (the FMA GEMV takes at most \
             {QRT_GEMV_MAX_BATCH})",
            input.rows, input.k
        )));
    }
    if fusion.norm.is_some() {
        return Err(KernelError::Shape(format!(
            "no tensor-core plan for a normalised input of {} rows of {} values",
            input.rows, input.k
        )));
    }
    Ok(())
}

impl CudaDevice {
    /// Whether a GEMV of `rows` rows of `k` values can normalise its input ([`Fusion::norm`]):
    /// a batch of one whose input fits the batch-one kernel's shared memory, or a batch of 2
    /// to [`GEMV_TC_MAX_ROWS`] on the tensor cores (`k` a multiple of 32, the whole input
    /// staged in one block of 16 warps, which the tensor-core plans can always fall back to).
    pub fn gemv_fuses_norm(&self, rows: usize, k: usize) -> bool {
        Self::one_row_kernel(rows, k)
            || ((2..=GEMV_TC_MAX_ROWS).contains(&rows)
                && k.is_multiple_of(32)
                && tc_slice_bytes(rows, k / 32) <= self.tc_stage_max(16, rows))
    }

    /// Whether a product of `rows` rows of `k` values into matrices of `ns` rows each (of
    /// 16-bit type `ty`) should run as [`gemv`](Self::gemv) rather than a GEMM: any batch up
    /// to [`QRT_GEMV_MAX_BATCH`], and larger ones up to [`GEMV_TC_MAX_ROWS`] where the
    /// tensor-core GEMV has a plan (`spare` as [`Fusion::spare_multiprocessors`]) and
    /// [`wide_gemv_pays`](Self::wide_gemv_pays).
    pub fn gemv_takes(
        &self,
        ty: Half16,
        rows: usize,
        k: usize,
        ns: impl IntoIterator<Item = usize>,
        spare: bool,
    ) -> Result<bool, KernelError> {
        if rows <= QRT_GEMV_MAX_BATCH as usize {
            return Ok(true);
        }
        if rows > GEMV_TC_MAX_ROWS || !k.is_multiple_of(32) {
            return Ok(false);
        }
        let tiles = ns.into_iter().map(|n| n.div_ceil(16)).sum();
        Ok(self.wide_gemv_pays(rows, tc_weight_bytes(tiles, k))
            && self
                .tc_plan(&tc_stem(ty, false), tiles, rows, k, spare)?
                .is_some())
    }

    /// Whether a product of `rows` rows over `weight_bytes` of weights is better off on the
    /// tensor-core GEMV than on a GEMM: always up to [`QRT_GEMV_MAX_BATCH`] rows; beyond (16
    /// batch columns), within the device's bound (`QRT_GEMV_WIDE_MAX_MB`; by default 80 MiB
    /// where the skinny GEMM runs, any size elsewhere).
    pub fn wide_gemv_pays(&self, rows: usize, weight_bytes: usize) -> bool {
        rows <= QRT_GEMV_MAX_BATCH as usize || weight_bytes <= self.wide_gemv_max_bytes
    }

    /// Whether [`gemv_half16`](Self::gemv_half16) takes `rows` rows of `k` values of `ty`
    /// into a matrix of `n` rows (where it [pays](Self::wide_gemv_pays)).
    pub fn gemv_half16_takes(
        &self,
        ty: Half16,
        rows: usize,
        k: usize,
        n: usize,
    ) -> Result<bool, KernelError> {
        Ok(self
            .tile_a_warp_plan(&tc_stem(ty, false), n.div_ceil(16), rows, k)?
            .is_some())
    }

    /// Whether a GEMV of `rows` rows of `k` values runs on the batch-one kernel
    /// (`gemv_one.cu`): one row whose `k` f32 fit its shared memory.
    fn one_row_kernel(rows: usize, k: usize) -> bool {
        rows == 1 && k.is_multiple_of(8) && k * 4 <= GEMV_ONE_MAX_STAGED
    }

    /// `y[b, :] = w @ x[b, :] (+ bias)` for each segment, `x` being `[batch, k]` f32, with
    /// `fusion`'s extras. One launch covers up to three matrices that read the same `x`. A
    /// batch of one runs on the FMA units with f32 activations (`gemv_one.cu`); larger
    /// batches run on the tensor cores ([`gemv_tc`](Self::gemv_tc)) when `k` is a multiple of
    /// 32 and a slice of the input fits a block's shared memory, else (up to
    /// [`QRT_GEMV_MAX_BATCH`] rows; an error beyond) on the FMA units.
    ///
    /// # Safety
    /// Every address must hold what [`Segment`], [`GemvInput`] and [`Fusion`] say.
    pub unsafe fn gemv(
        &self,
        ty: Half16,
        input: GemvInput,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        check_norm(self, input, fusion)?;
        if Self::one_row_kernel(input.rows, input.k) {
            let (args, _) = gemv_args(input, segments, 1, 8, fusion)?;
            let rows = segments.iter().map(|s| s.n).sum();
            // SAFETY: forwarded from the caller.
            return unsafe { self.launch_gemv_one(ty, false, &args, rows) };
        }
        // SAFETY: forwarded from the caller.
        if input.rows > 1
            && input.k.is_multiple_of(32)
            && unsafe { self.planned_gemv_tc(ty, input, segments, fusion)? }
        {
            return Ok(());
        }
        fma_takes(input, fusion)?;
        let total: usize = segments.iter().map(|s| s.n).sum();
        let rows_per_block = if total >= 8192 {
            4
        } else if total >= 1024 {
            2
        } else {
            1
        };
        let (args, blocks) = gemv_args(input, segments, rows_per_block, 8, fusion)?;
        let kernel = format!("qrt_gemv_{}_b{}_r{rows_per_block}", ty.name(), input.rows);
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_gemv_fma(&kernel, &args, blocks) }
    }

    /// Launches the batch-one GEMV kernel for `ty` (`gated` or not) over `rows` output rows
    /// (gated: pairs): 8 warps per block, `k` f32 of dynamic shared memory. A plain kernel takes
    /// up to two blocks per multiprocessor (all resident at once), a warp per pair of rows at
    /// a time; a lean one (rows up to [`LEAN_MAX_K`], gated [`LEAN_GATED_MAX_K`]) a warp per
    /// row, up to four blocks per multiprocessor; a streaming one (plain rows of
    /// [`stream_groups`] x 2048) a warp per row, and a tiled one (the same rows of one matrix,
    /// no norm) 8 rows per block, both two blocks per multiprocessor.
    ///
    /// # Safety
    /// `args` must describe valid buffers for the kernel.
    unsafe fn launch_gemv_one(
        &self,
        ty: Half16,
        gated: bool,
        args: &qrt_gemv_args,
        rows: usize,
    ) -> Result<(), KernelError> {
        const WARPS: usize = 8;
        let variant =
            OneVariant::for_row(args.k as usize, gated, args.num_segments, args.norm != 0);
        let kernel = format!(
            "qrt_gemv_one_{}{}{}",
            variant.infix(),
            if gated { "gated_" } else { "" },
            ty.name()
        );
        let per_multiprocessor = if variant == OneVariant::Lean { 4 } else { 2 };
        let blocks = rows
            .div_ceil(WARPS)
            .min(self.multiprocessors() * per_multiprocessor);
        let options = LaunchOptions {
            cluster_z: 1,
            overlap: true,
            reserve: self.gemv_one_carveout.then(|| SharedReserve {
                resident: blocks.div_ceil(self.multiprocessors()),
                headroom: GEMV_ONE_HEADROOM,
            }),
        };
        // SAFETY: qrt_gemv_args by value, as the kernel takes it; the caller guarantees it.
        unsafe {
            self.launch_with(
                "gemv_one",
                &kernel,
                (
                    (u32_of("blocks", blocks)?, 1, 1),
                    (WARPS * 32) as u32,
                    args.k as usize * 4,
                ),
                &mut params([args]),
                options,
            )
        }
    }

    /// Launches FMA GEMV kernel `kernel` on `blocks` blocks, a warp per 512 values of k (1 to
    /// 8 warps).
    ///
    /// # Safety
    /// `args` must describe valid buffers for `kernel`.
    unsafe fn launch_gemv_fma(
        &self,
        kernel: &str,
        args: &qrt_gemv_args,
        blocks: u32,
    ) -> Result<(), KernelError> {
        let warps = (args.k / 8 / 64).clamp(1, 8);
        // SAFETY: qrt_gemv_args by value, as the kernel takes it; the caller guarantees it.
        unsafe {
            self.launch(
                "gemv",
                kernel,
                (blocks, 1, 1),
                warps * 32,
                &mut params([args]),
            )
        }
    }

    /// The plain tensor-core GEMV of `segments` where it has a plan; `false`, launching
    /// nothing, where it has none.
    ///
    /// # Safety
    /// As for [`gemv_tc`](Self::gemv_tc).
    unsafe fn planned_gemv_tc(
        &self,
        ty: Half16,
        input: GemvInput,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<bool, KernelError> {
        let (args, tiles) = gemv_args(input, segments, 16, 32, fusion)?;
        let stem = tc_stem(ty, false);
        // SAFETY: forwarded from the caller.
        unsafe {
            self.launch_planned_gemv_tc(
                &stem,
                &args,
                tiles,
                input,
                TcVariant::Plain {
                    spare: fusion.spare_multiprocessors,
                },
            )
        }
    }

    /// Whether [`gemv_merging`](Self::gemv_merging) takes a product of `n` rows of type `ty`
    /// whose input is `rows` rows of `k` values left as `parts`: a batch of 2 to
    /// [`GEMV_TC_MAX_ROWS`] whose tensor-core plan gives each warp a tile of its own (where it
    /// pays; beyond 8 rows only for rows of up to `WIDE_MERGE_MAX_K`; a cluster splitting k,
    /// so that a block merges only its slice), at most [`MAX_MERGED_PARTITIONS`] partitions,
    /// more than `MERGED_AT_ONCE` only where each lane stages one chunk of 8 values: those
    /// take a round trip to L2 per pair after the first over their maxima, and on an H200 the
    /// 8B's o projection at batch 8, two chunks a lane, lost 1-1.6% with 5 (RESULTS log 43).
    pub fn gemv_merges_partials(
        &self,
        ty: Half16,
        rows: usize,
        k: usize,
        n: usize,
        parts: Partitions,
    ) -> Result<bool, KernelError> {
        self.merges_partials(ty, n.div_ceil(16), rows, k, parts)
    }

    /// [`gemv_merges_partials`](Self::gemv_merges_partials) for `tiles` 16-row tiles.
    fn merges_partials(
        &self,
        ty: Half16,
        tiles: usize,
        rows: usize,
        k: usize,
        parts: Partitions,
    ) -> Result<bool, KernelError> {
        if !(1..=MAX_MERGED_PARTITIONS).contains(&parts.splits)
            || parts.head_dim == 0
            || !parts.head_dim.is_multiple_of(8)
            || parts.head_dim > 0xff_ffff
            || !k.is_multiple_of(parts.head_dim)
            || tiles == 0
        {
            return Ok(false);
        }
        // (16 batch columns: only rows of up to WIDE_MERGE_MAX_K.)
        if rows > QRT_GEMV_MAX_BATCH as usize && k > WIDE_MERGE_MAX_K {
            return Ok(false);
        }
        let stem = tc_stem(ty, false);
        let Some(plan) = self.tile_a_warp_plan(&stem, tiles, rows, k)? else {
            return Ok(false);
        };
        Ok(merge_fits(parts.splits, k, plan.split))
    }

    /// Whether a SwiGLU MLP of `rows` rows, `hidden` wide with `ffn` intermediate rows of type
    /// `ty`, passes silu(gate) * up from the gated GEMV to down in 16 bits
    /// ([`gemv_gated_half16`](Self::gemv_gated_half16), then
    /// [`gemv_half16`](Self::gemv_half16)): where both products plan a tile a warp (and pay:
    /// gate and up together, down, being half their size, then too). Down then stages half the
    /// bytes, and the same values: its own staging rounds its input to `ty`.
    pub fn mlp_in_half16(
        &self,
        ty: Half16,
        rows: usize,
        hidden: usize,
        ffn: usize,
    ) -> Result<bool, KernelError> {
        Ok(ffn.is_multiple_of(8)
            && self
                .tile_a_warp_plan(&tc_stem(ty, true), ffn / 8, rows, hidden)?
                .is_some()
            && self
                .tile_a_warp_plan(&tc_stem(ty, false), hidden.div_ceil(16), rows, ffn)?
                .is_some())
    }

    /// [`gemv_gated`](Self::gemv_gated) writing `out` (`gate.y`) as `[batch, n]` values of
    /// `ty`, rounded to nearest, where [`mlp_in_half16`](Self::mlp_in_half16) says so; an
    /// error otherwise.
    ///
    /// # Safety
    /// As for [`gemv_gated`](Self::gemv_gated), `gate.y` holding `batch * n` 16-bit values.
    pub unsafe fn gemv_gated_half16(
        &self,
        ty: Half16,
        input: GemvInput,
        gate: Segment,
        up: u64,
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        check_gated(&gate, up, fusion)?;
        if !gate.n.is_multiple_of(8)
            || self
                .tile_a_warp_plan(&tc_stem(ty, true), gate.n / 8, input.rows, input.k)?
                .is_none()
        {
            return Err(KernelError::Shape(format!(
                "no 16-bit output from a gated GEMV of {} rows x {} for {} rows of {} values",
                gate.n, input.k, input.rows, input.k
            )));
        }
        check_norm(self, input, fusion)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_gated_tc(ty, input, gate, up, fusion, TcVariant::Half16Out)? };
        Ok(())
    }

    /// [`gemv`](Self::gemv) of `input.x` holding `[rows, k]` values of `ty` (a
    /// [`gemv_gated_half16`](Self::gemv_gated_half16) output), where the product plans a tile a
    /// warp (see [`mlp_in_half16`](Self::mlp_in_half16)); an error otherwise. No norm.
    ///
    /// # Safety
    /// As for [`gemv`](Self::gemv), `input.x` holding `rows * k` 16-bit values.
    pub unsafe fn gemv_half16(
        &self,
        ty: Half16,
        input: GemvInput,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        let stem = tc_stem(ty, false);
        let (args, tiles) = gemv_args(input, segments, 16, 32, fusion)?;
        if fusion.norm.is_some()
            || self
                .tile_a_warp_plan(&stem, tiles as usize, input.rows, input.k)?
                .is_none()
        {
            return Err(KernelError::Shape(format!(
                "no GEMV of 16-bit input for {} rows of {} values into {tiles} tiles",
                input.rows, input.k
            )));
        }
        // SAFETY: forwarded from the caller; the plan for these tiles exists (checked above).
        unsafe { self.launch_planned_gemv_tc(&stem, &args, tiles, input, TcVariant::Half16In)? };
        Ok(())
    }

    /// [`gemv`](Self::gemv) of a deferred decode attention's partitions: `input.x` is the
    /// attention's work area, whose `parts` for each (row, head) are combined as the input is
    /// staged, so that the attention need not merge them itself. Only where
    /// [`gemv_merges_partials`](Self::gemv_merges_partials) says so; an error otherwise.
    ///
    /// # Safety
    /// `input.x` must hold what [`attention_decode`](Self::attention_decode) left there for
    /// `input.rows` sequences of `input.k / parts.head_dim` heads in `parts.splits`
    /// partitions; every segment what [`Segment`] says.
    pub unsafe fn gemv_merging(
        &self,
        ty: Half16,
        input: GemvInput,
        parts: Partitions,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        let (args, tiles) = gemv_args(input, segments, 16, 32, fusion)?;
        if fusion.norm.is_some()
            || !self.merges_partials(ty, tiles as usize, input.rows, input.k, parts)?
        {
            return Err(KernelError::Shape(format!(
                "no merging GEMV for {} rows of {} values in {} partitions of heads of {}",
                input.rows, input.k, parts.splits, parts.head_dim
            )));
        }
        let stem = tc_stem(ty, false);
        let merge = (parts.head_dim << 8 | parts.splits) as u32;
        // SAFETY: forwarded from the caller; the plan for these tiles exists (checked above).
        unsafe {
            self.launch_planned_gemv_tc(&stem, &args, tiles, input, TcVariant::Merge(merge))?
        };
        Ok(())
    }

    /// The gated tensor-core GEMV (tiles of 8 rows of gate over the same 8 of up) in `variant`,
    /// as its plan says; `false`, launching nothing, where it has none.
    ///
    /// # Safety
    /// As for [`gemv_gated`](Self::gemv_gated) (and `gate.y` as `variant` writes it).
    unsafe fn launch_gated_tc(
        &self,
        ty: Half16,
        input: GemvInput,
        gate: Segment,
        up: u64,
        fusion: Fusion,
        variant: TcVariant,
    ) -> Result<bool, KernelError> {
        let (args, tiles) = gated_args(input, gate, up, 8, 32, fusion)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_planned_gemv_tc(&tc_stem(ty, true), &args, tiles, input, variant) }
    }

    /// Launches tensor-core GEMV `stem` over `tiles` 16-row tiles of `input` as its plan
    /// ([`tc_plan`](Self::tc_plan)) says, in `variant` (other than plain: a plan of a tile a
    /// warp only); `false`, launching nothing, when it has no plan.
    ///
    /// # Safety
    /// `args` must describe valid buffers for the kernel.
    unsafe fn launch_planned_gemv_tc(
        &self,
        stem: &str,
        args: &qrt_gemv_args,
        tiles: u32,
        input: GemvInput,
        variant: TcVariant,
    ) -> Result<bool, KernelError> {
        let spare = variant == TcVariant::Plain { spare: true };
        let Some(plan) = self.tc_plan(stem, tiles as usize, input.rows, input.k, spare)? else {
            return Ok(false);
        };
        let batch = input.rows as u32;
        let early = u32::from(tc_weight_bytes(tiles as usize, input.k) >= OVERLAP_BYTES);
        let layout = match (plan.per_block, variant) {
            (1, TcVariant::Plain { .. }) => "t1",
            (1, _) => {
                return Err(KernelError::Shape(format!(
                    "{stem}: {variant:?} needs a plan of a tile a warp"
                )))
            }
            (_, TcVariant::Plain { .. }) => "tw",
            (_, TcVariant::Merge(_)) => "tw_merge",
            (_, TcVariant::Half16In) => "tw_x16",
            (_, TcVariant::Half16Out) => "tw_y16",
        };
        let grid = (plan.walkers as u32, 1, plan.split as u32);
        let kernel = format!(
            "{stem}_w{}_{layout}{}",
            plan.warps,
            tc_columns(input.rows).1
        );
        let config = (grid, plan.warps as u32 * 32, plan.shared);
        // The merging kernels take a fifth argument, and may ask for room beside their blocks.
        let (merge, count, reserve) = match variant {
            TcVariant::Merge(merge) => {
                let reserve = self
                    .merge_carveout
                    .then(|| merge_reserve(&plan, input.rows, self.multiprocessors()))
                    .flatten();
                (merge, 5, reserve)
            }
            _ => (0, 4, None),
        };
        let options = LaunchOptions {
            cluster_z: plan.split as u32,
            overlap: true,
            reserve,
        };
        let mut all = params([args, &batch, &tiles, &early, &merge]);
        // SAFETY: (qrt_gemv_args, uint32_t batch, uint32_t tiles, uint32_t early[, uint32_t
        // merge]) by value, `shared` bytes of dynamic shared memory for the staged slice,
        // clusters of `split` blocks along z; the caller guarantees the buffers.
        unsafe { self.launch_with("gemv_tc", &kernel, config, &mut all[..count], options)? };
        Ok(true)
    }

    /// SwiGLU's input: `out[b, :] = silu(gate @ x[b, :]) * (up @ x[b, :])`, gate and up both
    /// `[n, k]` of type `ty` (`gate.y` is `out`, `[batch, n]` f32; no biases), in one pass
    /// that reads both matrices; kernels as for [`gemv`](Self::gemv). `fusion` may normalise
    /// the input; it cannot accumulate.
    ///
    /// # Safety
    /// `x` must hold `[batch, k]` f32, `gate.w` and `up` `[gate.n, k]` 16-bit values.
    pub unsafe fn gemv_gated(
        &self,
        ty: Half16,
        input: GemvInput,
        gate: Segment,
        up: u64,
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        check_gated(&gate, up, fusion)?;
        check_norm(self, input, fusion)?;
        let t = ty.name();
        let with_up = |rows_per_block, k_multiple| {
            gated_args(input, gate, up, rows_per_block, k_multiple, fusion)
        };
        if Self::one_row_kernel(input.rows, input.k) {
            let (args, _) = with_up(1, 8)?;
            // SAFETY: forwarded from the caller.
            return unsafe { self.launch_gemv_one(ty, true, &args, gate.n) };
        }
        // SAFETY: forwarded from the caller.
        if input.rows > 1
            && input.k.is_multiple_of(32)
            && unsafe {
                self.launch_gated_tc(
                    ty,
                    input,
                    gate,
                    up,
                    fusion,
                    TcVariant::Plain { spare: false },
                )?
            }
        {
            return Ok(());
        }
        fma_takes(input, fusion)?;
        let rows_loaded = if gate.n >= 4096 { 4 } else { 2 };
        let (args, blocks) = with_up(rows_loaded / 2, 8)?;
        // SAFETY: forwarded from the caller.
        unsafe {
            self.launch_gemv_fma(
                &format!("qrt_gemv_gated_{t}_b{}_r{rows_loaded}", input.rows),
                &args,
                blocks,
            )
        }
    }

    /// [`gemv`](Self::gemv) on the tensor cores for any batch of 1 to [`GEMV_TC_MAX_ROWS`]: the
    /// activations (times their RMSNorm when `fusion` normalises) are rounded to the weight
    /// type, 16 weight rows per tile; `k` must be a multiple of 32, and an error says so when
    /// no slice of the input fits a block's shared memory.
    ///
    /// # Safety
    /// Every address must hold what [`Segment`] and [`GemvInput`] say.
    pub unsafe fn gemv_tc(
        &self,
        ty: Half16,
        input: GemvInput,
        segments: &[Segment],
        fusion: Fusion,
    ) -> Result<(), KernelError> {
        // SAFETY: forwarded from the caller.
        if unsafe { self.planned_gemv_tc(ty, input, segments, fusion)? } {
            return Ok(());
        }
        Err(KernelError::Shape(format!(
            "no slice of {} rows of {} values fits a tensor-core GEMV's shared memory",
            input.rows, input.k
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_partitions_merge_in_the_projection_only_where_a_lane_stages_one_chunk() {
        // The 1B's o projection (k = 2048 over clusters of 8): 32 chunks a slice, one a lane.
        assert!(merge_fits(6, 2048, 8));
        assert!(merge_fits(MAX_MERGED_PARTITIONS, 2048, 8));
        // The 8B's (k = 4096 over 8): two a lane, so only up to 4 at once.
        assert!(merge_fits(4, 4096, 8));
        assert!(!merge_fits(5, 4096, 8));
        // Unsplit, a whole row of the 1B's: 256 chunks.
        assert!(!merge_fits(5, 2048, 1));
    }
}
