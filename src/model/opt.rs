//! OPT (`OPTForCausalLM`): learned positions looked up at row p + 2, LayerNorm before (or, for
//! opt-350m, after) each sub-block, ReLU MLP, biases everywhere, optional project_in/out.

use anyhow::{bail, Result};
use serde::Deserialize;
use std::ops::ControlFlow;
use tch::{Kind, Tensor};

use super::segments::SegmentGroup;
use super::{AttentionMask, BlockCtx, CausalLm, DecoderBlock, Linear, ModelInfo, ScaleAt, Stack, Tap, Weights};

/// OPT's position rows start after two reserved rows (fairseq's padding offset).
const POSITION_OFFSET: i64 = 2;
const LN_EPS: f64 = 1e-5;

#[derive(Deserialize, Debug, Clone)]
pub struct Config {
    pub hidden_size: i64,
    pub ffn_dim: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub word_embed_proj_dim: Option<i64>,
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    #[serde(default)]
    pub _remove_final_layer_norm: bool,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "relu")]
    pub activation_function: String,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
}

impl Config {
    fn gelu(&self) -> Result<bool> {
        match self.activation_function.as_str() {
            "relu" => Ok(false),
            "gelu" => Ok(true),
            other => bail!("field `activation_function` = \"{other}\" is not supported (relu, gelu)"),
        }
    }
}

fn yes() -> bool {
    true
}
fn relu() -> String {
    "relu".into()
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn load(w: &Weights, prefix: &str, dim: i64) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.weight"), &[dim])?,
            bias: w.get(&format!("{prefix}.bias"), &[dim])?,
        })
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.weight.size()[0]],
            Some(&self.weight),
            Some(&self.bias),
            LN_EPS,
            false,
        )
    }
}

pub struct Block {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    fc1: Linear,
    fc2: Linear,
    self_attn_layer_norm: LayerNorm,
    final_layer_norm: LayerNorm,
    heads: i64,
    pre_ln: bool,
    gelu: bool,
}

impl Block {
    /// Block `i`'s tensors, looked up by their hub names.
    fn load(cfg: &Config, w: &Weights, i: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        let l = format!("model.decoder.layers.{i}");
        let lin = |n: &str, shape| Linear::load(w, &format!("{l}.{n}"), cfg.enable_bias, shape);
        Ok(Block {
            q_proj: lin("self_attn.q_proj", (h, h))?,
            k_proj: lin("self_attn.k_proj", (h, h))?,
            v_proj: lin("self_attn.v_proj", (h, h))?,
            out_proj: lin("self_attn.out_proj", (h, h))?,
            fc1: lin("fc1", (cfg.ffn_dim, h))?,
            fc2: lin("fc2", (h, cfg.ffn_dim))?,
            self_attn_layer_norm: LayerNorm::load(w, &format!("{l}.self_attn_layer_norm"), h)?,
            final_layer_norm: LayerNorm::load(w, &format!("{l}.final_layer_norm"), h)?,
            heads: cfg.num_attention_heads,
            pre_ln: cfg.do_layer_norm_before,
            gelu: cfg.gelu()?,
        })
    }

    fn attention(&self, x: &Tensor, ctx: &BlockCtx, tap: Tap) -> ControlFlow<(), Tensor> {
        let (b, l, h) = x.size3().expect("hidden states are (B, L, H)");
        let hd = h / self.heads;
        let split = |t: Tensor| t.view([b, l, self.heads, hd]).transpose(1, 2);
        tap(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], x)?;
        let q = split(self.q_proj.forward(x));
        let k = split(self.k_proj.forward(x));
        let v = split(self.v_proj.forward(x));
        let y = ctx.attend(&q, &k, &v, ScaleAt::Query);
        let y = ctx.kept(&y.transpose(1, 2).reshape([b, l, h]));
        tap(&["self_attn.out_proj"], &y)?;
        ControlFlow::Continue(self.out_proj.forward(&y))
    }

    fn mlp(&self, x: &Tensor, tap: Tap) -> ControlFlow<(), Tensor> {
        tap(&["fc1"], x)?;
        let a = self.fc1.forward(x);
        let a = if self.gelu { a.gelu("none") } else { a.relu() };
        tap(&["fc2"], &a)?;
        ControlFlow::Continue(self.fc2.forward(&a))
    }
}

impl DecoderBlock for Block {
    fn forward_tapped(&self, x: &Tensor, ctx: &BlockCtx, tap: Tap) -> ControlFlow<(), Tensor> {
        ControlFlow::Continue(if self.pre_ln {
            let h = ctx.kept(x) + self.attention(&self.self_attn_layer_norm.forward(x), ctx, tap)?;
            &h + self.mlp(&self.final_layer_norm.forward(&h), tap)?
        } else {
            let h = self
                .self_attn_layer_norm
                .forward(&(ctx.kept(x) + self.attention(x, ctx, tap)?));
            self.final_layer_norm.forward(&(&h + self.mlp(&h, tap)?))
        })
    }

    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("self_attn.q_proj", &mut self.q_proj),
            ("self_attn.k_proj", &mut self.k_proj),
            ("self_attn.v_proj", &mut self.v_proj),
            ("self_attn.out_proj", &mut self.out_proj),
            ("fc1", &mut self.fc1),
            ("fc2", &mut self.fc2),
        ]
    }

    fn linears(&self) -> Vec<(&'static str, &Linear)> {
        vec![
            ("self_attn.q_proj", &self.q_proj),
            ("self_attn.k_proj", &self.k_proj),
            ("self_attn.v_proj", &self.v_proj),
            ("self_attn.out_proj", &self.out_proj),
            ("fc1", &self.fc1),
            ("fc2", &self.fc2),
        ]
    }
}

const EMBED_TOKENS: &str = "model.decoder.embed_tokens.weight";

pub struct Opt {
    stack: Stack,
    embed_positions: Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    final_layer_norm: Option<LayerNorm>,
    /// The head's checkpoint name (the embeddings' when tied); both are `Stack::outer` tensors.
    lm_head: &'static str,
}

impl Opt {
    pub fn load(cfg: Config, w: Weights, streamed: bool) -> Result<Self> {
        cfg.gelu()?;
        let h = cfg.hidden_size;
        if cfg.num_attention_heads <= 0 || h % cfg.num_attention_heads != 0 {
            bail!(
                "field `num_attention_heads` = {} does not divide `hidden_size` = {h}",
                cfg.num_attention_heads
            );
        }
        let proj = cfg.word_embed_proj_dim.unwrap_or(h);
        let p = "model.decoder";
        let (project_in, project_out) = if proj != h {
            (
                Some(Linear::load(&w, &format!("{p}.project_in"), false, (h, proj))?),
                Some(Linear::load(&w, &format!("{p}.project_out"), false, (proj, h))?),
            )
        } else {
            (None, None)
        };
        let final_layer_norm = if cfg.do_layer_norm_before && !cfg._remove_final_layer_norm {
            Some(LayerNorm::load(&w, &format!("{p}.final_layer_norm"), h)?)
        } else {
            None
        };
        let (lm_head, outer) =
            super::embeddings_and_head(&w, EMBED_TOKENS, cfg.tie_word_embeddings, [cfg.vocab_size, proj]);
        let info = ModelInfo {
            architecture: "OPTForCausalLM".into(),
            model_type: "opt".into(),
            n_layers: cfg.num_hidden_layers,
            hidden_size: h,
            intermediate_size: cfg.ffn_dim,
            vocab_size: cfg.vocab_size,
            max_position_embeddings: cfg.max_position_embeddings,
            bos_token_id: cfg.bos_token_id,
            block_prefix: "model.decoder.layers.",
        };
        let embed_positions = w.get(
            &format!("{p}.embed_positions.weight"),
            &[cfg.max_position_embeddings + POSITION_OFFSET, h],
        )?;
        let (device, kind) = (embed_positions.device(), embed_positions.kind());
        let load_block = move |w: &Weights, i| Ok(Box::new(Block::load(&cfg, w, i)?) as Box<dyn DecoderBlock>);
        Ok(Opt {
            embed_positions,
            project_in,
            project_out,
            final_layer_norm,
            lm_head,
            stack: Stack::new(info, w, Box::new(load_block), &outer, streamed, device, kind)?,
        })
    }
}

impl Opt {
    /// Token embeddings (projected in when the model has `project_in`), without positions.
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let x = Tensor::embedding(&self.stack.outer(EMBED_TOKENS)?, ids, -1, false, false);
        Ok(match &self.project_in {
            Some(p) => p.forward(&x),
            None => x,
        })
    }
}

impl CausalLm for Opt {
    fn stack(&self) -> &Stack {
        &self.stack
    }
    fn stack_mut(&mut self) -> &mut Stack {
        &mut self.stack
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let l = ids.size()[1];
        let pos = Tensor::arange_start(POSITION_OFFSET, l + POSITION_OFFSET, (Kind::Int64, self.stack.device));
        Ok(self.embed_tokens(ids)? + Tensor::embedding(&self.embed_positions, &pos, -1, false, false).unsqueeze(0))
    }

    fn context(&self, _seq_len: i64) -> BlockCtx {
        BlockCtx {
            rope: None,
            mask: AttentionMask::Causal,
            keep: None,
        }
    }

    /// Each token gets the learned position of its place in its own sequence.
    fn embed_at(&self, ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens(ids)?
            + Tensor::embedding(&self.embed_positions, &(positions + POSITION_OFFSET), -1, false, false))
    }

    fn packed_context(&self, _positions: &Tensor, segments: Vec<SegmentGroup>) -> BlockCtx {
        BlockCtx {
            rope: None,
            mask: AttentionMask::Segments(segments),
            keep: None,
        }
    }

    fn head(&self, h: &Tensor) -> Result<Tensor> {
        let mut x = match &self.final_layer_norm {
            Some(ln) => ln.forward(h),
            None => h.shallow_clone(),
        };
        if let Some(p) = &self.project_out {
            x = p.forward(&x);
        }
        Ok(super::gemm::linear(&x, &self.stack.outer(self.lm_head)?, None))
    }
}
