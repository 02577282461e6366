//! Text corpora for perplexity and calibration, read from Hugging Face dataset repos
//! (parquet through polars, C4's json.gz shards) with the same hub resolution as models.

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::hub::{Hub, RepoKind};

/// Reads one string column of a parquet file; errors name the file and the columns it has.
pub fn read_parquet_strings(path: &Path, column: &str) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let df = ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not a readable parquet file: {e}", path.display()))?;
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let col = df.column(column).map_err(|_| {
        anyhow::anyhow!("{}: no column `{column}` (columns: {})", path.display(), names.join(", "))
    })?;
    let ca = col
        .str()
        .map_err(|_| anyhow::anyhow!("{}: column `{column}` is not a string column", path.display()))?;
    Ok(ca.iter().map(|s| s.unwrap_or("").to_string()).collect())
}

const BYTE_ORDER_MARK: char = '\u{feff}';

/// Endings of the files read as JSON lines (a `text` field per line).
const JSON_LINES: [&str; 4] = [".jsonl", ".json", ".json.gz", ".jsonl.gz"];

/// The `text` field of every line of a (gzipped) JSON-lines file, as C4 shards store documents;
/// a `.json` file may also be one array of such objects.
pub fn read_jsonl_texts(path: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    if path.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let body = text.trim_start_matches(BYTE_ORDER_MARK);
        if body.trim_start().starts_with('[') {
            let rows: Vec<serde_json::Value> = serde_json::from_str(body).with_context(|| format!("{}: not a JSON array", path.display()))?;
            let texts = rows.iter().enumerate().map(|(i, v)| match v.get("text").and_then(|t| t.as_str()) {
                Some(t) => Ok(t.to_string()),
                None => bail!("{}: element {i} has no string field `text`", path.display()),
            });
            return texts.take(limit.unwrap_or(usize::MAX)).collect();
        }
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut out = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let line = line.with_context(|| format!("{}: read error at line {}", path.display(), n + 1))?;
        let line = if n == 0 { line.trim_start_matches(BYTE_ORDER_MARK).to_string() } else { line };
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {} is not JSON", path.display(), n + 1))?;
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => out.push(t.to_string()),
            None => bail!("{}: line {} has no string field `text`", path.display(), n + 1),
        }
    }
    Ok(out)
}

/// A perplexity corpus: how its documents are found and joined, as the reference code does it.
#[derive(Clone, Debug, PartialEq)]
pub enum PplCorpus {
    /// WikiText-2 raw test, rows joined with "\n\n" (Wanda / SparseGPT `get_wikitext2`).
    Wikitext2 { repo: String },
    /// C4 validation as SparseGPT defines it: first 1100 documents joined by ' ', first 256·seqlen tokens.
    C4 { repo: String },
    /// Any text: a parquet/txt/jsonl file, a directory of parquet files, or `repo-id[:file]`.
    Text { spec: String },
}

impl PplCorpus {
    /// `wikitext2`, `wikitext2:<dir|repo>`, `c4`, `c4:<dir|repo>`, or any text source.
    pub fn parse(spec: &str) -> PplCorpus {
        match spec.split_once(':') {
            _ if spec == "wikitext2" => PplCorpus::Wikitext2 { repo: "Salesforce/wikitext".into() },
            _ if spec == "c4" => PplCorpus::C4 { repo: "allenai/c4".into() },
            Some(("wikitext2", src)) => PplCorpus::Wikitext2 { repo: src.into() },
            Some(("c4", src)) => PplCorpus::C4 { repo: src.into() },
            _ => PplCorpus::Text { spec: spec.into() },
        }
    }

    /// Name used in reports and JSON (`wikitext2`, `c4`, or the spec's last path component).
    pub fn label(&self) -> String {
        match self {
            PplCorpus::Wikitext2 { .. } => "wikitext2".into(),
            PplCorpus::C4 { .. } => "c4".into(),
            PplCorpus::Text { spec } => spec
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(spec)
                .split(':')
                .next()
                .unwrap_or(spec)
                .to_string(),
        }
    }

    /// The files this corpus reads (downloaded if need be), so that a wrong name fails before
    /// any model is loaded or pruned.
    pub fn locate(&self, hub: &Hub) -> Result<Vec<PathBuf>> {
        match self {
            PplCorpus::Wikitext2 { repo } => Ok(vec![hub.repo(repo, RepoKind::Dataset).get(WIKITEXT2_TEST)?]),
            PplCorpus::C4 { repo } => Ok(vec![hub.repo(repo, RepoKind::Dataset).get(C4_VALIDATION)?]),
            PplCorpus::Text { spec } => resolve_text_files(hub, spec),
        }
    }

    /// The token ids to cut into windows. `seqlen` matters only for C4's truncation.
    pub fn token_ids(
        &self,
        hub: &Hub,
        seqlen: usize,
        encode: &dyn Fn(&str) -> Result<Vec<i64>>,
    ) -> Result<Vec<i64>> {
        let files = self.locate(hub)?;
        let first = &files[0];
        match self {
            PplCorpus::Wikitext2 { .. } => encode(&non_empty(read_parquet_strings(first, "text")?, first)?.join("\n\n")),
            PplCorpus::C4 { .. } => {
                let mut ids = encode(&non_empty(read_jsonl_texts(first, Some(1100))?, first)?.join(" "))?;
                ids.truncate(256 * seqlen);
                Ok(ids)
            }
            PplCorpus::Text { .. } => {
                let mut rows = Vec::new();
                for f in &files {
                    rows.extend(read_text_rows(f)?);
                }
                encode(&non_empty(rows, first)?.join("\n\n"))
            }
        }
    }
}

const WIKITEXT2_TEST: &str = "wikitext-2-raw-v1/test-00000-of-00001.parquet";
const C4_VALIDATION: &str = "en/c4-validation.00000-of-00008.json.gz";

/// Report labels for perplexity specs, in order: [`PplCorpus::label`], or the whole spec where
/// two different specs would share one (`a/test.txt` and `b/test.txt`).
pub fn ppl_labels(specs: &[String]) -> Vec<String> {
    let short: Vec<String> = specs.iter().map(|s| PplCorpus::parse(s).label()).collect();
    short
        .iter()
        .zip(specs)
        .map(|(label, spec)| match short.iter().filter(|l| *l == label).count() {
            1 => label.clone(),
            _ => spec.clone(),
        })
        .collect()
}

fn non_empty(rows: Vec<String>, path: &Path) -> Result<Vec<String>> {
    if rows.is_empty() {
        bail!("{}: the dataset has no rows", path.display());
    }
    Ok(rows)
}

/// Rows of a text file: parquet `text` column, jsonl `text` fields, or a plain text file as one row.
pub fn read_text_rows(path: &Path) -> Result<Vec<String>> {
    let name = path.to_string_lossy();
    if name.ends_with(".parquet") {
        read_parquet_strings(path, "text")
    } else if JSON_LINES.iter().any(|e| name.ends_with(e)) {
        read_jsonl_texts(path, None)
    } else {
        Ok(vec![std::fs::read_to_string(path)
            .with_context(|| format!("cannot read text file {}", path.display()))?])
    }
}

/// Files of a text source: a file, a directory (its parquet files, test split preferred),
/// or a dataset repo id with an optional `:file` inside it.
pub fn resolve_text_files(hub: &Hub, spec: &str) -> Result<Vec<PathBuf>> {
    if spec.trim().is_empty() {
        bail!("an empty corpus name: use wikitext2, c4, a text file or a dataset repo id");
    }
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    let looks_like_file = JSON_LINES.iter().chain(&[".txt", ".parquet"]).any(|e| spec.ends_with(e));
    if looks_like_file && !spec.contains(':') {
        bail!("{spec}: no such file");
    }
    let (id, file) = match spec.split_once(':') {
        Some((id, f)) => (id, Some(f)),
        None => (spec, None),
    };
    let repo = hub.repo(id, RepoKind::Dataset);
    if let Some(f) = file {
        return Ok(vec![repo.get(f)?]);
    }
    let Some(dir) = repo.local_dir() else {
        bail!(
            "`{id}` is not a known corpus (wikitext2, c4), a local file or directory, nor a dataset repo found \
             locally; to read a file of a hub dataset repo, name it as `{id}:<path/to/file.parquet>`"
        );
    };
    let mut files = Vec::new();
    collect_parquet(dir, &mut files)?;
    files.sort();
    let tests: Vec<PathBuf> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test")))
        .cloned()
        .collect();
    let chosen = if tests.is_empty() { files } else { tests };
    if chosen.is_empty() {
        bail!("{}: no parquet files found; name a file as `{id}:<file>`", dir.display());
    }
    Ok(chosen)
}

fn collect_parquet(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_parquet(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_specs() {
        assert_eq!(PplCorpus::parse("wikitext2"), PplCorpus::Wikitext2 { repo: "Salesforce/wikitext".into() });
        assert_eq!(PplCorpus::parse("c4:/x/y"), PplCorpus::C4 { repo: "/x/y".into() });
        assert_eq!(PplCorpus::parse("books-heldout").label(), "books-heldout");
        assert_eq!(PplCorpus::parse("../d/books-heldout/").label(), "books-heldout");
        let specs = ["wikitext2", "a/test.txt", "b/test.txt", "books-heldout"].map(String::from);
        assert_eq!(ppl_labels(&specs), ["wikitext2", "a/test.txt", "b/test.txt", "books-heldout"]);
        assert_eq!(ppl_labels(&specs[..2]), ["wikitext2", "test.txt"]);
    }

    #[test]
    fn empty_and_bad_inputs_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.jsonl");
        std::fs::write(&p, "{\"title\": 1}\n").unwrap();
        let e = read_jsonl_texts(&p, None).unwrap_err().to_string();
        assert!(e.contains("a.jsonl") && e.contains("`text`"), "{e}");
        let hub = Hub::default();
        let e = PplCorpus::parse(tmp.path().join("empty.txt").to_str().unwrap())
            .token_ids(&hub, 8, &|_| Ok(vec![]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("empty.txt"), "{e:#}");
        // JSON lines saved as .json (with a byte-order mark), or one JSON array, read as documents.
        let lines = tmp.path().join("lines.json");
        std::fs::write(&lines, "\u{feff}{\"text\": \"a\"}\r\n{\"text\": \"b\"}\n").unwrap();
        assert_eq!(read_text_rows(&lines).unwrap(), ["a", "b"]);
        let array = tmp.path().join("array.json");
        std::fs::write(&array, "[{\"text\": \"a\"}, {\"text\": \"b\"}]").unwrap();
        assert_eq!(read_text_rows(&array).unwrap(), ["a", "b"]);
        let e = PplCorpus::parse("/nowhere/heldout.txt").locate(&hub).unwrap_err().to_string();
        assert!(e.contains("/nowhere/heldout.txt: no such file"), "{e}");
        let e = PplCorpus::parse("").locate(&hub).unwrap_err().to_string();
        assert!(e.contains("empty corpus name"), "{e}");
    }
}
