//! Calibration data drawn exactly as the official Wanda code draws it: same files, same
//! Python `random` stream, same tokenization, hence the very same token windows.

pub mod pyrandom;
pub mod sample;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

use crate::data::{read_jsonl_texts, read_parquet_strings, read_text_rows};
use crate::hub::{Hub, RepoKind};
use crate::tokenizer::Tokenizer;

const C4_TRAIN_SHARD: &str = "en/c4-train.00000-of-01024.json.gz";
const WIKITEXT2_TRAIN: &str = "wikitext-2-raw-v1/train-00000-of-00001.parquet";

/// Where calibration windows come from.
#[derive(Clone, Debug, PartialEq)]
pub enum CalibSource {
    /// C4 train shard 0 (`allenai/c4` or a repo with the same file): random document, random window.
    C4 { repo: String },
    /// WikiText-2 raw train, rows joined with " ": random windows of the one token stream.
    Wikitext2 { repo: String },
    /// A local parquet (`text` column), jsonl (`text` field) or text file; rows are documents, drawn like C4.
    File { path: PathBuf },
}

impl CalibSource {
    /// `c4`, `c4:<dir|repo>`, `wikitext2`, `wikitext2:<dir|repo>`, or a file path.
    pub fn parse(spec: &str) -> CalibSource {
        match spec.split_once(':') {
            _ if spec == "c4" => CalibSource::C4 {
                repo: "allenai/c4".into(),
            },
            _ if spec == "wikitext2" => CalibSource::Wikitext2 {
                repo: "Salesforce/wikitext".into(),
            },
            Some(("c4", r)) => CalibSource::C4 { repo: r.into() },
            Some(("wikitext2", r)) => CalibSource::Wikitext2 { repo: r.into() },
            _ => CalibSource::File {
                path: PathBuf::from(spec),
            },
        }
    }

    /// The file the windows are drawn from (downloaded if need be), so that a wrong name fails
    /// before any model is loaded.
    pub fn locate(&self, hub: &Hub) -> Result<PathBuf> {
        match self {
            CalibSource::C4 { repo } => hub.repo(repo, RepoKind::Dataset).get(C4_TRAIN_SHARD),
            CalibSource::Wikitext2 { repo } => hub.repo(repo, RepoKind::Dataset).get(WIKITEXT2_TRAIN),
            CalibSource::File { path } if path.is_file() => Ok(path.clone()),
            CalibSource::File { path } => {
                bail!(
                "--calib {}: {} (use c4, c4:<dir|repo>, wikitext2, wikitext2:<dir|repo> or a text/jsonl/parquet file)",
                path.display(),
                if path.is_dir() { "a directory; name one file in it" } else { "no such file" }
            )
            }
        }
    }

    /// The file read (for run identity) and `nsamples` windows of `seqlen` token ids.
    pub fn windows(
        &self,
        hub: &Hub,
        tokenizer: &Tokenizer,
        nsamples: usize,
        seqlen: usize,
        seed: u64,
    ) -> Result<(PathBuf, Vec<Vec<i64>>)> {
        let path = self.locate(hub)?;
        let from_docs =
            |docs: Vec<String>| sample::c4_windows(docs.len(), |i| tokenizer.encode(&docs[i]), nsamples, seqlen, seed);
        let windows = match self {
            CalibSource::Wikitext2 { .. } => {
                let ids = tokenizer.encode(&read_parquet_strings(&path, "text")?.join(" "))?;
                sample::text_windows(&ids, nsamples, seqlen, seed)
            }
            CalibSource::C4 { .. } => from_docs(read_jsonl_texts(&path, None)?),
            CalibSource::File { .. } => from_docs(read_text_rows(&path)?),
        };
        let windows = windows.with_context(|| format!("calibration data {}", path.display()))?;
        Ok((path, windows))
    }
}
