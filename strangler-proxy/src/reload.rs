//! How the live route table changes: parse → validate → compile → atomic swap.
//!
//! [`Reloader`] owns the file, the connection pools and the last rejection; it stores new
//! tables into [`Live`], which requests read. A file that fails any step changes nothing:
//! the previous table keeps serving, and the failure is logged, counted and shown in `/routes`.
//!
//! The watcher follows the *directory* holding the file: editors that save by rename (vim),
//! `mv` of a temp file and Kubernetes ConfigMap `..data` symlink swaps replace the inode, and a
//! watch on the file itself would go deaf after the first of those.
//!
//! A file written in place is read once its writer closes it (inotify's close-after-write),
//! not when its writer pauses: a writer that stops between `[services]` and `[[routes]]` would
//! otherwise have its first half served. A writer that keeps the file open past
//! [`MAX_OPEN_WAIT`] is read anyway, and then the empty-table guard applies: a reload that
//! would drop every route of a table that has some is refused unless the file says
//! `routes = "none"` under `[proxy]`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::upstream::Upstreams;

/// Quiet time after a file event before the file is read, so an editor's truncate-then-write
/// is read once, whole.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// A file written to without pause is still read this often.
const MAX_QUIET_WAIT: Duration = Duration::from_millis(100);

/// A file still open for writing is read after this long anyway (a writer that never closes,
/// or a lost close event); the empty-table guard protects what a half file would drop.
const MAX_OPEN_WAIT: Duration = Duration::from_secs(1);

/// Longest the watcher waits for the close event of its own read (the barrier behind which
/// every earlier event has been delivered).
const READ_BARRIER_WAIT: Duration = Duration::from_millis(100);

/// Whether the platform's watcher reports close-after-write (inotify does; FSEvents and kqueue
/// do not, and there a pause in writing is all the watcher can go by).
const REPORTS_CLOSE: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// A safety net for lost events (inotify queue overflow, a replaced mount): the file's digest
/// is checked this often even when no event arrives. Unchanged content costs one read.
const POLL: Duration = Duration::from_secs(5);

/// A reload that was refused.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// When it was refused.
    pub at: SystemTime,
    /// Digest of the refused bytes, so the same file is not refused (and logged) again.
    pub sha256: Option<String>,
    /// Every error in the file.
    pub errors: ConfigErrors,
}

/// Reloads remembered for `/reloads`: the oldest is forgotten first.
pub const RELOADS_KEPT: usize = 50;

/// One load of the file that applied a table or was refused (the first load included), for
/// `/reloads` and the dashboard. Reads that found nothing new (unchanged, already refused) are
/// not events.
#[derive(Debug, Clone)]
pub struct ReloadEvent {
    /// When.
    pub at: SystemTime,
    /// Whether a table now serves from it.
    pub applied: bool,
    /// Applied: the new revision; refused: the revision that keeps serving.
    pub revision: u64,
    /// Digest of the bytes read (`None` when the file could not be read).
    pub sha256: Option<String>,
    /// Refused: every error, with its line and column.
    pub errors: Vec<ConfigError>,
}

/// What one reload did.
#[derive(Debug)]
pub enum Outcome {
    /// A new table serves, with this revision.
    Applied(u64),
    /// The file's bytes are those already serving.
    Unchanged,
    /// The file is invalid; the previous table keeps serving.
    Rejected(ConfigErrors),
    /// The file is the one already refused; nothing new to say.
    StillRejected,
    /// The watcher read an invalid file that has changed since (perhaps half a write, perhaps
    /// already reloaded by SIGHUP): nothing refused; the newer write's own events reload it.
    Superseded,
}

/// Who read the bytes a reload judges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// Read under the reload lock: the file as it is.
    Locked,
    /// Read earlier by the watcher: a write may have raced the read (a truncated file reads
    /// as empty) and a reload made meanwhile may already serve the newer bytes.
    Watcher,
}

/// What replaces the live table: the file, the connection pools reused across reloads, and
/// the last rejection. Reloads from the watcher, SIGHUP and the poll are serialized so
/// revisions stay ordered.
pub struct Reloader {
    path: PathBuf,
    live: Arc<Live>,
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    reloading: Mutex<()>,
    last_rejection: Mutex<Option<Rejection>>,
    /// The latest [`RELOADS_KEPT`] applied and refused loads, oldest first.
    events: Mutex<VecDeque<ReloadEvent>>,
    /// Label sets of `strangler_route_weight` exported now, and the `sha256` of
    /// `strangler_config_info`.
    published: Mutex<(Vec<[String; 3]>, String)>,
}

impl Reloader {
    /// Loads `path` for the first time; an invalid file is an error (the proxy refuses to start).
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Arc<Self>, ConfigErrors> {
        let loaded = config::load(path)?;
        let upstreams = Upstreams::default();
        let table = RouteTable::compile(loaded.config, loaded.sha256, 1, &upstreams);
        let reloader = Arc::new(Self {
            path: path.to_path_buf(),
            live: Live::new(table),
            upstreams,
            metrics,
            reloading: Mutex::new(()),
            last_rejection: Mutex::new(None),
            events: Mutex::new(VecDeque::new()),
            published: Mutex::new((Vec::new(), String::new())),
        });
        let table = reloader.live.table();
        reloader.publish(&table);
        reloader.remember(ReloadEvent {
            at: SystemTime::now(),
            applied: true,
            revision: table.revision,
            sha256: Some(table.sha256.clone()),
            errors: Vec::new(),
        });
        Ok(reloader)
    }

    /// The file being served.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table this reloader replaces.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Whether the file now differs from what was read (`sha256` of the bytes, `None` when the
    /// read failed). A refusal of an out-of-date read would report an error about a file that
    /// no longer exists, or contradict a reload that already took the newer bytes; the newer
    /// write's own events reload it. A read that would be applied is not held back this way,
    /// so a file rewritten faster than it is read still takes effect.
    fn changed_since_read(&self, sha256: Option<&str>) -> bool {
        match (config::read(&self.path), sha256) {
            (Ok(now), Some(read)) => config::sha256_hex(&now) != read,
            (Ok(_), None) => true,
            (Err(_), Some(_)) => true,
            (Err(_), None) => false,
        }
    }

    /// The last refused reload, if the file has not been fixed since.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest applied and refused loads, oldest first (at most [`RELOADS_KEPT`]).
    pub fn events(&self) -> Vec<ReloadEvent> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().cloned().collect()
    }

    fn remember(&self, event: ReloadEvent) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() == RELOADS_KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Reads the file again and swaps in a new table if it changed and is valid.
    pub fn reload(&self) -> Outcome {
        let _serial = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_locked(config::read(&self.path), Reader::Locked)
    }

    /// [`Reloader::reload`] with the file's bytes read earlier by the watcher (which first
    /// makes sure no write began while it read).
    fn reload_watched(&self, read: Result<Vec<u8>, ConfigErrors>) -> Outcome {
        let _serial = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_locked(read, Reader::Watcher)
    }

    /// One reload of bytes read by `reader`, under the reload lock.
    fn reload_locked(&self, read: Result<Vec<u8>, ConfigErrors>, reader: Reader) -> Outcome {
        let current = self.live.table();
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(errors) => return self.reject(&current, errors, None, reader),
        };
        let sha256 = config::sha256_hex(&bytes);
        if sha256 == current.sha256 {
            // The file is back to the table in service: an earlier rejection is moot.
            self.last_rejection
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            tracing::debug!(file = %self.path.display(), "file unchanged; nothing to reload");
            return Outcome::Unchanged;
        }
        if self.last_rejection().and_then(|r| r.sha256) == Some(sha256.clone()) {
            return Outcome::StillRejected;
        }
        match config::from_bytes(&self.path, bytes) {
            Ok(loaded) if drops_every_route(&current, &loaded.config) => {
                let errors = ConfigErrors {
                    file: self.path.display().to_string(),
                    errors: vec![ConfigError {
                        line: 1,
                        column: 1,
                        message: every_route_dropped(&current),
                    }],
                };
                self.reject(&current, errors, Some(sha256), reader)
            }
            Ok(loaded) => {
                let revision = current.revision + 1;
                let table =
                    RouteTable::compile(loaded.config, loaded.sha256, revision, &self.upstreams);
                self.apply(&current, table)
            }
            Err(errors) => self.reject(&current, errors, Some(sha256), reader),
        }
    }

    fn apply(&self, current: &RouteTable, table: RouteTable) -> Outcome {
        warn_on_restart_only_changes(current, &table);
        let revision = table.revision;
        let table = Arc::new(table);
        self.live.store(table.clone());
        self.publish(&table);
        self.metrics.reloads.with_label_values(&["applied"]).inc();
        self.remember(ReloadEvent {
            at: SystemTime::now(),
            applied: true,
            revision,
            sha256: Some(table.sha256.clone()),
            errors: Vec::new(),
        });
        self.last_rejection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tracing::info!(revision, file = %self.path.display(), "route table reloaded");
        Outcome::Applied(revision)
    }

    fn reject(
        &self,
        current: &RouteTable,
        errors: ConfigErrors,
        sha256: Option<String>,
        reader: Reader,
    ) -> Outcome {
        if reader == Reader::Watcher && self.changed_since_read(sha256.as_deref()) {
            tracing::debug!(file = %self.path.display(), "file changed after it was read; not refusing what may be half a write");
            return Outcome::Superseded;
        }
        self.metrics.reloads.with_label_values(&["rejected"]).inc();
        self.remember(ReloadEvent {
            at: SystemTime::now(),
            applied: false,
            revision: current.revision,
            sha256: sha256.clone(),
            errors: errors.errors.clone(),
        });
        tracing::error!(
            revision = current.revision,
            "reload rejected; revision {} keeps serving:\n{errors}",
            current.revision
        );
        *self
            .last_rejection
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Rejection {
            at: SystemTime::now(),
            sha256,
            errors: errors.clone(),
        });
        Outcome::Rejected(errors)
    }

    /// Sets the gauges that describe the table in service, then removes the series of routes
    /// (or stages) that no longer exist, so a scrape never sees a route without its weight.
    fn publish(&self, table: &RouteTable) {
        self.metrics.revision.set(table.revision as i64);
        let labels = |t: &RouteTable| -> Vec<[String; 3]> {
            t.routes()
                .iter()
                .map(|r| {
                    let c = &r.config;
                    [
                        c.name.clone(),
                        c.service.clone(),
                        c.stage().as_str().to_string(),
                    ]
                })
                .collect()
        };
        let now = labels(table);
        for (route, l) in table.routes().iter().zip(&now) {
            self.metrics
                .route_weight
                .with_label_values(&[&l[0], &l[1], &l[2]])
                .set(i64::from(route.config.weight));
        }
        self.metrics
            .config_info
            .with_label_values(&[&table.sha256])
            .set(1);
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let (weights, sha256) = &mut *published;
        for stale in weights.iter().filter(|l| !now.contains(l)) {
            let _ = self
                .metrics
                .route_weight
                .remove_label_values(&[&stale[0], &stale[1], &stale[2]]);
        }
        if !sha256.is_empty() && *sha256 != table.sha256 {
            let _ = self.metrics.config_info.remove_label_values(&[sha256]);
        }
        *published = (now, table.sha256.clone());
    }
}

/// Whether `new` would drop every route of a table that has some without saying so
/// (`[proxy] routes = "none"`): what a file read half-written, before its `[[routes]]`, looks like.
fn drops_every_route(current: &RouteTable, new: &Config) -> bool {
    !current.routes().is_empty() && new.routes.is_empty() && !new.proxy.no_routes
}

fn every_route_dropped(current: &RouteTable) -> String {
    let names: Vec<&str> = current
        .routes()
        .iter()
        .map(|r| r.config.name.as_str())
        .collect();
    format!(
        "the file has no [[routes]] but revision {} serves {} ({}): a file read while half \
         written looks like this, so it is refused; finish writing the file, or add \
         `routes = \"none\"` under [proxy] to drop every route on purpose",
        current.revision,
        names.len(),
        names.join(", ")
    )
}

fn warn_on_restart_only_changes(old: &RouteTable, new: &RouteTable) {
    let (old, new) = (&old.config.proxy, &new.config.proxy);
    let changed = [
        ("listen", old.listen != new.listen),
        ("admin", old.admin != new.admin),
        (
            "shadow_concurrency",
            old.shadow_concurrency != new.shadow_concurrency,
        ),
        ("drain_timeout", old.drain_timeout != new.drain_timeout),
        ("workers", old.workers != new.workers),
    ];
    for (key, _) in changed.iter().filter(|(_, differs)| *differs) {
        tracing::warn!(
            "[proxy] {key} changed; it is read at start-up and takes effect after a restart"
        );
    }
}

/// What a directory event says about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// Nothing: a read (ours included: inotify reports every open), which changes nothing.
    Ignore,
    /// Something in the directory changed (a rename, a ConfigMap `..data` swap, another file):
    /// read the file once events stop.
    Changed,
    /// The file was created or written to in place and its writer may still be writing.
    Written,
    /// A writer of the file closed it: what it wrote is whole.
    Closed,
    /// The file was opened (by the watcher itself, most often).
    Opened,
}

/// Reads one event; `file` is the name of the file in the watched directory.
fn classify(event: &notify::Event, file: &OsString) -> Signal {
    let ours = event
        .paths
        .iter()
        .any(|p| p.file_name() == Some(file.as_os_str()));
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) if ours && REPORTS_CLOSE => {
            Signal::Closed
        }
        EventKind::Access(AccessKind::Open(_)) if ours && REPORTS_CLOSE => Signal::Opened,
        EventKind::Access(_) => Signal::Ignore,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
        | EventKind::Create(CreateKind::File | CreateKind::Any)
            if ours && REPORTS_CLOSE =>
        {
            Signal::Written
        }
        _ => Signal::Changed,
    }
}

/// What the events since the watcher last looked say, kept apart from the wake-up so that
/// none is lost between two looks.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    /// Written to and not closed since.
    open_for_writing: bool,
    /// Closed after writing since the last look.
    closed: bool,
}

#[derive(Default)]
struct Signals {
    wake: Notify,
    pending: Mutex<Pending>,
    /// Writes to the file seen so far, to tell whether one began while the watcher read it.
    writes: AtomicU64,
    /// Opens of the file seen so far: once the watcher's own opens have come through, every
    /// event queued before them has too (inotify keeps them in order).
    opens: AtomicU64,
    opened: Notify,
}

impl Signals {
    fn record(&self, signal: Signal) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match signal {
                Signal::Ignore => return,
                Signal::Opened => {
                    self.opens.fetch_add(1, Ordering::SeqCst);
                    self.opened.notify_waiters();
                    return;
                }
                Signal::Changed => {}
                Signal::Written => {
                    self.writes.fetch_add(1, Ordering::SeqCst);
                    p.open_for_writing = true;
                }
                Signal::Closed => {
                    p.open_for_writing = false;
                    p.closed = true;
                }
            }
        }
        self.wake.notify_one();
    }

    /// The state now; `closed` is reset (it is news once), `open_for_writing` stays until the
    /// close, or until `give_up`.
    fn take(&self, give_up: bool) -> Pending {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let now = *p;
        p.closed = false;
        if give_up {
            p.open_for_writing = false;
        }
        now
    }
}

/// A directory watch, installed; [`Watch::run`] turns its events into reloads.
pub struct Watch {
    reloader: Arc<Reloader>,
    signals: Arc<Signals>,
    // Dropping the watcher ends the watch, so it lives as long as the loop.
    _watcher: notify::RecommendedWatcher,
}

impl Watch {
    /// Starts watching the directory holding the file. Installed before the proxy reports
    /// itself started, so no change made after that can be missed.
    pub fn install(reloader: Arc<Reloader>) -> notify::Result<Self> {
        let dir = match reloader.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file = reloader
            .path
            .file_name()
            .map(OsString::from)
            .unwrap_or_default();
        let signals = Arc::new(Signals::default());
        let recorder = signals.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Any event in the directory may be ours (a ConfigMap swap touches `..data`,
                // not the file's name); reading the file and comparing digests decides.
                if let Ok(event) = event {
                    recorder.record(classify(&event, &file));
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        // A change between the first load and this watch would otherwise wait for the poll.
        signals.wake.notify_one();
        tracing::info!(dir = %dir.display(), "watching for changes to {}", reloader.path.display());
        Ok(Self {
            reloader,
            signals,
            _watcher: watcher,
        })
    }

    /// Waits until the file can be read whole: at once when its writer has closed it; while
    /// it is open for writing, until the close (at most [`MAX_OPEN_WAIT`]); otherwise until no
    /// event has arrived for [`DEBOUNCE`] (at most [`MAX_QUIET_WAIT`]).
    async fn settle(&self) {
        let started = tokio::time::Instant::now();
        loop {
            let open_deadline = started + MAX_OPEN_WAIT;
            let now = tokio::time::Instant::now();
            let pending = self.signals.take(now >= open_deadline);
            if pending.closed && !pending.open_for_writing {
                return;
            }
            if pending.open_for_writing {
                if now >= open_deadline {
                    tracing::warn!(
                        file = %self.reloader.path.display(),
                        "the file is still open for writing after {MAX_OPEN_WAIT:?}; reading it anyway"
                    );
                    return;
                }
                tokio::select! {
                    () = self.signals.wake.notified() => {}
                    () = tokio::time::sleep_until(open_deadline) => {}
                }
                continue;
            }
            if now >= started + MAX_QUIET_WAIT {
                return;
            }
            tokio::select! {
                () = self.signals.wake.notified() => {}
                () = tokio::time::sleep(DEBOUNCE) => return,
            }
        }
    }

    /// Reads the file, or `None` when a write to it began while it was read (the read may
    /// hold half a file; the write's close wakes the watcher again).
    async fn read(&self) -> Option<Result<Vec<u8>, ConfigErrors>> {
        let writes = self.signals.writes.load(Ordering::SeqCst);
        let opens = self.signals.opens.load(Ordering::SeqCst);
        let path = self.reloader.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let read = config::read(&path);
            // A second open after the read: a marker in the event queue behind any write that
            // began while the file was read.
            let _ = std::fs::File::open(&path);
            read
        })
        .await
        .ok()?;
        if REPORTS_CLOSE && read.is_ok() {
            let barrier = async {
                loop {
                    let opened = self.signals.opened.notified();
                    if self.signals.opens.load(Ordering::SeqCst) >= opens + 2 {
                        return;
                    }
                    opened.await;
                }
            };
            let _ = tokio::time::timeout(READ_BARRIER_WAIT, barrier).await;
        }
        (self.signals.writes.load(Ordering::SeqCst) == writes).then_some(read)
    }

    /// Reloads after each settled burst of events and every few seconds regardless.
    /// Runs until the task is dropped.
    pub async fn run(self) {
        loop {
            tokio::select! {
                () = self.signals.wake.notified() => self.settle().await,
                () = tokio::time::sleep(POLL) => {}
            }
            let Some(read) = self.read().await else {
                tracing::debug!(file = %self.reloader.path.display(), "written to while read; waiting for the writer");
                continue;
            };
            let reloader = self.reloader.clone();
            // Compilation is blocking work; keep it off the request threads.
            if let Err(e) = tokio::task::spawn_blocking(move || reloader.reload_watched(read)).await
            {
                tracing::error!(error = %e, "reload task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RemoveKind, RenameMode};

    /// One line per case: event kind, file name, what it signals (on a platform that reports
    /// close-after-write).
    #[test]
    fn events_are_classified() {
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let cases = [
            (close, "routes.toml", Signal::Closed),
            (close, ".routes.toml.tmp", Signal::Ignore),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "routes.toml",
                Signal::Ignore,
            ),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "routes.toml",
                Signal::Opened,
            ),
            (data, "routes.toml", Signal::Written),
            (
                EventKind::Create(CreateKind::File),
                "routes.toml",
                Signal::Written,
            ),
            (data, ".routes.toml.tmp", Signal::Changed),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "routes.toml",
                Signal::Changed,
            ),
            (
                EventKind::Remove(RemoveKind::File),
                "routes.toml",
                Signal::Changed,
            ),
            (
                EventKind::Create(CreateKind::Folder),
                "..2024_01_01",
                Signal::Changed,
            ),
        ];
        let file = OsString::from("routes.toml");
        for (kind, name, expected) in cases {
            let event =
                notify::Event::new(kind).add_path(PathBuf::from("/etc/strangler").join(name));
            let expected = if REPORTS_CLOSE {
                expected
            } else if expected == Signal::Ignore || kind == close {
                Signal::Ignore
            } else {
                Signal::Changed
            };
            assert_eq!(classify(&event, &file), expected, "{kind:?} on {name}");
        }
    }
}
