//! Packing a forward pass's inputs into one block of u32 words for the device: tokens,
//! positions, cache slots, logit rows, per-sequence records, block tables, prefill attention
//! tiles and rotary frequencies, each at an offset the kernels are given.
//!
//! Decode passes (one new token per sequence) get a fixed layout per (rows, partitions), so
//! that a recorded CUDA graph can be replayed with new contents at the same addresses.

use qrt_kernels::{attention_tile_rows, DecodePolicy};

use crate::backend::{HeadGeometry, StepInput};
use crate::RuntimeError;

/// How a decode pass splits each sequence's context (flash-decoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeSplit {
    /// Partitions per sequence.
    pub splits: usize,
    /// Tokens per partition.
    pub partition: usize,
}

impl DecodeSplit {
    /// The split `policy` gives `seqs` sequences of contexts up to `max_ctx` tokens with the
    /// heads `heads` (see [`DecodePolicy::split`]).
    pub fn choose(
        policy: &DecodePolicy,
        max_ctx: usize,
        seqs: usize,
        heads: &HeadGeometry,
    ) -> Self {
        let (splits, partition) = policy.split(
            max_ctx,
            seqs,
            heads.num_heads,
            heads.num_kv_heads,
            heads.head_dim,
        );
        Self { splits, partition }
    }
}

/// The packed inputs of one pass and where each part lies (offsets in words).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// The words to copy to the device.
    pub words: Vec<u32>,
    /// Offset of the token of every row.
    pub tokens: usize,
    /// Offset of the position of every row.
    pub positions: usize,
    /// Offset of the cache slot of every row.
    pub slots: usize,
    /// Offset of the logit rows.
    pub logit_rows: usize,
    /// Offset of the per-sequence records (`qrt_attn_seq`, 4 words each).
    pub seqs: usize,
    /// Offset of the block tables.
    pub tables: usize,
    /// Offset of the prefill tiles ((sequence, first row) pairs).
    pub tiles: usize,
    /// Offset of the rotary inverse frequencies (f32 bits).
    pub inv_freq: usize,
    /// Rows of the pass.
    pub rows: usize,
    /// Sequences of the pass.
    pub num_seqs: usize,
    /// Logit rows.
    pub num_logit_rows: usize,
    /// Prefill tiles.
    pub num_tiles: usize,
    /// Set for decode passes.
    pub decode: Option<DecodeSplit>,
    /// Largest token id.
    pub max_token: u32,
    /// Largest KV block index named by any table.
    pub max_block: u32,
    /// Largest cache slot written.
    pub max_slot: u32,
    /// Tokens per KV block the tables assume.
    pub block_size: usize,
}

/// Appends `data` at a 16-byte-aligned offset and returns the offset.
fn push(words: &mut Vec<u32>, data: impl IntoIterator<Item = u32>) -> usize {
    words.resize(words.len().next_multiple_of(4), 0);
    let at = words.len();
    words.extend(data);
    at
}

/// Lays out `input` (checking that every sequence's block table covers its tokens), a decode
/// pass split as `policy` says.
pub fn plan(input: &StepInput<'_>, policy: &DecodePolicy) -> Result<StepPlan, RuntimeError> {
    let batch = input.batch;
    let rows = input.tokens.len();
    let bs = batch.block_size;
    if bs == 0 {
        return Err(RuntimeError::Shape("KV block size 0".into()));
    }
    if batch.positions.len() != rows || batch.slots.len() != rows {
        return Err(RuntimeError::Shape(format!(
            "{rows} tokens but {} positions and {} slots",
            batch.positions.len(),
            batch.slots.len()
        )));
    }
    for s in &batch.seqs {
        let need = (s.past + s.len).div_ceil(bs);
        if s.block_table.len() < need || s.start + s.len > rows || s.len == 0 {
            return Err(RuntimeError::Shape(format!(
                "a sequence of {} cached + {} new tokens at row {} has a block table of {} \
                 blocks of {bs} in a batch of {rows} rows",
                s.past,
                s.len,
                s.start,
                s.block_table.len()
            )));
        }
    }
    if let Some(&r) = input.logit_rows.iter().find(|&&r| r as usize >= rows) {
        return Err(RuntimeError::Shape(format!(
            "logit row {r} of a batch of {rows} rows"
        )));
    }
    if input.inv_freq.len() * 2 != input.heads.head_dim {
        return Err(RuntimeError::Shape(format!(
            "{} rotary frequencies for heads of {}",
            input.inv_freq.len(),
            input.heads.head_dim
        )));
    }
    let words_u32 = |what: &str, v: usize| {
        u32::try_from(v).map_err(|_| RuntimeError::Shape(format!("{what} {v} exceeds 32 bits")))
    };
    words_u32("rows", rows)?;
    for s in &batch.seqs {
        words_u32("context", s.past + s.len)?;
    }
    // Decode: one new token per sequence, at the position and in the slot its block table
    // gives (the decode kernel derives both from the table), logits of every row in order.
    let decode_rows: Vec<u32> = batch.seqs.iter().map(|s| s.start as u32).collect();
    let from_table = |s: &crate::backend::SeqSpan| {
        let p = s.past;
        u64::from(s.block_table[p / bs]) * bs as u64 + (p % bs) as u64
    };
    let decode = (batch.seqs.iter().all(|s| {
        s.len == 1
            && batch.positions[s.start] as usize == s.past
            && u64::from(batch.slots[s.start]) == from_table(s)
    }) && batch.seqs.len() == rows
        && input.logit_rows == decode_rows.as_slice())
    .then(|| {
        let max_ctx = batch.seqs.iter().map(|s| s.past + 1).max().unwrap_or(1);
        DecodeSplit::choose(policy, max_ctx, batch.seqs.len(), &input.heads)
    });

    let mut words = Vec::new();
    let tokens = push(&mut words, input.tokens.iter().copied());
    let positions = push(&mut words, batch.positions.iter().copied());
    let slots = push(&mut words, batch.slots.iter().copied());
    let logit_rows = push(&mut words, input.logit_rows.iter().copied());
    // Decode: every table padded to the blocks of all partitions, at a fixed stride.
    let stride = decode.map(|d| (d.splits * d.partition).div_ceil(bs));
    let mut table_at = 0usize;
    let mut records = Vec::with_capacity(batch.seqs.len() * 4);
    for s in &batch.seqs {
        records.extend([s.start as u32, s.len as u32, s.past as u32, table_at as u32]);
        table_at += stride.unwrap_or(s.block_table.len());
    }
    let seqs = push(&mut words, records);
    let tables = push(
        &mut words,
        // (A decode table longer than the stride is cut: only ceil(context / block) entries,
        // at most the stride, are ever read.)
        batch.seqs.iter().flat_map(|s| {
            let keep = stride.unwrap_or(s.block_table.len());
            let pad = keep.saturating_sub(s.block_table.len());
            s.block_table
                .iter()
                .copied()
                .take(keep)
                .chain(std::iter::repeat_n(0, pad))
        }),
    );
    let tile_rows = attention_tile_rows(input.heads.num_heads / input.heads.num_kv_heads.max(1));
    // The prefill tiles, those that see the most keys first: blocks start in this order, so
    // a long tile's block shares its multiprocessor with a short one's.
    let tile_list: Vec<u32> = if decode.is_some() {
        Vec::new()
    } else {
        let mut tiles: Vec<(usize, u32, u32)> = batch
            .seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                (0..s.len).step_by(tile_rows).map(move |q0| {
                    let keys = s.past + (q0 + tile_rows).min(s.len);
                    (keys, i as u32, q0 as u32)
                })
            })
            .collect();
        tiles.sort_by_key(|&(keys, ..)| std::cmp::Reverse(keys));
        tiles.iter().flat_map(|&(_, i, q0)| [i, q0]).collect()
    };
    let num_tiles = tile_list.len() / 2;
    let tiles = push(&mut words, tile_list);
    let inv_freq = push(&mut words, input.inv_freq.iter().map(|f| f.to_bits()));
    Ok(StepPlan {
        words,
        tokens,
        positions,
        slots,
        logit_rows,
        seqs,
        tables,
        tiles,
        inv_freq,
        rows,
        num_seqs: batch.seqs.len(),
        num_logit_rows: input.logit_rows.len(),
        num_tiles,
        decode,
        max_token: input.tokens.iter().copied().max().unwrap_or(0),
        max_block: batch
            .seqs
            .iter()
            .flat_map(|s| s.block_table.iter().copied())
            .max()
            .unwrap_or(0),
        max_slot: batch.slots.iter().copied().max().unwrap_or(0),
        block_size: bs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BatchLayout, HeadGeometry, SeqSpan};

    fn heads() -> HeadGeometry {
        HeadGeometry {
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
        }
    }

    /// `plan` of a pass over `batch` with the test heads.
    fn plan_for(
        tokens: &[u32],
        batch: &BatchLayout,
        logit_rows: &[u32],
        inv_freq: &[f32],
    ) -> Result<StepPlan, RuntimeError> {
        plan(
            &StepInput {
                tokens,
                batch,
                logit_rows,
                inv_freq,
                heads: heads(),
            },
            &DecodePolicy::REGISTERS,
        )
    }

    /// One sequence with `past` cached tokens and one new token at `position` in `slot`.
    fn one_token(past: usize, block_table: Vec<u32>, position: u32, slot: u32) -> BatchLayout {
        BatchLayout {
            seqs: vec![SeqSpan {
                start: 0,
                len: 1,
                past,
                block_table,
            }],
            positions: vec![position],
            slots: vec![slot],
            block_size: 16,
        }
    }

    #[test]
    fn prefill_lays_out_tiles_and_tables() {
        let batch = BatchLayout {
            seqs: vec![
                SeqSpan {
                    start: 0,
                    len: 40,
                    past: 0,
                    block_table: vec![3, 1, 4],
                },
                SeqSpan {
                    start: 40,
                    len: 1,
                    past: 20,
                    block_table: vec![0, 2],
                },
            ],
            positions: (0..40).chain([20]).collect(),
            slots: (0..41).collect(),
            block_size: 16,
        };
        let tokens: Vec<u32> = (0..41).collect();
        let mut inv = [1.0f32; 32];
        inv[1] = 0.5;
        let p = plan_for(&tokens, &batch, &[39, 40], &inv).unwrap();
        assert_eq!(p.decode, None);
        // Groups of 2 heads: 40 rows in tiles of 32, two tiles for the first sequence, one for the
        // second; those that see the most keys first (40, 32 and 20 + 1).
        assert_eq!(p.num_tiles, 3);
        assert_eq!(&p.words[p.tiles..p.tiles + 6], &[0, 32, 0, 0, 1, 0]);
        assert_eq!(&p.words[p.seqs..p.seqs + 8], &[0, 40, 0, 0, 40, 1, 20, 3]);
        assert_eq!(&p.words[p.tables..p.tables + 5], &[3, 1, 4, 0, 2]);
        assert_eq!(p.words[p.inv_freq + 1], 0.5f32.to_bits());
        assert_eq!(&p.words[p.logit_rows..p.logit_rows + 2], &[39, 40]);
        assert!([
            p.tokens,
            p.positions,
            p.slots,
            p.seqs,
            p.tables,
            p.tiles,
            p.inv_freq
        ]
        .iter()
        .all(|o| o % 4 == 0));
        assert_eq!((p.max_token, p.max_block, p.max_slot), (40, 4, 40));
    }

    #[test]
    fn decode_pads_tables_to_a_fixed_stride() {
        let batch = BatchLayout {
            seqs: vec![
                SeqSpan {
                    start: 0,
                    len: 1,
                    past: 70,
                    block_table: vec![5, 6, 7, 8, 9],
                },
                SeqSpan {
                    start: 1,
                    len: 1,
                    past: 3,
                    block_table: vec![2],
                },
            ],
            positions: vec![70, 3],
            slots: vec![9 * 16 + 6, 2 * 16 + 3],
            block_size: 16,
        };
        let p = plan_for(&[7, 9], &batch, &[0, 1], &[1.0; 32]).unwrap();
        // Context 71 -> bucket 128 -> two partitions of 64 -> 8 blocks per table.
        assert_eq!(
            p.decode,
            Some(DecodeSplit {
                splits: 2,
                partition: 64
            })
        );
        assert_eq!(p.words[p.seqs + 7], 8);
        assert_eq!(
            &p.words[p.tables..p.tables + 16],
            &[5, 6, 7, 8, 9, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(p.num_tiles, 0);
    }

    #[test]
    fn a_decode_step_must_match_its_tables() {
        let layout = |position: u32, slot: u32| one_token(20, vec![7, 3, 9], position, slot);
        let decode = |batch: &BatchLayout| {
            plan_for(&[1], batch, &[0], &[1.0; 32])
                .unwrap()
                .decode
                .is_some()
        };
        // Position 20 is in block 3 (the table's second entry): slot 3 * 16 + 4.
        assert!(decode(&layout(20, 52)));
        assert!(!decode(&layout(21, 52)), "position not the cached length");
        assert!(!decode(&layout(20, 53)), "slot not the table's");
    }

    #[test]
    fn long_decode_tables_are_cut_to_the_stride() {
        let batch = BatchLayout {
            seqs: (0..2)
                .map(|i| SeqSpan {
                    start: i,
                    len: 1,
                    past: 3,
                    block_table: vec![10 + i as u32, 20, 30, 40, 50, 60],
                })
                .collect(),
            positions: vec![3, 3],
            slots: vec![163, 179],
            block_size: 16,
        };
        let p = plan_for(&[1, 2], &batch, &[0, 1], &[1.0; 32]).unwrap();
        assert!(p.decode.is_some());
        // Context 4: one partition of 64 tokens, a stride of 4 blocks per table.
        assert_eq!(p.words[p.seqs + 7], 4);
        assert_eq!(
            &p.words[p.tables..p.tables + 8],
            &[10, 20, 30, 40, 11, 20, 30, 40]
        );
    }

    #[test]
    fn rotary_frequencies_must_fit_the_heads() {
        let batch = one_token(0, vec![0], 0, 0);
        let err = plan_for(&[1], &batch, &[0], &[1.0; 3]).unwrap_err();
        assert!(err.to_string().contains("rotary"), "{err}");
    }

    /// The engine's decode steps (built the way `Engine::step` builds them, from a block
    /// allocator shared by several sequences) are recognised as decode passes, so they take
    /// the decode kernels and CUDA graphs.
    #[test]
    fn engine_decode_steps_are_decode_passes() {
        use crate::kv_cache::{BlockAllocator, KvGeometry, SequenceBlocks};
        let g = KvGeometry {
            num_layers: 1,
            num_kv_heads: 2,
            head_dim: 64,
            block_size: 16,
            num_blocks: 64,
        };
        let mut alloc = BlockAllocator::new(g.num_blocks);
        let mut seqs: Vec<SequenceBlocks> = (0..3).map(|_| SequenceBlocks::new()).collect();
        let step = |seqs: &mut Vec<SequenceBlocks>, alloc: &mut BlockAllocator, lens: &[usize]| {
            let mut batch = BatchLayout {
                block_size: g.block_size,
                ..Default::default()
            };
            for (s, &len) in seqs.iter_mut().zip(lens) {
                let past = s.len();
                s.reserve(len, &g, alloc).unwrap();
                batch.seqs.push(SeqSpan {
                    start: batch.positions.len(),
                    len,
                    past,
                    block_table: s.table().to_vec(),
                });
                batch.slots.extend(s.append_slots(len, &g));
                batch.positions.extend((past..past + len).map(|p| p as u32));
            }
            let rows: Vec<u32> = batch
                .seqs
                .iter()
                .map(|s| (s.start + s.len - 1) as u32)
                .collect();
            let tokens = vec![1; batch.rows()];
            plan_for(&tokens, &batch, &rows, &[1.0; 32]).unwrap().decode
        };
        assert_eq!(step(&mut seqs, &mut alloc, &[37, 5, 16]), None);
        for _ in 0..40 {
            assert!(step(&mut seqs, &mut alloc, &[1, 1, 1]).is_some());
        }
    }

    #[test]
    fn short_tables_are_refused() {
        let batch = one_token(16, vec![0], 16, 16);
        let err = plan_for(&[1], &batch, &[0], &[1.0; 32]).unwrap_err();
        assert!(err.to_string().contains("block table of 1"), "{err}");
    }

    #[test]
    fn splits_grow_with_the_context() {
        let splits = |ctx| DecodeSplit::choose(&DecodePolicy::REGISTERS, ctx, 1, &heads()).splits;
        assert_eq!(
            DecodeSplit::choose(&DecodePolicy::REGISTERS, 1, 1, &heads()).partition,
            64
        );
        // Exactly the partitions the context needs, up to a cluster's 16.
        assert_eq!((splits(1), splits(64), splits(65)), (1, 1, 2));
        assert_eq!((splits(640), splits(641), splits(1024)), (10, 11, 16));
        // Beyond, a power of two.
        assert_eq!((splits(1025), splits(5000)), (32, 128));
    }

    #[test]
    fn batched_decode_takes_longer_partitions_on_tensor_cores() {
        // An H200 and Llama-3.2-1B's 8 KV heads of 64.
        let h200 = DecodePolicy {
            multiprocessors: 132,
            tensor_cores: qrt_kernels::DecodeTc::Batched,
        };
        let llama = HeadGeometry {
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
        };
        let split = |ctx, seqs, heads: &HeadGeometry| {
            let s = DecodeSplit::choose(&h200, ctx, seqs, heads);
            (s.splits, s.partition)
        };
        // Batch one keeps the register kernel up to 16 partitions: at 640 tokens 80 blocks.
        assert_eq!(split(640, 1, &llama), (10, 64));
        // Beyond, as many tensor-core partitions as keep two blocks a multiprocessor, at most
        // 16, in multiples of 128 tokens (half the 256 staged whole; longer ones stream through
        // a ring): 1,100 tokens in 9 of 128, 5,000 in 14 of 384. Up to 32 where those would
        // still stream: 8,224 in 22 of 384, 32,768 in 32 of 1,024.
        assert_eq!(split(1100, 1, &llama), (9, 128));
        assert_eq!(split(5000, 1, &llama), (14, 384));
        assert_eq!(split(8224, 1, &llama), (22, 384));
        assert_eq!(split(32768, 1, &llama), (32, 1024));
        // Its 8 MB output projection: the longest partitions (2: 48 blocks; 4: 96), three
        // quarters as long where those would be more blocks than multiprocessors (8: 64
        // (sequence, KV head) pairs x 3 = 192 blocks).
        assert_eq!(split(640, 2, &llama), (3, 256));
        assert_eq!(split(640, 4, &llama), (3, 256));
        assert_eq!(split(640, 8, &llama), (4, 192));
        assert_eq!(split(1152, 2, &llama), (5, 256));
        assert_eq!(split(1152, 4, &llama), (6, 192));
        // SmolLM2's 0.66 MB projection: the shortest partitions within a wave; its 3 KV heads
        // at batch 8 take 128 tokens, 5 x 24 = 120 blocks, and 192 at 1,152 tokens.
        let smollm2 = HeadGeometry {
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
        };
        assert_eq!(split(640, 8, &smollm2), (5, 128));
        assert_eq!(split(1152, 6, &smollm2), (6, 192));
        // Beyond a wave even at 256 tokens: the longest it stages.
        assert_eq!(split(1152, 8, &smollm2), (5, 256));
        // Long contexts: 3 KV heads at batch one in 16 partitions through the ring (32 would be
        // staged whole); 24 (sequence, KV head) pairs at batch 8 in 11 (264 blocks).
        assert_eq!(split(8032, 1, &smollm2), (16, 512));
        assert_eq!(split(8032, 8, &smollm2), (11, 768));
        // Long contexts: 64 (sequence, KV head) pairs in 4 partitions each, 256 blocks.
        assert_eq!(split(5000, 8, &llama), (4, 1280));
        // Heads of 128 stage at most 128 tokens (three quarters of that would be the register
        // kernel's).
        let wide = HeadGeometry {
            head_dim: 128,
            ..llama
        };
        assert_eq!(split(640, 8, &wide), (5, 128));
        // and stream longer ones through the ring.
        assert_eq!(split(8192, 1, &wide), (32, 256));
        // The register kernel alone (`QRT_ATTN_TC=0`) keeps a power of two of 64-token
        // partitions beyond 16.
        let registers = DecodePolicy {
            tensor_cores: qrt_kernels::DecodeTc::Never,
            ..h200
        };
        assert_eq!(registers.split(5000, 1, 32, 8, 64), (128, 64));
    }
}
