//! The file source: one multi-document YAML file, or every `*.yaml` /
//! `*.yml` file of a directory (sorted by name). Change detection compares
//! a fingerprint of names and contents, which survives editors that
//! replace files by rename and needs no inotify.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    time::Duration,
};

use super::ClaimSource;
use crate::spec::{load_documents, Checked, Limits, SourceSnapshot};

/// How often the file is checked for changes, and how long it must stay
/// unchanged before a reload (an editor writes in several steps).
const POLL: Duration = Duration::from_millis(100);
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Claims from a file or directory, reloaded when it changes.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    /// The fingerprint of what was last handed out by `changed`.
    fingerprint: u64,
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        let fingerprint = fingerprint(&path);
        Self { path, fingerprint }
    }
}

impl ClaimSource for FileSource {
    fn read(&mut self) -> Result<Option<Vec<SourceSnapshot>>, SourceError> {
        read(&self.path).map(Some)
    }

    async fn changed(&mut self) {
        loop {
            tokio::time::sleep(POLL).await;
            if fingerprint(&self.path) != self.fingerprint {
                // Let the writer finish, then take the settled content.
                tokio::time::sleep(DEBOUNCE).await;
                self.fingerprint = fingerprint(&self.path);
                tracing::info!(path = %self.path.display(), "claims changed: reloading");
                return;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("claims path `{path}` does not exist; pass a YAML file or a directory of them with --config")]
    NotFound { path: PathBuf },
    #[error("reading claims from `{path}` failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::NotFound {
            path: path.to_path_buf(),
        },
        _ => SourceError::Read {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every source file under `path`.
pub fn read(path: &Path) -> Result<Vec<SourceSnapshot>, SourceError> {
    let mut snapshots = Vec::new();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| SourceError::Read {
            path: file.clone(),
            source,
        })?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        snapshots.push(SourceSnapshot {
            documents: load_documents(&name, &text),
            name,
        });
    }
    Ok(snapshots)
}

/// Every claim file under `path` checked as the daemon would check it
/// (`spec::check`, the one batch front end).
pub fn check(path: &Path, limits: Limits) -> Result<Checked, SourceError> {
    Ok(crate::spec::check(&read(path)?, limits))
}

/// A value that changes whenever a file is added, removed or edited: names,
/// sizes, inodes (a rename-replace makes a new one) and nanosecond mtimes.
/// Metadata only, so polling a 10,000-claim file costs a few syscalls.
pub fn fingerprint(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut hasher = DefaultHasher::new();
    match files(path) {
        Ok(files) => {
            for file in files {
                file.hash(&mut hasher);
                if let Ok(meta) = std::fs::metadata(&file) {
                    (meta.len(), meta.ino(), meta.mtime(), meta.mtime_nsec()).hash(&mut hasher);
                }
            }
        }
        Err(e) => e.to_string().hash(&mut hasher),
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_read_in_name_order_and_non_yaml_is_ignored() {
        let dir = std::env::temp_dir().join(format!("pisa-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.yaml"), "").unwrap();
        std::fs::write(dir.join("a.yml"), "").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let names: Vec<String> = read(&dir).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["a.yml", "b.yaml"]);
        let before = fingerprint(&dir);
        std::fs::write(dir.join("b.yaml"), "# edited\n").unwrap();
        assert_ne!(before, fingerprint(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_path_says_so() {
        let err = read(Path::new("/nonexistent/claims.yaml")).unwrap_err();
        assert!(err
            .to_string()
            .contains("`/nonexistent/claims.yaml` does not exist"));
    }
}
