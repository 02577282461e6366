//! Checkpoint tensors from single or sharded safetensors, checked by name and shape on lookup.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use tch::{Device, Kind, Tensor};

use crate::hub::RepoRef;

pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// Tensor names, sorted (the order checkpoints are saved in).
    order: Vec<String>,
    source: String,
}

impl Weights {
    /// `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn load(repo: &RepoRef, device: Device, kind: Kind) -> Result<Self> {
        let files = if repo.has_local("model.safetensors")
            || (repo.local_dir().is_none()
                && !repo.has_local("model.safetensors.index.json")
                && repo.get("model.safetensors.index.json").is_err())
        {
            vec![repo.get("model.safetensors")?]
        } else {
            let index_path = repo.get("model.safetensors.index.json").with_context(|| {
                format!(
                    "model `{}` has neither model.safetensors nor model.safetensors.index.json",
                    repo.id
                )
            })?;
            let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path)?)
                .with_context(|| format!("{}: malformed JSON", index_path.display()))?;
            let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
                bail!("{}: missing object field `weight_map`", index_path.display());
            };
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.into_iter().map(|s| repo.get(s)).collect::<Result<Vec<_>>>()?
        };
        let mut tensors = HashMap::new();
        let mut order = Vec::new();
        for f in &files {
            let list = Tensor::read_safetensors(f)
                .with_context(|| format!("{}: not a readable safetensors file", f.display()))?;
            for (name, t) in list {
                let t = if t.is_floating_point() { t.to_kind(kind) } else { t };
                order.push(name.clone());
                tensors.insert(name, t.to_device(device));
            }
        }
        // read_safetensors does not keep the file's order; sort so saved checkpoints are reproducible.
        order.sort();
        let source = files.first().map(|f| f.display().to_string()).unwrap_or_default();
        Ok(Weights { tensors, order, source })
    }

    /// The tensor `name`, which must have `shape`; errors name the file, the tensor and both shapes.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let Some(t) = self.lookup(name) else {
            bail!("{}: missing weight tensor `{name}`", self.source);
        };
        if t.size() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, config.json implies {:?}",
                self.source,
                t.size(),
                shape
            );
        }
        Ok(t.shallow_clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// Older OPT checkpoints store `decoder.*` where transformers names `model.decoder.*`.
    fn lookup(&self, name: &str) -> Option<&Tensor> {
        self.tensors
            .get(name)
            .or_else(|| name.strip_prefix("model.").and_then(|n| self.tensors.get(n)))
    }

    /// All tensors by sorted name, sharing storage with what the model uses.
    pub fn into_named(mut self) -> Vec<(String, Tensor)> {
        self.order
            .iter()
            .filter_map(|n| self.tensors.remove(n).map(|t| (n.clone(), t)))
            .collect()
    }
}
