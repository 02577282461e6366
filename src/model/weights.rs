//! Checkpoint tensors from single or sharded safetensors, checked by name and shape on lookup.
//!
//! Opening a checkpoint reads only the safetensors headers; tensors are read on demand, each
//! straight into its own buffer with a positioned read, converted to the run's dtype and moved to
//! its device before the next is read. A resident model reads them all up front (`read_all`); a
//! streamed one reads one block at a time, so models larger than host memory can be pruned.

use anyhow::{bail, Context, Result};
use safetensors::tensor::Metadata;
use safetensors::Dtype;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use crate::hub::RepoRef;

/// Whether no element is NaN or infinite. A sum is non-finite exactly when an element is (it
/// accumulates in f64, so it cannot overflow itself). libtorch sums in f64 by converting its
/// input first, so the sum runs over slices of 1M elements: a whole embedding matrix converted
/// at once would double the peak memory of loading it.
pub fn all_finite(t: &Tensor) -> bool {
    const CHUNK: i64 = 1 << 20;
    let flat = t.reshape([-1]);
    let n = flat.size()[0];
    (0..n).step_by(CHUNK as usize).all(|start| {
        flat.narrow(0, start, CHUNK.min(n - start))
            .sum(Kind::Double)
            .double_value(&[])
            .is_finite()
    })
}

/// Where one tensor lies: its file, byte range (absolute) and layout.
#[derive(Clone, Debug)]
struct Location {
    file: usize,
    start: u64,
    end: u64,
    kind: Kind,
    shape: Vec<i64>,
}

pub struct Weights {
    files: Vec<PathBuf>,
    index: HashMap<String, Location>,
    /// Tensors already read (all of them for a resident model).
    resident: HashMap<String, Tensor>,
    device: Device,
    kind: Kind,
    source: String,
    /// Tensors are placeholders of the right shape (no data read): for checking a checkpoint.
    headers_only: bool,
}

impl Weights {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`,
    /// reading the headers only; tensors come from disk when asked for (or all at once, `read_all`).
    pub fn open(repo: &RepoRef, device: Device, kind: Kind) -> Result<Self> {
        let (files, source) = if repo.has_local("model.safetensors")
            || (repo.local_dir().is_none()
                && !repo.has_local("model.safetensors.index.json")
                && repo.get("model.safetensors.index.json").is_err())
        {
            let file = repo.get("model.safetensors")?;
            let source = file.display().to_string();
            (vec![file], source)
        } else {
            let index_path = repo.get("model.safetensors.index.json").with_context(|| {
                format!(
                    "model `{}` has neither model.safetensors nor model.safetensors.index.json",
                    repo.id
                )
            })?;
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("cannot read {}", index_path.display()))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", index_path.display()))?;
            let Some(map) = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .filter(|m| !m.is_empty())
            else {
                bail!("{}: missing or empty object field `weight_map`", index_path.display());
            };
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            let files = shards.iter().map(|s| repo.get(s)).collect::<Result<Vec<_>>>()?;
            (
                files,
                format!("{} and its {} shards", index_path.display(), shards.len()),
            )
        };
        let mut w = Weights {
            files: Vec::new(),
            index: HashMap::new(),
            resident: HashMap::new(),
            device,
            kind,
            source,
            headers_only: false,
        };
        for f in files {
            w.add_file(&f)?;
        }
        Ok(w)
    }

    /// Indexes one safetensors file; its tensors replace any of the same name (a rewritten block).
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let bad = |what: String| anyhow::anyhow!("{}: not a valid safetensors file: {what}", path.display());
        let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|e| bad(format!("header length: {e}")))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
            return Err(bad(format!(
                "header length {header_len} for a file of {file_len} bytes"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)?;
        let meta: Metadata = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = 8 + header_len;
        let file_no = self.files.len();
        for (name, info) in meta.tensors() {
            let kind = tch_kind(info.dtype)
                .ok_or_else(|| bad(format!("tensor `{name}` has unsupported dtype {:?}", info.dtype)))?;
            let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
            let bytes = info
                .shape
                .iter()
                .try_fold(kind.elt_size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64));
            let (start, end) = (
                data_start + info.data_offsets.0 as u64,
                data_start + info.data_offsets.1 as u64,
            );
            if Some(end.saturating_sub(start)) != bytes || end > file_len {
                return Err(bad(format!(
                    "tensor `{name}`: offsets {:?} do not fit shape {shape:?} or the file",
                    info.data_offsets
                )));
            }
            self.resident.remove(&name);
            self.index.insert(
                name,
                Location {
                    file: file_no,
                    start,
                    end,
                    kind,
                    shape,
                },
            );
        }
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// Reads every tensor not yet in memory, in file order (one sequential pass per file).
    pub fn read_all(&mut self) -> Result<()> {
        let mut todo: Vec<(String, Location)> = self
            .index
            .iter()
            .filter(|(n, _)| !self.resident.contains_key(*n))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        todo.sort_by_key(|(_, l)| (l.file, l.start));
        for (name, loc) in todo {
            let t = self.read(&name, &loc)?;
            self.resident.insert(name, t);
        }
        Ok(())
    }

    /// One tensor from disk, in the run's dtype (floating point only) and on its device.
    fn read(&self, name: &str, loc: &Location) -> Result<Tensor> {
        let path = &self.files[loc.file];
        let t = Tensor::empty(&loc.shape, (loc.kind, Device::Cpu));
        let bytes = (loc.end - loc.start) as usize;
        // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `bytes` bytes, written only here.
        let buf = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, bytes) };
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        file.read_exact_at(buf, loc.start)
            .with_context(|| format!("{}: reading tensor `{name}`", path.display()))?;
        if !t.is_floating_point() {
            return Ok(t.to_device(self.device));
        }
        if !all_finite(&t) {
            bail!(
                "{}: tensor `{name}` holds NaN or infinite values; the checkpoint is damaged",
                path.display()
            );
        }
        let t = t.to_kind(self.kind);
        if !all_finite(&t) {
            bail!(
                "{}: tensor `{name}` holds values beyond the range of {:?} (f16 ends at ±65504); use --dtype bf16 or f32",
                path.display(),
                self.kind
            );
        }
        Ok(t.to_device(self.device))
    }

    /// The tensor `name`, which must have `shape` and a floating-point dtype; errors name the
    /// file, the tensor and what is wrong.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let (key, loc) = self.location(name)?;
        let file = self.files[loc.file].display();
        if loc.shape != shape {
            bail!(
                "{file}: tensor `{name}` has shape {:?}, config.json implies {shape:?}",
                loc.shape
            );
        }
        if !is_float(loc.kind) {
            bail!(
                "{file}: tensor `{name}` is stored as {:?}; repro needs floating-point weights (f32, f16, bf16), \
                 quantized checkpoints are not supported",
                loc.kind
            );
        }
        self.fetch(key, loc)
    }

    fn location(&self, name: &str) -> Result<(&str, &Location)> {
        self.lookup(name)
            .ok_or_else(|| anyhow::anyhow!("{}: missing weight tensor `{name}`", self.source))
    }

    fn fetch(&self, key: &str, loc: &Location) -> Result<Tensor> {
        if self.headers_only {
            return Ok(Tensor::zeros([], (self.kind, Device::Cpu)).expand(&loc.shape, false));
        }
        match self.resident.get(key) {
            Some(t) => Ok(t.shallow_clone()),
            None => self.read(key, loc),
        }
    }

    /// The same checkpoint, whose tensors are shape-only placeholders: building every block from
    /// it checks names, shapes and dtypes without reading any weight.
    pub fn headers_only(&self) -> Weights {
        Weights {
            files: self.files.clone(),
            index: self.index.clone(),
            resident: HashMap::new(),
            device: self.device,
            kind: self.kind,
            source: self.source.clone(),
            headers_only: true,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// Older OPT checkpoints store `decoder.*` where transformers names `model.decoder.*`.
    fn lookup(&self, name: &str) -> Option<(&str, &Location)> {
        let hit = |n: &str| self.index.get_key_value(n).map(|(k, l)| (k.as_str(), l));
        hit(name).or_else(|| name.strip_prefix("model.").and_then(hit))
    }

    /// Every tensor name in the checkpoint, sorted (the order checkpoints are saved in).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }

    /// Bytes of all tensors once loaded in the run's dtype.
    pub fn loaded_bytes(&self) -> u64 {
        self.index
            .values()
            .map(|l| l.shape.iter().product::<i64>() as u64 * self.loaded_kind(l).elt_size_in_bytes() as u64)
            .sum()
    }

    /// Floating-point tensors load in the run's dtype, others as stored.
    fn loaded_kind(&self, loc: &Location) -> Kind {
        if is_float(loc.kind) {
            self.kind
        } else {
            loc.kind
        }
    }

    /// Shape and dtype of the tensor `name` once loaded, without reading it.
    pub fn loaded_layout(&self, name: &str) -> Result<(Vec<i64>, Kind)> {
        let (_, loc) = self.location(name)?;
        Ok((loc.shape.clone(), self.loaded_kind(loc)))
    }

    /// The tensor under its checkpoint name, whatever its shape and dtype (for copying it as it is).
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let (key, loc) = self.location(name)?;
        self.fetch(key, loc)
    }

    /// All tensors by sorted name, sharing storage with what the model uses (resident models).
    pub fn into_named(mut self) -> Vec<(String, Tensor)> {
        self.names()
            .into_iter()
            .filter_map(|n| self.resident.remove(&n).map(|t| (n, t)))
            .collect()
    }
}

fn is_float(kind: Kind) -> bool {
    matches!(kind, Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16)
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
