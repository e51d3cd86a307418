//! The shared-memory configuration a launch asks for beyond its blocks' own (room for the
//! next kernel's blocks).

use super::*;

/// Shared memory a batch-one GEMV launch asks each multiprocessor to keep beyond its own
/// resident blocks: room for the blocks of the next kernel, which programmatic dependent
/// launch starts while this one runs. Measured on the H200 (RESULTS log 33): with the driver's
/// own choice of configuration SmolLM2's batch-one step took 0.504 ms and the 1B's 0.815;
/// with this preference 0.458 and 0.803; with 0 or 16 KB of room no gain.
pub(super) const GEMV_ONE_HEADROOM: usize = 64 * 1024;

/// Shared memory a merging tensor-core GEMV (the o projection after a deferred decode
/// attention) of `rows` rows asks each multiprocessor to keep beyond its own blocks, where its
/// plan leaves one block a multiprocessor (without a preference the driver chooses). With the
/// 1B's two 10 KB blocks this asks for 51% and 65% of the H200's 228 KB, which the driver
/// rounds up to its 132 and 164 KB configurations (RESULTS log 45). Measured on the H200 (log 44),
/// the 1B's decode steps at batches 2 / 3 / 4 / 5 / 6 / 8 with 512-token prompts: 96 KB
/// -2.1 / -2.1 / -3.4 / -3.2 / -2.2 / -1.0%, 128 KB at 6 and 8 rows -1.9 / -1.6% (at 2 rows
/// +4%); with 1,024-token prompts 96 KB -1.2 / -0.3 / +0.3 / +0.7% at 2-5 rows, 128 KB
/// -0.2 / -2.8% at 6 and 8. 32 or 64 KB gained less, a whole multiprocessor's shared memory
/// cost 30-40%. Why it pays is not established: room for the next kernel's blocks, for the
/// attention's still running, or the L1 cache the configuration leaves the kernels that
/// follow.
fn merge_headroom(rows: usize) -> usize {
    if rows >= 6 {
        128 * 1024
    } else {
        96 * 1024
    }
}

/// The shared memory a merging tensor-core GEMV of `rows` rows launched as `plan` on
/// `multiprocessors` asks for ([`merge_headroom`]): only where the plan's blocks are one a
/// multiprocessor or fewer. (The room is counted beside as many of its blocks as a
/// multiprocessor holds, as it was measured.)
pub(super) fn merge_reserve(
    plan: &TcPlan,
    rows: usize,
    multiprocessors: usize,
) -> Option<SharedReserve> {
    (plan.walkers * plan.split <= multiprocessors).then(|| SharedReserve {
        resident: 16 / plan.warps,
        headroom: merge_headroom(rows),
    })
}

/// How a launch asks for shared memory beyond its blocks' own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SharedReserve {
    /// Blocks of the launch resident on one multiprocessor.
    pub(super) resident: usize,
    /// Bytes to keep free beside them.
    pub(super) headroom: usize,
}

/// The preferred shared-memory carveout, in percent of a multiprocessor's `per_sm` bytes,
/// that holds `reserve.resident` blocks of `per_block` bytes each (their dynamic, static and
/// driver-reserved shared memory) and `reserve.headroom` more; 100 where that is more than
/// the multiprocessor has. The driver takes the smallest configuration the multiprocessor
/// supports that holds the percent (on the H200, RESULTS log 45: 44% of 228 KB, 100.3 KB,
/// takes 132 KB), so the configuration holds the blocks and the headroom.
pub(super) fn carveout_percent(reserve: SharedReserve, per_block: usize, per_sm: usize) -> u32 {
    let need = reserve.resident * per_block + reserve.headroom;
    u32::try_from((need * 100).div_ceil(per_sm.max(1)).min(100)).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carveouts_are_the_smallest_percent_holding_the_blocks_and_the_headroom() {
        let per_sm = 228 * 1024; // the H200's multiprocessor
        for resident in 1..=4 {
            for per_block in (1024..=60_000).step_by(997) {
                for headroom in [0, 16 * 1024, GEMV_ONE_HEADROOM] {
                    let reserve = SharedReserve { resident, headroom };
                    let need = resident * per_block + headroom;
                    let percent = carveout_percent(reserve, per_block, per_sm) as usize;
                    if need >= per_sm {
                        assert_eq!(percent, 100, "{resident} x {per_block} + {headroom}");
                        continue;
                    }
                    assert!(percent * per_sm >= need * 100, "{resident} x {per_block}");
                    assert!(
                        (percent - 1) * per_sm < need * 100,
                        "{resident} x {per_block}"
                    );
                }
            }
        }
        // SmolLM2's batch-one q/k/v (k = 576: 2,304 bytes staged, 32 static, 1,024 reserved),
        // one block a multiprocessor: 30% (68 KB, which the H200 rounds up to 100 KB).
        let smollm2 = SharedReserve {
            resident: 1,
            headroom: GEMV_ONE_HEADROOM,
        };
        assert_eq!(carveout_percent(smollm2, 3360, per_sm), 30);
    }
}
