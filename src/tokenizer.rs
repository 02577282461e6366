//! Tokenization through the `tokenizers` crate, adding special tokens the way transformers does.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

use crate::hub::RepoRef;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepended when the tokenizer.json post-processor does not add it itself (OPT's GPT-2
    /// tokenizer relies on `add_bos_token` in tokenizer_config.json; LLaMA's adds `<s>` itself).
    bos_to_prepend: Option<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (+ `tokenizer_config.json` when present) from a model repo.
    /// `model_type` decides the transformers default for `add_bos_token` (true for llama and opt).
    pub fn from_repo(repo: &RepoRef, model_type: &str, config_bos: Option<u32>) -> Result<Self> {
        let path = repo.get("tokenizer.json")?;
        let tok_cfg = if repo.has_local("tokenizer_config.json") || repo.local_dir().is_none() {
            repo.get("tokenizer_config.json").ok()
        } else {
            None
        };
        Self::from_files(&path, tok_cfg.as_deref(), model_type, config_bos)
    }

    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        model_type: &str,
        config_bos: Option<u32>,
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", tokenizer_json.display()))?;
        let cfg: Value = match tokenizer_config {
            Some(p) => serde_json::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{}: invalid JSON", p.display()))?,
            None => Value::Null,
        };
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(matches!(model_type, "llama" | "mistral" | "opt"));
        let bos_name = match cfg.get("bos_token") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let bos = bos_name.and_then(|n| inner.token_to_id(&n)).or(config_bos);
        let mut tok = Tokenizer {
            inner,
            bos_to_prepend: None,
        };
        if add_bos {
            if let Some(bos) = bos {
                let probe = tok.raw_encode("a")?;
                if probe.first() != Some(&(bos as i64)) {
                    tok.bos_to_prepend = Some(bos);
                }
            }
        }
        Ok(tok)
    }

    fn raw_encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// The largest token id encoding can produce (added tokens and a prepended BOS included),
    /// with its token: an embedding table must have a row for it.
    pub fn largest_id(&self) -> Option<(u32, String)> {
        let vocab = self.inner.get_vocab(true).into_iter().map(|(token, id)| (id, token));
        let bos = self
            .bos_to_prepend
            .map(|id| (id, "the BOS token (tokenizer_config.json / config.json)".to_string()));
        vocab.chain(bos).max_by_key(|(id, _)| *id)
    }

    /// Token ids as `tokenizer(text).input_ids` gives them in transformers (with BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = self.raw_encode(text)?;
        if let Some(bos) = self.bos_to_prepend {
            ids.insert(0, bos as i64);
        }
        Ok(ids)
    }
}
