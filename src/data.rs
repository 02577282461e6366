//! Text corpora for perplexity and calibration, read from Hugging Face dataset repos
//! (parquet through polars, C4's json.gz shards) with the same hub resolution as models.

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use std::collections::HashSet;
use std::io::{BufRead, Read};
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
        anyhow::anyhow!(
            "{}: no column `{column}` (columns: {})",
            path.display(),
            names.join(", ")
        )
    })?;
    let ca = col.str().map_err(|_| {
        anyhow::anyhow!(
            "{}: column `{column}` holds {}, not strings",
            path.display(),
            col.dtype()
        )
    })?;
    Ok(ca.iter().map(|s| s.unwrap_or("").to_string()).collect())
}

const BYTE_ORDER_MARK: char = '\u{feff}';

/// How a local text file is read, decided by its name's ending (case-insensitive, `.gz` allowed
/// except on parquet).
#[derive(Clone, Copy, Debug, PartialEq)]
enum TextFormat {
    /// A `text` column.
    Parquet,
    /// A `text` field per line; a `.json` file may also be one array of such objects.
    JsonLines { array_allowed: bool },
    /// The whole file is one document.
    Plain,
}

const SUPPORTED: &str = "parquet (a `text` column), JSON lines (.jsonl/.ndjson/.json, a `text` field per line, \
                         optionally .gz) or plain text (any other name, optionally .gz)";

fn lower_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

fn is_gzip(path: &Path) -> bool {
    lower_name(path).ends_with(".gz")
}

fn text_format(path: &Path) -> Result<TextFormat> {
    let name = lower_name(path);
    let inner = name.strip_suffix(".gz").unwrap_or(&name);
    let ext = inner.rsplit_once('.').map_or("", |(_, e)| e);
    Ok(match ext {
        "parquet" if inner == name => TextFormat::Parquet,
        "jsonl" | "ndjson" => TextFormat::JsonLines { array_allowed: false },
        "json" => TextFormat::JsonLines { array_allowed: true },
        "parquet" | "csv" | "tsv" | "arrow" | "zip" | "bz2" | "xz" | "zst" | "7z" | "tar" => {
            bail!(
                "{}: .{ext}{} files are not read; use {SUPPORTED}",
                path.display(),
                if inner == name { "" } else { ".gz" }
            )
        }
        _ => TextFormat::Plain,
    })
}

/// A buffered reader of the file's bytes, gunzipped when its name ends in `.gz`.
fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(match is_gzip(path) {
        true => Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file))),
        false => Box::new(std::io::BufReader::new(file)),
    })
}

/// A file's bytes as UTF-8 text, gunzipped when its name ends in `.gz`.
fn read_text_file(path: &Path) -> Result<String> {
    let mut reader = open_text(path)?;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e}); {SUPPORTED}", path.display()))
}

/// The `text` field of every line of a (gzipped) JSON-lines file, as C4 shards store documents;
/// a `.json` file may also be one array of such objects.
pub fn read_jsonl_texts(path: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    let read_err = || format!("cannot read {}", path.display());
    let mut reader = open_text(path)?;
    let mut first = String::new();
    reader.read_line(&mut first).with_context(read_err)?;
    let first = first.trim_start_matches(BYTE_ORDER_MARK).to_string();
    if text_format(path)? == (TextFormat::JsonLines { array_allowed: true }) && first.trim_start().starts_with('[') {
        let mut body = first;
        reader.read_to_string(&mut body).with_context(read_err)?;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&body).with_context(|| format!("{}: not a JSON array", path.display()))?;
        let texts = rows
            .iter()
            .enumerate()
            .map(|(i, v)| match v.get("text").and_then(|t| t.as_str()) {
                Some(t) => Ok(t.to_string()),
                None => bail!("{}: element {i} has no string field `text`", path.display()),
            });
        return texts.take(limit.unwrap_or(usize::MAX)).collect();
    }
    let first = first.trim_end_matches(['\n', '\r']).to_string();
    let mut out = Vec::new();
    for (n, line) in std::iter::once(Ok(first)).chain(reader.lines()).enumerate() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let line = line.with_context(|| format!("{}: read error at line {}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}: line {} is not JSON (JSON lines hold one object per line; a .json file may also be one array)",
                path.display(),
                n + 1
            )
        })?;
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
            _ if spec == "wikitext2" => PplCorpus::Wikitext2 {
                repo: "Salesforce/wikitext".into(),
            },
            _ if spec == "c4" => PplCorpus::C4 {
                repo: "allenai/c4".into(),
            },
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
    pub fn token_ids(&self, hub: &Hub, seqlen: usize, encode: &dyn Fn(&str) -> Result<Vec<i64>>) -> Result<Vec<i64>> {
        let files = self.locate(hub)?;
        let first = &files[0];
        match self {
            PplCorpus::Wikitext2 { .. } => {
                encode(&non_empty(read_parquet_strings(first, "text")?, first)?.join("\n\n"))
            }
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
    match text_format(path)? {
        TextFormat::Parquet => read_parquet_strings(path, "text"),
        TextFormat::JsonLines { .. } => read_jsonl_texts(path, None),
        TextFormat::Plain => match read_text_file(path)? {
            text if text.trim().is_empty() => bail!("{}: the file holds no text", path.display()),
            text => Ok(vec![text
                .strip_prefix(BYTE_ORDER_MARK)
                .map(str::to_string)
                .unwrap_or(text)]),
        },
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
        text_format(p)?;
        return Ok(vec![p.to_path_buf()]);
    }
    let looks_like_file = [".txt", ".parquet", ".jsonl", ".ndjson", ".json", ".gz"]
        .iter()
        .any(|e| lower_name(p).ends_with(e));
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
    if let Some(dir) = repo
        .local_dir()
        .map(Path::to_path_buf)
        .or_else(|| repo.cached_snapshot())
    {
        let rel = |f: &Path| f.strip_prefix(&dir).unwrap_or(f).to_string_lossy().into_owned();
        let files = files_under(&dir)?.iter().map(|f| rel(f)).collect();
        let chosen = one_split(id, files)?;
        return Ok(chosen.iter().map(|f| dir.join(f)).collect());
    }
    let files = repo.hub_files().with_context(|| {
        format!(
            "`{id}` is not a known corpus (wikitext2, c4), a local file or directory, nor a dataset repo found \
             locally (mirror or HF cache), and listing it on the hub failed; to read a file of a dataset repo, \
             name it as `{id}:<path/to/file.parquet>`"
        )
    })?;
    one_split(id, files)?.iter().map(|f| repo.get(f)).collect()
}

/// The parquet files (paths relative to the repo) a dataset repo is read as: the shards of one
/// split in one folder, the test split when there is one. Two configs or splits would be mixed
/// into one corpus, so they are refused with the choice to make.
fn one_split(id: &str, files: Vec<String>) -> Result<Vec<String>> {
    let files: Vec<String> = files
        .into_iter()
        .filter(|f| f.to_lowercase().ends_with(".parquet"))
        .collect();
    let split = |f: &str| {
        let (folder, name) = f.rsplit_once('/').unwrap_or(("", f));
        (
            folder.to_string(),
            name.split(['-', '.']).next().unwrap_or_default().to_string(),
        )
    };
    let tests: Vec<String> = files.iter().filter(|f| split(f).1 == "test").cloned().collect();
    let chosen = if tests.is_empty() { files } else { tests };
    let Some(first) = chosen.first() else {
        bail!("`{id}` holds no parquet files; name a file as `{id}:<file>`");
    };
    if let Some(other) = chosen.iter().find(|f| split(f) != split(first)) {
        bail!("`{id}` holds more than one test set or split ({first} and {other}, ...); name the one to use as `{id}:{first}`");
    }
    Ok(chosen)
}

/// Every file under `dir`, sorted, hidden entries skipped (a download's `.cache`). A directory
/// reached again through a symbolic link is walked once, so a link loop ends.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
        if !seen.insert(
            dir.canonicalize()
                .with_context(|| format!("cannot read {}", dir.display()))?,
        ) {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            if path.is_dir() {
                walk(&path, seen, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut HashSet::new(), &mut files)?;
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_specs() {
        assert_eq!(
            PplCorpus::parse("wikitext2"),
            PplCorpus::Wikitext2 {
                repo: "Salesforce/wikitext".into()
            }
        );
        assert_eq!(PplCorpus::parse("c4:/x/y"), PplCorpus::C4 { repo: "/x/y".into() });
        assert_eq!(PplCorpus::parse("books-heldout").label(), "books-heldout");
        assert_eq!(PplCorpus::parse("../d/books-heldout/").label(), "books-heldout");
        let specs = ["wikitext2", "a/test.txt", "b/test.txt", "books-heldout"].map(String::from);
        assert_eq!(
            ppl_labels(&specs),
            ["wikitext2", "a/test.txt", "b/test.txt", "books-heldout"]
        );
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
        let e = PplCorpus::parse("/nowhere/heldout.txt")
            .locate(&hub)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nowhere/heldout.txt: no such file"), "{e}");
        let e = PplCorpus::parse("").locate(&hub).unwrap_err().to_string();
        assert!(e.contains("empty corpus name"), "{e}");
    }

    fn gzip(path: &Path, text: &str) {
        use std::io::Write;
        let mut gz =
            flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap();
    }

    #[test]
    fn file_formats_follow_the_name_case_insensitively() {
        let tmp = tempfile::tempdir().unwrap();
        let at = |name: &str| tmp.path().join(name);
        let lines = "{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
        for name in ["UPPER.JSONL", "x.ndjson", "x.Json"] {
            std::fs::write(at(name), lines).unwrap();
            assert_eq!(read_text_rows(&at(name)).unwrap(), ["a", "b"], "{name}");
        }
        gzip(&at("lines.jsonl.gz"), lines);
        assert_eq!(read_text_rows(&at("lines.jsonl.gz")).unwrap(), ["a", "b"]);
        gzip(&at("array.json.gz"), "[{\"text\": \"a\"}]");
        assert_eq!(read_text_rows(&at("array.json.gz")).unwrap(), ["a"]);
        gzip(&at("plain.txt.gz"), "one document\n");
        assert_eq!(read_text_rows(&at("plain.txt.gz")).unwrap(), ["one document\n"]);
        std::fs::write(at("notes.md"), "\u{feff}# plain text\n").unwrap();
        assert_eq!(
            read_text_rows(&at("notes.md")).unwrap(),
            ["# plain text\n"],
            "byte-order mark dropped"
        );
        for name in ["table.csv", "rows.parquet.gz", "pack.zip"] {
            std::fs::write(at(name), "x").unwrap();
            let e = read_text_rows(&at(name)).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("are not read; use parquet"), "{e}");
        }
        std::fs::write(at("latin1.txt"), b"caf\xe9").unwrap();
        let e = read_text_rows(&at("latin1.txt")).unwrap_err().to_string();
        assert!(e.contains("latin1.txt: not UTF-8 text"), "{e}");
        std::fs::write(at("pretty.json"), "{\n  \"text\": \"a\"\n}\n").unwrap();
        let e = format!("{:#}", read_text_rows(&at("pretty.json")).unwrap_err());
        assert!(
            e.contains("line 1 is not JSON (JSON lines hold one object per line"),
            "{e}"
        );
    }

    #[test]
    fn directory_corpora_take_one_split_and_survive_link_loops() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::default();
        let dir = |name: &str, files: &[&str]| {
            let d = tmp.path().join(name);
            for f in files {
                std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
                std::fs::write(d.join(f), "").unwrap();
            }
            d
        };
        let resolve = |d: &Path| resolve_text_files(&hub, d.to_str().unwrap());
        let looped = dir("looped", &["test-00000-of-00001.parquet", "sub/.cache/test.parquet"]);
        std::os::unix::fs::symlink(".", looped.join("self")).unwrap();
        std::os::unix::fs::symlink(&looped, looped.join("sub/back")).unwrap();
        assert_eq!(resolve(&looped).unwrap(), [looped.join("test-00000-of-00001.parquet")]);
        let shards = dir(
            "shards",
            &["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"],
        );
        assert_eq!(resolve(&shards).unwrap().len(), 2);
        let prefers_test = dir("prefers", &["train.parquet", "test.parquet"]);
        assert_eq!(resolve(&prefers_test).unwrap(), [prefers_test.join("test.parquet")]);
        for (name, files) in [
            (
                "configs",
                ["a/test-00000-of-00001.parquet", "b/test-00000-of-00001.parquet"],
            ),
            ("splits", ["train.parquet", "validation.parquet"]),
        ] {
            let d = dir(name, &files);
            let e = resolve(&d).unwrap_err().to_string();
            assert!(
                e.contains("more than one test set or split") && e.contains(files[0]) && e.contains(files[1]),
                "{e}"
            );
        }
    }
}
