//! Checkpoint tensors from single or sharded safetensors, checked by name and shape on lookup.

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
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
        for f in &files {
            read_file(f, device, kind, &mut tensors)?;
        }
        // Sorted, so saved checkpoints are reproducible.
        let mut order: Vec<String> = tensors.keys().cloned().collect();
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

/// Reads every tensor of one safetensors file straight into its own buffer, converting and
/// moving each before the next is read. Host memory thus peaks at the loaded weights plus one
/// tensor (one tensor in all when loading to a GPU), where reading the whole file first would
/// hold the file and all its tensors at once.
fn read_file(path: &Path, device: Device, kind: Kind, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let bad = |what: String| anyhow::anyhow!("{}: not a valid safetensors file: {what}", path.display());
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(format!("header length: {e}")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
        return Err(bad(format!("header length {header_len} for a file of {file_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + header_len;
    let mut infos: Vec<(String, &TensorInfo)> = meta.tensors().into_iter().collect();
    infos.sort_by_key(|(_, info)| info.data_offsets.0); // one sequential pass over the file
    for (name, info) in infos {
        let (start, end) = info.data_offsets;
        let file_kind = tch_kind(info.dtype).ok_or_else(|| bad(format!("tensor `{name}` has unsupported dtype {:?}", info.dtype)))?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let t = Tensor::empty(&shape, (file_kind, Device::Cpu));
        let bytes = t.numel() * file_kind.elt_size_in_bytes();
        if end - start != bytes || data_start + end as u64 > file_len {
            return Err(bad(format!("tensor `{name}`: offsets {start}..{end} do not fit shape {shape:?} or the file")));
        }
        // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `bytes` bytes, written only here.
        let buf = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, bytes) };
        file.seek(SeekFrom::Start(data_start + start as u64))?;
        file.read_exact(buf).with_context(|| format!("{}: reading tensor `{name}`", path.display()))?;
        let t = if t.is_floating_point() { t.to_kind(kind) } else { t };
        out.insert(name, t.to_device(device));
    }
    Ok(())
}

fn tch_kind(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}
