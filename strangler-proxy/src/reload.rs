//! How the live route table changes: parse → validate → compile → atomic swap.
//!
//! [`Reloader`] owns the file, the connection pools and the last rejection; it stores new
//! tables into [`Live`], which requests read. A file that fails any step changes nothing:
//! the previous table keeps serving, and the failure is logged, counted and shown in `/routes`.
//!
//! The watcher follows the *directory* holding the file: editors that save by rename (vim),
//! `mv` of a temp file and Kubernetes ConfigMap `..data` symlink swaps replace the inode, and a
//! watch on the file itself would go deaf after the first of those.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::config::{self, ConfigErrors};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::upstream::Upstreams;

/// Quiet time after a file event before the file is read, so an editor's truncate-then-write
/// is read once, whole.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// A file written to without pause is still read this often.
const MAX_QUIET_WAIT: Duration = Duration::from_millis(100);

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
            published: Mutex::new((Vec::new(), String::new())),
        });
        reloader.publish(&reloader.live.table());
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

    /// The last refused reload, if the file has not been fixed since.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again and swaps in a new table if it changed and is valid.
    pub fn reload(&self) -> Outcome {
        let _serial = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.live.table();
        let bytes = match config::read(&self.path) {
            Ok(bytes) => bytes,
            Err(errors) => return self.reject(&current, errors, None),
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
            Ok(loaded) => {
                let revision = current.revision + 1;
                let table =
                    RouteTable::compile(loaded.config, loaded.sha256, revision, &self.upstreams);
                self.apply(&current, table)
            }
            Err(errors) => self.reject(&current, errors, Some(sha256)),
        }
    }

    fn apply(&self, current: &RouteTable, table: RouteTable) -> Outcome {
        warn_on_restart_only_changes(current, &table);
        let revision = table.revision;
        let table = Arc::new(table);
        self.live.store(table.clone());
        self.publish(&table);
        self.metrics.reloads.with_label_values(&["applied"]).inc();
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
    ) -> Outcome {
        self.metrics.reloads.with_label_values(&["rejected"]).inc();
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
    ];
    for (key, _) in changed.iter().filter(|(_, differs)| *differs) {
        tracing::warn!(
            "[proxy] {key} changed; it is read at start-up and takes effect after a restart"
        );
    }
}

/// A directory watch, installed; [`Watch::run`] turns its events into reloads.
pub struct Watch {
    reloader: Arc<Reloader>,
    wake: Arc<Notify>,
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
        let wake = Arc::new(Notify::new());
        let notify_wake = wake.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Any event in the directory may be ours (a ConfigMap swap touches `..data`,
                // not the file's name); reading the file and comparing digests decides.
                // Reads (ours included: inotify reports every open) change nothing; waking on
                // them would make the proxy reload itself in a loop.
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                {
                    notify_wake.notify_one();
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        // A change between the first load and this watch would otherwise wait for the poll.
        wake.notify_one();
        tracing::info!(dir = %dir.display(), "watching for changes to {}", reloader.path.display());
        Ok(Self {
            reloader,
            wake,
            _watcher: watcher,
        })
    }

    /// Waits until no event has arrived for [`DEBOUNCE`] (at most [`MAX_QUIET_WAIT`]), so a
    /// writer that pauses mid-file is read once it is done.
    async fn quiet(&self) {
        let give_up = tokio::time::Instant::now() + MAX_QUIET_WAIT;
        loop {
            tokio::select! {
                () = self.wake.notified() => {
                    if tokio::time::Instant::now() >= give_up {
                        return;
                    }
                }
                () = tokio::time::sleep(DEBOUNCE) => return,
            }
        }
    }

    /// Reloads after each burst of events (debounced) and every few seconds regardless.
    /// Runs until the task is dropped.
    pub async fn run(self) {
        loop {
            tokio::select! {
                () = self.wake.notified() => self.quiet().await,
                () = tokio::time::sleep(POLL) => {}
            }
            let reloader = self.reloader.clone();
            // File I/O and compilation are blocking work; keep them off the request threads.
            if let Err(e) = tokio::task::spawn_blocking(move || reloader.reload()).await {
                tracing::error!(error = %e, "reload task failed");
            }
        }
    }
}
