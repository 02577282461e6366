//! Finds a file of a Hugging Face repo (model or dataset) the way a researcher expects:
//! a local mirror first (offline fixtures, air-gapped clusters), then the HF cache,
//! then a real download with `hf-hub`. Local directories are used as they are.

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// Whether an id names a model repo or a dataset repo; the mirror layout and the hub API differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn mirror_dir(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
    fn hf(self) -> RepoType {
        match self {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        }
    }
}

/// Where repos are looked up. Built once from the CLI / environment and passed around.
#[derive(Clone, Debug, Default)]
pub struct Hub {
    /// `DIR/models/<id>/<file>` and `DIR/datasets/<id>/<file>`.
    pub mirror: Option<PathBuf>,
}

/// A repo that has been located: either a directory on disk or a hub id to resolve file by file.
#[derive(Clone, Debug)]
pub struct RepoRef {
    pub id: String,
    pub kind: RepoKind,
    local_dir: Option<PathBuf>,
    /// `local_dir` is the mirror's copy, which may lack files the cache or the hub have.
    mirrored: bool,
    hub: Hub,
}

impl Hub {
    /// `--hub-mirror` wins over `REPRO_HUB_MIRROR`; an empty value means none (not the current directory).
    pub fn new(mirror: Option<PathBuf>) -> Self {
        let mirror = mirror
            .or_else(|| std::env::var_os("REPRO_HUB_MIRROR").map(PathBuf::from))
            .filter(|m| !m.as_os_str().is_empty());
        Hub { mirror }
    }

    /// `spec` is a local directory or a hub id such as `meta-llama/Llama-2-7b-hf`.
    pub fn repo(&self, spec: &str, kind: RepoKind) -> RepoRef {
        let path = Path::new(spec);
        // A path is meant as one even when it is missing or a file: never a hub id (`get` says what is wrong).
        let path_like = path.is_absolute()
            || spec.starts_with("./")
            || spec.starts_with("../")
            || spec == "."
            || spec == ".."
            || path.exists();
        let mirrored = self
            .mirror
            .as_ref()
            .map(|m| m.join(kind.mirror_dir()).join(spec))
            .filter(|d| !path_like && d.is_dir());
        let local_dir = if path_like {
            Some(path.to_path_buf())
        } else {
            mirrored.clone()
        };
        RepoRef {
            id: spec.to_string(),
            kind,
            local_dir,
            mirrored: mirrored.is_some(),
            hub: self.clone(),
        }
    }
}

/// The Hugging Face cache, found the way huggingface_hub finds it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. Lookups, downloads and run identities all use it.
fn hf_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(dir.into()),
        None => Cache::from_env(),
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

impl RepoRef {
    /// The repo's directory when it is local (a directory or a mirror hit).
    pub fn local_dir(&self) -> Option<&Path> {
        self.local_dir.as_deref()
    }

    /// Whether `file` can be had without a download (used to pick optional files).
    pub fn has_local(&self, file: &str) -> bool {
        match &self.local_dir {
            Some(d) if !self.mirrored => d.join(file).is_file(),
            Some(d) => d.join(file).is_file() || self.cache_lookup(file).is_some(),
            None => self.cache_lookup(file).is_some(),
        }
    }

    fn cache_lookup(&self, file: &str) -> Option<PathBuf> {
        hf_cache().repo(self.hf_repo()).get(file)
    }

    fn hf_repo(&self) -> Repo {
        Repo::new(self.id.clone(), self.kind.hf())
    }

    /// The HF cache's snapshot of `refs/main`, when the repo has been downloaded (whole or in part).
    pub fn cached_snapshot(&self) -> Option<PathBuf> {
        let rev = self.cached_revision()?;
        let dir = hf_cache()
            .path()
            .join(self.hf_repo().folder_name())
            .join("snapshots")
            .join(rev);
        dir.is_dir().then_some(dir)
    }

    /// The commit the cache's `refs/main` points to, when the repo has been downloaded.
    pub fn cached_revision(&self) -> Option<String> {
        let refs = hf_cache().path().join(self.hf_repo().folder_name()).join("refs/main");
        std::fs::read_to_string(refs).ok().map(|s| s.trim().to_string())
    }

    /// Path of `file` inside the repo, downloading it if needed and allowed.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        let mut looked = Vec::new();
        if self.id.is_empty() {
            bail!(
                "an empty {} name: give a hub id or a local directory",
                kind_name(self.kind)
            );
        }
        if let Some(dir) = &self.local_dir {
            let p = dir.join(file);
            if p.is_file() {
                return Ok(p);
            }
            if !self.mirrored {
                if dir.is_file() {
                    bail!(
                        "{} is a file; pass the {} directory that holds {file}",
                        dir.display(),
                        kind_name(self.kind)
                    );
                }
                if !dir.is_dir() {
                    bail!("{}: no such directory", dir.display());
                }
                bail!(
                    "{} not found in {} ({} `{}`)",
                    file,
                    dir.display(),
                    kind_name(self.kind),
                    self.id
                );
            }
        }
        // The mirror's copy of a repo may be partial (the fixtures hold WikiText's test split only).
        if let Some(m) = &self.hub.mirror {
            looked.push(format!(
                "mirror {}",
                m.join(self.kind.mirror_dir()).join(&self.id).display()
            ));
        }
        if let Some(p) = self.cache_lookup(file) {
            return Ok(p);
        }
        looked.push(format!("HF cache {}", hf_cache().path().display()));
        if offline() {
            bail!(
                "{} `{}`: file {} not found (looked in {}); HF_HUB_OFFLINE is set, so no download was tried. \
                 Pass --hub-mirror DIR or a local directory, or unset HF_HUB_OFFLINE",
                kind_name(self.kind),
                self.id,
                file,
                looked.join(", ")
            );
        }
        self.api()?.get(file).with_context(|| {
            format!(
                "{} `{}`: file {} not found locally (looked in {}) and the download failed",
                kind_name(self.kind),
                self.id,
                file,
                looked.join(", ")
            )
        })
    }

    /// Every file of the repo as the hub lists it (paths inside the repo), without downloading any.
    pub fn hub_files(&self) -> Result<Vec<String>> {
        Ok(self.hub_info()?.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// The commit the hub's `main` points to, asked of the hub without downloading anything:
    /// what identifies a repo that is not on disk yet.
    pub fn hub_revision(&self) -> Result<String> {
        Ok(self.hub_info()?.sha)
    }

    fn hub_info(&self) -> Result<hf_hub::api::RepoInfo> {
        if offline() {
            bail!("HF_HUB_OFFLINE is set, so the hub was not asked");
        }
        self.api()?
            .info()
            .with_context(|| format!("asking the hub for {} `{}`", kind_name(self.kind), self.id))
    }

    fn api(&self) -> Result<hf_hub::api::sync::ApiRepo> {
        let mut builder = hf_hub::api::sync::ApiBuilder::from_env()
            .with_cache_dir(hf_cache().path().clone())
            .with_progress(true);
        if let Ok(token) = std::env::var("HF_TOKEN") {
            builder = builder.with_token(Some(token));
        }
        let api = builder.build().context("building the Hugging Face hub client")?;
        Ok(api.repo(self.hf_repo()))
    }
}

fn kind_name(kind: RepoKind) -> &'static str {
    match kind {
        RepoKind::Model => "model",
        RepoKind::Dataset => "dataset",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_layout_resolves_models_and_datasets() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("models/org/m")).unwrap();
        std::fs::write(tmp.path().join("models/org/m/config.json"), "{}").unwrap();
        std::fs::create_dir_all(tmp.path().join("datasets/org/d/cfg")).unwrap();
        std::fs::write(tmp.path().join("datasets/org/d/cfg/x.parquet"), "").unwrap();
        let hub = Hub::new(Some(tmp.path().to_path_buf()));
        let m = hub.repo("org/m", RepoKind::Model);
        assert_eq!(
            m.get("config.json").unwrap(),
            tmp.path().join("models/org/m/config.json")
        );
        let d = hub.repo("org/d", RepoKind::Dataset);
        assert!(d.get("cfg/x.parquet").is_ok());
        let err = m.get("model.safetensors").unwrap_err().to_string();
        assert!(err.contains("model.safetensors") && err.contains("org/m"), "{err}");
    }

    /// Paths are never taken for hub ids: a missing directory, a file or an empty name says so.
    #[test]
    fn paths_are_local_even_when_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::default();
        let err = |spec: &str| {
            hub.repo(spec, RepoKind::Model)
                .get("config.json")
                .unwrap_err()
                .to_string()
        };
        let missing = tmp.path().join("no-such-model");
        assert_eq!(
            err(missing.to_str().unwrap()),
            format!("{}: no such directory", missing.display())
        );
        assert!(err("./no-such-model").contains("./no-such-model: no such directory"));
        let file = tmp.path().join("config.json");
        std::fs::write(&file, "{}").unwrap();
        let e = err(file.to_str().unwrap());
        assert!(
            e.contains("is a file; pass the model directory that holds config.json"),
            "{e}"
        );
        assert!(err("").contains("an empty model name"));
    }
}
