//! LLaMA-1/2/3 and Mistral (`LlamaForCausalLM`, `MistralForCausalLM`): pre-norm blocks with
//! RMSNorm, rotary positions, grouped-query attention and a SwiGLU MLP.

use anyhow::{bail, Result};
use serde::Deserialize;
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};

use super::segments::SegmentGroup;
use super::{
    additive_mask, AttentionMask, BlockCtx, CausalLm, DecoderBlock, Linear, ModelInfo, ScaleAt, Stack, Tap, Weights,
};

#[derive(Deserialize, Debug, Clone)]
pub struct Config {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeScaling>,
    /// transformers 5 writes the rotary settings here (theta included).
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub sliding_window: Option<i64>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub bos_token_id: Option<u32>,
    pub model_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

#[derive(Deserialize, Debug, Clone)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
}

impl Config {
    fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// `rope_scaling` (hub checkpoints) wins, `rope_parameters` (transformers 5) is the fallback.
    fn rope(&self) -> Option<&RopeScaling> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }
    fn theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(10000.0)
    }

    fn validate(&self) -> Result<()> {
        if self.hidden_act != "silu" {
            bail!(
                "field `hidden_act` = \"{}\" is not supported (only \"silu\")",
                self.hidden_act
            );
        }
        if self.num_attention_heads <= 0 || self.kv_heads() <= 0 || self.num_attention_heads % self.kv_heads() != 0 {
            bail!(
                "fields `num_attention_heads` = {} and `num_key_value_heads` = {}: heads must be a positive multiple of kv heads",
                self.num_attention_heads,
                self.kv_heads()
            );
        }
        let field = if self.rope_scaling.is_some() {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        match self.rope().map(|r| r.rope_type.as_deref()) {
            None | Some(Some("default" | "llama3" | "linear")) => Ok(()),
            Some(None) => bail!(
                "field `{field}` names no `rope_type` (or `type`); transformers needs one of default, linear, llama3"
            ),
            Some(Some(t)) => bail!("field `{field}.rope_type` = \"{t}\" is not supported (default, linear, llama3)"),
        }
    }

    /// Rotary inverse frequencies in f32 exactly as transformers computes them, including llama3 scaling.
    fn inv_freq(&self) -> Result<Tensor> {
        let dim = self.head_dim();
        let exponent =
            Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / dim as f64;
        let inv_freq = Tensor::pow_scalar(self.theta(), &exponent).reciprocal();
        let Some(r) = self.rope() else { return Ok(inv_freq) };
        let need = |v: Option<f64>, f: &str| v.ok_or_else(|| anyhow::anyhow!("field `rope_scaling.{f}` is required"));
        Ok(match r.rope_type.as_deref() {
            Some("llama3") => {
                let factor = need(r.factor, "factor")?;
                let low = need(r.low_freq_factor, "low_freq_factor")?;
                let high = need(r.high_freq_factor, "high_freq_factor")?;
                let old_ctx = need(r.original_max_position_embeddings, "original_max_position_embeddings")?;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let scaled = inv_freq.where_self(&wavelen.le(low_wavelen), &(&inv_freq / factor));
                let smooth = (wavelen.reciprocal() * old_ctx - low) / (high - low);
                let smoothed: Tensor = (1.0 - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen.ge(high_wavelen).logical_and(&wavelen.le(low_wavelen));
                smoothed.where_self(&medium, &scaled)
            }
            Some("linear") => inv_freq / need(r.factor, "factor")?,
            _ => inv_freq,
        })
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

pub struct Block {
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
    attn: Attention,
    mlp: Mlp,
    eps: f64,
}

/// RMSNorm computed in f32 and cast back before the weight, as transformers does.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    weight * (xf * (var + eps).rsqrt()).to_kind(kind)
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], 3)
}

impl Attention {
    fn forward(&self, x: &Tensor, ctx: &BlockCtx, tap: Tap) -> ControlFlow<(), Tensor> {
        let (b, l, _) = x.size3().expect("hidden states are (B, L, H)");
        tap(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], x)?;
        let q = self.q_proj.forward(x);
        let k = self.k_proj.forward(x);
        let v = self.v_proj.forward(x);
        let shape = |t: Tensor, h: i64| t.view([b, l, h, self.head_dim]).transpose(1, 2);
        let (mut q, mut k, v) = (shape(q, self.heads), shape(k, self.kv_heads), shape(v, self.kv_heads));
        if let Some((cos, sin)) = &ctx.rope {
            q = &q * cos + rotate_half(&q) * sin;
            k = &k * cos + rotate_half(&k) * sin;
        }
        let rep = self.heads / self.kv_heads;
        let expand = |t: Tensor| {
            if rep == 1 {
                t
            } else {
                t.unsqueeze(2)
                    .expand([b, self.kv_heads, rep, l, self.head_dim], false)
                    .reshape([b, self.heads, l, self.head_dim])
            }
        };
        let (k, v) = (expand(k), expand(v));
        let y = ctx.attend(&q, &k, &v, ScaleAt::Scores);
        let y = ctx.kept(&y.transpose(1, 2).reshape([b, l, self.heads * self.head_dim]));
        tap(&["self_attn.o_proj"], &y)?;
        ControlFlow::Continue(self.o_proj.forward(&y))
    }
}

impl Block {
    /// Block `i`'s tensors, looked up by their hub names.
    fn load(cfg: &Config, w: &Weights, i: usize) -> Result<Self> {
        let (h, hd, heads, kv) = (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads, cfg.kv_heads());
        let p = format!("model.layers.{i}");
        let lin = |name: &str, bias: bool, shape| Linear::load(w, &format!("{p}.{name}"), bias, shape);
        let ab = cfg.attention_bias;
        Ok(Block {
            input_layernorm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
            post_attention_layernorm: w.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            attn: Attention {
                q_proj: lin("self_attn.q_proj", ab, (heads * hd, h))?,
                k_proj: lin("self_attn.k_proj", ab, (kv * hd, h))?,
                v_proj: lin("self_attn.v_proj", ab, (kv * hd, h))?,
                o_proj: lin("self_attn.o_proj", ab, (h, heads * hd))?,
                heads,
                kv_heads: kv,
                head_dim: hd,
            },
            mlp: Mlp {
                gate_proj: lin("mlp.gate_proj", cfg.mlp_bias, (cfg.intermediate_size, h))?,
                up_proj: lin("mlp.up_proj", cfg.mlp_bias, (cfg.intermediate_size, h))?,
                down_proj: lin("mlp.down_proj", cfg.mlp_bias, (h, cfg.intermediate_size))?,
            },
            eps: cfg.rms_norm_eps,
        })
    }
}

impl DecoderBlock for Block {
    fn forward_tapped(&self, x: &Tensor, ctx: &BlockCtx, tap: Tap) -> ControlFlow<(), Tensor> {
        let h = ctx.kept(x)
            + self
                .attn
                .forward(&rms_norm(x, &self.input_layernorm, self.eps), ctx, tap)?;
        let n = rms_norm(&h, &self.post_attention_layernorm, self.eps);
        tap(&["mlp.gate_proj", "mlp.up_proj"], &n)?;
        let gate = self.mlp.gate_proj.forward(&n).silu();
        let up = self.mlp.up_proj.forward(&n);
        let act = gate * up;
        tap(&["mlp.down_proj"], &act)?;
        ControlFlow::Continue(h + self.mlp.down_proj.forward(&act))
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("self_attn.q_proj", &mut self.attn.q_proj),
            ("self_attn.k_proj", &mut self.attn.k_proj),
            ("self_attn.v_proj", &mut self.attn.v_proj),
            ("self_attn.o_proj", &mut self.attn.o_proj),
            ("mlp.gate_proj", &mut self.mlp.gate_proj),
            ("mlp.up_proj", &mut self.mlp.up_proj),
            ("mlp.down_proj", &mut self.mlp.down_proj),
        ]
    }

    fn linears(&self) -> Vec<(&'static str, &Linear)> {
        vec![
            ("self_attn.q_proj", &self.attn.q_proj),
            ("self_attn.k_proj", &self.attn.k_proj),
            ("self_attn.v_proj", &self.attn.v_proj),
            ("self_attn.o_proj", &self.attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }
}

const EMBED_TOKENS: &str = "model.embed_tokens.weight";

pub struct Llama {
    stack: Stack,
    norm: Tensor,
    /// The head's checkpoint name (the embeddings' when tied); both are `Stack::outer` tensors.
    lm_head: &'static str,
    inv_freq: Tensor,
    sliding_window: Option<i64>,
    eps: f64,
}

impl Llama {
    pub fn load(cfg: Config, arch: &str, w: Weights, streamed: bool) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let norm = w.get("model.norm.weight", &[h])?;
        let (device, kind) = (norm.device(), norm.kind());
        let (lm_head, outer) =
            super::embeddings_and_head(&w, EMBED_TOKENS, cfg.tie_word_embeddings, [cfg.vocab_size, h]);
        let is_mistral = arch.starts_with("Mistral") || arch == "mistral";
        let info = ModelInfo {
            architecture: arch.to_string(),
            model_type: cfg
                .model_type
                .clone()
                .unwrap_or_else(|| if is_mistral { "mistral" } else { "llama" }.into()),
            n_layers: cfg.num_hidden_layers,
            hidden_size: h,
            intermediate_size: cfg.intermediate_size,
            vocab_size: cfg.vocab_size,
            max_position_embeddings: cfg.max_position_embeddings,
            bos_token_id: cfg.bos_token_id,
            block_prefix: "model.layers.",
        };
        let inv_freq = cfg.inv_freq()?.to_device(device);
        let sliding_window = cfg.sliding_window.filter(|_| is_mistral);
        let eps = cfg.rms_norm_eps;
        let load_block = move |w: &Weights, i| Ok(Box::new(Block::load(&cfg, w, i)?) as Box<dyn DecoderBlock>);
        Ok(Llama {
            stack: Stack::new(info, w, Box::new(load_block), &outer, streamed, device, kind)?,
            inv_freq,
            sliding_window,
            eps,
            norm,
            lm_head,
        })
    }

    /// cos and sin (positions' shape + [head_dim]) of the rotary angles at `positions` (f32), computed
    /// in f32 and cast to the model dtype, as transformers does.
    fn rope_at(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(self.stack.kind), emb.sin().to_kind(self.stack.kind))
    }
}

impl CausalLm for Llama {
    fn stack(&self) -> &Stack {
        &self.stack
    }
    fn stack_mut(&mut self) -> &mut Stack {
        &mut self.stack
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::embedding(
            &self.stack.outer(EMBED_TOKENS)?,
            ids,
            -1,
            false,
            false,
        ))
    }

    /// cos/sin tables in f32 then cast to the model dtype, and the sliding-window mask when the
    /// sequence is longer than Mistral's window (query i sees keys j with i - window < j <= i).
    fn context(&self, seq_len: i64) -> BlockCtx {
        let (cos, sin) = self.rope_at(&Tensor::arange(seq_len, (Kind::Float, self.stack.device)));
        let mask = match self.sliding_window.filter(|&w| seq_len > w) {
            Some(w) => {
                let i = Tensor::arange(seq_len, (Kind::Int64, self.stack.device)).unsqueeze(1);
                let j = Tensor::arange(seq_len, (Kind::Int64, self.stack.device)).unsqueeze(0);
                AttentionMask::Additive(additive_mask(
                    &j.le_tensor(&i).logical_and(&(&i - &j).lt(w)),
                    self.stack.kind,
                ))
            }
            None => AttentionMask::Causal,
        };
        BlockCtx {
            rope: Some((cos.unsqueeze(0).unsqueeze(0), sin.unsqueeze(0).unsqueeze(0))),
            mask,
            keep: None,
        }
    }

    /// Rotary positions come from the block context alone.
    fn embed_at(&self, ids: &Tensor, _positions: &Tensor) -> Result<Tensor> {
        self.embed(ids)
    }

    /// Rotary tables at each token's own position; Mistral's window counts positions, not row
    /// offsets, so a packed sequence sees the keys it would see alone.
    fn packed_context(&self, positions: &Tensor, mut segments: Vec<SegmentGroup>) -> BlockCtx {
        let (cos, sin) = self.rope_at(&positions.to_kind(Kind::Float));
        if let Some(w) = self.sliding_window {
            for group in &mut segments {
                group.limit_span(positions, w);
            }
        }
        BlockCtx {
            rope: Some((cos.unsqueeze(1), sin.unsqueeze(1))),
            mask: AttentionMask::Segments(segments),
            keep: None,
        }
    }

    fn head(&self, h: &Tensor) -> Result<Tensor> {
        Ok(super::gemm::linear(
            &rms_norm(h, &self.norm, self.eps),
            &self.stack.outer(self.lm_head)?,
            None,
        ))
    }
}
