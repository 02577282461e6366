//! Decoder-only language models as a sequence of blocks, so pruning can run block by block on
//! cached hidden states: `embed` -> `blocks[i].forward` -> `head`, each callable on its own.
//! One file per architecture; weights are looked up by their Hugging Face names.

pub mod gemm;
pub mod llama;
pub mod opt;
pub mod segments;
pub mod shape;
pub mod stream;
pub mod weights;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

use crate::hub::{Hub, RepoKind, RepoRef};
use crate::tokenizer::Tokenizer;
pub use weights::Weights;

/// A linear layer `y = x Wᵀ + b` with W of shape (out, in), as nn.Linear stores it.
/// Pruning edits `weight` in place; it shares storage with the checkpoint tensors, so a saved
/// checkpoint sees the pruned values.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The 2:4-sparse weight compressed for cuSPARSELt, when `--sparse-kernels` asked for it
    /// (`crate::kernels::use_sparse_kernels`); `weight` stays for saving and statistics.
    pub sparse: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, prefix: &str, bias: bool, shape: (i64, i64)) -> Result<Self> {
        Ok(Linear {
            weight: w.get(&format!("{prefix}.weight"), &[shape.0, shape.1])?,
            bias: if bias {
                Some(w.get(&format!("{prefix}.bias"), &[shape.0])?)
            } else {
                None
            },
            sparse: None,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match &self.sparse {
            Some(compressed) => crate::kernels::sparse_linear(compressed, x, self.bias.as_ref()),
            None => gemm::linear(x, &self.weight, self.bias.as_ref()),
        }
    }
}

/// Called before the linear layers run with (their names inside the block, their common input):
/// this is how calibration statistics see each layer's actual inputs. Layers fed the very same
/// tensor (q/k/v, gate/up) come in one call, so their identical statistics are computed once.
/// `Break` ends the pass there: the statistics pass needs nothing after the last layer's input.
pub type Tap<'a> = &'a mut dyn FnMut(&[&'static str], &Tensor) -> ControlFlow<()>;

/// Per-sequence-length tensors that every block needs (rotary tables, attention masks).
pub struct BlockCtx {
    pub rope: Option<(Tensor, Tensor)>,
    pub mask: AttentionMask,
    /// Flat positions (row · width + column) whose outputs are wanted, when not all are: the last
    /// block before a head that scores a few positions. Attention still reads every token, and
    /// what follows it (output projection, MLP) runs on these alone; the block returns (1, N, H).
    pub keep: Option<Tensor>,
}

/// Which keys each query attends to.
pub enum AttentionMask {
    /// Each row is one sequence: query i sees keys 0..=i.
    Causal,
    /// Additive (0 / -inf), broadcast over heads: e.g. Mistral's sliding window.
    Additive(Tensor),
    /// Packed rows, attended segment by segment ([`segments`]).
    Segments(Vec<segments::SegmentGroup>),
    /// Unfused attention under an additive (L, L) mask, as the reference's calibration passes ran it
    /// ([`BlockCtx::eager`]).
    Eager(Tensor),
}

/// Where the 1/sqrt(head_dim) scale enters: transformers multiplies LLaMA's scores after q·kᵀ, but
/// OPT's queries before it. Only eager attention follows this; the fused kernels scale internally.
#[derive(Clone, Copy, Debug)]
pub enum ScaleAt {
    Scores,
    Query,
}

/// Bytes of f32 scores in one chunk of eager attention: (sample, head) pairs are scored this many
/// at a time, so the L x L weights of long windows never exist for every head at once, and short
/// windows' stay in cache (measured at 8 x 8 heads x 256 tokens: 15 ms a batch in 2 MiB chunks,
/// 31 ms in one 16 MiB chunk; fused SDPA 10 ms).
const EAGER_CHUNK_BYTES: u64 = 4 << 20;

/// (sample, head) pairs per chunk of eager attention over `len` keys, out of `pairs`.
fn eager_chunk(pairs: u64, len: u64) -> u64 {
    (EAGER_CHUNK_BYTES / (len * len * 4).max(1)).clamp(1, pairs.max(1))
}

/// Peak bytes of eager attention's temporaries over `pairs` (sample, head) pairs of `len` tokens
/// in a dtype of `elt` bytes: one chunk's scores, their f32 softmax and its cast back.
pub fn eager_attention_bytes(pairs: u64, len: u64, elt: u64) -> u64 {
    eager_chunk(pairs, len) * len * len * (2 * elt + 4)
}

/// Softmax attention computed step by step as transformers' eager implementation does: scores
/// `q·kᵀ` scaled, plus the additive mask, softmax in f32 and back to the model dtype, times v.
/// Fused kernels (SDPA) round differently, and on some CPUs that moves a calibration activation
/// enough to flip a near-tied Wanda choice; calibration therefore runs this, the reference's path.
/// Each (sample, head) pair is an independent product, so chunking over them changes no bit.
fn eager_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale_at: ScaleAt) -> Tensor {
    let (b, heads, l, _) = q.size4().expect("queries are (B, heads, L, head_dim)");
    eager_attention_in_chunks(
        q,
        k,
        v,
        mask,
        scale_at,
        eager_chunk((b * heads) as u64, l as u64) as i64,
    )
}

/// [`eager_attention`] `chunk` (sample, head) pairs at a time.
fn eager_attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale_at: ScaleAt,
    chunk: i64,
) -> Tensor {
    let (b, heads, l, d) = q.size4().expect("queries are (B, heads, L, head_dim)");
    let scale = (d as f64).powf(-0.5); // head_dim**-0.5, as transformers writes it
    let flat = |t: &Tensor| t.reshape([b * heads, l, d]);
    let (q, k, v) = (flat(q), flat(k), flat(v));
    let q = match scale_at {
        ScaleAt::Query => q * scale,
        ScaleAt::Scores => q,
    };
    // The chunks' scores and softmax reuse two buffers: fresh L x L tensors per chunk cost more
    // in page faults than the arithmetic. In place or into a buffer, each op rounds as the
    // reference's out-of-place op does.
    let scores_buffer = Tensor::empty([chunk, l, l], (q.kind(), q.device()));
    let weights_buffer = Tensor::empty([chunk, l, l], (Kind::Float, q.device()));
    let outs: Vec<Tensor> = (0..b * heads)
        .step_by(chunk as usize)
        .map(|s| {
            let n = chunk.min(b * heads - s);
            let mut scores = q
                .narrow(0, s, n)
                .matmul_out(&scores_buffer.narrow(0, 0, n), &k.narrow(0, s, n).transpose(1, 2));
            if let ScaleAt::Scores = scale_at {
                let _ = scores.g_mul_scalar_(scale);
            }
            let _ = scores.g_add_(mask);
            let weights = scores.softmax_int_out(&weights_buffer.narrow(0, 0, n), -1, Kind::Float);
            weights.to_kind(v.kind()).matmul(&v.narrow(0, s, n))
        })
        .collect();
    Tensor::cat(&outs, 0).view([b, heads, l, d])
}

/// The additive form (0 where `visible`, -inf elsewhere) of a boolean attention pattern, in `kind`.
pub fn additive_mask(visible: &Tensor, kind: Kind) -> Tensor {
    Tensor::zeros(visible.size(), (kind, visible.device())).masked_fill(&visible.logical_not(), f64::NEG_INFINITY)
}

impl BlockCtx {
    /// `t` (B, L, ...) at the kept positions, (1, N, ...), or all of it.
    pub fn kept(&self, t: &Tensor) -> Tensor {
        match &self.keep {
            Some(keep) => t.flatten(0, 1).index_select(0, keep).unsqueeze(0),
            None => t.shallow_clone(),
        }
    }

    /// Softmax attention (B, heads, L, head_dim).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, scale_at: ScaleAt) -> Tensor {
        let sdpa = |mask: Option<&Tensor>| {
            Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, mask.is_none(), None, false)
        };
        match &self.mask {
            AttentionMask::Causal => sdpa(None),
            AttentionMask::Additive(mask) => sdpa(Some(mask)),
            AttentionMask::Segments(groups) => segments::attend(groups, q, k, v),
            AttentionMask::Eager(mask) => eager_attention(q, k, v, mask, scale_at),
        }
    }

    /// This context with eager attention over sequences of `len` tokens, masks in `kind`: the
    /// reference computes calibration activations that way, and Wanda's masks follow them bit for bit.
    pub fn eager(mut self, len: i64, kind: Kind, device: Device) -> Self {
        self.mask = match self.mask {
            AttentionMask::Causal => {
                let visible = Tensor::ones([len, len], (Kind::Bool, device)).tril(0);
                AttentionMask::Eager(additive_mask(&visible, kind))
            }
            AttentionMask::Additive(mask) => AttentionMask::Eager(mask),
            other => other,
        };
        self
    }
}

pub trait DecoderBlock: Send {
    /// hidden (B, L, H) -> hidden (B, L, H), showing `tap` each linear layer's input first;
    /// `Break` when the tap ended the pass early.
    fn forward_tapped(&self, x: &Tensor, ctx: &BlockCtx, tap: Tap) -> ControlFlow<(), Tensor>;

    /// hidden (B, L, H) -> hidden (B, L, H).
    fn forward(&self, x: &Tensor, ctx: &BlockCtx) -> Tensor {
        match self.forward_tapped(x, ctx, &mut |_, _| ControlFlow::Continue(())) {
            ControlFlow::Continue(y) => y,
            ControlFlow::Break(()) => unreachable!("a tap that never breaks lets the block run to its end"),
        }
    }
    /// The prunable linear layers, by their hub names inside the block (`self_attn.q_proj`, `mlp.up_proj`, `fc1`),
    /// in the order the forward pass uses them.
    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)>;
    fn linears(&self) -> Vec<(&'static str, &Linear)>;
}

/// What the rest of repro needs to know about a loaded checkpoint.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub architecture: String,
    pub model_type: String,
    pub n_layers: usize,
    pub hidden_size: i64,
    /// The MLP's width (LLaMA `intermediate_size`, OPT `ffn_dim`).
    pub intermediate_size: i64,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub bos_token_id: Option<u32>,
    /// Prefix of block `i`'s tensors, e.g. `model.layers.` or `model.decoder.layers.`.
    pub block_prefix: &'static str,
}

/// Builds decoder block `i` from checkpoint tensors; each architecture provides one.
pub type BlockLoader = Box<dyn Fn(&Weights, usize) -> Result<Box<dyn DecoderBlock>> + Send>;

/// Whether a model's blocks are all held in memory or read from disk one at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Streaming {
    /// Stream when the weights would not fit comfortably in available host memory (CPU only).
    #[default]
    Auto,
    /// Read one block at a time; pruned blocks are written out and read back from there.
    On,
    /// Hold every block in memory.
    Off,
}

impl Streaming {
    /// Streams on CPU when the weights exceed 70% of the memory available now.
    pub fn decide(self, weights_bytes: u64, device: Device) -> bool {
        match self {
            Streaming::On => true,
            Streaming::Off => false,
            Streaming::Auto => {
                device == Device::Cpu
                    && crate::resources::mem_available_bytes()
                        .is_some_and(|avail| weights_bytes as f64 > 0.7 * avail as f64)
            }
        }
    }
}

/// What every architecture holds besides its embedding and head: the blocks, resident or
/// streamed, and the checkpoint tensors.
pub struct Stack {
    pub info: ModelInfo,
    /// All `Some` when resident; `None` while a block is taken out for editing, and always for
    /// a streamed model.
    blocks: Vec<Option<Box<dyn DecoderBlock>>>,
    /// Every checkpoint tensor by hub name, sharing storage with the layers (resident models, for saving).
    tensors: Vec<(String, Tensor)>,
    streamed: Option<stream::Streamed>,
    /// The large tensors outside the blocks (embeddings, head) by checkpoint name and shape. A
    /// resident model holds them all the time; a streamed one reads each when it is first used
    /// and drops them at `release_outer`, so that they do not sit idle while blocks are pruned.
    outer: Mutex<HashMap<String, Tensor>>,
    outer_shapes: HashMap<String, Vec<i64>>,
    pub device: Device,
    pub kind: Kind,
}

/// A block to run: borrowed from a resident model or read from disk for a streamed one.
pub enum BlockRef<'a> {
    Borrowed(&'a (dyn DecoderBlock + 'static)),
    Read(Box<dyn DecoderBlock>),
}

impl std::ops::Deref for BlockRef<'_> {
    type Target = dyn DecoderBlock;
    fn deref(&self) -> &Self::Target {
        match self {
            BlockRef::Borrowed(b) => *b,
            BlockRef::Read(b) => b.as_ref(),
        }
    }
}

/// The head's checkpoint name (the embeddings' when tied and the checkpoint has no
/// `lm_head.weight`, as transformers ties them) and both as [`Stack::new`]'s outer tensors, each
/// of `shape` (vocabulary x width).
fn embeddings_and_head(
    w: &Weights,
    embeddings: &'static str,
    tied: bool,
    shape: [i64; 2],
) -> (&'static str, Vec<(String, Vec<i64>)>) {
    let head = if tied && !w.contains("lm_head.weight") {
        embeddings
    } else {
        "lm_head.weight"
    };
    let outer = [embeddings, head]
        .iter()
        .map(|name| (name.to_string(), shape.to_vec()))
        .collect();
    (head, outer)
}

impl Stack {
    /// Resident: builds every block now and keeps all checkpoint tensors (sharing storage with
    /// the layers). Streamed: keeps the checkpoint index and builds blocks, and reads the
    /// `outer` tensors (name, shape), when asked for.
    pub fn new(
        info: ModelInfo,
        weights: Weights,
        load: BlockLoader,
        outer: &[(String, Vec<i64>)],
        streamed: bool,
        device: Device,
        kind: Kind,
    ) -> Result<Stack> {
        let n = info.n_layers;
        let outer_shapes: HashMap<String, Vec<i64>> = outer.iter().cloned().collect();
        if streamed {
            // Every block is checked now: a missing or misshapen tensor in block 30 must not
            // surface after hours of pruning blocks 0-29.
            let headers = weights.headers_only();
            for (name, shape) in outer {
                let _ = headers.get(name, shape)?;
            }
            for i in 0..n {
                load(&headers, i)?;
            }
            let streamed = stream::Streamed::new(weights, load, info.block_prefix, n);
            return Ok(Stack {
                info,
                blocks: (0..n).map(|_| None).collect(),
                tensors: Vec::new(),
                streamed: Some(streamed),
                outer: Mutex::new(HashMap::new()),
                outer_shapes,
                device,
                kind,
            });
        }
        let held = outer
            .iter()
            .map(|(name, shape)| Ok((name.clone(), weights.get(name, shape)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let blocks = (0..n)
            .map(|i| load(&weights, i).map(Some))
            .collect::<Result<Vec<_>>>()?;
        Ok(Stack {
            info,
            blocks,
            tensors: weights.into_named(),
            streamed: None,
            outer: Mutex::new(held),
            outer_shapes,
            device,
            kind,
        })
    }

    /// The embedding or head matrix `name` (one of the `outer` tensors given to `new`); a
    /// streamed model reads it from the checkpoint unless it is held since the last release.
    pub fn outer(&self, name: &str) -> Result<Tensor> {
        let mut held = self.outer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = held.get(name) {
            return Ok(t.shallow_clone());
        }
        let (Some(streamed), Some(shape)) = (&self.streamed, self.outer_shapes.get(name)) else {
            bail!("`{name}` is not one of the model's embedding or head tensors");
        };
        let t = streamed.weights().get(name, shape)?;
        held.insert(name.to_string(), t.shallow_clone());
        Ok(t)
    }

    /// Streamed models: drops the embedding and head matrices read so far (a resident model
    /// keeps them). Called where they stop being needed for a while: after the embeddings of
    /// calibration samples or of an evaluation group, after the head of an evaluation group.
    pub fn release_outer(&self) {
        if self.is_streamed() {
            self.outer.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_streamed(&self) -> bool {
        self.streamed.is_some()
    }

    /// Block `i` for running.
    pub fn block(&self, i: usize) -> Result<BlockRef<'_>> {
        match (&self.streamed, &self.blocks[i]) {
            (Some(s), _) => Ok(BlockRef::Read(s.read(i)?)),
            (None, Some(b)) => Ok(BlockRef::Borrowed(b.as_ref())),
            (None, None) => bail!("block {i} is taken out for editing"),
        }
    }

    /// Takes block `i` out for editing (reading it from disk when streamed); `put_back` returns it.
    pub fn take_block(&mut self, i: usize) -> Result<Box<dyn DecoderBlock>> {
        match &self.streamed {
            Some(s) => s.read(i),
            None => self.blocks[i]
                .take()
                .ok_or_else(|| anyhow::anyhow!("block {i} is taken out already")),
        }
    }

    /// Returns an edited block. A streamed model writes it to its shard directory (see
    /// `write_blocks_to`, else a temporary one) and reads it from there from now on.
    pub fn put_back(&mut self, i: usize, block: Box<dyn DecoderBlock>) -> Result<()> {
        match &mut self.streamed {
            Some(s) => s.write(i, block.as_ref()),
            None => {
                self.blocks[i] = Some(block);
                Ok(())
            }
        }
    }

    /// Streamed models: edited blocks go to `dir` as the shards of a Hugging Face checkpoint
    /// (`save` completes it), so a pruned model is saved block by block.
    pub fn write_blocks_to(&mut self, dir: &std::path::Path) -> Result<()> {
        if let Some(s) = &mut self.streamed {
            s.set_dir(dir)?;
        }
        Ok(())
    }

    /// Every checkpoint tensor by name (resident models).
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    pub fn streamed_mut(&mut self) -> Option<&mut stream::Streamed> {
        self.streamed.as_mut()
    }
}

pub trait CausalLm: Send {
    fn stack(&self) -> &Stack;
    fn stack_mut(&mut self) -> &mut Stack;
    /// token ids (B, L) int64 -> hidden (B, L, H).
    fn embed(&self, ids: &Tensor) -> Result<Tensor>;
    fn context(&self, seq_len: i64) -> BlockCtx;
    /// token ids (B, L) whose positions in their own sequences are `positions` (B, L) -> hidden
    /// (B, L, H); packed rows hold several sequences (see [`Packing`]).
    fn embed_at(&self, ids: &Tensor, positions: &Tensor) -> Result<Tensor>;
    /// The block context of packed rows: positions (B, L) as in `embed_at`, and their attention
    /// segments ([`Packing::segments`]).
    fn packed_context(&self, positions: &Tensor, segments: Vec<segments::SegmentGroup>) -> BlockCtx;
    /// final norm (+ projection) + lm_head: hidden (B, L, H) -> logits (B, L, V).
    fn head(&self, h: &Tensor) -> Result<Tensor>;

    fn info(&self) -> &ModelInfo {
        &self.stack().info
    }
    fn device(&self) -> Device {
        self.stack().device
    }
    fn kind(&self) -> Kind {
        self.stack().kind
    }

    /// Full forward pass: ids (B, L) -> logits (B, L, V).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let ctx = self.context(ids.size()[1]);
        let mut h = self.embed(ids)?;
        for i in 0..self.stack().n_blocks() {
            h = self.stack().block(i)?.forward(&h, &ctx);
        }
        self.head(&h)
    }
}

/// Packed rows: several sequences share a row, each token at its position in its own sequence,
/// so the row computes what the sequences would compute alone. A row holds trees of segments: a
/// segment is a run of tokens that continues its parent segment (or starts a sequence), laid out
/// after it, and each path from a root to a segment is one sequence.
pub struct Packing {
    /// (B, L) each token's position in its own sequence.
    pub positions: Tensor,
    /// (B, L) the token's segment, numbered from 1 within its row; 0 is padding.
    pub segment: Tensor,
    /// (B, L) the parent of the token's segment, 0 for a root. A token sees its segment's earlier
    /// tokens and every token of the segment's ancestors.
    pub parent: Tensor,
}

impl Packing {
    /// The rows' attention, segment by segment, on `device`, masks in `kind`.
    pub fn segments(&self, kind: Kind, device: Device) -> Vec<segments::SegmentGroup> {
        let flat = |t: &Tensor| Vec::<i64>::try_from(t.flatten(0, -1)).expect("int64 token layout");
        segments::groups(
            &flat(&self.segment),
            &flat(&self.parent),
            self.segment.size()[1] as usize,
            kind,
            device,
        )
    }

    /// (B, L, L) bool: whether query i may attend to key j (what [`Packing::segments`] computes).
    #[cfg(test)]
    pub fn visible(&self, device: Device) -> Tensor {
        let flat = |t: &Tensor| Vec::<i64>::try_from(t.flatten(0, -1)).expect("int64 token layout");
        let (segment, parent) = (flat(&self.segment), flat(&self.parent));
        let (rows, width) = (self.segment.size()[0] as usize, self.segment.size()[1] as usize);
        let mut visible = vec![false; rows * width * width];
        for r in 0..rows {
            let parent_of: HashMap<i64, i64> = (r * width..(r + 1) * width).map(|t| (segment[t], parent[t])).collect();
            for q in 0..width {
                let mut seen = vec![segment[r * width + q]];
                while let Some(&p) = parent_of.get(seen.last().unwrap()).filter(|&&p| p != 0) {
                    seen.push(p);
                }
                for k in 0..width {
                    let (sq, sk) = (segment[r * width + q], segment[r * width + k]);
                    visible[(r * width + q) * width + k] = if sk == sq { k <= q } else { seen.contains(&sk) };
                }
            }
        }
        Tensor::from_slice(&visible)
            .view([rows as i64, width as i64, width as i64])
            .to_device(device)
    }
}

/// The token ids (B, L) of one forward pass: one causal sequence per row, or packed rows.
pub struct Rows {
    pub ids: Tensor,
    pub packing: Option<Packing>,
    /// Flat positions (row · width + column) whose last hidden states the caller needs, in the
    /// order it needs them; `None`: all of them.
    pub keep: Option<Tensor>,
}

impl Rows {
    fn embed(&self, model: &dyn CausalLm) -> Result<Tensor> {
        let ids = self.ids.to_device(model.device());
        match &self.packing {
            None => model.embed(&ids),
            Some(p) => model.embed_at(&ids, &p.positions.to_device(model.device())),
        }
    }

    /// `keep` on the model's device.
    fn keep(&self, model: &dyn CausalLm) -> Option<Tensor> {
        self.keep.as_ref().map(|k| k.to_device(model.device()))
    }

    /// The packed rows' block context; `None` for causal rows, whose context depends on their length only.
    fn packed_context(&self, model: &dyn CausalLm) -> Option<BlockCtx> {
        self.packing.as_ref().map(|p| {
            model.packed_context(
                &p.positions.to_device(model.device()),
                p.segments(model.kind(), model.device()),
            )
        })
    }

    /// Bytes its hidden states and attention mask take on the way through the blocks.
    fn bytes(&self, model: &dyn CausalLm) -> u64 {
        let width = self.ids.size().last().copied().unwrap_or(0) as u64;
        let mask = self.packing.as_ref().map_or(0, |_| self.ids.numel() as u64 * width);
        (self.ids.numel() as u64 * model.info().hidden_size as u64 + mask) * model.kind().elt_size_in_bytes() as u64
    }
}

/// Runs each batch of rows through the blocks and hands its last hidden states to `f`, in order, so
/// the caller applies the head where it needs logits: (B, L, H), or (1, N, H) at the rows' `keep`
/// positions, which is all the last block computes past attention. This is scoring: linear layers
/// multiply through [`gemm::scoring`]'s kernels, `f`'s included, and a resident model's freed
/// activations are reused ([`crate::resources::reuse_freed_memory`]); a streamed model keeps
/// returning freed memory promptly, since the blocks it reads on the way must not stay resident.
/// A streamed model reads each block once per group of batches rather than once per batch (the
/// results are the same); a group's hidden states and masks take at most a quarter of the available
/// host memory on CPU, 2 GiB on a GPU.
pub fn forward_rows(
    model: &dyn CausalLm,
    batches: &[Rows],
    mut f: impl FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    let _kernels = gemm::scoring();
    let stack = model.stack();
    if !stack.is_streamed() {
        let _heap = crate::resources::reuse_freed_memory();
        for (i, rows) in batches.iter().enumerate() {
            let mut h = rows.embed(model)?;
            let mut ctx = rows
                .packed_context(model)
                .unwrap_or_else(|| model.context(rows.ids.size()[1]));
            for b in 0..stack.n_blocks() {
                if b + 1 == stack.n_blocks() {
                    ctx.keep = rows.keep(model);
                }
                h = stack.block(b)?.forward(&h, &ctx);
            }
            f(i, h)?;
        }
        return Ok(());
    }
    let budget = match model.device() {
        Device::Cpu => crate::resources::mem_available_bytes().unwrap_or(4 << 30).max(1 << 30) / 4,
        _ => 2 << 30,
    };
    let mut start = 0;
    while start < batches.len() {
        let mut end = start + 1;
        let mut bytes = batches[start].bytes(model);
        while end < batches.len() && bytes + batches[end].bytes(model) <= budget {
            bytes += batches[end].bytes(model);
            end += 1;
        }
        let group = &batches[start..end];
        let mut hidden: Vec<Tensor> = group.iter().map(|rows| rows.embed(model)).collect::<Result<_>>()?;
        stack.release_outer();
        let mut packed: Vec<Option<BlockCtx>> = group.iter().map(|rows| rows.packed_context(model)).collect();
        let mut by_length: HashMap<i64, BlockCtx> = HashMap::new();
        let bar = crate::progress::bar(stack.n_blocks() as u64, "blocks");
        bar.set_message(format!("batches {}..{} of {}", start + 1, end, batches.len()));
        for b in 0..stack.n_blocks() {
            bar.inc(1);
            let block = stack.block(b)?;
            let last = b + 1 == stack.n_blocks();
            for ((h, packed), rows) in hidden.iter_mut().zip(&mut packed).zip(group) {
                let len = h.size()[1];
                let keep = if last { rows.keep(model) } else { None };
                let own;
                let ctx = match (packed, keep) {
                    (Some(ctx), keep) => {
                        ctx.keep = keep;
                        &*ctx
                    }
                    (None, None) => by_length.entry(len).or_insert_with(|| model.context(len)),
                    (None, Some(keep)) => {
                        own = BlockCtx {
                            keep: Some(keep),
                            ..model.context(len)
                        };
                        &own
                    }
                };
                *h = block.forward(h, ctx);
            }
        }
        bar.finish_and_clear();
        for (k, h) in hidden.into_iter().enumerate() {
            f(start + k, h)?;
        }
        stack.release_outer();
        start = end;
    }
    Ok(())
}

/// A loaded model with its tokenizer and where it came from.
pub struct Loaded {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub repo: RepoRef,
    pub config: Value,
}

/// Reads config.json and the weights, and the tokenizer of the same repo.
pub fn load(hub: &Hub, spec: &str, device: Device, kind: Kind, streaming: Streaming) -> Result<Loaded> {
    let (model, repo, config) = load_model(hub, spec, device, kind, streaming)?;
    let info = model.info();
    let tokenizer = Tokenizer::from_repo(&repo, &info.model_type, info.bos_token_id)?;
    if let Some((id, token)) = tokenizer
        .largest_id()
        .filter(|(id, _)| i64::from(*id) >= info.vocab_size)
    {
        bail!(
            "{spec}: the tokenizer produces token id {id} ({token}) but config.json's `vocab_size` is {}: the tokenizer does not belong to this model",
            info.vocab_size
        );
    }
    Ok(Loaded {
        model,
        tokenizer,
        repo,
        config,
    })
}

/// A model repo's config.json, with where it was found (for messages).
pub fn read_config(repo: &RepoRef) -> Result<(std::path::PathBuf, Value)> {
    let path = repo.get("config.json")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", path.display()))?;
    Ok((path, config))
}

/// Reads config.json and dispatches on `architectures[0]` (or `model_type`); no tokenizer needed.
pub fn load_model(
    hub: &Hub,
    spec: &str,
    device: Device,
    kind: Kind,
    streaming: Streaming,
) -> Result<(Box<dyn CausalLm>, RepoRef, Value)> {
    let repo = hub.repo(spec, RepoKind::Model);
    let (config_path, config) = read_config(&repo)?;
    let arch = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| config.get("model_type").and_then(Value::as_str).map(str::to_string));
    let Some(arch) = arch else {
        bail!(
            "{}: neither `architectures` nor `model_type` is set",
            config_path.display()
        );
    };
    let mut weights = Weights::open(&repo, device, kind)?;
    if let Some(n) = config.get("num_hidden_layers").and_then(Value::as_u64) {
        if weights.names().iter().any(|t| t.contains(&format!("layers.{n}."))) {
            eprintln!("{spec}: the checkpoint has more blocks than config.json's `num_hidden_layers` = {n}; only the first {n} are used");
        }
    }
    let streamed = streaming.decide(weights.loaded_bytes(), device);
    if streamed && streaming == Streaming::Auto {
        eprintln!(
            "{spec}: {:.1} GiB of weights, {:.1} GiB of memory available: streaming blocks from disk (--stream off to load it whole)",
            weights.loaded_bytes() as f64 / (1u64 << 30) as f64,
            crate::resources::mem_available_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64
        );
    }
    if !streamed {
        weights.read_all()?;
    }
    let ctx = || format!("{} (architecture {arch})", config_path.display());
    let model: Box<dyn CausalLm> = match arch.as_str() {
        "LlamaForCausalLM" | "MistralForCausalLM" | "llama" | "mistral" => {
            let cfg: llama::Config = config_fields(&config).with_context(ctx)?;
            Box::new(llama::Llama::load(cfg, &arch, weights, streamed).with_context(ctx)?)
        }
        "OPTForCausalLM" | "opt" => {
            let cfg: opt::Config = config_fields(&config).with_context(ctx)?;
            Box::new(opt::Opt::load(cfg, weights, streamed).with_context(ctx)?)
        }
        other => bail!(
            "{}: field `architectures` = \"{other}\" is not supported (supported: LlamaForCausalLM, \
             MistralForCausalLM, OPTForCausalLM)",
            config_path.display()
        ),
    };
    if model.stack().n_blocks() == 0 {
        bail!(
            "{}: field `num_hidden_layers` is 0; a model needs at least one block",
            config_path.display()
        );
    }
    Ok((model, repo, config))
}

/// An architecture's `Config` from config.json, with the field a type error is about named.
fn config_fields<T: serde::de::DeserializeOwned>(config: &Value) -> Result<T> {
    serde_path_to_error::deserialize(config).map_err(|e| anyhow!("field `{}`: {}", e.path(), e.inner()))
}

/// Every architecture variant among the test checkpoints: the generated ones in tests/fixtures
/// (GQA with llama3 rope, tied LLaMA, Mistral, OPT post-LN and projections) and the named models
/// of ../shared/fixtures.
#[cfg(test)]
pub(crate) fn fixture_checkpoints(shared: &[&str]) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = [
        "llama-gqa-llama3rope",
        "llama-tied",
        "mistral-tiny",
        "opt-postln",
        "opt-proj",
    ];
    generated
        .iter()
        .map(|d| root.join("tests/fixtures/models").join(d))
        .chain(shared.iter().map(|d| root.join("../shared/fixtures/models").join(d)))
        .collect()
}

/// A test checkpoint on the CPU in f32.
#[cfg(test)]
pub(crate) fn load_fixture(dir: &std::path::Path, streaming: Streaming) -> Box<dyn CausalLm> {
    load_model(
        &Hub::new(None),
        dir.to_str().unwrap(),
        Device::Cpu,
        Kind::Float,
        streaming,
    )
    .unwrap()
    .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_streams_only_what_does_not_fit_on_cpu() {
        let huge = u64::MAX / 2;
        assert!(Streaming::Auto.decide(huge, Device::Cpu));
        assert!(!Streaming::Auto.decide(1 << 20, Device::Cpu));
        assert!(
            !Streaming::Auto.decide(huge, Device::Cuda(0)),
            "GPU runs hold the weights on the GPU, not in host memory"
        );
        assert!(Streaming::On.decide(1, Device::Cpu));
        assert!(!Streaming::Off.decide(huge, Device::Cpu));
    }

    /// The statistics pass stops at the input of a block's last linear layer, so every
    /// architecture must show its layers to the tap in the order `linears()` lists them.
    #[test]
    fn taps_see_every_linear_layer_in_listed_order() {
        for dir in fixture_checkpoints(&["llama-tiny-random", "opt-tiny"]) {
            let model = load_fixture(&dir, Streaming::Off);
            let block = model.stack().block(0).unwrap();
            let mut seen = Vec::new();
            let ids = Tensor::from_slice(&[1i64, 5, 9, 3]).unsqueeze(0);
            let flow = block.forward_tapped(&model.embed(&ids).unwrap(), &model.context(4), &mut |names, _| {
                seen.extend_from_slice(names);
                ControlFlow::Continue(())
            });
            assert!(flow.is_continue());
            let listed: Vec<&str> = block.linears().into_iter().map(|(name, _)| name).collect();
            assert_eq!(seen, listed, "{}", dir.display());
        }
    }

    /// Eager attention is the fused kernel's softmax attention up to rounding, in either scale
    /// order, under the causal mask `BlockCtx::eager` builds; chunking it changes no bit.
    #[test]
    fn eager_attention_is_sdpa_rounded_the_reference_way() {
        tch::manual_seed(0);
        let (b, heads, l, d) = (2, 3, 7, 8);
        let qkv = || Tensor::randn([b, heads, l, d], (Kind::Float, Device::Cpu));
        let (q, k, v) = (qkv(), qkv(), qkv());
        let causal = BlockCtx {
            rope: None,
            mask: AttentionMask::Causal,
            keep: None,
        };
        let fused = causal.attend(&q, &k, &v, ScaleAt::Scores);
        let eager = causal.eager(l, Kind::Float, Device::Cpu);
        let AttentionMask::Eager(mask) = &eager.mask else {
            panic!("a causal context turns eager")
        };
        for scale_at in [ScaleAt::Scores, ScaleAt::Query] {
            let whole = eager.attend(&q, &k, &v, scale_at);
            assert!(whole.allclose(&fused, 1e-5, 1e-6, false), "{scale_at:?}");
            for chunk in [1, 4] {
                assert!(
                    eager_attention_in_chunks(&q, &k, &v, mask, scale_at, chunk).equal(&whole),
                    "{scale_at:?} by {chunk}"
                );
            }
        }
        // The scores' scale order is what transformers does per architecture, so it rounds differently.
        assert!(!eager
            .attend(&q, &k, &v, ScaleAt::Scores)
            .equal(&eager.attend(&q, &k, &v, ScaleAt::Query)));
    }

    /// Chunks hold at most the chunk budget of f32 scores, but never less than one (sample, head).
    #[test]
    fn eager_chunks_bound_the_scores_held() {
        assert_eq!(eager_chunk(64, 128), 64);
        assert_eq!(eager_chunk(4096, 4096), 1);
        assert_eq!(eager_chunk(4096, 512), 4);
        assert_eq!(eager_attention_bytes(32, 4096, 2), 4096 * 4096 * 8);
        assert_eq!(eager_attention_bytes(8, 128, 4), 8 * 128 * 128 * 12);
    }
}
