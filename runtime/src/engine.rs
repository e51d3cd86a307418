//! Batched generation over the paged KV cache: sequences of different lengths run together,
//! finished ones leave, waiting ones join when their blocks are free.
//!
//! Each [`Engine::step`] builds one flat batch: the whole prompt of every newly admitted
//! sequence and the last token of every running one, runs the model once, and samples one
//! token per sequence.
//!
//! Greedy decode steps of up to [`Model::MAX_LAUNCHED_ROWS`] sequences run one pass ahead:
//! the next pass is queued, its input tokens chosen on the device by this pass's argmax
//! ([`Backend::argmax_feed`]), before the host reads this pass's tokens, so the device does not
//! wait for the host between steps. Each call still returns one pass's tokens, the tokens it
//! would return without running ahead: exactly so on the CPU; on a GPU, the pass after a
//! caller stops a sequence still holds that sequence's row, and products over a different
//! number of rows may round differently.

use std::collections::VecDeque;

use crate::backend::{Backend, BatchLayout, SeqSpan, NO_FEED};
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

/// A decode pass queued but not read yet.
struct Queued {
    /// The sequence of each row.
    seqs: Vec<SeqId>,
    /// The sampling of each row.
    params: Vec<SamplingParams>,
    /// The sampling uniform drawn for each row.
    uniforms: Vec<f64>,
}

impl From<PassInputs> for Queued {
    fn from(pass: PassInputs) -> Self {
        Self {
            seqs: pass.seqs,
            params: pass.params,
            uniforms: pass.uniforms,
        }
    }
}

/// One pass's inputs as the engine lays them out.
struct PassInputs {
    tokens: Vec<u32>,
    layout: BatchLayout,
    logit_rows: Vec<u32>,
    /// Per sequence: its id, whether its prompt is read in this pass, its sampling and uniform.
    seqs: Vec<SeqId>,
    prefill: Vec<bool>,
    params: Vec<SamplingParams>,
    uniforms: Vec<f64>,
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
    /// The decode pass running ahead, if any.
    queued: Option<Queued>,
    /// The queued pass's tokens, read early (before a scoring pass), for the next step.
    drained: Option<Vec<StepToken>>,
    run_ahead: bool,
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
            queued: None,
            drained: None,
            run_ahead: true,
        })
    }

    /// Whether greedy decode steps may run one pass ahead (default on; see the module's
    /// documentation).
    pub fn set_run_ahead(&mut self, on: bool) {
        self.run_ahead = on;
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

    /// The backend and the model with nothing kept from earlier passes: the KV cache, the
    /// model's kept buffers ([`Model::release_workspaces`]) and the backend's recordings and
    /// caches ([`Backend::release_cached`]) freed, so that an engine made from them starts
    /// afresh. Refused while sequences are waiting or running or a pass has tokens to give
    /// (the engine, consumed, is then dropped with its sequences: check
    /// [`Engine::has_work`] first).
    pub fn into_parts(self) -> Result<(B, Model<B>), RuntimeError> {
        if self.has_work() {
            return Err(RuntimeError::InvalidRequest(
                "the engine still has sequences to run".into(),
            ));
        }
        let Self {
            backend, model, kv, ..
        } = self;
        drop(kv);
        model.release_workspaces();
        backend.release_cached()?;
        Ok((backend, model))
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

    /// Whether any sequence is waiting or running, or a pass has tokens to give.
    pub fn has_work(&self) -> bool {
        self.queued.is_some()
            || self.drained.is_some()
            || !self.waiting.is_empty()
            || !self.running.is_empty()
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
        if let Some(out) = self.drained.take() {
            return Ok(out);
        }
        let queued = match self.queued.take() {
            Some(q) => q,
            None => {
                self.admit();
                if self.running.is_empty() {
                    return Ok(Vec::new());
                }
                let pass = self.lay_out(false)?;
                let decode = pass.prefill.iter().all(|p| !p);
                if !(self.run_ahead && decode && pass.tokens.len() <= Model::<B>::MAX_LAUNCHED_ROWS)
                {
                    let chosen = self.model.forward_then(
                        &self.backend,
                        &mut self.kv,
                        &pass.tokens,
                        &pass.layout,
                        &pass.logit_rows,
                        |b, logits| b.sample(logits, &pass.params, &pass.uniforms),
                    )?;
                    let rows = pass.seqs.iter().copied().zip(pass.prefill.iter().copied());
                    return Ok(self.record(rows, chosen));
                }
                let step = self.prepare(&pass)?;
                self.launch(&step, &pass)?;
                pass.into()
            }
        };
        if !self.can_run_ahead(&queued) {
            return self.read_queued(queued);
        }
        let seqs = queued.seqs.clone();
        let result = self.run_ahead_of(queued);
        if result.is_err() {
            // The queued pass and the one after it are lost: end their sequences rather than
            // leave their caches ahead of what they generated.
            self.queued = None;
            for id in seqs {
                self.finish(id);
            }
        }
        result
    }

    /// Queues the pass after `queued`, its tokens fed on the device by `queued`'s argmax, then
    /// reads and records `queued`'s tokens.
    fn run_ahead_of(&mut self, queued: Queued) -> Result<Vec<StepToken>, RuntimeError> {
        let next = self.lay_out(true)?;
        let feed: Vec<u32> = queued
            .seqs
            .iter()
            .map(|id| {
                next.seqs
                    .iter()
                    .position(|n| n == id)
                    .map_or(NO_FEED, |i| i as u32)
            })
            .collect();
        let mut step = self.prepare(&next)?;
        let rows = queued.seqs.len();
        let chosen = self
            .model
            .logits_then(&self.backend, rows, rows, |b, logits| {
                b.argmax_feed(logits, &mut step, &feed)
            })?;
        self.launch(&step, &next)?;
        self.queued = Some(next.into());
        let tokens = self.backend.read_chosen(chosen)?;
        Ok(self.record(queued.seqs.iter().map(|&id| (id, false)), tokens))
    }

    /// Checks `pass` and makes its inputs available to the backend.
    fn prepare(&self, pass: &PassInputs) -> Result<B::Step, RuntimeError> {
        self.model.prepare(
            &self.backend,
            &self.kv,
            &pass.tokens,
            &pass.layout,
            &pass.logit_rows,
        )
    }

    /// Queues the prepared `pass` (a decode pass), its logits left to be read later.
    fn launch(&mut self, step: &B::Step, pass: &PassInputs) -> Result<(), RuntimeError> {
        self.model.launch(
            &self.backend,
            &mut self.kv,
            step,
            pass.tokens.len(),
            &pass.logit_rows,
        )
    }

    /// Reads a queued pass's tokens (sampled as its sequences ask) and records them.
    fn read_queued(&mut self, queued: Queued) -> Result<Vec<StepToken>, RuntimeError> {
        let rows = queued.seqs.len();
        let tokens = self
            .model
            .logits_then(&self.backend, rows, rows, |b, logits| {
                b.sample(logits, &queued.params, &queued.uniforms)
            })?;
        Ok(self.record(queued.seqs.iter().map(|&id| (id, false)), tokens))
    }

    /// Whether the pass after `queued` can be queued before `queued`'s tokens are read: every
    /// running sequence was in it, decodes greedily and goes on after it, and no waiting
    /// sequence could join.
    fn can_run_ahead(&self, queued: &Queued) -> bool {
        self.run_ahead
            && !self.running.is_empty()
            && self.running.len() <= Model::<B>::MAX_LAUNCHED_ROWS
            && (self.waiting.is_empty() || self.running.len() >= self.max_running)
            && self.running.iter().all(|s| {
                queued.seqs.contains(&s.id)
                    && s.request.sampling.is_greedy()
                    && s.generated.len() + 1 < s.request.max_new_tokens
            })
    }

    /// Lays out the next pass over the running sequences: each one's pending tokens, or with
    /// `placeholders` (running ahead: every running sequence was in the queued pass, whose
    /// tokens are not read yet) one placeholder token each, which the queued pass's argmax
    /// replaces on the device.
    fn lay_out(&mut self, placeholders: bool) -> Result<PassInputs, RuntimeError> {
        let mut pass = PassInputs {
            tokens: Vec::new(),
            layout: BatchLayout {
                block_size: self.geometry.block_size,
                ..Default::default()
            },
            logit_rows: Vec::with_capacity(self.running.len()),
            seqs: Vec::with_capacity(self.running.len()),
            prefill: Vec::with_capacity(self.running.len()),
            params: Vec::with_capacity(self.running.len()),
            uniforms: Vec::with_capacity(self.running.len()),
        };
        for s in &mut self.running {
            let pending = if placeholders {
                vec![0]
            } else {
                s.pending().to_vec()
            };
            let past = s.blocks.len();
            s.blocks
                .reserve(pending.len(), &self.geometry, &mut self.allocator)?;
            let start = pass.tokens.len();
            pass.layout
                .slots
                .extend(s.blocks.append_slots(pending.len(), &self.geometry));
            pass.layout
                .positions
                .extend((past..past + pending.len()).map(|p| p as u32));
            pass.layout.seqs.push(SeqSpan {
                start,
                len: pending.len(),
                past,
                block_table: s.blocks.table().to_vec(),
            });
            pass.tokens.extend_from_slice(&pending);
            pass.logit_rows.push((pass.tokens.len() - 1) as u32);
            pass.seqs.push(s.id);
            pass.prefill.push(past == 0);
            pass.params.push(s.request.sampling);
            pass.uniforms
                .push(draw_uniform(&s.request.sampling, &mut s.rng));
        }
        Ok(pass)
    }

    /// Gives each still-running sequence of a pass (its rows: sequence, whether its prompt was
    /// read) its token, and finishes the sequences that reached their `max_new_tokens`.
    fn record(
        &mut self,
        rows: impl IntoIterator<Item = (SeqId, bool)>,
        chosen: Vec<u32>,
    ) -> Vec<StepToken> {
        let mut out = Vec::with_capacity(chosen.len());
        for ((id, prefill), token) in rows.into_iter().zip(chosen) {
            // A sequence finished while its pass ran gets nothing.
            if let Some(s) = self.running.iter_mut().find(|s| s.id == id) {
                s.generated.push(token);
                out.push(StepToken {
                    seq: id,
                    token,
                    prefill,
                });
            }
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
        out
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
        // A pass of the queued one's shape would overwrite its logits: read them first.
        if let Some(queued) = self.queued.take() {
            let out = self.read_queued(queued)?;
            self.drained = Some(out);
        }
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
