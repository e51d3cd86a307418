//! GEMM launchers for prefill and products of more than a GEMV's rows: mma.sync (`gemm.cu`),
//! wgmma (`gemm_wgmma.cu`), TMA-fed and skinny (`gemm_tma.cu`).

use super::*;
use crate::DeviceBuffer;

/// The shape part of GEMM arguments, checked: `m > 0`, `k` a positive multiple of 8, `a` and
/// the weights 16-byte aligned (cp.async copies 16-byte pieces).
fn gemm_args(
    a: u64,
    m: usize,
    k: usize,
    mut weights: impl Iterator<Item = u64>,
) -> Result<qrt_gemm_args, KernelError> {
    if k == 0 || !k.is_multiple_of(8) || m == 0 {
        return Err(KernelError::Shape(format!(
            "GEMM needs m > 0 and k a positive multiple of 8, got m = {m}, k = {k}"
        )));
    }
    if !a.is_multiple_of(16) || weights.any(|w| !w.is_multiple_of(16)) {
        return Err(KernelError::Shape(
            "GEMM operands must be 16-byte aligned".into(),
        ));
    }
    Ok(qrt_gemm_args {
        a,
        m: u32_of("m", m)?,
        k: u32_of("k", k)?,
        ..Default::default()
    })
}

/// Smallest k the wgmma GEMM takes (below it, the mma.sync GEMM is faster).
const WGMMA_MIN_K: usize = 4096;

/// Dynamic shared memory of a wgmma GEMM block of `warpgroups` warpgroups: 4 stages of a
/// (64 warpgroups) x 64 and a 128 x 64 tile of 16-bit values, and 1 KiB for alignment
/// (`WgShape` in gemm_wgmma.cu).
fn gemm_wgmma_smem(warpgroups: usize) -> usize {
    4 * (64 * warpgroups + 128) * 64 * 2 + 1024
}

/// Dynamic shared memory of a TMA GEMM block (gemm_tma.cu): 1 KiB to align the ring, a
/// 192 KiB ring of stages (4 of 48 KiB, or 6 of 32 KiB), a full and an empty mbarrier a stage.
const GEMM_TMA_SMEM: usize = 1024 + 192 * 1024 + 2 * 6 * 8;

/// Smallest k the TMA GEMM takes: shorter k loops fill its pipeline too little.
const GEMM_TMA_MIN_K: usize = 1024;
/// Fewest rows of `a` the TMA GEMM takes: fewer leave its 128-row tiles mostly empty.
const GEMM_TMA_MIN_M: usize = 256;

/// The k split of a TMA GEMM of `tiles` tiles and `ktiles` 64-wide k steps on
/// `multiprocessors`: 2 where that keeps the grid within one wave and at least 8 steps per
/// split (at most `max_splits`), else 1. Clusters of 4 blocks of this kernel's shared memory
/// did not all fit at once on the H200 (the 1B's o and down ran as if in two waves).
fn gemm_tma_splits(
    tiles: usize,
    ktiles: usize,
    multiprocessors: usize,
    max_splits: usize,
) -> usize {
    if max_splits >= 2 && 2 * tiles <= multiprocessors && ktiles / 2 >= 8 {
        2
    } else {
        1
    }
}

/// Output columns of a TMA GEMM tile `width` weight rows wide: gated tiles hold half gate and
/// half up rows.
fn tma_tile_outputs(width: usize, gated: bool) -> usize {
    if gated {
        width / 2
    } else {
        width
    }
}

/// The tile width (weight rows: 256 or 128) and k split of a TMA GEMM of `row_tiles` tiles of
/// 128 rows over matrices of `ns` outputs with `ktiles` k steps: 256 wide where the grid then
/// fills 90% of the device, else whichever width gives the larger grid (on a tie the one that
/// splits less, then 256: the 1B's q/k/v, RESULTS logs 50 and 51); `None`
/// where the grid would fill less than half the device (the mma.sync kernels' smaller tiles
/// do better there). Gated GEMMs (gate and up, 128 outputs a tile) take 256 and no split;
/// without `split_k` (`QRT_GEMM_SPLITK=0`) none splits.
fn gemm_tma_plan(
    row_tiles: usize,
    ns: &[usize],
    ktiles: usize,
    multiprocessors: usize,
    gated: bool,
    split_k: bool,
) -> Option<(usize, usize)> {
    let max_splits = if gated || !split_k { 1 } else { 2 };
    let grid = |width: usize| {
        let outputs = tma_tile_outputs(width, gated);
        let tiles = row_tiles * ns.iter().map(|n| n.div_ceil(outputs)).sum::<usize>();
        let splits = gemm_tma_splits(tiles, ktiles, multiprocessors, max_splits);
        (width, splits, tiles * splits)
    };
    let wide = grid(256);
    let (width, splits, blocks) = if gated || 10 * wide.2 >= 9 * multiprocessors {
        wide
    } else {
        let narrow = grid(128);
        if (narrow.2, wide.1) > (wide.2, narrow.1) {
            narrow
        } else {
            wide
        }
    };
    (2 * blocks >= multiprocessors).then_some((width, splits))
}

/// The TMA GEMM arguments of `args`: maps of `a` (boxes of `a_rows` rows) and of every weight
/// matrix (boxes of 128 rows), each segment's first column tile counted in tiles of `outputs`
/// columns; and the column tiles (`gated`: gate's, which up's rows share).
fn tma_args(
    ty: Half16,
    args: &qrt_gemm_args,
    a_rows: u32,
    outputs: usize,
    gated: bool,
) -> Result<(qrt_gemm_tma_args, usize), KernelError> {
    let (m, k) = (args.m as usize, args.k as usize);
    let mut tma = qrt_gemm_tma_args {
        a: tensor_map(ty, args.a, m, k, a_rows)?,
        gemm: *args,
        ..Default::default()
    };
    let mut tiles = 0;
    for (i, seg) in tma.gemm.seg[..args.num_segments as usize]
        .iter_mut()
        .enumerate()
    {
        tma.w[i] = tensor_map(ty, seg.w, seg.n as usize, k, 128)?;
        seg.first_tile = u32_of("tiles", tiles)?;
        if !gated || i == 0 {
            tiles += (seg.n as usize).div_ceil(outputs);
        }
    }
    Ok((tma, tiles))
}

/// Most rows of `a` the skinny GEMM takes (`gemm_skinny` in gemm_tma.cu: its wgmma's N).
pub const GEMM_SKINNY_MAX_M: usize = 64;

/// Most blocks of a skinny GEMM's cluster, which split its k loop (the portable cluster size).
const MAX_SKINNY_SPLIT: usize = 8;

/// Dynamic shared memory of a skinny GEMM block (gemm_tma.cu): 1 KiB to align the ring, the
/// 192 KiB ring (8 stages of 24 KiB, or 4 of 40 KiB gated), a full and an empty mbarrier a
/// stage.
const GEMM_SKINNY_SMEM: usize = 1024 + 192 * 1024 + 2 * 8 * 8;

/// Into how many blocks a skinny GEMM of `tiles` 128-row weight tiles and `ktiles` 64-wide k
/// steps splits its k loop: as many as keep the grid within one block a multiprocessor, at
/// most [`MAX_SKINNY_SPLIT`] and at most one a k step.
fn gemm_skinny_splits(tiles: usize, ktiles: usize, multiprocessors: usize) -> usize {
    (multiprocessors / tiles.max(1))
        .min(ktiles)
        .clamp(1, MAX_SKINNY_SPLIT)
}

/// A TMA map of the row-major `[rows, k]` 16-bit matrix at `addr`: boxes of `box_rows` rows by
/// 64 columns, 128-byte swizzle, zeros outside the matrix (gemm_tma.cu).
fn tensor_map(
    ty: Half16,
    addr: u64,
    rows: usize,
    k: usize,
    box_rows: u32,
) -> Result<qrt_tensor_map, KernelError> {
    use sys::{
        CUtensorMapDataType as Data, CUtensorMapFloatOOBfill as Fill,
        CUtensorMapInterleave as Interleave, CUtensorMapL2promotion as Promotion,
        CUtensorMapSwizzle as Swizzle,
    };
    let data = match ty {
        Half16::F16 => Data::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        Half16::Bf16 => Data::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    };
    let dims = [k as u64, rows as u64];
    let strides = [2 * k as u64];
    let boxes = [64u32, box_rows];
    let steps = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every pointer refers to an array of the rank (2) or rank - 1 entries the call
    // reads; the address is only recorded in the map.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            data,
            2,
            addr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            steps.as_ptr(),
            Interleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            Swizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            Promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            Fill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(cuda_err(format!(
            "encoding a TMA map of a {rows} x {k} matrix"
        )))?;
        // SAFETY: the driver wrote the map; both types are 128 opaque bytes.
        Ok(std::mem::transmute::<sys::CUtensorMap, qrt_tensor_map>(
            map.assume_init(),
        ))
    }
}

/// Into how many clusters' blocks the k loop of a plain GEMM of `tiles` 64-row tiles and
/// `ktiles` 32-wide k steps splits (`gemm.cu`): 4 or 2 when the tiles alone would leave
/// multiprocessors idle, as long as the blocks stay within two per multiprocessor and each
/// keeps at least 8 k steps; else 1.
fn split_k_factor(tiles: usize, ktiles: usize, multiprocessors: usize) -> usize {
    [4, 2]
        .into_iter()
        .find(|&s| tiles * s <= 2 * multiprocessors && ktiles / s >= 8)
        .unwrap_or(1)
}

/// Most blocks a multiprocessor of a GEMM whose k loop splits through global memory (one
/// wave of the mma.sync kernel, two 8-warp blocks a multiprocessor); the workspace holds a
/// slot for each block of such a grid.
const GLOBAL_SPLIT_BLOCKS_PER_SM: usize = 2;

/// Bytes of a block's slot in that workspace: the f32 accumulators of a 64 x 128 tile.
const GLOBAL_SPLIT_SLOT_BYTES: usize = 64 * 128 * 4;

/// Into how many blocks the k loop of a GEMM of `tiles` 64-row tiles and `ktiles` 32-wide k
/// steps splits through global memory (compute capabilities other than 9.0, where clusters
/// split it; `gather_split` in gemm.cu): the most of
/// 16, 8, 4 and 2 that keeps the grid within [`GLOBAL_SPLIT_BLOCKS_PER_SM`] blocks a
/// multiprocessor and at least 4 k steps a block; else 1. Batched decode has few tiles and long
/// k loops (the 1B's down projection at 32 rows: 16 tiles of 256 k steps, 16 splits on 128 or
/// more multiprocessors, 8 on an A100's 108).
fn global_split(tiles: usize, ktiles: usize, multiprocessors: usize) -> usize {
    [16, 8, 4, 2]
        .into_iter()
        .find(|&s| tiles * s <= GLOBAL_SPLIT_BLOCKS_PER_SM * multiprocessors && ktiles / s >= 4)
        .unwrap_or(1)
}

impl CudaDevice {
    /// The workspace of GEMMs that split k through global memory: a slot for each block of
    /// the largest such grid, then a counter for each tile, zeroed (the kernels set each back
    /// to zero when they are done).
    pub(crate) fn split_k_workspace(&self) -> Result<DeviceBuffer, KernelError> {
        let blocks = GLOBAL_SPLIT_BLOCKS_PER_SM * self.multiprocessors();
        let slots = blocks * GLOBAL_SPLIT_SLOT_BYTES;
        let buf = self.alloc(slots + blocks * 4, "the split-k GEMM workspace")?;
        // SAFETY: the counters lie within the allocation.
        unsafe { self.fill_bytes(buf.ptr() + slots as u64, 0, blocks * 4)? };
        Ok(buf)
    }

    /// `c = a @ w^T (+ bias)` on the tensor cores for each segment (`y` is `c`, `[m, n]` f32):
    /// `a` `[m, k]` of type `ty` at `a`, every `w` `[n, k]` of the same type.
    ///
    /// # Safety
    /// The addresses must hold the stated shapes (`bias`: `n` f32 or 0).
    pub unsafe fn gemm(
        &self,
        ty: Half16,
        a: u64,
        m: usize,
        k: usize,
        segments: &[Segment],
        accumulate: bool,
    ) -> Result<(), KernelError> {
        check_segments("GEMM", segments.len())?;
        let mut args = gemm_args(a, m, k, segments.iter().map(|s| s.w))?;
        args.num_segments = segments.len() as u32;
        args.accumulate = accumulate.into();
        let mut tiles = 0usize;
        for (slot, s) in args.seg.iter_mut().zip(segments) {
            if s.n == 0 {
                return Err(KernelError::Shape("GEMM matrix of 0 rows".into()));
            }
            *slot = qrt_gemm_segment {
                w: s.w,
                bias: s.bias,
                c: s.y,
                n: u32_of("n", s.n)?,
                first_tile: u32_of("tiles", tiles)?,
            };
            tiles += s.n.div_ceil(128);
        }
        // SAFETY: forwarded from the caller.
        if unsafe { self.gemm_skinny(ty, &args, false)? || self.gemm_tma(ty, &args, false)? } {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_gemm(ty, &args, tiles, "") }
    }

    /// SwiGLU's `out = silu(a @ gate^T) * (a @ up^T)` on the tensor cores, `out` `[m, n]` of
    /// type `ty` (the input of the down projection's GEMM): `a` `[m, k]` and `gate`, `up`
    /// `[n, k]`, all of type `ty`. Gate and up rows are read together, so the products never
    /// leave the registers as f32.
    ///
    /// # Safety
    /// The addresses must hold the stated shapes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_gated(
        &self,
        ty: Half16,
        a: u64,
        m: usize,
        k: usize,
        (gate, up): (u64, u64),
        n: usize,
        out: u64,
    ) -> Result<(), KernelError> {
        if n == 0 {
            return Err(KernelError::Shape("GEMM matrix of 0 rows".into()));
        }
        let mut args = gemm_args(a, m, k, [gate, up].into_iter())?;
        let n32 = u32_of("n", n)?;
        args.num_segments = 2;
        args.seg[0] = qrt_gemm_segment {
            w: gate,
            c: out,
            n: n32,
            ..Default::default()
        };
        args.seg[1] = qrt_gemm_segment {
            w: up,
            n: n32,
            ..Default::default()
        };
        // SAFETY: forwarded from the caller.
        if unsafe { self.gemm_skinny(ty, &args, true)? || self.gemm_tma(ty, &args, true)? } {
            return Ok(());
        }
        // 64 rows each of gate and up per 128-row weight tile.
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_gemm(ty, &args, n.div_ceil(64), "gated_") }
    }

    /// Launches the TMA GEMM (`gemm_tma.cu`) for `args` where it applies: Hopper, at least
    /// [`GEMM_TMA_MIN_M`] rows and [`GEMM_TMA_MIN_K`] columns, a grid that fills at least half
    /// the device (see [`gemm_tma_plan`]; the gated kernel never splits). `gated`: `args.seg`
    /// holds gate and up; else every segment is a matrix of its own, in column tiles 256 or 128
    /// wide. Returns whether it launched.
    ///
    /// # Safety
    /// As for [`gemm`](Self::gemm).
    unsafe fn gemm_tma(
        &self,
        ty: Half16,
        args: &qrt_gemm_args,
        gated: bool,
    ) -> Result<bool, KernelError> {
        let (m, k) = (args.m as usize, args.k as usize);
        if !self.gemm_tma || m < GEMM_TMA_MIN_M || k < GEMM_TMA_MIN_K {
            return Ok(false);
        }
        let segments = &args.seg[..args.num_segments as usize];
        let ns: Vec<usize> = if gated {
            vec![args.seg[0].n as usize]
        } else {
            segments.iter().map(|s| s.n as usize).collect()
        };
        let Some((width, splits)) = gemm_tma_plan(
            m.div_ceil(128),
            &ns,
            k.div_ceil(64),
            self.multiprocessors(),
            gated,
            self.gemm_split_k,
        ) else {
            return Ok(false);
        };
        let (tma, col_tiles) = tma_args(ty, args, 128, tma_tile_outputs(width, gated), gated)?;
        let tiles = m.div_ceil(128) * col_tiles;
        let variant = match (gated, width) {
            (true, _) => "gated_",
            (false, 256) => "",
            _ => "n128_",
        };
        let kernel = format!("qrt_gemm_tma_{variant}{}", ty.name());
        // SAFETY: the maps name the caller's matrices.
        unsafe { self.launch_tma(&kernel, &tma, tiles, splits, GEMM_TMA_SMEM)? };
        Ok(true)
    }

    /// Launches `kernel` of gemm_tma.cu on `tma`: `tiles` tiles of `splits` blocks along z,
    /// which form one cluster (the kernels' sums of a split k need it), `shared` bytes of
    /// dynamic shared memory. With programmatic launch (unlike the other GEMMs), which took the
    /// 1B's prefill of 512 tokens 3.22–3.25 → 3.07–3.09 ms on the H200 (RESULTS log 50).
    ///
    /// # Safety
    /// The maps and addresses in `tma` must hold what the kernel reads and writes.
    unsafe fn launch_tma(
        &self,
        kernel: &str,
        tma: &qrt_gemm_tma_args,
        tiles: usize,
        splits: usize,
        shared: usize,
    ) -> Result<(), KernelError> {
        let grid = (u32_of("tiles", tiles)?, 1, splits as u32);
        // SAFETY: qrt_gemm_tma_args by value; forwarded from the caller.
        unsafe {
            self.launch_clustered(
                "gemm_tma",
                kernel,
                (grid, 384, shared),
                splits as u32,
                &mut params([tma]),
                true,
            )
        }
    }

    /// Launches the skinny GEMM (`gemm_skinny` in gemm_tma.cu) for `args` where it applies:
    /// Hopper, at most [`GEMM_SKINNY_MAX_M`] rows (batched decode). Tiles of 128 weight rows
    /// (`gated`: 128 rows each of gate, `args.seg[0]`, and up, `args.seg[1]`), each a cluster
    /// of [`gemm_skinny_splits`] blocks along z that split the k loop; products under
    /// `OVERLAP_BYTES` on the `_ahead` kernels, which request their first weights before their
    /// wait (unless `QRT_GEMM_SKINNY_AHEAD=0`). Returns whether it launched.
    ///
    /// # Safety
    /// As for [`gemm`](Self::gemm).
    unsafe fn gemm_skinny(
        &self,
        ty: Half16,
        args: &qrt_gemm_args,
        gated: bool,
    ) -> Result<bool, KernelError> {
        let (m, k) = (args.m as usize, args.k as usize);
        if !self.gemm_skinny || m > GEMM_SKINNY_MAX_M {
            return Ok(false);
        }
        let (tma, tiles) = tma_args(ty, args, GEMM_SKINNY_MAX_M as u32, 128, gated)?;
        let splits = gemm_skinny_splits(tiles, k.div_ceil(64), self.multiprocessors())
            .min(self.skinny_split_cap());
        let variant = if gated { "gated_" } else { "" };
        let rows: usize = args.seg[..args.num_segments as usize]
            .iter()
            .map(|s| s.n as usize)
            .sum();
        let ahead = if self.skinny_ahead && rows * k * 2 < OVERLAP_BYTES {
            "ahead_"
        } else {
            ""
        };
        let kernel = format!("qrt_gemm_skinny_{variant}{ahead}{}", ty.name());
        // SAFETY: the maps name the caller's matrices.
        unsafe { self.launch_tma(&kernel, &tma, tiles, splits, GEMM_SKINNY_SMEM)? };
        Ok(true)
    }

    /// The most blocks a skinny GEMM's cluster may have here: the largest size up to
    /// [`MAX_SKINNY_SPLIT`] of which the device places at least one cluster (a block takes
    /// nearly a multiprocessor's shared memory, and a cluster's blocks share one GPC; a
    /// partitioned device may have fewer), else 1.
    fn skinny_split_cap(&self) -> usize {
        *self.skinny_split_cap.get_or_init(|| {
            (2..=MAX_SKINNY_SPLIT)
                .rev()
                .find(|&s| {
                    self.max_active_clusters(
                        "gemm_tma",
                        "qrt_gemm_skinny_f16",
                        384,
                        GEMM_SKINNY_SMEM,
                        s,
                    )
                    .is_ok_and(|clusters| clusters > 0)
                })
                .unwrap_or(1)
        })
    }

    /// Launches the GEMM kernel family `variant` ("" or "gated_") for `args` over `tiles`
    /// column tiles: wgmma for long k on Hopper, else mma.sync; blocks of 128 rows of `a` when
    /// they make a full wave, else of 64, with k split over a cluster (9.0) or through the
    /// device's global workspace (elsewhere, [`global_split`]) when the tiles are too few.
    ///
    /// # Safety
    /// As for [`gemm`](Self::gemm).
    unsafe fn launch_gemm(
        &self,
        ty: Half16,
        args: &qrt_gemm_args,
        tiles: usize,
        variant: &str,
    ) -> Result<(), KernelError> {
        let m = args.m as usize;
        let tall = m.div_ceil(128) * tiles >= self.multiprocessors();
        let splits = if self.gemm_split_k && variant.is_empty() && !tall {
            split_k_factor(
                m.div_ceil(64) * tiles,
                (args.k as usize).div_ceil(32),
                self.multiprocessors(),
            )
        } else {
            1
        };
        // wgmma pays off on long k loops (the 8B shapes: 29.8 instead of 32.2 ms per 512-token
        // prefill on an H200); on short ones the mma.sync kernel's wider blocks do better (1B:
        // 6.28 against 6.40 ms, SmolLM2: 3.23 against 3.56 ms). A split k takes mma.sync.
        if splits == 1 && self.wgmma && args.k as usize >= WGMMA_MIN_K {
            let warpgroups = if tall { 2 } else { 1 };
            let kernel = format!("qrt_gemm_wg_{variant}{}_w{warpgroups}", ty.name());
            let grid = (
                u32_of("n tiles", tiles)?,
                u32_of("m tiles", m.div_ceil(64 * warpgroups))?,
                1,
            );
            let config = (grid, 128 * warpgroups as u32, gemm_wgmma_smem(warpgroups));
            // SAFETY: qrt_gemm_args by value; the caller guarantees the addresses.
            return unsafe {
                self.launch_config("gemm_wgmma", &kernel, config, &mut params([args]), false)
            };
        }
        if let Some(workspace) = self.split_workspace.as_ref().filter(|_| !tall) {
            let ktiles = (args.k as usize).div_ceil(32);
            let parts = global_split(m.div_ceil(64) * tiles, ktiles, self.multiprocessors());
            if parts > 1 {
                // SAFETY: forwarded from the caller; the grid has at most as many blocks and
                // tiles as the workspace has slots and counters (global_split).
                return unsafe {
                    self.launch_global_split(ty, args, tiles, variant, parts, workspace)
                };
            }
        }
        let bm = if tall { 128 } else { 64 };
        let kernel = format!("qrt_gemm_{variant}{}_m{bm}", ty.name());
        let grid = (
            u32_of("n tiles", tiles)?,
            u32_of("m tiles", m.div_ceil(bm))?,
            splits as u32,
        );
        // SAFETY: qrt_gemm_args by value; the caller guarantees the addresses. With a split k
        // (never tall, so BM = 64) the blocks of a tile form one cluster along z, as the
        // kernel's split epilogue needs.
        unsafe {
            self.launch_clustered(
                "gemm",
                &kernel,
                (grid, 256, 0),
                splits as u32,
                &mut params([args]),
                false,
            )
        }
    }

    /// Launches the mma.sync GEMM (`variant` "" or "gated_") of `tiles` weight tiles with its
    /// k loop split `splits` ways through `workspace` (see [`global_split`]).
    ///
    /// # Safety
    /// As for [`gemm`](Self::gemm).
    unsafe fn launch_global_split(
        &self,
        ty: Half16,
        args: &qrt_gemm_args,
        tiles: usize,
        variant: &str,
        splits: usize,
        workspace: &DeviceBuffer,
    ) -> Result<(), KernelError> {
        let m_tiles = (args.m as usize).div_ceil(64);
        let blocks = GLOBAL_SPLIT_BLOCKS_PER_SM * self.multiprocessors();
        if m_tiles * tiles * splits > blocks {
            return Err(KernelError::Shape(format!(
                "a split-k GEMM of {} tiles in {splits} splits exceeds its workspace's {blocks} slots",
                m_tiles * tiles
            )));
        }
        let partials = workspace.ptr();
        let counters = partials + (blocks * GLOBAL_SPLIT_SLOT_BYTES) as u64;
        let kernel = format!("qrt_gemm_gsplit_{variant}{}", ty.name());
        let grid = (
            u32_of("n tiles", tiles)?,
            u32_of("m tiles", m_tiles)?,
            splits as u32,
        );
        // SAFETY: qrt_gemm_args and two addresses by value, as the kernel takes them; the
        // caller guarantees the others.
        unsafe {
            self.launch_config(
                "gemm",
                &kernel,
                (grid, 256, 0),
                &mut params([args, &partials, &counters]),
                false,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemms_split_k_only_when_tiles_leave_the_gpu_idle() {
        // H200, 512 rows. Llama-3.2-1B o and down: 8 x 16 tiles, k = 2048 / 8192.
        assert_eq!(split_k_factor(128, 64, 132), 2);
        assert_eq!(split_k_factor(128, 256, 132), 2);
        // q,k,v: 8 x 24 tiles.
        assert_eq!(split_k_factor(192, 64, 132), 1);
        // SmolLM2 down (576 x 1536): 8 x 5 tiles, 48 k steps; its o (k = 576): 18 k steps.
        assert_eq!(split_k_factor(40, 48, 132), 4);
        assert_eq!(split_k_factor(40, 18, 132), 2);
        // Too short a k loop to share.
        assert_eq!(split_k_factor(40, 15, 132), 1);
    }

    #[test]
    fn global_splits_fill_one_wave_with_loops_of_four_steps_or_more() {
        // A100 (108 multiprocessors), the 1B at 32 rows (one 64-row tile): q/k/v (24 tiles, 64
        // k steps), o (16, 64), gate+up gated (128 tiles of 64 + 64 rows, 64), down (16, 256).
        assert_eq!(global_split(24, 64, 108), 8);
        assert_eq!(global_split(16, 64, 108), 8);
        assert_eq!(global_split(128, 64, 108), 1);
        assert_eq!(global_split(16, 256, 108), 8);
        // H200 through the sm_80 route (132): o and down take 16 splits, gate+up 2.
        assert_eq!(global_split(16, 64, 132), 16);
        assert_eq!(global_split(128, 64, 132), 2);
        // 512 rows of the 1B's o (8 x 16 tiles) split as the clusters do; q/k/v do not.
        assert_eq!(global_split(128, 64, 132), split_k_factor(128, 64, 132));
        assert_eq!(global_split(192, 64, 132), 1);
        // Never fewer than 4 k steps a block, never more blocks than the workspace's slots.
        for tiles in 1..300 {
            for ktiles in 1..300 {
                let s = global_split(tiles, ktiles, 108);
                assert!(
                    s == 1 || (ktiles / s >= 4 && tiles * s <= 216),
                    "{tiles} {ktiles}"
                );
            }
        }
    }

    #[test]
    fn skinny_gemms_split_k_as_far_as_one_wave_allows() {
        // Every split is a cluster the kernel takes, never more blocks than k steps, and the
        // grid stays within one block a multiprocessor unless the tiles alone exceed it; one
        // more block a tile would break one of these.
        for multiprocessors in [1, 78, 132] {
            for tiles in 1..1100 {
                for ktiles in 1..80 {
                    let s = gemm_skinny_splits(tiles, ktiles, multiprocessors);
                    assert!((1..=MAX_SKINNY_SPLIT).contains(&s));
                    assert!(s <= ktiles);
                    assert!(s == 1 || tiles * s <= multiprocessors);
                    assert!(
                        s == MAX_SKINNY_SPLIT || s == ktiles || tiles * (s + 1) > multiprocessors,
                        "{tiles} tiles, {ktiles} k steps: {s} blocks a tile leave room"
                    );
                }
            }
        }
        // H200, the 1B: q/k/v (24 tiles) 5 blocks a tile, o and down (16) 8, gate and up (64) 2.
        assert_eq!(gemm_skinny_splits(24, 32, 132), 5);
        assert_eq!(gemm_skinny_splits(16, 128, 132), 8);
        assert_eq!(gemm_skinny_splits(64, 32, 132), 2);
    }

    #[test]
    fn tma_gemm_tiles_fill_the_device() {
        // H200 (132 multiprocessors), 512 rows (4 row tiles), Llama-3.2-1B. Down (k = 8192)
        // and o (k = 2048): 128-wide tiles split in 2, 128 blocks.
        assert_eq!(
            gemm_tma_plan(4, &[2048], 128, 132, false, true),
            Some((128, 2))
        );
        assert_eq!(
            gemm_tma_plan(4, &[2048], 32, 132, false, true),
            Some((128, 2))
        );
        // q, k, v: 4 x (8 + 2 + 2) wide tiles split in 2 tie with 96 narrow ones unsplit,
        // which took the product 30.5 → 21.0 µs (RESULTS log 50) and, with the split
        // epilogue's grouped loads, 20.8 → 15.9 µs (log 51).
        assert_eq!(
            gemm_tma_plan(4, &[2048, 512, 512], 32, 132, false, true),
            Some((128, 1))
        );
        // gate/up: 4 x 64 tiles of 128 outputs.
        assert_eq!(
            gemm_tma_plan(4, &[8192], 32, 132, true, true),
            Some((256, 1))
        );
        // lm_head: plenty of wide tiles.
        assert_eq!(
            gemm_tma_plan(4, &[128256], 32, 132, false, true),
            Some((256, 1))
        );
        // Llama-3.1-8B down (k = 14336): 4 x 16 wide tiles split in 2.
        assert_eq!(
            gemm_tma_plan(4, &[4096], 224, 132, false, true),
            Some((256, 2))
        );
        // No split with QRT_GEMM_SPLITK=0: the 1B's down, 64 narrow tiles, fills under half
        // the device and is left to mma.sync; at 1,024 rows it takes 128 narrow tiles.
        assert_eq!(gemm_tma_plan(4, &[2048], 128, 132, false, false), None);
        assert_eq!(
            gemm_tma_plan(8, &[2048], 128, 132, false, false),
            Some((128, 1))
        );
        // Too few tiles either way: SmolLM2's down at 512 rows (n = 576).
        assert_eq!(gemm_tma_plan(4, &[576], 24, 132, false, true), None);
        // No split below 8 steps per share.
        assert_eq!(gemm_tma_splits(32, 15, 132, 2), 1);
    }
}
