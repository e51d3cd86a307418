//! Attention launchers: prefill, and decode over the paged KV cache with the policy that
//! splits each context into partitions (`attention.cu`).

use super::*;

/// Most decode partitions merged within one thread-block cluster (Hopper's non-portable
/// cluster size).
pub(super) const MAX_DECODE_CLUSTER: usize = 16;

/// Most partitions of a long context whose partitions stream through the ring (see
/// [`DecodePolicy::split`]): at batch one, two blocks a multiprocessor. The ring kernel issues
/// an instruction every ~5 cycles a warp (ncu, RESULTS log 52), so a multiprocessor needs the
/// warps of two blocks (measured with blocks of 4 warps; since log 56 heads of 64 take 8).
const MAX_LONG_SPLITS: usize = 32;

/// Whether the `splits` partitions of each (sequence, KV head) of a decode attention grid of
/// `blocks` blocks merge through each other's shared memory as one thread-block cluster: when
/// there are several, they fit one cluster, and the whole grid is one wave of `slots` blocks
/// (a block per multiprocessor, two for the tensor-core kernel); else through global memory.
/// On an H200, clusters made batch one faster (1B 0.986 -> 0.962 ms/step, SmolLM2 0.696 ->
/// 0.651, 8B 4.464 -> 4.442) and batches of 4-8 of the register kernel slower (1B batch 8
/// 1.554 -> 1.703).
fn merge_in_cluster(splits: u32, blocks: usize, slots: usize) -> bool {
    (2..=MAX_DECODE_CLUSTER as u32).contains(&splits) && blocks <= slots
}

/// The groups (query heads per KV head) the decode attention kernels are built for: a launch
/// takes the smallest that holds its group.
pub(super) const DECODE_GROUPS: [u32; 2] = [4, MAX_ATTN_GROUP as u32];
/// Largest decode partition of the register kernel (`kMaxPartition` in attention.cu).
const MAX_ATTN_PARTITION: usize = 64;
/// Tensor-core decode partitions are multiples of this (`DecodeTcShape`: 4 warps of 16-key
/// steps).
const TC_PARTITION_STEP: usize = 64;
/// Threads of a tensor-core decode block (`DecodeTcShape::kThreads`).
const TC_DECODE_THREADS: u32 = 128;
/// Threads of a ring decode block (`RingShape::kThreads`): 8 warps for heads of 64, else 4.
const fn ring_decode_threads(head_dim: usize) -> u32 {
    if head_dim <= 64 {
        2 * TC_DECODE_THREADS
    } else {
        TC_DECODE_THREADS
    }
}
/// Most static shared memory of a tensor-core decode block (`WarpResults` and the queries
/// for groups of 8 heads of 128: 16.5 KB and 2 KB).
const TC_DECODE_STATIC_MAX: usize = 19 * 1024;

/// Largest partition the tensor-core decode kernel stages whole for heads of `head_dim`
/// (`DecodeTcShape::kMaxStaged`): its keys and values in about 72 KB of shared memory, two
/// blocks a multiprocessor. Longer partitions pass through a ring of stages in the same
/// memory (two of 128 tokens for heads of 64, two of 64 for heads of 128).
fn max_tc_partition(head_dim: usize) -> usize {
    if head_dim <= 64 {
        256
    } else {
        128
    }
}

/// Shared memory of a tensor-core decode block for partitions of `partition` tokens: the
/// partition's keys and values, or the ring's for a longer one (`DecodeTcShape`: rows of
/// `head_dim + 8` halves).
fn tc_partition_bytes(partition: usize, head_dim: usize) -> usize {
    2 * partition.min(max_tc_partition(head_dim)) * (head_dim + 8) * 2
}

/// When decode attention scores on tensor cores (`QRT_ATTN_TC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeTc {
    /// Never (`0`).
    Never,
    /// For batches of several sequences whose 64-token partitions would be more blocks than
    /// multiprocessors (the default; batch one keeps the register kernel).
    Batched,
    /// Always (`all`).
    Always,
}

/// How decode attention splits each sequence's context and which kernel scores the
/// partitions, for one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodePolicy {
    /// The device's multiprocessors.
    pub multiprocessors: usize,
    /// When the tensor-core kernel serves.
    pub tensor_cores: DecodeTc,
}

impl DecodePolicy {
    /// The register kernel's splits only (64-token partitions). Which kernel runs is decided at
    /// launch from the partition and the device's own policy
    /// ([`tensor_core_partition`](Self::tensor_core_partition)).
    pub const REGISTERS: DecodePolicy = DecodePolicy {
        multiprocessors: 1,
        tensor_cores: DecodeTc::Never,
    };

    /// (partitions per sequence, tokens per partition) for `seqs` sequences of contexts up to
    /// `max_ctx` tokens with `heads` query heads over `kv_heads` KV heads of `head_dim`. The
    /// register kernel (batch one, or a grid of at most a block per multiprocessor) takes
    /// 64-token partitions, as many as the context needs while they fit one cluster, beyond
    /// that a power of two (few distinct shapes, so few graphs). The tensor-core kernel takes
    /// partitions in steps of 64 tokens, as many as the context needs (a power of two beyond
    /// 16):
    /// - after a small output projection (below `OVERLAP_BYTES`), the shortest
    ///   partitions that keep the grid within a block per multiprocessor, else the longest it
    ///   stages;
    /// - after a large one, the longest it stages: fewer blocks leave multiprocessors to the
    ///   projection's blocks, which load their weights while the attention runs; but where
    ///   those would be more blocks than multiprocessors, partitions three quarters as long
    ///   where they stay on the tensor cores (192 tokens for heads of 64: blocks of 57 KB of
    ///   keys and values, three to a multiprocessor, against two of 74 KB). On an H200, the
    ///   1B at batch 8 -0.6-0.9% a decode step at 512-token prompts and -1.8-2.0% at 1,024,
    ///   at batch 4 with 1,024 -0.6%; where the longest were within the multiprocessors they
    ///   lost 0.4-2.1% (batch 2), and 128-token partitions lost 4-15% (RESULTS log 46).
    ///
    /// On an H200, aiming at two blocks a multiprocessor was slower at batch 4 (1B: 128-token
    /// partitions, 160 blocks, 1.40 ms a step against 1.11).
    ///
    /// Long contexts, where those rules would split a context into more partitions than one
    /// cluster holds, take instead as many partitions as keep the tensor-core kernel's grid
    /// within two blocks a multiprocessor, at most a cluster's (16), or 32 where even 32 would
    /// stream through the ring, in multiples of half the tokens the kernel stages whole;
    /// unless the register kernel is forced. A merge of many partitions by one block had cost
    /// more than the attention itself (the 1B at batch one and 8,192 tokens: 40 µs a layer for
    /// 16 MB of keys and values; RESULTS log 52). The partitions are counted exactly, as below
    /// 16, so a generation records a decode graph per (partitions, length) it passes through:
    /// about 100 up to 32K tokens, against about 20 before.
    ///
    /// Where the (sequence, KV head) pairs alone are more blocks than multiprocessors (the 1B
    /// from 17 sequences), each context is one tensor-core partition, streamed through the
    /// ring beyond what the kernel stages whole: on an H200 at 512-token prompts, the 1B's
    /// step at 32 / 64 sequences 1.75 / 2.23 → 1.67 / 2.04–2.11 ms, SmolLM2's at 64 1.48 →
    /// 1.26, the 8B's at 32 / 64 7.23 / 9.46 → 6.44 / 7.62; at 2,000 tokens the 1B's 2.69 /
    /// 4.02 → 2.34 / 3.19 (RESULTS log 54, call 8). Where they are at least 70% of the
    /// multiprocessors (the 1B and 8B from 12 sequences, SmolLM2 from 31), two partitions a
    /// context: SmolLM2 at 32 / 40 1.15 / 1.18 → 1.03–1.04 / 1.07, the 8B at 12 / 16 5.80–5.86
    /// / 6.13 → 5.58–5.61 / 5.91, the 1B at 16 at 2,000 tokens 1.93 → 1.78; the 1B at 512
    /// tokens about the same (at 12 1.29–1.33 → 1.30–1.31, at 16 1.41 → 1.38–1.41); with fewer
    /// pairs two partitions lost (the 1B at 9 and 11, 72 and 88 pairs, 1.22 / 1.24 → 1.29 /
    /// 1.30–1.33; SmolLM2 at 24, 0.96 → 0.99) (calls 9–10).
    pub fn split(
        &self,
        max_ctx: usize,
        seqs: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> (usize, usize) {
        let max_ctx = max_ctx.max(1);
        let round = |needed: usize| {
            if needed <= MAX_DECODE_CLUSTER {
                needed
            } else {
                needed.next_power_of_two()
            }
        };
        let needed = max_ctx.div_ceil(MAX_ATTN_PARTITION);
        let pairs = seqs.max(1) * kv_heads.max(1);
        let one_wave = pairs * needed <= self.multiprocessors;
        let registers = match self.tensor_cores {
            DecodeTc::Never => true,
            // Batch one was measured only on the register kernel's side of the line (log 29:
            // the tensor-core kernel lost there at 640 tokens).
            DecodeTc::Batched => seqs <= 1 || one_wave,
            DecodeTc::Always => false,
        };
        let whole = max_tc_partition(head_dim);
        // Many sequences: one or two partitions a context (see above).
        if !registers && 10 * pairs >= 7 * self.multiprocessors {
            let parts = if pairs > self.multiprocessors { 1 } else { 2 };
            let partition = max_ctx.div_ceil(parts);
            let step = if partition <= whole {
                TC_PARTITION_STEP
            } else {
                whole / 2
            };
            // At least the shortest tensor-core partition (short contexts stay on tensor cores).
            let partition = partition
                .next_multiple_of(step)
                .max(MAX_ATTN_PARTITION + TC_PARTITION_STEP);
            return (max_ctx.div_ceil(partition), partition);
        }
        let (splits, partition) = self.short_split(registers, max_ctx, pairs, heads, head_dim);
        if splits <= MAX_DECODE_CLUSTER || self.tensor_cores == DecodeTc::Never {
            return (round(splits), partition);
        }
        let long = |most: usize| {
            let splits = (2 * self.multiprocessors / pairs).clamp(1, most);
            let partition = max_ctx.div_ceil(splits).next_multiple_of(whole / 2);
            (max_ctx.div_ceil(partition), partition)
        };
        // Within a cluster's partitions, unless they stream through the ring and still would
        // with more of them (partitions staged whole beyond a cluster would be merged by one
        // block, one partition after another).
        let few = long(MAX_DECODE_CLUSTER);
        match long(MAX_LONG_SPLITS) {
            more if few.1 > whole && more.1 > whole => more,
            _ => few,
        }
    }

    /// [`split`](Self::split)'s rules before the long-context one: (partitions, tokens per
    /// partition) for `pairs` (sequence, KV head) pairs, the partitions not yet rounded.
    fn short_split(
        &self,
        registers: bool,
        max_ctx: usize,
        pairs: usize,
        heads: usize,
        head_dim: usize,
    ) -> (usize, usize) {
        if registers {
            return (max_ctx.div_ceil(MAX_ATTN_PARTITION), MAX_ATTN_PARTITION);
        }
        let largest = max_tc_partition(head_dim);
        let width = heads * head_dim;
        let partition = if width * width * 2 >= OVERLAP_BYTES {
            // Three quarters of it, where it stays a tensor-core partition and the longest
            // would make more blocks than multiprocessors.
            let shorter = largest * 3 / 4 / TC_PARTITION_STEP * TC_PARTITION_STEP;
            if shorter > MAX_ATTN_PARTITION
                && pairs * max_ctx.div_ceil(largest) > self.multiprocessors
            {
                shorter
            } else {
                largest
            }
        } else {
            (TC_PARTITION_STEP..=largest)
                .step_by(TC_PARTITION_STEP)
                .find(|p| pairs * max_ctx.div_ceil(*p) <= self.multiprocessors)
                .unwrap_or(largest)
        };
        (max_ctx.div_ceil(partition), partition)
    }

    /// Whether partitions of `partition` tokens are scored on tensor cores.
    pub fn tensor_core_partition(&self, partition: usize) -> bool {
        partition > MAX_ATTN_PARTITION || self.tensor_cores == DecodeTc::Always
    }
}
/// Largest number of query heads per KV head (`kMaxGroup` in attention.cu).
pub const MAX_ATTN_GROUP: usize = 8;

/// Bytes of the decode attention's work area: per (sequence, query head, split) an output of
/// `head_dim` f32, a maximum and a sum; per (sequence, KV head) a u32 arrival counter, which
/// must be zero before the first launch.
pub fn attention_decode_work_bytes(
    seqs: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    splits: usize,
) -> (usize, usize) {
    let partials = seqs * heads * splits * (head_dim + 2) * 4;
    (partials, partials + seqs * kv_heads * 4)
}

/// (query row, head) pairs one prefill attention block computes (`kPrefillPairs` in
/// attention.cu).
const PREFILL_PAIRS: usize = 64;
/// Threads of a prefill attention block: two halves (alternate key tiles) of a warp per 16
/// pairs.
const PREFILL_THREADS: u32 = PREFILL_PAIRS as u32 * 4;

/// Dynamic shared memory of a prefill attention block for heads of `head_dim` (64 or 128):
/// each half's two key and two value buffers of 64 keys (32 for heads of 128), rows padded by
/// 8 values (`PrefillShape::kSharedBytes` in attention.cu).
fn prefill_shared_bytes(head_dim: usize) -> usize {
    let keys = if head_dim == 64 { 64 } else { 32 };
    2 * 4 * keys * (head_dim + 8) * 2
}

/// Query rows per prefill attention tile for `group` query heads per KV head: the tile's rows
/// times the group's heads fill one block's (row, head) pairs.
pub fn attention_tile_rows(group: usize) -> usize {
    PREFILL_PAIRS / group.clamp(1, MAX_ATTN_GROUP)
}

impl CudaDevice {
    fn check_attention(args: &qrt_attn_args) -> Result<(), KernelError> {
        let (h, kvh, d) = (args.num_heads, args.num_kv_heads, args.head_dim);
        if kvh == 0 || h == 0 || h % kvh != 0 || h / kvh > MAX_ATTN_GROUP as u32 {
            return Err(KernelError::Shape(format!(
                "attention needs num_heads a multiple of num_kv_heads with at most \
                 {MAX_ATTN_GROUP} query heads per KV head, got {h} and {kvh}"
            )));
        }
        if d != 64 && d != 128 {
            return Err(KernelError::Shape(format!(
                "the attention kernels take head_dim 64 or 128, not {d}"
            )));
        }
        if args.block_size == 0 {
            return Err(KernelError::Shape("KV block size 0".into()));
        }
        Ok(())
    }

    /// Causal attention for rows of several sequences over the paged cache, one block per
    /// (tile of query rows, KV head); `args.work` holds `tiles` (sequence, first row) pairs, a tile
    /// being [`attention_tile_rows`] rows of one sequence (fewer at its end). Blocks start in the
    /// list's order (all KV heads of a tile together), so listing the tiles that see the most
    /// keys first pairs long blocks with short ones on the multiprocessors.
    ///
    /// # Safety
    /// The addresses in `args` must hold what [`qrt_attn_args`] describes.
    pub unsafe fn attention_prefill(
        &self,
        args: &qrt_attn_args,
        tiles: usize,
    ) -> Result<(), KernelError> {
        Self::check_attention(args)?;
        let kernel = format!("qrt_attn_prefill_d{}", args.head_dim);
        // A block per (tile, KV head), the KV head varying fastest.
        let blocks = tiles.saturating_mul(args.num_kv_heads as usize);
        let grid = (u32_of("attention tiles x KV heads", blocks)?, 1, 1);
        // SAFETY: qrt_attn_args by value; the caller guarantees the addresses.
        unsafe {
            self.launch_config(
                "attention",
                &kernel,
                (
                    grid,
                    PREFILL_THREADS,
                    prefill_shared_bytes(args.head_dim as usize),
                ),
                &mut params([args]),
                false,
            )
        }
    }

    /// Attention of the last row of each sequence over its cached context, split into
    /// `args.splits` partitions of `args.partition` tokens (flash-decoding; together they must
    /// cover every sequence's context), merged within a thread-block cluster (by its first
    /// block, from its shared memory) or else by the last partition of each (sequence, KV head)
    /// to finish. Partitions of up to 64 tokens go to the register kernel, longer ones (or any,
    /// under `QRT_ATTN_TC=all`) to the tensor-core kernel, which takes multiples of 64: up to
    /// 256 tokens for heads of 64 and 128 for heads of 128 staged whole, longer ones through a
    /// ring of stages ([`DecodePolicy::split`] chooses them). `args.work` needs
    /// [`attention_decode_work_bytes`] bytes, its arrival counters zero (they are left zero).
    /// With `args.out` 0 (deferred; one row per sequence, rows in `0..num_seqs`, tensor-core
    /// partitions only) nothing is merged: every partition's
    /// unnormalised output, maximum and sum stay in `args.work` by query row (partitions beyond
    /// a context with maximum -inf), for [`gemv_merging`](Self::gemv_merging) to combine.
    ///
    /// # Safety
    /// The addresses in `args` must hold what [`qrt_attn_args`] describes.
    pub unsafe fn attention_decode(&self, args: &qrt_attn_args) -> Result<(), KernelError> {
        Self::check_attention(args)?;
        let partition = args.partition as usize;
        let head_dim = args.head_dim as usize;
        let tc = self.decode_policy().tensor_core_partition(partition);
        let valid = if tc {
            partition.is_multiple_of(TC_PARTITION_STEP)
        } else {
            partition <= MAX_ATTN_PARTITION
        };
        if partition == 0 || !valid {
            let kernel = if tc {
                format!("multiples of {TC_PARTITION_STEP} (tensor cores)")
            } else {
                format!("1..={MAX_ATTN_PARTITION} (registers)")
            };
            return Err(KernelError::Shape(format!(
                "decode partition {partition} for heads of {head_dim}: the kernel takes {kernel}"
            )));
        }
        if args.out == 0 && !tc {
            return Err(KernelError::Shape(format!(
                "decode partitions of {partition} tokens (registers) cannot be left unmerged"
            )));
        }
        let grid = (args.num_seqs, args.num_kv_heads, args.splits);
        let group = args.num_heads / args.num_kv_heads;
        // check_attention bounds the group by MAX_ATTN_GROUP, the last of DECODE_GROUPS.
        let built = DECODE_GROUPS
            .into_iter()
            .find(|&g| g >= group)
            .unwrap_or(MAX_ATTN_GROUP as u32);
        // The register kernel: two warps per 16 dimensions (`DecodeShape` in attention.cu);
        // the tensor-core one: four warps (`DecodeTcShape`), its partition staged in dynamic
        // shared memory; the ring kernel: as many warps as `RingShape` says (8 for heads of
        // 64), its stages in the same memory.
        let ring = tc && partition > max_tc_partition(head_dim);
        let (threads, name, staged) = if tc {
            let (kind, threads) = if ring {
                ("tc_ring", ring_decode_threads(head_dim))
            } else {
                ("tc", TC_DECODE_THREADS)
            };
            (
                threads,
                format!("qrt_attn_decode_{kind}_d{head_dim}_g{built}"),
                tc_partition_bytes(partition, head_dim),
            )
        } else {
            (
                2 * args.head_dim,
                format!("qrt_attn_decode_d{head_dim}_g{built}"),
                0,
            )
        };
        let blocks = grid.0 as usize * grid.1 as usize * grid.2 as usize;
        // The leader's slots: per partition, the group's outputs, maxima and sums.
        let slots = args.splits as usize * group as usize * (head_dim + 2) * 4;
        // A tensor-core cluster only where two of its blocks fit a multiprocessor: a cluster
        // of 16 blocks of one a multiprocessor would need 16 free multiprocessors in one GPC.
        let fits_twice =
            !tc || 2 * (staged + slots + TC_DECODE_STATIC_MAX) <= self.block_shared_per_sm();
        // Its grid is one wave up to two blocks a multiprocessor.
        let wave = self.multiprocessors() * if tc { 2 } else { 1 };
        // Deferred (`out` 0): the partitions are left in `work` for the projection to merge.
        // Ring partitions stream long enough to want a multiprocessor each, where a cluster
        // packs its blocks two to a multiprocessor of one GPC.
        let cluster = args.out != 0
            && !ring
            && self.decode_clusters
            && fits_twice
            && merge_in_cluster(args.splits, blocks, wave);
        // SAFETY: qrt_attn_args by value; the caller guarantees the addresses.
        unsafe {
            if cluster {
                self.launch_clustered(
                    "attention",
                    &format!("{name}_cluster"),
                    (grid, threads, staged + slots),
                    args.splits,
                    &mut params([args]),
                    true,
                )
            } else {
                self.launch_config(
                    "attention",
                    &name,
                    (grid, threads, staged),
                    &mut params([args]),
                    true,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threads a kernel of `module`'s PTX for `arch` was compiled for (its `.maxntid`).
    fn max_threads(module: &str, arch: &str, kernel: &str) -> Option<u32> {
        let ptx = crate::ptx(module, arch)?;
        let entry = ptx.find(&format!(".entry {kernel}("))?;
        let bound = &ptx[entry..]
            .lines()
            .find_map(|l| l.strip_prefix(".maxntid "))?;
        bound.split(',').next()?.trim().parse().ok()
    }

    #[test]
    fn decode_launches_match_the_kernels_bounds() {
        if !crate::BUILD_INFO.cuda_kernels {
            eprintln!("built without nvcc: no PTX to check");
            return;
        }
        for arch in crate::BUILD_INFO.archs {
            for d in [64, 128] {
                for g in DECODE_GROUPS {
                    let bound = |name: &str| {
                        max_threads("attention", arch, name)
                            .unwrap_or_else(|| panic!("no .maxntid for {name} ({arch})"))
                    };
                    assert_eq!(
                        bound(&format!("qrt_attn_decode_tc_ring_d{d}_g{g}")),
                        ring_decode_threads(d),
                        "ring, heads of {d}, {arch}"
                    );
                    assert_eq!(
                        bound(&format!("qrt_attn_decode_tc_d{d}_g{g}")),
                        TC_DECODE_THREADS,
                        "tensor cores, heads of {d}, {arch}"
                    );
                }
            }
        }
    }

    #[test]
    fn many_sequences_take_one_or_two_partitions_each() {
        let policy = DecodePolicy {
            multiprocessors: 132,
            tensor_cores: DecodeTc::Batched,
        };
        // The 1B's heads: from 17 sequences the (sequence, KV head) pairs outnumber the
        // multiprocessors; each context is one partition, whole up to 256 tokens (steps of
        // 64, at least 128: a tensor-core partition), streamed beyond (steps of 128).
        for seqs in [17, 64] {
            for ctx in [1, 64, 65, 128, 129, 256, 257, 544, 2000, 8192] {
                let (splits, partition) = policy.split(ctx, seqs, 32, 8, 64);
                let step = if ctx <= 256 { 64 } else { 128 };
                assert_eq!(
                    (splits, partition),
                    (1, ctx.next_multiple_of(step).max(128))
                );
                assert!(policy.tensor_core_partition(partition));
            }
        }
        // 12 to 16 sequences (96 to 128 pairs, at least 70% of the multiprocessors): each
        // context in two partitions.
        assert_eq!(policy.split(544, 16, 32, 8, 64), (2, 384));
        assert_eq!(policy.split(2000, 12, 32, 8, 64), (2, 1024));
        assert_eq!(policy.split(200, 12, 32, 8, 64), (2, 128));
        assert_eq!(policy.split(100, 12, 32, 8, 64), (1, 128));
        // 11 (88 pairs) keep the rules below: three partitions of 192 tokens.
        assert_eq!(policy.split(544, 11, 32, 8, 64), (3, 192));
        // Nor does a forced register kernel change.
        let registers = DecodePolicy {
            tensor_cores: DecodeTc::Never,
            ..policy
        };
        assert_eq!(registers.split(544, 64, 32, 8, 64), (9, 64));
    }

    #[test]
    fn decode_splits_cover_every_context_with_partitions_a_kernel_takes() {
        // Every policy, head layouts of the presets, batches 1 to 64, contexts to 32K: the
        // partitions cover the context; register partitions are at most 64 tokens and
        // tensor-core ones multiples of 64; more than a cluster's only as ring partitions
        // (at most 32) or as the register kernel's (a power of two).
        let layouts = [
            (32, 8, 64),
            (9, 3, 64),
            (32, 8, 128),
            (4, 4, 64),
            (16, 2, 128),
        ];
        for tensor_cores in [DecodeTc::Never, DecodeTc::Batched, DecodeTc::Always] {
            let policy = DecodePolicy {
                multiprocessors: 132,
                tensor_cores,
            };
            for (heads, kv_heads, head_dim) in layouts {
                for seqs in [1, 2, 3, 8, 17, 64] {
                    for ctx in (1..=32_768).step_by(7) {
                        let (splits, partition) =
                            policy.split(ctx, seqs, heads, kv_heads, head_dim);
                        let at = format!(
                            "{tensor_cores:?} {heads}/{kv_heads}x{head_dim} b{seqs} ctx {ctx}"
                        );
                        assert!(splits * partition >= ctx, "{at}: {splits} x {partition}");
                        if policy.tensor_core_partition(partition) {
                            assert!(partition.is_multiple_of(TC_PARTITION_STEP), "{at}");
                            let ring = partition > max_tc_partition(head_dim);
                            assert!(
                                splits <= MAX_DECODE_CLUSTER || (ring && splits <= MAX_LONG_SPLITS),
                                "{at}: {splits} x {partition}"
                            );
                        } else {
                            assert!(partition <= MAX_ATTN_PARTITION, "{at}");
                            assert!(
                                splits <= MAX_DECODE_CLUSTER || splits.is_power_of_two(),
                                "{at}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn decode_partitions_merge_in_a_cluster_only_for_one_wave() {
        // Llama-3.2-1B at batch one, 513-1,024 tokens: 8 KV heads x 16 partitions on an H200.
        assert!(merge_in_cluster(16, 128, 132));
        // SmolLM2 (3 KV heads) at batch two.
        assert!(merge_in_cluster(16, 96, 132));
        // Batch four of the 1B: 512 blocks, more than a wave.
        assert!(!merge_in_cluster(16, 512, 132));
        // One partition needs no merge; 32 do not fit a cluster of 16.
        assert!(!merge_in_cluster(1, 8, 132));
        assert!(!merge_in_cluster(32, 64, 132));
        assert!(merge_in_cluster(2, 16, 132));
        // Exactly one wave.
        assert!(merge_in_cluster(4, 132, 132));
        assert!(!merge_in_cluster(4, 133, 132));
    }

    #[test]
    fn prefill_tiles_fill_a_block_with_the_group() {
        // 64 (row, head) pairs per block: 16 rows of a group of 4, 21 of 3, 64 of 1.
        assert_eq!(attention_tile_rows(4), 16);
        assert_eq!(attention_tile_rows(3), 21);
        assert_eq!(attention_tile_rows(1), 64);
        assert_eq!(attention_tile_rows(8), 8);
        for group in 1..=MAX_ATTN_GROUP {
            assert!(attention_tile_rows(group) * group <= PREFILL_PAIRS);
            assert!((attention_tile_rows(group) + 1) * group > PREFILL_PAIRS);
        }
    }
}
