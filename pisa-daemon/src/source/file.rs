//! The file source: one multi-document YAML file, or every `*.yaml` /
//! `*.yml` file of a directory (sorted by name).
//!
//! Changes are seen through inotify on the directory (the file's own, for a
//! single file), which covers editors that write by rename and the atomic
//! `..data` symlink swap of a Kubernetes ConfigMap mount. An event only
//! wakes the source: what decides is a fingerprint of names and metadata,
//! compared once a burst of events has gone quiet, so unrelated events in
//! the directory cost a few `stat`s and no reload. A burst is over after
//! 10 ms without events, or 1 ms once a claims file was closed after
//! writing or renamed into place (its content is then complete). Where inotify cannot be
//! had (no instances or watches left), the source polls instead, and a slow
//! check runs either way in case a watch is lost (a directory replaced, a
//! network file system whose remote writes inotify never sees).

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    time::Duration,
};

use inotify::{EventStream, Inotify, WatchMask};
use tokio_stream::StreamExt;

use super::ClaimSource;
use crate::spec::{load_documents, Checked, DocumentCache, Limits, SourceSnapshot};

/// After an event, how long the directory must stay quiet before the
/// fingerprint is taken (an editor writes in several steps), and the
/// longest a burst may defer it.
const QUIET: Duration = Duration::from_millis(10);
/// The quiet time after a claims file was closed after writing or renamed
/// into place: its content is complete, and only a step that follows at
/// once (another file of a directory) is worth waiting for.
const QUIET_AFTER_COMPLETE: Duration = Duration::from_millis(1);
const BURST_MAX: Duration = Duration::from_millis(100);
/// Without inotify: how often to look, and the settling time after a change.
const POLL: Duration = Duration::from_millis(100);
const DEBOUNCE: Duration = Duration::from_millis(100);
/// With inotify: the check that covers a lost watch.
const SAFETY_CHECK: Duration = Duration::from_secs(10);

/// What can change the claims: entries created, written, moved, deleted,
/// or their attributes (a `touch`, a symlink swapped).
fn watch_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// How the file source learns of changes (`--config-watch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Watch {
    /// inotify, falling back to polling where it cannot be had.
    #[default]
    Inotify,
    /// Polling only: for file systems whose changes inotify never sees
    /// (NFS and other network mounts written from elsewhere).
    Poll,
}

/// Claims from a file or directory, reloaded when it changes.
pub struct FileSource {
    path: PathBuf,
    mode: Watch,
    /// The fingerprint of what was last handed out by `changed`.
    fingerprint: u64,
    /// `None`: inotify could not be had (or not yet: it needs the runtime);
    /// retried at every safety check.
    watch: Option<EventStream<[u8; 4096]>>,
    /// The directory `watch` watches: a claims directory that did not exist
    /// yet is watched through its parent until it does.
    watching: PathBuf,
    /// Each file's parsed documents, so a reload parses only what changed.
    caches: HashMap<String, DocumentCache>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("watched", &self.watch.is_some())
            .finish()
    }
}

impl FileSource {
    pub fn new(path: PathBuf, mode: Watch) -> Self {
        let fingerprint = fingerprint(&path);
        Self {
            path,
            mode,
            fingerprint,
            watch: None,
            watching: PathBuf::new(),
            caches: HashMap::new(),
        }
    }

    /// The directory whose entries hold the claims: the path itself, or
    /// a file's directory (a rename-replace or a symlink swap is an event
    /// of the directory, never of the replaced file).
    fn watched_dir(&self) -> PathBuf {
        if self.path.is_dir() {
            return self.path.clone();
        }
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Sets up the watch if there is none; logs why not once per failure.
    fn ensure_watch(&mut self) {
        let dir = self.watched_dir();
        if self.watch.is_some() && self.watching != dir {
            self.watch = None;
        }
        if self.watch.is_some() || self.mode == Watch::Poll {
            return;
        }
        let started = Inotify::init().and_then(|inotify| {
            inotify.watches().add(&dir, watch_mask())?;
            inotify.into_event_stream([0u8; 4096])
        });
        match started {
            Ok(stream) => {
                tracing::debug!(dir = %dir.display(), "watching claims with inotify");
                self.watch = Some(stream);
                self.watching = dir;
            }
            Err(error) => tracing::warn!(dir = %dir.display(), %error,
                "cannot watch the claims with inotify; checking every 100 ms instead"),
        }
    }

    /// Waits for the first event, then for the burst to go quiet. `false`:
    /// the safety check is due, or the watch ended (it is dropped, to be
    /// set up again).
    async fn next_burst(&mut self) -> bool {
        let Some(stream) = self.watch.as_mut() else {
            tokio::time::sleep(POLL).await;
            return false;
        };
        let first = tokio::time::timeout(SAFETY_CHECK, stream.next()).await;
        let ended = |event: &Option<std::io::Result<inotify::EventOwned>>| match event {
            Some(Ok(event)) => event
                .mask
                .intersects(inotify::EventMask::IGNORED | inotify::EventMask::DELETE_SELF),
            _ => true,
        };
        let mut quiet = match first {
            Err(_) => return false,
            Ok(event) if ended(&event) => {
                self.watch = None;
                return false;
            }
            Ok(event) => quiet_after(&self.path, &event),
        };
        let deadline = tokio::time::Instant::now() + BURST_MAX;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(quiet, stream.next()).await {
                Err(_) => break,
                Ok(event) if ended(&event) => {
                    self.watch = None;
                    break;
                }
                Ok(event) => quiet = quiet_after(&self.path, &event),
            }
        }
        true
    }
}

impl ClaimSource for FileSource {
    fn read(&mut self) -> Result<Option<Vec<SourceSnapshot>>, SourceError> {
        let mut caches = std::mem::take(&mut self.caches);
        let mut kept = HashMap::new();
        let snapshots = read_with(&self.path, |name, text| {
            let mut cache = caches.remove(name).unwrap_or_default();
            let documents = cache.load(name, text);
            kept.insert(name.to_owned(), cache);
            documents
        })?;
        // Files gone since the last read take their caches with them.
        self.caches = kept;
        Ok(Some(snapshots))
    }

    async fn changed(&mut self) {
        loop {
            // Compared first, so that a burst whose wait was cut short (the
            // loop's select dropped this future) is not lost.
            if fingerprint(&self.path) != self.fingerprint {
                if self.watch.is_none() {
                    // Polling may have caught a write half done: let it settle.
                    tokio::time::sleep(DEBOUNCE).await;
                }
                self.fingerprint = fingerprint(&self.path);
                tracing::info!(path = %self.path.display(), "claims changed: reloading");
                return;
            }
            self.ensure_watch();
            self.next_burst().await;
        }
    }
}

/// How long to wait for the next event after `event`: short once a claims
/// file is complete (closed after writing, or renamed into place), the
/// full quiet window after anything else (a write still going on).
fn quiet_after(path: &Path, event: &Option<std::io::Result<inotify::EventOwned>>) -> Duration {
    let Some(Ok(event)) = event else {
        return QUIET;
    };
    let complete = event
        .mask
        .intersects(inotify::EventMask::CLOSE_WRITE | inotify::EventMask::MOVED_TO);
    let claims_file = event.name.as_deref().is_some_and(|name| {
        let name = Path::new(name);
        if path.is_dir() {
            matches!(
                name.extension().and_then(|e| e.to_str()),
                Some("yaml") | Some("yml")
            )
        } else {
            path.file_name() == Some(name.as_os_str())
        }
    });
    if complete && claims_file {
        QUIET_AFTER_COMPLETE
    } else {
        QUIET
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
    read_with(path, |name, text| load_documents(name, &text))
}

/// Reads every source file under `path`, turning each file's text into
/// documents with `load(name, text)`.
fn read_with(
    path: &Path,
    mut load: impl FnMut(&str, String) -> Result<Vec<crate::spec::Document>, crate::spec::ClaimError>,
) -> Result<Vec<SourceSnapshot>, SourceError> {
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
            documents: load(&name, text),
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

    /// A temporary directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("pisa-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write_by_rename(path: &Path, body: &str) {
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Whether `changed` resolves within `within` while `edit` runs 50 ms
    /// after the source started waiting (so the watch is in place).
    async fn resolves(source: &mut FileSource, within: Duration, edit: impl FnOnce()) -> bool {
        let edit = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            edit();
            std::future::pending::<()>().await;
        };
        tokio::time::timeout(within, async {
            tokio::select! {
                () = source.changed() => {}
                () = edit => {}
            }
        })
        .await
        .is_ok()
    }

    // The safety check runs every 10 s and polling is off with inotify, so
    // a change seen within 3 s was seen through inotify.
    const SEEN: Duration = Duration::from_secs(3);

    #[tokio::test]
    async fn an_editor_writing_by_rename_is_seen_through_inotify() {
        let dir = Dir::new("watch-rename");
        let path = dir.0.join("claims.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let mut source = FileSource::new(path.clone(), Watch::Inotify);
        assert!(resolves(&mut source, SEEN, || write_by_rename(&path, "a: 2\n")).await);
        assert!(source.watch.is_some(), "inotify is in use");
        // And again: the watch is on the directory, not the replaced file.
        assert!(resolves(&mut source, SEEN, || write_by_rename(&path, "a: 3\n")).await);
        assert!(
            resolves(&mut source, SEEN, || std::fs::write(&path, "a: 4\n")
                .unwrap())
            .await
        );
    }

    #[tokio::test]
    async fn a_configmap_symlink_swap_is_seen() {
        let dir = Dir::new("watch-configmap");
        let root = &dir.0;
        for (version, body) in [("..v1", "a: 1\n"), ("..v2", "a: 2\n")] {
            std::fs::create_dir(root.join(version)).unwrap();
            std::fs::write(root.join(version).join("claims.yaml"), body).unwrap();
        }
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/claims.yaml", root.join("claims.yaml")).unwrap();
        let mut source = FileSource::new(root.join("claims.yaml"), Watch::Inotify);
        // What the kubelet does: a new `..data` made aside, renamed over.
        let swapped = resolves(&mut source, SEEN, || {
            std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
            std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        })
        .await;
        assert!(swapped, "the swap of ..data was not seen");
        let read = read(&root.join("claims.yaml")).unwrap();
        assert_eq!(read.len(), 1);
    }

    #[tokio::test]
    async fn unrelated_files_beside_a_claims_file_do_not_reload_it() {
        let dir = Dir::new("watch-unrelated");
        let path = dir.0.join("claims.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let mut source = FileSource::new(path, Watch::Inotify);
        let notes = dir.0.join("notes.txt");
        assert!(
            !resolves(&mut source, Duration::from_millis(500), || {
                std::fs::write(&notes, "x").unwrap()
            })
            .await,
            "a file that is not the claims file reloaded the claims"
        );
    }

    #[tokio::test]
    async fn a_directory_source_sees_a_new_claims_file() {
        let dir = Dir::new("watch-dir");
        std::fs::write(dir.0.join("a.yaml"), "a: 1\n").unwrap();
        let mut source = FileSource::new(dir.0.clone(), Watch::Inotify);
        let added = dir.0.join("b.yml");
        assert!(
            resolves(&mut source, SEEN, || std::fs::write(&added, "b: 1\n")
                .unwrap())
            .await
        );
        assert!(source.watch.is_some());
    }

    #[tokio::test]
    async fn a_claims_directory_made_after_the_start_is_watched_once_it_exists() {
        let dir = Dir::new("watch-late-dir");
        let claims = dir.0.join("claims.d");
        let mut source = FileSource::new(claims.clone(), Watch::Inotify);
        let made = claims.clone();
        assert!(resolves(&mut source, SEEN, || std::fs::create_dir(&made).unwrap()).await);
        let added = claims.join("a.yaml");
        assert!(
            resolves(&mut source, SEEN, || std::fs::write(&added, "a: 1\n")
                .unwrap())
            .await,
            "a file in the new directory was not seen"
        );
        assert_eq!(source.watching, claims);
    }

    #[tokio::test]
    async fn polling_still_sees_changes_without_inotify() {
        let dir = Dir::new("watch-poll");
        let path = dir.0.join("claims.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let mut source = FileSource::new(path.clone(), Watch::Poll);
        assert!(resolves(&mut source, SEEN, || write_by_rename(&path, "a: 2\n")).await);
        assert!(source.watch.is_none(), "poll mode never sets up inotify");
    }

    #[test]
    fn a_missing_path_says_so() {
        let err = read(Path::new("/nonexistent/claims.yaml")).unwrap_err();
        assert!(err
            .to_string()
            .contains("`/nonexistent/claims.yaml` does not exist"));
    }
}
