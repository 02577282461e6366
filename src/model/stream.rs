//! Streamed models, for checkpoints near or above host memory: blocks are read from the
//! checkpoint one at a time; an edited (pruned) block is written out as one shard of a Hugging
//! Face sharded checkpoint and read back from there, so pruning, saving and evaluating never
//! hold more than one block's weights.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::Tensor;

use super::{BlockLoader, DecoderBlock, Weights};

pub struct Streamed {
    weights: Weights,
    load: BlockLoader,
    /// Names of block `i`'s tensors start with `{prefix}{i}.` (or without `model.`, older OPT).
    prefix: &'static str,
    n_blocks: usize,
    /// Where written shards go; a temporary directory unless a save directory was named.
    dir: Option<PathBuf>,
    /// A temporary directory of pruned blocks (as large as the pruned model), when no save
    /// directory was named.
    temp: Option<crate::scratch::ScratchDir>,
    /// Where that temporary directory goes (`--scratch`, else `$TMPDIR`).
    scratch: PathBuf,
    /// Blocks whose shard is in `dir`.
    written: BTreeSet<usize>,
}

impl Streamed {
    pub fn new(weights: Weights, load: BlockLoader, prefix: &'static str, n_blocks: usize) -> Self {
        Streamed {
            weights,
            load,
            prefix,
            n_blocks,
            dir: None,
            temp: None,
            scratch: std::env::temp_dir(),
            written: BTreeSet::new(),
        }
    }

    /// The checkpoint's tensors (pruned blocks as written).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    pub fn read(&self, i: usize) -> Result<Box<dyn DecoderBlock>> {
        (self.load)(&self.weights, i)
    }

    /// Pruned blocks that are not saved go to a temporary directory in `dir`.
    pub fn set_scratch(&mut self, dir: &Path) {
        self.scratch = dir.to_path_buf();
    }

    /// Shards written from now on go to `dir` (checked by `checkpoint::check_target`).
    pub fn set_dir(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if self.dir.as_deref() != Some(dir) {
            self.dir = Some(dir.to_path_buf());
            self.written.clear();
        }
        Ok(())
    }

    fn shard_name(&self, k: usize) -> String {
        format!("model-{:05}-of-{:05}.safetensors", k + 1, self.n_blocks + 1)
    }

    /// The checkpoint names of block `i`'s tensors with the part after the block prefix.
    fn block_names(&self, i: usize) -> Vec<(String, String)> {
        let full = format!("{}{i}.", self.prefix);
        let short = full.strip_prefix("model.").unwrap_or(&full).to_string();
        self.weights
            .names()
            .into_iter()
            .filter_map(|n| {
                let rest = n.strip_prefix(&full).or_else(|| n.strip_prefix(&short))?.to_string();
                Some((n, rest))
            })
            .collect()
    }

    /// Writes block `i` (its linear weights as edited, everything else as loaded) as one shard,
    /// atomically, and reads the block from there from now on.
    pub fn write(&mut self, i: usize, block: &dyn DecoderBlock) -> Result<()> {
        if self.dir.is_none() {
            let temp = crate::scratch::ScratchDir::new(
                &self.scratch,
                TEMP_PREFIX,
                "streamed blocks (use --scratch or TMPDIR for a disk with room for the model)",
            )?;
            self.dir = Some(temp.path().to_path_buf());
            self.temp = Some(temp);
        }
        let dir = self.dir.clone().expect("set above");
        let linears: BTreeMap<String, &Tensor> = block
            .linears()
            .into_iter()
            .map(|(n, l)| (format!("{n}.weight"), &l.weight))
            .collect();
        let mut tensors = Vec::new();
        for (name, rest) in self.block_names(i) {
            let t = match linears.get(&rest) {
                Some(w) => w.shallow_clone(),
                None => self.weights.get_any(&name)?,
            };
            tensors.push((name, t));
        }
        let layout: Vec<_> = tensors.iter().map(|(n, t)| (n.clone(), t.size(), t.kind())).collect();
        let path = dir.join(self.shard_name(i));
        crate::checkpoint::write_safetensors(&path, &layout, |k| Ok(tensors[k].1.shallow_clone()))?;
        self.weights.add_file(&path)?;
        self.written.insert(i);
        Ok(())
    }

    /// Completes a sharded checkpoint in `dir`: every block not written there yet, then the
    /// remaining tensors (embeddings, final norm, head) as the last shard, and the index.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        self.set_dir(dir)?;
        for i in 0..self.n_blocks {
            if !self.written.contains(&i) {
                let block = self.read(i)?;
                self.write(i, block.as_ref())?;
            }
        }
        let in_blocks: BTreeMap<String, usize> = (0..self.n_blocks)
            .flat_map(|i| self.block_names(i).into_iter().map(move |(n, _)| (n, i)))
            .collect();
        let rest: Vec<String> = self
            .weights
            .names()
            .into_iter()
            .filter(|n| !in_blocks.contains_key(n))
            .collect();
        // Embeddings and head are read one at a time as they are written, not held together.
        let layout = rest
            .iter()
            .map(|n| {
                let (shape, kind) = self.weights.loaded_layout(n)?;
                Ok((n.clone(), shape, kind))
            })
            .collect::<Result<Vec<_>>>()?;
        let last = self.shard_name(self.n_blocks);
        let path = dir.join(&last);
        crate::checkpoint::write_safetensors(&path, &layout, |k| self.weights.get_any(&rest[k]))?;
        self.weights.add_file(&path)?;
        let mut weight_map = serde_json::Map::new();
        for n in self.weights.names() {
            let file = in_blocks.get(&n).map_or(last.clone(), |&i| self.shard_name(i));
            weight_map.insert(n, file.into());
        }
        let index = serde_json::json!({
            "metadata": {"total_size": self.weights.loaded_bytes()},
            "weight_map": weight_map,
        });
        let path = dir.join("model.safetensors.index.json");
        crate::sweep::store::write_atomic(&path, serde_json::to_string_pretty(&index)?.as_bytes())?;
        Ok(())
    }
}

/// Streamed blocks' temporary directories are named `repro-blocks-{pid}-*`.
const TEMP_PREFIX: &str = "repro-blocks-";
