//! Calibration data drawn exactly as the official Wanda code draws it: same files, same
//! Python `random` stream, same tokenization, hence the very same token windows.

pub mod pyrandom;
pub mod sample;

use anyhow::Result;
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
            _ if spec == "c4" => CalibSource::C4 { repo: "allenai/c4".into() },
            _ if spec == "wikitext2" => CalibSource::Wikitext2 { repo: "Salesforce/wikitext".into() },
            Some(("c4", r)) => CalibSource::C4 { repo: r.into() },
            Some(("wikitext2", r)) => CalibSource::Wikitext2 { repo: r.into() },
            _ => CalibSource::File { path: PathBuf::from(spec) },
        }
    }

    /// The files read (for run identity) and `nsamples` windows of `seqlen` token ids.
    pub fn windows(
        &self,
        hub: &Hub,
        tokenizer: &Tokenizer,
        nsamples: usize,
        seqlen: usize,
        seed: u64,
    ) -> Result<(PathBuf, Vec<Vec<i64>>)> {
        match self {
            CalibSource::C4 { repo } => {
                let path = hub.repo(repo, RepoKind::Dataset).get(C4_TRAIN_SHARD)?;
                let docs = read_jsonl_texts(&path, None)?;
                let w = sample::c4_windows(docs.len(), |i| tokenizer.encode(&docs[i]), nsamples, seqlen, seed)?;
                Ok((path, w))
            }
            CalibSource::Wikitext2 { repo } => {
                let path = hub.repo(repo, RepoKind::Dataset).get(WIKITEXT2_TRAIN)?;
                let ids = tokenizer.encode(&read_parquet_strings(&path, "text")?.join(" "))?;
                Ok((path.clone(), sample::text_windows(&ids, nsamples, seqlen, seed)?))
            }
            CalibSource::File { path } => {
                let docs = read_text_rows(path)?;
                let w = sample::c4_windows(docs.len(), |i| tokenizer.encode(&docs[i]), nsamples, seqlen, seed)?;
                Ok((path.clone(), w))
            }
        }
    }
}
