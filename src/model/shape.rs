//! A model's sizes from its config.json alone, without weights: what a dry run needs to
//! estimate compute and memory before anything is downloaded.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{llama, opt};

/// One prunable linear layer of a block.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearShape {
    pub name: &'static str,
    pub rows: u64,
    pub cols: u64,
}

/// What differs between architectures; [`ModelShape::assemble`] adds the common fields.
struct Parts {
    inputs: Vec<Vec<LinearShape>>,
    heads: u64,
    attention_width: u64,
    intermediate: u64,
    /// Parameters of a block besides its linear layers' weights.
    block_extra: u64,
    outer_params: u64,
    head_macs: u64,
}

/// Sizes of a decoder-only model as far as cost goes.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub architecture: String,
    pub n_layers: u64,
    pub hidden: u64,
    pub vocab: u64,
    pub max_positions: u64,
    /// A block's linear layers in forward order, grouped by the input they share (q/k/v, gate/up):
    /// each group gets one set of calibration statistics.
    pub inputs: Vec<Vec<LinearShape>>,
    /// Query heads.
    pub heads: u64,
    /// heads x head_dim: the width of the attention products per token.
    pub attention_width: u64,
    /// Widest activation inside a block (the MLP's intermediate width).
    pub intermediate: u64,
    /// Parameters of one block (linear layers, norms, biases).
    pub block_params: u64,
    /// Parameters outside the blocks: embeddings, positions, projections, final norm, head.
    pub outer_params: u64,
    /// Per token, the head's multiply-adds (final projection and lm_head).
    pub head_macs: u64,
}

impl ModelShape {
    /// From config.json's content, dispatching on `architectures[0]` (or `model_type`) as loading does.
    pub fn from_config(config: &Value) -> Result<ModelShape> {
        let arch = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| config.get("model_type").and_then(Value::as_str))
            .context("neither `architectures` nor `model_type` is set")?
            .to_string();
        let fields = |e: serde_json::Error| anyhow::anyhow!("config.json ({arch}): {e}");
        let shape = match arch.as_str() {
            "LlamaForCausalLM" | "MistralForCausalLM" | "llama" | "mistral" => {
                Self::llama(&serde_json::from_value(config.clone()).map_err(fields)?, arch)
            }
            "OPTForCausalLM" | "opt" => Self::opt(&serde_json::from_value(config.clone()).map_err(fields)?, arch),
            other => {
                bail!("architecture `{other}` is not supported (LlamaForCausalLM, MistralForCausalLM, OPTForCausalLM)")
            }
        };
        if shape.n_layers == 0 || shape.hidden == 0 {
            bail!("config.json: `num_hidden_layers` and `hidden_size` must be positive");
        }
        Ok(shape)
    }

    fn llama(c: &llama::Config, architecture: String) -> ModelShape {
        let (h, i, v) = (c.hidden_size as u64, c.intermediate_size as u64, c.vocab_size as u64);
        let heads = c.num_attention_heads.max(1) as u64;
        let head_dim = c.head_dim.map_or(h / heads, |d| d as u64);
        let kv = c.num_key_value_heads.map_or(heads, |k| k as u64) * head_dim;
        let attn = heads * head_dim;
        let lin = |name, rows, cols| LinearShape { name, rows, cols };
        let biases = if c.attention_bias { attn + 2 * kv + h } else { 0 } + if c.mlp_bias { 2 * i + h } else { 0 };
        let head = if c.tie_word_embeddings { 0 } else { v * h };
        let parts = Parts {
            inputs: vec![
                vec![
                    lin("self_attn.q_proj", attn, h),
                    lin("self_attn.k_proj", kv, h),
                    lin("self_attn.v_proj", kv, h),
                ],
                vec![lin("self_attn.o_proj", h, attn)],
                vec![lin("mlp.gate_proj", i, h), lin("mlp.up_proj", i, h)],
                vec![lin("mlp.down_proj", h, i)],
            ],
            heads,
            attention_width: attn,
            intermediate: i,
            // Two RMSNorm weights and any biases.
            block_extra: 2 * h + biases,
            outer_params: v * h + h + head,
            head_macs: v * h,
        };
        Self::assemble(
            architecture,
            c.num_hidden_layers,
            h,
            v,
            c.max_position_embeddings,
            parts,
        )
    }

    fn opt(c: &opt::Config, architecture: String) -> ModelShape {
        let (h, f, v) = (c.hidden_size as u64, c.ffn_dim as u64, c.vocab_size as u64);
        let proj = c.word_embed_proj_dim.map_or(h, |p| p as u64);
        let lin = |name, rows, cols| LinearShape { name, rows, cols };
        let projections = if proj != h { 2 * proj * h } else { 0 };
        let positions = (c.max_position_embeddings.max(0) as u64 + 2) * h;
        let head = if c.tie_word_embeddings { 0 } else { v * proj };
        let final_norm = if c.do_layer_norm_before && !c._remove_final_layer_norm {
            2 * h
        } else {
            0
        };
        let parts = Parts {
            inputs: vec![
                vec![
                    lin("self_attn.q_proj", h, h),
                    lin("self_attn.k_proj", h, h),
                    lin("self_attn.v_proj", h, h),
                ],
                vec![lin("self_attn.out_proj", h, h)],
                vec![lin("fc1", f, h)],
                vec![lin("fc2", h, f)],
            ],
            heads: c.num_attention_heads.max(1) as u64,
            attention_width: h,
            intermediate: f,
            // Two LayerNorms (weight and bias) and, when enabled, the linear layers' biases.
            block_extra: 4 * h + if c.enable_bias { 5 * h + f } else { 0 },
            outer_params: v * proj + positions + projections + final_norm + head,
            head_macs: v * proj + if proj != h { proj * h } else { 0 },
        };
        Self::assemble(
            architecture,
            c.num_hidden_layers,
            h,
            v,
            c.max_position_embeddings,
            parts,
        )
    }

    fn assemble(
        architecture: String,
        n_layers: usize,
        hidden: u64,
        vocab: u64,
        max_positions: i64,
        p: Parts,
    ) -> ModelShape {
        let linear: u64 = p.inputs.iter().flatten().map(|l| l.rows * l.cols).sum();
        ModelShape {
            architecture,
            n_layers: n_layers as u64,
            hidden,
            vocab,
            max_positions: max_positions.max(0) as u64,
            inputs: p.inputs,
            heads: p.heads,
            attention_width: p.attention_width,
            intermediate: p.intermediate,
            block_params: linear + p.block_extra,
            outer_params: p.outer_params,
            head_macs: p.head_macs,
        }
    }

    /// Every linear layer of one block.
    pub fn linears(&self) -> impl Iterator<Item = &LinearShape> {
        self.inputs.iter().flatten()
    }

    /// Weights of one block's linear layers.
    pub fn linear_params(&self) -> u64 {
        self.linears().map(|l| l.rows * l.cols).sum()
    }

    pub fn params(&self) -> u64 {
        self.n_layers * self.block_params + self.outer_params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter count from config.json alone equals the checkpoint's tensor count.
    #[test]
    fn parameters_match_the_fixture_checkpoints() {
        for dir in crate::model::fixture_checkpoints(&["llama-tiny", "opt-tiny"]) {
            let config: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
            let shape = ModelShape::from_config(&config).unwrap();
            let repo = crate::hub::Hub::default().repo(dir.to_str().unwrap(), crate::hub::RepoKind::Model);
            let weights = crate::model::Weights::open(&repo, tch::Device::Cpu, tch::Kind::Float).unwrap();
            assert_eq!(shape.params() * 4, weights.loaded_bytes(), "{}", dir.display());
        }
    }
}
