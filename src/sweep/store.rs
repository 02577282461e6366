//! The result store: one JSON record per run under `RUN_DIR/runs/<id>.json`, each written to a
//! temporary file and renamed into place, so a crash or kill -9 leaves either the whole record or
//! none, and a resumed sweep trusts every record it finds. A run not yet recorded keeps its
//! finished evaluation parts in `RUN_DIR/partial/<id>.json` (`crate::resume`).

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::RunSpec;
use crate::run_result::RunResult;

/// 2 added metric expressions and options, allocations and per-layer targets, all optional, so
/// records of schema 1 read as they are.
pub const RECORD_SCHEMA: u32 = 2;
const READABLE_SCHEMAS: [u32; 2] = [1, 2];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

/// Everything needed to trust (or distrust) one number.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    pub id: String,
    pub label: String,
    pub method_label: String,
    pub status: Status,
    /// The error chain of a failed run.
    pub error: Option<String>,
    /// The normalised settings the id is derived from.
    pub settings: RunSpec,
    /// Content hashes / revisions of the model and of each dataset read.
    pub model_identity: Value,
    pub data_identity: BTreeMap<String, Value>,
    pub environment: Environment,
    /// Unix seconds.
    pub started_at: f64,
    pub finished_at: f64,
    /// What the job measured (as `repro prune --json` prints it); left out for a failed run.
    #[serde(default, skip_serializing_if = "RunResult::is_empty")]
    pub result: RunResult,
}

impl Record {
    /// The run's time, with what its resumed parts took in an earlier attempt: what a rerun
    /// from scratch would take, for ETAs and SLURM time limits.
    pub fn work_seconds(&self) -> f64 {
        self.finished_at - self.started_at + self.result.resumed_seconds.unwrap_or(0.0)
    }
}

/// Software and machine the run used.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Environment {
    pub repro_version: String,
    pub libtorch_version: String,
    pub os: String,
    pub cpus: usize,
    pub hostname: String,
}

impl Environment {
    pub fn current() -> Environment {
        Environment {
            repro_version: env!("CARGO_PKG_VERSION").to_string(),
            libtorch_version: crate::device::libtorch_version(),
            os: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            hostname: super::claim::hostname(),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    // Readable like the results and report files beside it (temporary files start private).
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// A sweep directory's records.
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    /// Creates nothing: records create their directory when the first is written.
    pub fn open(dir: &Path) -> Store {
        Store { dir: dir.to_path_buf() }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join("runs").join(format!("{id}.json"))
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>> {
        let path = self.path(id);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let record: Record =
            serde_json::from_str(&text).with_context(|| format!("{}: not a run record", path.display()))?;
        if !READABLE_SCHEMAS.contains(&record.schema) || record.id != id {
            anyhow::bail!(
                "{}: a record of schema {} for run `{}`, not schema 1 or {RECORD_SCHEMA} for run `{id}`",
                path.display(),
                record.schema,
                record.id
            );
        }
        Ok(Some(record))
    }

    /// Creates `runs/` and makes sure records can be written there before any run starts.
    pub fn check_writable(&self) -> Result<()> {
        let runs = self.dir.join("runs");
        std::fs::create_dir_all(&runs).with_context(|| format!("cannot create {}", runs.display()))?;
        tempfile::NamedTempFile::new_in(&runs)
            .with_context(|| format!("cannot write records in {}", runs.display()))?;
        Ok(())
    }

    pub fn put(&self, record: &Record) -> Result<()> {
        write_atomic(&self.path(&record.id), &serde_json::to_vec_pretty(record)?)
    }

    /// A run's per-document zero-shot outcomes (none for a failed run), written before its record
    /// so that a record found on resuming has them.
    pub fn put_samples(&self, record: &Record) -> Result<()> {
        if record.result.zero_shot_samples.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        crate::eval::zeroshot::write_samples(&mut lines, &record.result.zero_shot_samples)?;
        write_atomic(&self.samples_path(&record.id), &lines)
    }

    /// Where a run keeps the evaluation parts it has finished until its record is written
    /// (`crate::resume`).
    pub fn parts_path(&self, id: &str) -> PathBuf {
        self.dir.join("partial").join(format!("{id}.json"))
    }

    /// A run's finished parts once its record holds them (or a forced rerun starts afresh).
    pub fn drop_parts(&self, id: &str) -> Result<()> {
        let path = self.parts_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    fn samples_path(&self, id: &str) -> PathBuf {
        self.dir.join("samples").join(format!("{id}.jsonl"))
    }
}
