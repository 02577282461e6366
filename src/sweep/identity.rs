//! What a run's numbers depend on besides its settings: the exact model and data files. Local
//! files are identified by content (SHA-256, cached by path, size and mtime so each file is read
//! once); hub repos by their commit: the one the Hugging Face cache holds, or else the one the
//! hub serves now (asked without downloading).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::calib::CalibSource;
use crate::config::RunSpec;
use crate::data::PplCorpus;
use crate::eval::tasks::{task, ALL_TASKS};
use crate::hub::{Hub, RepoKind};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CachedHash {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// Content hashes of files already read, persisted in the sweep directory.
pub struct Fingerprinter {
    file: PathBuf,
    cache: BTreeMap<String, CachedHash>,
    /// Repo identities (or why there is none) already worked out in this process: a sweep names
    /// the same few repos in many runs, and asking the hub once per repo is enough.
    repos: BTreeMap<(String, bool), Result<Value, String>>,
}

impl Fingerprinter {
    pub fn open(file: PathBuf) -> Fingerprinter {
        let cache = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Fingerprinter {
            file,
            cache,
            repos: BTreeMap::new(),
        }
    }

    pub fn save(&self) -> Result<()> {
        super::store::write_atomic(&self.file, &serde_json::to_vec_pretty(&self.cache)?)
    }

    /// SHA-256 of a file's content.
    pub fn file(&mut self, path: &Path) -> Result<String> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let key = path
            .canonicalize()
            .unwrap_or_else(|_| path.to_path_buf())
            .to_string_lossy()
            .into_owned();
        if let Some(c) = self
            .cache
            .get(&key)
            .filter(|c| c.size == meta.len() && c.mtime_ns == mtime_ns)
        {
            return Ok(c.sha256.clone());
        }
        let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let sha256 = hex(&h.finalize());
        self.cache.insert(
            key,
            CachedHash {
                size: meta.len(),
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        Ok(sha256)
    }

    /// A file or a directory tree by content (relative names and contents; hidden entries skipped),
    /// not by location, so moving a mirror keeps its results.
    pub fn path(&mut self, path: &Path) -> Result<Value> {
        if path.is_file() {
            return Ok(json!({"sha256": self.file(path)?}));
        }
        let files = crate::data::files_under(path)?;
        let mut h = Sha256::new();
        for f in &files {
            let rel = f.strip_prefix(path).unwrap_or(f).to_string_lossy().into_owned();
            h.update(rel.as_bytes());
            h.update([0]);
            h.update(self.file(f)?.as_bytes());
            h.update([b'\n']);
        }
        Ok(json!({"files": files.len(), "sha256": hex(&h.finalize())}))
    }

    /// A model or dataset repo: its local directory's content, or its revision in the HF cache
    /// or on the hub.
    pub fn repo(&mut self, hub: &Hub, id: &str, kind: RepoKind) -> Result<Value> {
        let key = (id.to_string(), kind == RepoKind::Model);
        if let Some(known) = self.repos.get(&key) {
            return known.clone().map_err(|e| anyhow::anyhow!(e));
        }
        let identity = self.identify(hub, id, kind);
        self.repos
            .insert(key, identity.as_ref().map(Value::clone).map_err(|e| format!("{e:#}")));
        identity
    }

    fn identify(&mut self, hub: &Hub, id: &str, kind: RepoKind) -> Result<Value> {
        if let Some(dir) = hub.repo(id, kind).local_dir() {
            let mut v = self.path(dir)?;
            v["id"] = json!(id);
            return Ok(v);
        }
        if let Some(rev) = hub.repo(id, kind).cached_revision() {
            return Ok(json!({"id": id, "revision": rev}));
        }
        // Not on disk yet: the hub's current commit is what the run will download.
        match hub.repo(id, kind).hub_revision() {
            Ok(rev) => Ok(json!({"id": id, "revision": rev})),
            Err(e) => {
                let (what, fix) = match kind {
                    RepoKind::Model => ("model", format!("download it first (e.g. `repro eval --model {id}` with network access) or point to a directory")),
                    RepoKind::Dataset => ("dataset", "check the name (wikitext2, c4, a local file, or a dataset repo id) or download it first with network access".into()),
                };
                anyhow::bail!(
                    "{what} `{id}` is neither a local directory, in the hub mirror, nor in the Hugging Face cache, and its hub revision is unknown ({}); {fix}",
                    crate::error_chain(&e)
                )
            }
        }
    }

    /// Model identity and one entry per dataset the run reads.
    pub fn run(&mut self, hub: &Hub, spec: &RunSpec) -> Result<(Value, BTreeMap<String, Value>)> {
        let model = self.repo(hub, &spec.model.model, RepoKind::Model)?;
        let mut data = BTreeMap::new();
        if let Some(p) = spec.prune.as_ref().filter(|p| !p.calib.is_empty()) {
            let v = match CalibSource::parse(&p.calib) {
                CalibSource::C4 { repo } | CalibSource::Wikitext2 { repo } => {
                    self.repo(hub, &repo, RepoKind::Dataset)?
                }
                CalibSource::File { path } => self.path(&path)?,
            };
            data.insert(format!("calibration:{}", p.calib), v);
        }
        for name in &spec.eval.names {
            let v = if ALL_TASKS.contains(&name.as_str()) {
                self.repo(hub, task(name)?.hub_id, RepoKind::Dataset)?
            } else {
                match PplCorpus::parse(name) {
                    PplCorpus::Wikitext2 { repo } | PplCorpus::C4 { repo } => {
                        self.repo(hub, &repo, RepoKind::Dataset)?
                    }
                    PplCorpus::Text { spec } if Path::new(&spec).exists() => self.path(Path::new(&spec))?,
                    PplCorpus::Text { spec } => {
                        self.repo(hub, spec.split(':').next().unwrap_or(&spec), RepoKind::Dataset)?
                    }
                }
            };
            data.insert(name.clone(), v);
        }
        Ok((model, data))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The run id: a hash of the settings and input identities (serde_json maps keep keys sorted, so
/// the text is canonical).
pub fn run_id(spec: &RunSpec, model: &Value, data: &BTreeMap<String, Value>) -> String {
    let canonical = json!({"settings": spec, "model": model, "data": data}).to_string();
    hex(&Sha256::digest(canonical.as_bytes()))[..16].to_string()
}
