//! Writes a (pruned) model as a Hugging Face checkpoint that transformers loads as it is.

use anyhow::{bail, Context, Result};
use std::path::Path;

use crate::device::dtype_name;
use crate::model::Loaded;

const COPIED_FILES: [&str; 5] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "generation_config.json"];

/// config.json (dtype updated), the weights with the pruned zeros (model.safetensors for a
/// resident model, one shard per block plus an index for a streamed one), the tokenizer and
/// generation files of the source repo, and `provenance` as repro.json.
pub fn save(loaded: &mut Loaded, dir: &Path, provenance: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
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
        if dir.join("model.safetensors.index.json").exists() {
            bail!(
                "{}: holds a model.safetensors.index.json (an earlier sharded save?) that would confuse loaders; \
                 remove it or save elsewhere",
                dir.display()
            );
        }
        let tensors: Vec<(&str, tch::Tensor)> = loaded
            .model
            .stack()
            .tensors()
            .iter()
            .map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu).contiguous()))
            .collect();
        let path = dir.join("model.safetensors");
        tch::Tensor::write_safetensors(&tensors, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    for f in COPIED_FILES {
        if loaded.repo.has_local(f) {
            let src = loaded.repo.get(f)?;
            let dest = dir.join(f);
            // A read-only copy from an earlier save (hub files are read-only) would refuse the new one.
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(&src, &dest).with_context(|| format!("cannot copy {} to {}", src.display(), dir.display()))?;
        }
    }
    write(dir, "repro.json", &serde_json::to_string_pretty(provenance)?)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
}
