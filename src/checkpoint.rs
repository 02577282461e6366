//! Writes a (pruned) model as a Hugging Face checkpoint that transformers loads as it is.

use anyhow::{bail, Context, Result};
use std::path::Path;

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
        let tensors: Vec<(&str, tch::Tensor)> = loaded
            .model
            .stack()
            .tensors()
            .iter()
            .map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu).contiguous()))
            .collect();
        let path = dir.join("model.safetensors");
        let partial = dir.join("model.safetensors.partial");
        tch::Tensor::write_safetensors(&tensors, &partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("cannot write {}", path.display()))?;
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
