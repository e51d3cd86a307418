//! The paged KV cache: a pool of fixed-size blocks, a free list, and per-sequence block tables.
//!
//! Every backend stores keys and values in one preallocated pool per layer, laid out as
//! `[num_blocks, block_size, num_kv_heads, head_dim]`. A sequence owns an ordered list of block
//! indices (its block table); token position `p` of a sequence lives in slot
//! `table[p / block_size] * block_size + p % block_size`. This module owns the bookkeeping
//! (which blocks are free, which belong to whom); backends own the storage.

use crate::RuntimeError;

/// Geometry of a KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    /// Number of transformer layers.
    pub num_layers: usize,
    /// Key/value heads per layer.
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
}

impl KvGeometry {
    /// Elements (per layer, for K or V alone) of one token slot.
    pub fn slot_elems(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Total token slots in the pool.
    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }
}

/// Hands out blocks from a fixed pool.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    capacity: usize,
}

impl BlockAllocator {
    /// An allocator over blocks `0..num_blocks`, all free.
    pub fn new(num_blocks: usize) -> Self {
        // Reverse so that blocks are handed out in ascending order.
        let free = (0..num_blocks as u32).rev().collect();
        Self {
            free,
            capacity: num_blocks,
        }
    }

    /// Blocks currently free.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes one block, or `None` when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns blocks to the pool.
    pub fn release(&mut self, blocks: &[u32]) {
        debug_assert!(blocks.iter().all(|b| (*b as usize) < self.capacity));
        self.free.extend_from_slice(blocks);
    }
}

/// One sequence's view of the cache: its block table and how many tokens it holds.
#[derive(Clone, Debug, Default)]
pub struct SequenceBlocks {
    table: Vec<u32>,
    len: usize,
}

impl SequenceBlocks {
    /// An empty sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens already stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block table.
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Makes room for `extra` more tokens, taking blocks from `alloc`. On failure nothing is
    /// taken and the error says how many blocks were missing.
    pub fn reserve(
        &mut self,
        extra: usize,
        geometry: &KvGeometry,
        alloc: &mut BlockAllocator,
    ) -> Result<(), RuntimeError> {
        let needed = geometry.blocks_for(self.len + extra);
        let missing = needed.saturating_sub(self.table.len());
        if missing > alloc.num_free() {
            return Err(RuntimeError::KvCacheFull {
                needed: missing,
                free: alloc.num_free(),
                capacity: alloc.capacity(),
            });
        }
        for _ in 0..missing {
            let block = alloc.allocate().expect("free count checked above");
            self.table.push(block);
        }
        Ok(())
    }

    /// Slots of the next `count` tokens (call `reserve` first), then counts them as stored.
    pub fn append_slots(&mut self, count: usize, geometry: &KvGeometry) -> Vec<u32> {
        let bs = geometry.block_size;
        let slots = (self.len..self.len + count)
            .map(|p| self.table[p / bs] * bs as u32 + (p % bs) as u32)
            .collect();
        self.len += count;
        slots
    }

    /// Gives every block back to `alloc`.
    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        alloc.release(&self.table);
        self.table.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(blocks: usize) -> KvGeometry {
        KvGeometry {
            num_layers: 2,
            num_kv_heads: 2,
            head_dim: 4,
            block_size: 4,
            num_blocks: blocks,
        }
    }

    #[test]
    fn slots_follow_the_block_table() {
        let g = geometry(8);
        let mut alloc = BlockAllocator::new(8);
        let mut a = SequenceBlocks::new();
        let mut b = SequenceBlocks::new();
        a.reserve(3, &g, &mut alloc).unwrap();
        b.reserve(5, &g, &mut alloc).unwrap();
        assert_eq!(a.append_slots(3, &g), vec![0, 1, 2]);
        assert_eq!(b.append_slots(5, &g), vec![4, 5, 6, 7, 8]);
        a.reserve(3, &g, &mut alloc).unwrap();
        // a's second block is the next free one (3), after b took 1 and 2.
        assert_eq!(a.table(), &[0, 3]);
        assert_eq!(a.append_slots(3, &g), vec![3, 12, 13]);
        assert_eq!(alloc.num_free(), 4);
    }

    #[test]
    fn exhaustion_is_an_error_that_takes_nothing() {
        let g = geometry(2);
        let mut alloc = BlockAllocator::new(2);
        let mut a = SequenceBlocks::new();
        a.reserve(5, &g, &mut alloc).unwrap();
        let mut b = SequenceBlocks::new();
        let err = b.reserve(1, &g, &mut alloc).unwrap_err();
        assert!(matches!(
            err,
            RuntimeError::KvCacheFull {
                needed: 1,
                free: 0,
                ..
            }
        ));
        assert!(b.table().is_empty());
        a.release(&mut alloc);
        assert_eq!(alloc.num_free(), 2);
        b.reserve(8, &g, &mut alloc).unwrap();
        assert_eq!(b.table().len(), 2);
    }
}
