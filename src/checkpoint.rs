//! Writes a (pruned) model as a Hugging Face checkpoint that transformers loads as it is.

use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::device::dtype_name;
use crate::model::Loaded;

const COPIED_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
];

/// config.json (dtype updated), the weights with the pruned zeros (model.safetensors for a
/// resident model, one shard per block plus an index for a streamed one), the tokenizer and
/// generation files of the source repo, and `provenance` as repro.json, written last: a
/// directory with a repro.json holds a complete save.
pub fn save(loaded: &mut Loaded, dir: &Path, provenance: &serde_json::Value) -> Result<()> {
    check_target(dir, loaded.model.stack().is_streamed())?;
    remove_if_present(&dir.join(PROVENANCE))?;
    let mut config = loaded.config.clone();
    let torch_dtype = match dtype_name(loaded.model.kind()) {
        "f16" => "float16",
        "bf16" => "bfloat16",
        _ => "float32",
    };
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), torch_dtype.into());
        if obj.contains_key("dtype") {
            obj.insert("dtype".into(), torch_dtype.into());
        }
    }
    write(dir, "config.json", &serde_json::to_string_pretty(&config)?)?;
    if let Some(streamed) = loaded.model.stack_mut().streamed_mut() {
        streamed.save(dir)?;
    } else {
        let tensors = loaded.model.stack().tensors();
        let layout: Vec<_> = tensors.iter().map(|(n, t)| (n.clone(), t.size(), t.kind())).collect();
        write_safetensors(&dir.join("model.safetensors"), &layout, |i| {
            Ok(tensors[i].1.shallow_clone())
        })?;
    }
    for f in COPIED_FILES {
        if loaded.repo.has_local(f) {
            let src = loaded.repo.get(f)?;
            let dest = dir.join(f);
            // A read-only copy from an earlier save (hub files are read-only) would refuse the new one.
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(&src, &dest)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dir.display()))?;
        }
    }
    write(dir, PROVENANCE, &serde_json::to_string_pretty(provenance)?)
}

const PROVENANCE: &str = "repro.json";

/// A checkpoint repro saved, as loaded again: its sparsity, and what changed since the save.
pub struct SavedSparsity {
    /// Zeros over every block's linear layers, as loaded.
    pub sparsity: f64,
    /// Names the layers whose zeros differ from those repro.json records.
    pub warning: Option<String>,
}

/// Checks a loaded checkpoint that repro saved (it has a repro.json) against the zeros its save
/// recorded, layer by layer. A checkpoint re-saved dense by another tool, or fine-tuned without its
/// masks, would otherwise be evaluated as if it were the pruned model. `None` for other checkpoints.
pub fn check_saved_sparsity(loaded: &Loaded) -> Result<Option<SavedSparsity>> {
    if !loaded.repo.has_local(PROVENANCE) {
        return Ok(None);
    }
    let path = loaded.repo.get(PROVENANCE)?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let saved: crate::run_result::RunResult = serde_json::from_str(&text)
        .with_context(|| format!("{}: not the repro.json `repro prune --save` writes", path.display()))?;
    let model = loaded.model.as_ref();
    let stack = model.stack();
    let mut layers = Vec::new();
    for b in 0..stack.n_blocks() {
        let name = format!("{}{b}", model.info().block_prefix);
        layers.extend(crate::prune::block_sparsity(
            &name,
            &*stack.block(b)?,
            &Default::default(),
            0.0,
        ));
    }
    let (zeros, numel) = layers.iter().fold((0, 0), |(z, n), l| (z + l.zeros, n + l.numel));
    let changed: Vec<(&str, String, i64)> = saved
        .layers
        .iter()
        .filter_map(|s| {
            let now = layers.iter().find(|l| l.name == s.name).map(|l| l.zeros);
            (now != Some(s.zeros)).then(|| {
                (
                    s.name.as_str(),
                    now.map_or("no such layer".into(), |z| format!("{z} zeros")),
                    s.zeros,
                )
            })
        })
        .collect();
    let warning = changed.first().map(|(name, now, then)| {
        format!(
            "{}: {} of {} pruned layers hold other zeros than when repro saved them ({name}: {now}, saved with {then}); the weights were changed since (re-saved dense by another tool? fine-tuned without the masks?), so these results are not those of the recorded pruning",
            path.display(),
            changed.len(),
            saved.layers.len()
        )
    });
    Ok(Some(SavedSparsity {
        sparsity: zeros as f64 / numel.max(1) as f64,
        warning,
    }))
}

/// Creates the save directory, or refuses it, before any work is done: a path that is not a
/// directory or not writable, or weights of the other layout from an earlier save (a resident
/// model writes model.safetensors, a streamed one shards and an index), which loaders would mix up.
pub fn check_target(dir: &Path, streamed: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--save {}: exists and is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--save {}: cannot create the directory", dir.display()))?;
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("--save {}: cannot write in this directory", dir.display()))?;
    let (stale, layout) = match streamed {
        true => ("model.safetensors", "the sharded checkpoint a streamed model writes"),
        false => (
            "model.safetensors.index.json",
            "the single model.safetensors a resident model writes",
        ),
    };
    if dir.join(stale).exists() {
        bail!(
            "--save {}: holds a {stale} from an earlier save that would be mixed up with {layout}; remove it or save elsewhere",
            dir.display()
        );
    }
    Ok(())
}

/// A streamed model writes its shards while it is pruned, over an earlier save's: that save's
/// repro.json, index and shards are removed first, so an interrupted run never leaves a
/// directory that looks like a complete checkpoint mixing two models.
pub fn begin_streamed_save(dir: &Path) -> Result<()> {
    check_target(dir, true)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_shard = name.starts_with("model-") && name.contains("-of-") && name.ends_with(".safetensors");
        if is_shard || name == PROVENANCE || name == "model.safetensors.index.json" {
            remove_if_present(&path)?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
}

/// Writes a safetensors file of the tensors named in `layout` (name, shape, dtype), asking
/// `tensor(i)` for the i-th one only when its bytes are due and writing them straight from its
/// storage: a shard of embeddings and head is written holding one of them, with no copy. The
/// file appears under its name (a rename) once complete.
pub fn write_safetensors(
    path: &Path,
    layout: &[(String, Vec<i64>, Kind)],
    mut tensor: impl FnMut(usize) -> Result<Tensor>,
) -> Result<()> {
    let partial = path.with_file_name(format!(
        "{}.partial",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    let mut header = serde_json::Map::new();
    // transformers refuses safetensors files whose metadata names no known framework.
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape, kind) in layout {
        let bytes = shape.iter().product::<i64>() as usize * kind.elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": safetensors_dtype(*kind)?, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_vec(&header)?;
    // Data starts 8-byte aligned, as the format asks.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut write = || -> Result<()> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&partial)?);
        out.write_all(&(text.len() as u64).to_le_bytes())?;
        out.write_all(&text)?;
        for (i, (name, shape, kind)) in layout.iter().enumerate() {
            let t = tensor(i)?.to_device(Device::Cpu).contiguous();
            ensure!(
                t.size() == *shape && t.kind() == *kind,
                "tensor `{name}` is {:?} {:?}, not the {kind:?} {shape:?} announced",
                t.kind(),
                t.size()
            );
            with_bytes(&t, |data| Ok(out.write_all(data)?))?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Calls `f` with the bytes of `t` (copied to the CPU and made contiguous only when needed).
pub fn with_bytes<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
    let t = t.to_device(Device::Cpu).contiguous();
    let bytes = t.numel() * t.kind().elt_size_in_bytes();
    // SAFETY: `t` is a contiguous CPU tensor of `bytes` bytes, alive while the slice is read.
    f(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, bytes) })
}

fn safetensors_dtype(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        other => bail!("a tensor of dtype {other:?} cannot be saved as safetensors"),
    })
}
