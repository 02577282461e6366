//! Decoder-only language models as a sequence of blocks, so pruning can run block by block on
//! cached hidden states: `embed` -> `blocks[i].forward` -> `head`, each callable on its own.
//! One file per architecture; weights are looked up by their Hugging Face names.

pub mod llama;
pub mod opt;
pub mod weights;

use anyhow::{bail, Context, Result};
use serde_json::Value;
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
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// Called before the linear layers run with (their names inside the block, their common input):
/// this is how calibration statistics see each layer's actual inputs. Layers fed the very same
/// tensor (q/k/v, gate/up) come in one call, so their identical statistics are computed once.
pub type Tap<'a> = &'a mut dyn FnMut(&[&'static str], &Tensor);

/// Per-sequence-length tensors that every block needs (rotary tables, attention masks).
pub struct BlockCtx {
    pub rope: Option<(Tensor, Tensor)>,
    /// Additive attention mask (0 / -inf), when plain causal masking is not enough.
    pub attn_mask: Option<Tensor>,
}

impl BlockCtx {
    /// Softmax attention (B, heads, L, head_dim), causal unless a mask says otherwise.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        Tensor::scaled_dot_product_attention(q, k, v, self.attn_mask.as_ref(), 0.0, self.attn_mask.is_none(), None, false)
    }
}

pub trait DecoderBlock: Send {
    /// hidden (B, L, H) -> hidden (B, L, H).
    fn forward(&self, x: &Tensor, ctx: &BlockCtx, tap: Tap) -> Tensor;
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
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub bos_token_id: Option<u32>,
    /// Prefix of block `i`'s tensors, e.g. `model.layers.` or `model.decoder.layers.`.
    pub block_prefix: &'static str,
}

/// What every architecture holds besides its embedding and head: the blocks and the checkpoint.
pub struct Stack {
    pub info: ModelInfo,
    pub blocks: Vec<Box<dyn DecoderBlock>>,
    /// Every checkpoint tensor by hub name, sharing storage with the layers (for saving).
    pub tensors: Vec<(String, Tensor)>,
    pub device: Device,
    pub kind: Kind,
}

impl Stack {
    /// Takes every tensor of the checkpoint, so the layers' storage is also reachable by name.
    pub fn new(info: ModelInfo, blocks: Vec<Box<dyn DecoderBlock>>, weights: Weights, device: Device, kind: Kind) -> Stack {
        Stack { info, blocks, tensors: weights.into_named(), device, kind }
    }
}

pub trait CausalLm: Send {
    fn stack(&self) -> &Stack;
    fn stack_mut(&mut self) -> &mut Stack;
    /// token ids (B, L) int64 -> hidden (B, L, H).
    fn embed(&self, ids: &Tensor) -> Tensor;
    fn context(&self, seq_len: i64) -> BlockCtx;
    /// final norm (+ projection) + lm_head: hidden (B, L, H) -> logits (B, L, V).
    fn head(&self, h: &Tensor) -> Tensor;

    fn info(&self) -> &ModelInfo {
        &self.stack().info
    }
    fn blocks(&self) -> &[Box<dyn DecoderBlock>] {
        &self.stack().blocks
    }
    fn blocks_mut(&mut self) -> &mut [Box<dyn DecoderBlock>] {
        &mut self.stack_mut().blocks
    }
    fn tensors(&self) -> &[(String, Tensor)] {
        &self.stack().tensors
    }
    fn device(&self) -> Device {
        self.stack().device
    }
    fn kind(&self) -> Kind {
        self.stack().kind
    }

    /// Full forward pass: ids (B, L) -> logits (B, L, V).
    fn forward(&self, ids: &Tensor) -> Tensor {
        let ctx = self.context(ids.size()[1]);
        let mut h = self.embed(ids);
        for b in self.blocks() {
            h = b.forward(&h, &ctx, &mut |_, _| {});
        }
        self.head(&h)
    }
}

/// A loaded model with its tokenizer and where it came from.
pub struct Loaded {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub repo: RepoRef,
    pub config: Value,
}

/// Reads config.json and the weights, and the tokenizer of the same repo.
pub fn load(hub: &Hub, spec: &str, device: Device, kind: Kind) -> Result<Loaded> {
    let (model, repo, config) = load_model(hub, spec, device, kind)?;
    let info = model.info();
    let tokenizer = Tokenizer::from_repo(&repo, &info.model_type, info.bos_token_id)?;
    Ok(Loaded {
        model,
        tokenizer,
        repo,
        config,
    })
}

/// Reads config.json and dispatches on `architectures[0]` (or `model_type`); no tokenizer needed.
pub fn load_model(hub: &Hub, spec: &str, device: Device, kind: Kind) -> Result<(Box<dyn CausalLm>, RepoRef, Value)> {
    let repo = hub.repo(spec, RepoKind::Model);
    let config_path = repo.get("config.json")?;
    let text =
        std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", config_path.display()))?;
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
    let weights = Weights::load(&repo, device, kind)?;
    let ctx = || format!("{} (architecture {arch})", config_path.display());
    let model: Box<dyn CausalLm> = match arch.as_str() {
        "LlamaForCausalLM" | "MistralForCausalLM" | "llama" | "mistral" => {
            let cfg: llama::Config = serde_json::from_value(config.clone()).with_context(ctx)?;
            Box::new(llama::Llama::load(cfg, &arch, weights).with_context(ctx)?)
        }
        "OPTForCausalLM" | "opt" => {
            let cfg: opt::Config = serde_json::from_value(config.clone()).with_context(ctx)?;
            Box::new(opt::Opt::load(cfg, weights).with_context(ctx)?)
        }
        other => bail!(
            "{}: field `architectures` = \"{other}\" is not supported (supported: LlamaForCausalLM, \
             MistralForCausalLM, OPTForCausalLM)",
            config_path.display()
        ),
    };
    Ok((model, repo, config))
}
