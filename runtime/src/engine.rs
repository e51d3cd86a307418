//! Batched generation over the paged KV cache: sequences of different lengths run together,
//! finished ones leave, waiting ones join when their blocks are free.
//!
//! Each [`Engine::step`] builds one flat batch: the whole prompt of every newly admitted
//! sequence and the last token of every running one, runs the model once, and samples one
//! token per sequence.

use std::collections::VecDeque;

use crate::backend::{Backend, BatchLayout, SeqSpan};
use crate::kv_cache::{BlockAllocator, KvGeometry, SequenceBlocks};
use crate::model::Model;
use crate::sampling::{draw_uniform, Rng, SamplingParams};
use crate::RuntimeError;

/// Identifies a sequence within an engine.
pub type SeqId = usize;

/// What a sequence asks for.
#[derive(Clone, Debug)]
pub struct SeqRequest {
    /// Prompt tokens (at least one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: SamplingParams,
    /// Seed of this sequence's sampler.
    pub seed: u64,
}

struct Sequence {
    id: SeqId,
    request: SeqRequest,
    blocks: SequenceBlocks,
    generated: Vec<u32>,
    rng: Rng,
}

impl Sequence {
    /// Tokens to feed in the next step: the whole prompt first, then the last sampled token.
    fn pending(&self) -> &[u32] {
        if self.blocks.is_empty() {
            &self.request.prompt
        } else {
            std::slice::from_ref(
                self.generated
                    .last()
                    .expect("a prefilled sequence has a token"),
            )
        }
    }
}

/// One token produced by a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepToken {
    /// The sequence.
    pub seq: SeqId,
    /// The token.
    pub token: u32,
    /// Whether this sequence's prompt was read in this step.
    pub prefill: bool,
}

/// A model, its backend and its KV cache, generating for many sequences at once.
pub struct Engine<B: Backend> {
    backend: B,
    model: Model<B>,
    kv: B::Kv,
    geometry: KvGeometry,
    allocator: BlockAllocator,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    next_id: SeqId,
    max_batch_tokens: usize,
    max_running: usize,
}

impl<B: Backend> Engine<B> {
    /// An engine with a KV pool of `kv_tokens` token slots in blocks of `block_size`.
    pub fn new(
        backend: B,
        model: Model<B>,
        kv_tokens: usize,
        block_size: usize,
    ) -> Result<Self, RuntimeError> {
        let c = model.config();
        let geometry = KvGeometry {
            num_layers: c.num_layers,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            block_size,
            num_blocks: kv_tokens.div_ceil(block_size),
        };
        let kv = backend.alloc_kv(&geometry)?;
        Ok(Self {
            backend,
            model,
            kv,
            allocator: BlockAllocator::new(geometry.num_blocks),
            geometry,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            max_batch_tokens: 2048,
            max_running: usize::MAX,
        })
    }

    /// Caps the prompt tokens read in one step (default 2048); at least 1.
    pub fn set_max_batch_tokens(&mut self, n: usize) {
        self.max_batch_tokens = n.max(1);
    }

    /// Blocks of the KV cache in use now.
    pub fn kv_blocks_in_use(&self) -> usize {
        self.allocator.capacity() - self.allocator.num_free()
    }

    /// The KV cache's geometry.
    pub fn kv_geometry(&self) -> &KvGeometry {
        &self.geometry
    }

    /// Caps how many sequences run together (the rest wait); at least 1.
    pub fn set_max_running(&mut self, n: usize) {
        self.max_running = n.max(1);
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Queues a sequence; it joins the running batch when the KV cache has room for it.
    pub fn add(&mut self, request: SeqRequest) -> Result<SeqId, RuntimeError> {
        let max_ctx = self.model.config().max_position_embeddings;
        let total = request.prompt.len() + request.max_new_tokens;
        if request.prompt.is_empty() {
            return Err(RuntimeError::InvalidRequest("the prompt is empty".into()));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(t) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(RuntimeError::InvalidRequest(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        if total > max_ctx {
            return Err(RuntimeError::InvalidRequest(format!(
                "prompt ({} tokens) plus up to {} new tokens exceeds the model's context of {max_ctx} tokens",
                request.prompt.len(),
                request.max_new_tokens
            )));
        }
        if self.geometry.blocks_for(total) > self.geometry.num_blocks {
            return Err(RuntimeError::InvalidRequest(format!(
                "a sequence of {total} tokens does not fit the KV cache of {} tokens",
                self.geometry.num_slots()
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Sequence {
            id,
            rng: Rng::new(request.seed),
            request,
            blocks: SequenceBlocks::new(),
            generated: Vec::new(),
        });
        Ok(id)
    }

    /// Whether any sequence is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Whether sequence `id` is waiting or running.
    pub fn is_active(&self, id: SeqId) -> bool {
        self.running.iter().any(|s| s.id == id) || self.waiting.iter().any(|s| s.id == id)
    }

    /// Sequences currently running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Ends a sequence and frees its blocks (also when it is still waiting).
    pub fn finish(&mut self, id: SeqId) {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let mut s = self.running.swap_remove(i);
            s.blocks.release(&mut self.allocator);
        }
        self.waiting.retain(|s| s.id != id);
    }

    /// Admits waiting sequences whose whole budget (prompt + max new tokens) fits the free
    /// blocks, so that a running sequence never runs out of cache.
    fn admit(&mut self) {
        let mut budget = self.max_batch_tokens.saturating_sub(self.running.len());
        while let Some(next) = self.waiting.front() {
            if self.running.len() >= self.max_running {
                break;
            }
            let need = self
                .geometry
                .blocks_for(next.request.prompt.len() + next.request.max_new_tokens);
            let reserved: usize = self
                .running
                .iter()
                .map(|s| {
                    self.geometry
                        .blocks_for(s.request.prompt.len() + s.request.max_new_tokens)
                        - s.blocks.table().len()
                })
                .sum();
            let prompt_len = next.request.prompt.len();
            let first = self.running.is_empty();
            if need + reserved > self.allocator.num_free() || (!first && prompt_len > budget) {
                break;
            }
            budget = budget.saturating_sub(prompt_len);
            let s = self.waiting.pop_front().expect("front exists");
            self.running.push(s);
        }
    }

    /// Runs one step for every running sequence and returns the token each one produced.
    /// Sequences that reach `max_new_tokens` are finished automatically after this step.
    pub fn step(&mut self) -> Result<Vec<StepToken>, RuntimeError> {
        self.admit();
        if self.running.is_empty() {
            return Ok(Vec::new());
        }
        let mut tokens = Vec::new();
        let mut layout = BatchLayout {
            block_size: self.geometry.block_size,
            ..Default::default()
        };
        let mut logit_rows = Vec::with_capacity(self.running.len());
        let mut prefill = Vec::with_capacity(self.running.len());
        for s in &mut self.running {
            let pending = s.pending().to_vec();
            let past = s.blocks.len();
            s.blocks
                .reserve(pending.len(), &self.geometry, &mut self.allocator)?;
            let start = tokens.len();
            layout
                .slots
                .extend(s.blocks.append_slots(pending.len(), &self.geometry));
            layout
                .positions
                .extend((past..past + pending.len()).map(|p| p as u32));
            layout.seqs.push(SeqSpan {
                start,
                len: pending.len(),
                past,
                block_table: s.blocks.table().to_vec(),
            });
            tokens.extend_from_slice(&pending);
            logit_rows.push((tokens.len() - 1) as u32);
            prefill.push(past == 0);
        }
        let params: Vec<SamplingParams> = self.running.iter().map(|s| s.request.sampling).collect();
        let uniforms: Vec<f64> = self
            .running
            .iter_mut()
            .map(|s| draw_uniform(&s.request.sampling, &mut s.rng))
            .collect();
        let chosen = self.model.forward_then(
            &self.backend,
            &mut self.kv,
            &tokens,
            &layout,
            &logit_rows,
            |b, logits| b.sample(logits, &params, &uniforms),
        )?;
        let mut out = Vec::with_capacity(self.running.len());
        for ((s, token), prefill) in self.running.iter_mut().zip(chosen).zip(prefill) {
            s.generated.push(token);
            out.push(StepToken {
                seq: s.id,
                token,
                prefill,
            });
        }
        let done: Vec<SeqId> = self
            .running
            .iter()
            .filter(|s| s.generated.len() >= s.request.max_new_tokens)
            .map(|s| s.id)
            .collect();
        for id in done {
            self.finish(id);
        }
        Ok(out)
    }

    /// Scores `tokens` as one sequence and returns the logits of every position
    /// (`tokens.len() x vocab`); the sequence's cache is freed afterwards.
    pub fn score(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        let rows: Vec<u32> = (0..tokens.len() as u32).collect();
        self.score_rows(tokens, &rows)
    }

    /// Like [`Engine::score`], but returns only the logits of the positions in `rows`.
    pub fn score_rows(&mut self, tokens: &[u32], rows: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        self.score_rows_then(tokens, rows, |b, logits| b.to_host(logits))
    }

    /// `log softmax(logits of position rows[i])[targets[i]]` for each `i`, computed where the
    /// logits are ([`Backend::target_log_probs`]): perplexity without copying whole rows.
    pub fn score_targets(
        &mut self,
        tokens: &[u32],
        rows: &[u32],
        targets: &[u32],
    ) -> Result<Vec<f32>, RuntimeError> {
        self.score_rows_then(tokens, rows, |b, logits| {
            b.target_log_probs(logits, targets)
        })
    }

    /// One pass over `tokens` as a fresh sequence; `read` takes the logits of `rows`.
    fn score_rows_then<T>(
        &mut self,
        tokens: &[u32],
        rows: &[u32],
        read: impl FnOnce(&B, &B::Act) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        if tokens.is_empty() || tokens.len() > self.model.config().max_position_embeddings {
            return Err(RuntimeError::InvalidRequest(format!(
                "cannot score {} tokens with a model of context {}",
                tokens.len(),
                self.model.config().max_position_embeddings
            )));
        }
        let mut blocks = SequenceBlocks::new();
        blocks.reserve(tokens.len(), &self.geometry, &mut self.allocator)?;
        let layout = BatchLayout {
            seqs: vec![SeqSpan {
                start: 0,
                len: tokens.len(),
                past: 0,
                block_table: blocks.table().to_vec(),
            }],
            positions: (0..tokens.len() as u32).collect(),
            slots: blocks.append_slots(tokens.len(), &self.geometry),
            block_size: self.geometry.block_size,
        };
        let result =
            self.model
                .forward_then(&self.backend, &mut self.kv, tokens, &layout, rows, read);
        blocks.release(&mut self.allocator);
        result
    }
}
