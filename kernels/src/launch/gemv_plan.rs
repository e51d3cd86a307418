//! Plans of the tensor-core GEMV: block size, tiles a block, the k split over a cluster, and
//! the shared memory a block stages its slice of the input in.

use super::*;

/// The name stem of the tensor-core GEMV kernels for weights of `ty` (`gated`: SwiGLU's
/// gate and up in one launch); plans and variants complete it (`gemv_tc.cu`).
pub(super) fn tc_stem(ty: Half16, gated: bool) -> String {
    let gate = if gated { "gated_" } else { "" };
    format!("qrt_gemv_tc_{gate}{}", ty.name())
}

/// How a tensor-core GEMV runs (`gemv_tc.cu`): blocks of `warps` warps holding `per_block`
/// 16-row tiles at a time, `split` blocks of a cluster splitting k, `walkers` clusters walking
/// the tile groups, `shared` bytes staging a block's slice of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcPlan {
    pub(crate) warps: usize,
    pub(crate) per_block: usize,
    pub(crate) split: usize,
    pub(crate) walkers: usize,
    pub(crate) shared: usize,
}

/// Largest batch the tensor-core GEMV takes (16 columns beyond [`QRT_GEMV_MAX_BATCH`] rows).
pub const GEMV_TC_MAX_ROWS: usize = QRT_GEMV_TC_MAX_BATCH as usize;

/// The batch columns of the tensor-core GEMV kernels for `batch` rows (`kCols` in
/// `gemv_tc.cu`) and the suffix of their names.
pub(super) fn tc_columns(batch: usize) -> (usize, &'static str) {
    if batch > QRT_GEMV_MAX_BATCH as usize {
        (GEMV_TC_MAX_ROWS, "_c16")
    } else {
        (QRT_GEMV_MAX_BATCH as usize, "")
    }
}

/// Static shared memory of a tensor-core GEMV block of `warps` warps and `cols` batch columns,
/// bytes: its partial tiles (`part`) and the rows' squares from every block of a cluster
/// (`squares` in `gemv_tc.cu`; keep the two in step).
const fn tc_static_shared(warps: usize, cols: usize) -> usize {
    warps * 16 * cols * 4 + QRT_GEMV_MAX_SPLIT as usize * cols * 4
}

/// Bytes of 16-bit weights a tensor-core GEMV of `tiles` tiles of rows of `k` reads: every
/// tile 16 rows (gated: 8 of gate, 8 of up).
pub(super) const fn tc_weight_bytes(tiles: usize, k: usize) -> usize {
    tiles * 16 * k * 2
}

/// Shared memory a tensor-core GEMV block stages `batch` rows of a slice of `steps` k-steps in:
/// 16-bit values, rows padded 64 bytes apart.
pub(super) const fn tc_slice_bytes(batch: usize, steps: usize) -> usize {
    batch * (steps * 64 + 64)
}

/// Most shared memory a tensor-core GEMV block of `warps` warps and `cols` batch columns
/// stages its slice of the input in: 80 KB where two blocks share a multiprocessor (8 warps),
/// 200 KB for one (16), within what a block may opt in to (`optin`) and what the blocks of a
/// multiprocessor (`shared_per_sm`, less `reserved` a block) hold beside their static shared
/// memory.
fn tc_stage_max(
    warps: usize,
    cols: usize,
    optin: usize,
    shared_per_sm: usize,
    reserved: usize,
) -> usize {
    let per_multiprocessor = 16 / warps;
    let cap = if per_multiprocessor > 1 {
        80 * 1024
    } else {
        200 * 1024
    };
    let fixed = tc_static_shared(warps, cols);
    cap.min(optin.saturating_sub(fixed))
        .min((shared_per_sm / per_multiprocessor).saturating_sub(fixed + reserved))
}

/// Weights below which a tensor-core GEMV keeps to blocks of one tile, unsplit: its time is
/// latency more than bytes, and a cluster's barriers cost more than the input reads they save
/// (SmolLM2 at batch 4 and 8 lost 17-20% with tile groups split across clusters, H200).
const TC_GROUP_MIN_BYTES: usize = 8 << 20;

/// The plan of a tensor-core GEMV of `tiles` 16-row tiles, `batch` input rows of `k`, on
/// `multiprocessors`, its k split over clusters of at most `max_split` blocks, `spare` as
/// [`Fusion::spare_multiprocessors`];
/// `stage_max(warps)` is the most shared memory a block may stage in ([`tc_stage_max`]);
/// `clusters_fit(warps, split, shared)` says how many such clusters the device holds at once.
///
/// Blocks of 8 warps (two a multiprocessor: the kernels' launch bounds hold them to 128
/// registers a thread) or 16 (one). Matrices of [`TC_GROUP_MIN_BYTES`] or more take a tile a
/// warp where a cluster can split k: the widest (a power of two) whose blocks make one wave,
/// that the device holds, and that leaves each block two k-steps or more. Otherwise a tile a
/// block, unsplit, the blocks walking the tiles. Chosen: a split group of tiles if any, then
/// blocks of 8 warps where they walk more than one round (two blocks a multiprocessor: while
/// one waits at its barrier between tiles the other streams; H200, the output head of the 1B
/// at batch 8: decode steps 1.040 -> 1.029-1.035 ms), then the block size that keeps more
/// warps busy on average over its rounds, then the one with more blocks (fewer where `spare`).
/// `None` when no slice of the input fits in shared memory.
pub(super) fn tc_plan(
    tiles: usize,
    batch: usize,
    k: usize,
    multiprocessors: usize,
    (max_split, spare): (usize, bool),
    stage_max: impl Fn(usize) -> usize,
    mut clusters_fit: impl FnMut(usize, usize, usize) -> usize,
) -> Option<TcPlan> {
    let steps = k / 32;
    let large = tc_weight_bytes(tiles, k) >= TC_GROUP_MIN_BYTES;
    // Beyond QRT_GEMV_MAX_BATCH rows (16 columns), groups of tiles only in 16-warp blocks:
    // twice the tiles a group, so half the input staged. On an H200 (RESULTS log 55, calls
    // 9-10) the 1B at 9 / 12 / 16 sequences -5 / -6 / -3%, the 8B at 12 / 16 -1 / -2%;
    // SmolLM2's output head, which no cluster of 16-warp blocks splits in one wave, lost 3% in
    // 16-warp blocks of a tile a block, so those keep the usual choice.
    let candidates: &[(usize, bool)] = match (large, batch > QRT_GEMV_MAX_BATCH as usize) {
        (true, false) => &[(8, true), (16, true), (8, false), (16, false)],
        (true, true) => &[(16, true), (8, false), (16, false)],
        (false, _) => &[(8, false), (16, false)],
    };
    let mut best: Option<(TcPlan, (bool, bool, usize, isize))> = None;
    for &(warps, grouped) in candidates {
        let per_multiprocessor = 16 / warps;
        let capacity = multiprocessors * per_multiprocessor;
        let per_block = if grouped { warps } else { 1 };
        let groups = tiles.div_ceil(per_block);
        // (A block sends each of its tiles' sums to one block of the cluster: at most as
        // many blocks as tiles.)
        let mut split = if grouped {
            max_split.max(1).next_power_of_two().min(per_block)
        } else {
            1
        };
        let plan = loop {
            let shared = tc_slice_bytes(batch, steps.div_ceil(split));
            let fits = shared <= stage_max(warps);
            if split == 1 {
                // A group of tiles pays only where a cluster splits its k (unsplit, the 1B's
                // output head took 148 us at batch 8 against 134 with a tile a block).
                break (fits && !grouped).then_some(TcPlan {
                    warps,
                    per_block,
                    split,
                    walkers: groups.min(capacity),
                    shared,
                });
            }
            if fits
                && groups * split <= capacity
                && steps / split >= 2
                && clusters_fit(warps, split, shared) >= groups
            {
                break Some(TcPlan {
                    warps,
                    per_block,
                    split,
                    walkers: groups,
                    shared,
                });
            }
            split /= 2;
        };
        if let Some(plan) = plan {
            let rounds = groups.div_ceil(plan.walkers);
            let blocks = (plan.walkers * plan.split) as isize;
            let key = (
                grouped,
                warps == 8 && rounds > 1,
                groups * plan.split * warps / rounds,
                if spare { -blocks } else { blocks },
            );
            if best.as_ref().is_none_or(|(_, k)| key > *k) {
                best = Some((plan, key));
            }
        }
    }
    best.map(|(plan, _)| plan)
}

impl CudaDevice {
    /// [`tc_stage_max`] on this device, for a batch of `batch` rows.
    pub(super) fn tc_stage_max(&self, warps: usize, batch: usize) -> usize {
        tc_stage_max(
            warps,
            tc_columns(batch).0,
            self.shared_optin,
            self.shared_per_sm,
            self.shared_reserved,
        )
    }

    /// The plan of tensor-core GEMV `stem` over `tiles` tiles of `batch` rows of `k`, `spare`
    /// as [`Fusion::spare_multiprocessors`] ([`tc_plan`]; cached, with the device's occupancy
    /// of each cluster it considers).
    pub(super) fn tc_plan(
        &self,
        stem: &str,
        tiles: usize,
        batch: usize,
        k: usize,
        spare: bool,
    ) -> Result<Option<TcPlan>, KernelError> {
        let key = (stem.to_string(), tiles, batch, k, spare);
        let mut plans = self.tc_plans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = plans.get(&key) {
            return Ok(*plan);
        }
        let plan = tc_plan(
            tiles,
            batch,
            k,
            self.multiprocessors(),
            (self.gemv_tc_split as usize, spare),
            |warps| self.tc_stage_max(warps, batch),
            |warps, split, shared| {
                // A cluster the driver cannot size (a partitioned device, say) is not formed.
                let kernel = format!("{stem}_w{warps}_tw{}", tc_columns(batch).1);
                self.max_active_clusters("gemv_tc", &kernel, warps as u32 * 32, shared, split)
                    .unwrap_or(0)
            },
        );
        if std::env::var_os("QRT_TC_PLAN_LOG").is_some() {
            eprintln!("tc plan {stem} tiles {tiles} batch {batch} k {k} spare {spare}: {plan:?}");
        }
        plans.insert(key, plan);
        Ok(plan)
    }

    /// The plan of tensor-core GEMV `stem` over `tiles` tiles of `rows` rows of `k` where it
    /// gives each warp a tile, which its variants other than `TcVariant::Plain` need (a plan
    /// that spares no multiprocessors), and where it [pays](Self::wide_gemv_pays) (those
    /// variants run only where it does).
    pub(super) fn tile_a_warp_plan(
        &self,
        stem: &str,
        tiles: usize,
        rows: usize,
        k: usize,
    ) -> Result<Option<TcPlan>, KernelError> {
        if !(2..=GEMV_TC_MAX_ROWS).contains(&rows)
            || !k.is_multiple_of(32)
            || !self.wide_gemv_pays(rows, tc_weight_bytes(tiles, k))
        {
            return Ok(None);
        }
        Ok(self
            .tc_plan(stem, tiles, rows, k, false)?
            .filter(|p| p.per_block > 1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::carveout::merge_reserve;
    use super::*;

    #[test]
    fn tensor_core_gemv_stages_within_the_device() {
        // H200 (227 KiB a block, 228 a multiprocessor, 1 reserved): the caps.
        assert_eq!(tc_stage_max(8, 8, 232_448, 233_472, 1024), 80 * 1024);
        assert_eq!(tc_stage_max(16, 8, 232_448, 233_472, 1024), 200 * 1024);
        // A100 (163 / 164 KiB): two 8-warp blocks with their static 4,608 bytes (8 partial
        // tiles, 16 x 8 squares) and the reserve; one 16-warp block within the opt-in less its
        // 8,704 static bytes.
        assert_eq!(
            tc_stage_max(8, 8, 166_912, 167_936, 1024),
            83_968 - 4608 - 1024
        );
        assert_eq!(tc_stage_max(16, 8, 166_912, 167_936, 1024), 166_912 - 8704);
        // sm_86/89 (99 / 100 KiB).
        assert_eq!(tc_stage_max(16, 8, 101_376, 102_400, 1024), 101_376 - 8704);
        assert_eq!(
            tc_stage_max(8, 8, 101_376, 102_400, 1024),
            51_200 - 4608 - 1024
        );
    }

    /// An H200's shared memory for a tensor-core GEMV block of `warps` warps to stage in.
    fn hopper(warps: usize) -> usize {
        tc_stage_max(warps, 8, 232_448, 233_472, 1024)
    }

    /// The tensor-core GEMV plan on an H200: 132 multiprocessors, splits up to 16; the device
    /// holding clusters of up to 8 blocks (it did not hold enough of 16 for the 1B's o and
    /// down).
    fn h200_plan(tiles: usize, batch: usize, k: usize) -> Option<TcPlan> {
        h200_plan_sparing(tiles, batch, k, false)
    }

    /// [`h200_plan`], `spare` as [`Fusion::spare_multiprocessors`].
    fn h200_plan_sparing(tiles: usize, batch: usize, k: usize, spare: bool) -> Option<TcPlan> {
        tc_plan(tiles, batch, k, 132, (16, spare), hopper, |_, split, _| {
            if split > 8 {
                0
            } else {
                64
            }
        })
    }

    #[test]
    fn tensor_core_gemv_plans() {
        let plan = h200_plan;
        let p = |warps, per_block, split, walkers, shared| {
            Some(TcPlan {
                warps,
                per_block,
                split,
                walkers,
                shared,
            })
        };
        // Llama-3.2-1B at batch 8: a tile a warp, k split 8 ways for q/k/v (192 tiles), o and
        // down (128); gate/up (1,024 tiles of 8 rows) 2 ways in groups of 16 (128 groups of 8
        // would not all be held at once).
        assert_eq!(plan(192, 8, 2048), p(8, 8, 8, 24, 8 * (8 * 64 + 64)));
        // Sparing multiprocessors, the same warps in 96 blocks of 16 (36 multiprocessors left
        // free); the 8B's q/k/v (384 tiles, k = 4096) likewise in 96 blocks, its k split 4 ways.
        let sparing = |tiles, batch, k| h200_plan_sparing(tiles, batch, k, true);
        assert_eq!(sparing(192, 8, 2048), p(16, 16, 8, 12, 8 * (8 * 64 + 64)));
        assert_eq!(plan(384, 8, 4096), p(8, 8, 4, 48, 8 * (32 * 64 + 64)));
        assert_eq!(sparing(384, 8, 4096), p(16, 16, 4, 24, 8 * (32 * 64 + 64)));
        // Where the fewer blocks would keep fewer warps busy, sparing changes nothing: the
        // output head (below) walks its tiles in two 8-warp blocks a multiprocessor.
        assert_eq!(sparing(8016, 8, 2048), plan(8016, 8, 2048));
        assert_eq!(plan(128, 8, 2048), p(8, 8, 8, 16, 8 * (8 * 64 + 64)));
        assert_eq!(plan(128, 8, 8192), p(8, 8, 8, 16, 8 * (32 * 64 + 64)));
        assert_eq!(plan(1024, 8, 2048), p(16, 16, 2, 64, 8 * (32 * 64 + 64)));
        // The output head (8,016 tiles) cannot split in one wave: a tile a block, the blocks
        // walking the tiles, two blocks a multiprocessor.
        assert_eq!(plan(8016, 8, 2048), p(8, 1, 1, 264, 8 * (64 * 64 + 64)));
        // A device holding clusters of 16: a cluster splits over at most a block's tiles, so
        // the 1B's o at batch 8 takes 16-warp blocks (8 groups split 16 ways; 8-warp blocks
        // could split only 8 ways).
        let wide =
            |tiles, batch, k| tc_plan(tiles, batch, k, 132, (16, false), hopper, |_, _, _| 64);
        assert_eq!(wide(128, 8, 2048), p(16, 16, 16, 8, 8 * (4 * 64 + 64)));
        // Under 8 MiB (SmolLM2's q/k/v, 1.1 MB): a tile a block, unsplit.
        assert_eq!(plan(60, 8, 576), p(16, 1, 1, 60, 8 * (18 * 64 + 64)));
        // A100 (108 multiprocessors, no clusters): a tile a block; the 1B's down at batch 8
        // (131 KB staged) in 16-warp blocks; the 8B's (229 KB) has no plan.
        let a100 = |warps| tc_stage_max(warps, 8, 166_912, 167_936, 1024);
        let unsplit =
            |tiles, batch, k| tc_plan(tiles, batch, k, 108, (1, false), a100, |_, _, _| 0);
        assert_eq!(unsplit(128, 8, 8192), p(16, 1, 1, 108, 8 * (256 * 64 + 64)));
        assert_eq!(unsplit(128, 4, 8192), p(8, 1, 1, 128, 4 * (256 * 64 + 64)));
        assert_eq!(unsplit(128, 8, 14336), None);
        // sm_89 (99 KiB a block): the 1B's down at batch 6 (98,688 bytes) has no plan.
        let ada = |warps| tc_stage_max(warps, 8, 101_376, 102_400, 1024);
        assert_eq!(
            tc_plan(128, 6, 8192, 128, (1, false), ada, |_, _, _| 0),
            None
        );
    }

    #[test]
    fn batches_beyond_8_take_the_16_column_kernels() {
        assert_eq!(tc_columns(2), (8, ""));
        assert_eq!(tc_columns(8), (8, ""));
        assert_eq!(tc_columns(9), (16, "_c16"));
        assert_eq!(tc_columns(16), (16, "_c16"));
        // The static shared memory ptxas reports for gemv_tc.cu's kernels (sm_90a): 4,608 and
        // 8,704 bytes for 8 and 16 warps of 8 columns, 9,216 and 17,408 of 16.
        assert_eq!(tc_static_shared(8, 8), 4608);
        assert_eq!(tc_static_shared(16, 8), 8704);
        assert_eq!(tc_static_shared(8, 16), 9216);
        assert_eq!(tc_static_shared(16, 16), 17_408);
        // The caps hold on an H200 whatever the columns.
        assert_eq!(tc_stage_max(8, 16, 232_448, 233_472, 1024), 80 * 1024);
        assert_eq!(tc_stage_max(16, 16, 232_448, 233_472, 1024), 200 * 1024);
        // The 1B's q/k/v at 16 rows: 16-warp blocks, groups of 16 tiles, k split 8 ways (the
        // device holds no clusters of 16 here), twice the staged rows.
        assert_eq!(
            h200_plan(192, 16, 2048),
            Some(TcPlan {
                warps: 16,
                per_block: 16,
                split: 8,
                walkers: 12,
                shared: 16 * (8 * 64 + 64),
            })
        );
        // Small matrices as at 8 rows: SmolLM2's q/k/v a tile a block; its output head (3,072
        // tiles, more groups of 16 than multiprocessors) a tile a block in blocks of 8 warps.
        assert_eq!(h200_plan(60, 12, 576).map(|p| p.per_block), Some(1));
        assert_eq!(
            h200_plan(3072, 12, 576).map(|p| (p.warps, p.per_block)),
            Some((8, 1))
        );
    }

    #[test]
    fn merging_projection_asks_for_room_only_where_its_blocks_leave_multiprocessors_room() {
        let plan = |tiles, batch, k| h200_plan(tiles, batch, k).expect("a plan");
        // The 1B's o (128 tiles, k = 2048): 128 blocks of 8 warps, one a multiprocessor.
        let room = |kb: usize| {
            Some(SharedReserve {
                resident: 2,
                headroom: kb * 1024,
            })
        };
        assert_eq!(merge_reserve(&plan(128, 4, 2048), 4, 132), room(96));
        assert_eq!(merge_reserve(&plan(128, 8, 2048), 8, 132), room(128));
        // The 8B's (256 tiles, k = 4096): 256 blocks, two a multiprocessor: none.
        assert_eq!(merge_reserve(&plan(256, 8, 4096), 8, 132), None);
    }
}
