//! Live reload against real sockets: every way a file gets replaced on disk is seen, a bad file
//! changes nothing, and traffic never fails while the table is swapped under load.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use strangler_proxy::config::sha256_hex;
use strangler_proxy::reload::Outcome;
use strangler_proxy::server::{self, Running};
use support::{
    ProxyBuilder, client, eventually, gated_upstream, get, send, spawn_get, temp_dir, url,
};

/// How long a flip may take before the test fails; the spec's target is well under 1 s.
const FLIP_DEADLINE: Duration = Duration::from_secs(2);

/// Two echo upstreams and the `routes.toml` text that sends `/api/users` to `users` at `weight`.
struct Backends {
    monolith: SocketAddr,
    users: SocketAddr,
}

impl Backends {
    async fn echo() -> Self {
        Self {
            monolith: support::echo_upstream("monolith").await,
            users: support::echo_upstream("users").await,
        }
    }

    /// A proxy for `test` on these backends: `/api/users` → users at `weight`.
    fn at(&self, test: &str, weight: u16) -> ProxyBuilder {
        ProxyBuilder::new(test)
            .service("monolith", self.monolith)
            .service("users", self.users)
            .route("/api/users", "users", weight)
    }

    fn table(&self, weight: u16) -> String {
        self.table_with("", weight, "")
    }

    /// The table with extra `[proxy]` keys and a trailing comment (to make otherwise equal
    /// files differ in their bytes).
    fn table_with(&self, proxy_extra: &str, weight: u16, comment: &str) -> String {
        let mut text = self.at("reload", weight).proxy_key(proxy_extra).text();
        if !comment.is_empty() {
            text.push_str(&format!("# {comment}\n"));
        }
        text
    }
}

async fn routes_doc(running: &Running) -> serde_json::Value {
    get(&url(running.admin, "/routes")).await.json()
}

async fn revision(running: &Running) -> u64 {
    routes_doc(running).await["revision"]
        .as_u64()
        .expect("/routes has a numeric revision")
}

async fn backend(running: &Running, path: &str) -> String {
    let answer = get(&url(running.public, path)).await;
    assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
    answer.backend()
}

/// The value of one sample in `/metrics`, e.g. `strangler_config_reloads_total{result="rejected"}`.
async fn metric(running: &Running, series: &str) -> Option<f64> {
    let text = get(&url(running.admin, "/metrics")).await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a numeric sample"))
}

/// Polls `/api/users/1` until `users` answers it and returns how long that took.
async fn time_until_users_serve(running: &Running, since: Instant) -> Duration {
    let moved = eventually(FLIP_DEADLINE, || async {
        backend(running, "/api/users/1").await == "users"
    })
    .await;
    let took = since.elapsed();
    assert!(
        moved,
        "/api/users/1 still goes to monolith {took:?} after the weight went to 100"
    );
    took
}

/// Starts on weight 0, checks monolith serves, applies `flip` (which must write weight 100 by
/// some means), and checks traffic moves promptly and exactly one revision is added.
async fn assert_flip_is_seen(style: &str, running: &Running, flip: impl FnOnce()) {
    // This round trip also lets the watcher task run and register its watch before the write.
    assert_eq!(backend(running, "/api/users/1").await, "monolith");
    let before = revision(running).await;
    let start = Instant::now();
    flip();
    let took = time_until_users_serve(running, start).await;
    println!("{style}: traffic moved {took:?} after the write");
    let after = routes_doc(running).await;
    assert_eq!(
        after["revision"].as_u64(),
        Some(before + 1),
        "{style}: one change, one revision: {after}"
    );
    assert_eq!(after["routes"][0]["weight"], 100, "{after}");
    assert_eq!(after["routes"][0]["stage"], "live", "{after}");
    assert!(after["last_reload_error"].is_null(), "{after}");
}

#[tokio::test]
async fn an_in_place_write_is_seen() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-in-place", 0).start().await;
    let path = running.path().to_path_buf();
    let before = inode(&path);
    assert_flip_is_seen("in-place write", &running, || {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(backends.table(100).as_bytes()).unwrap();
    })
    .await;
    assert_eq!(before, inode(&path), "the write must keep the inode");
}

/// vim's default save (`backupcopy=auto` on a plain file): probe the directory with a file
/// named `4913`, rename the original to `routes.toml~`, write a new `routes.toml`, delete the
/// backup; all while `.routes.toml.swp` sits next to it.
#[tokio::test]
async fn a_vim_style_rename_save_is_seen() {
    let backends = Backends::echo().await;
    let running = backends
        .at("reload-vim", 0)
        .file(".routes.toml.swp", "b0VIM 9.1")
        .start()
        .await;
    let dir = running.dir();
    let path = running.path().to_path_buf();
    let before = inode(&path);
    assert_flip_is_seen("vim rename save", &running, || {
        std::fs::write(dir.join("4913"), b"").unwrap();
        std::fs::remove_file(dir.join("4913")).unwrap();
        std::fs::rename(&path, dir.join("routes.toml~")).unwrap();
        std::fs::write(&path, backends.table(100)).unwrap();
        std::fs::remove_file(dir.join("routes.toml~")).unwrap();
        std::fs::write(dir.join(".routes.toml.swp"), b"b0VIM 9.1 after write").unwrap();
    })
    .await;
    assert_ne!(before, inode(&path), "the save must replace the inode");
}

/// `mv routes.toml.new routes.toml`, the way scripts and config-management tools do it.
#[tokio::test]
async fn an_mv_of_a_temp_file_is_seen() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-mv", 0).start().await;
    assert_flip_is_seen("mv of a temp file", &running, || {
        rename_save(running.path(), &backends.table(100));
    })
    .await;
}

#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_is_seen() {
    let backends = Backends::echo().await;
    let dir = temp_dir("reload-configmap");
    let mut configmap = ConfigMap::create(&dir, &backends.table(0));
    let running = server::start(&dir.join("routes.toml")).await.unwrap();
    assert_flip_is_seen("ConfigMap ..data swap", &running, || {
        configmap.update(&backends.table(100));
    })
    .await;
    // Kubelet deleted the old timestamped directory; the file is only reachable via `..data`.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    // A second swap works too: the watch survived the first one.
    let start = Instant::now();
    configmap.update(&backends.table(0));
    let moved = eventually(FLIP_DEADLINE, || async {
        backend(&running, "/api/users/1").await == "monolith"
    })
    .await;
    assert!(
        moved,
        "second ConfigMap swap not seen in {:?}",
        start.elapsed()
    );
    println!("ConfigMap second swap: {:?}", start.elapsed());
    assert_eq!(revision(&running).await, 3);
}

#[tokio::test]
async fn an_invalid_file_is_rejected_with_every_error_and_the_old_table_keeps_serving() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-reject", 0).start().await;
    let path = running.path().to_path_buf();
    assert_eq!(backend(&running, "/api/users/1").await, "monolith");
    let good = routes_doc(&running).await;
    assert_eq!(good["revision"], 1);

    // A typo in the service name and a weight out of range, in one save.
    let bad = backends.table(0).replace(
        "service = \"users\"\nweight = 0",
        "service = \"user\"\nweight = 300",
    );
    let line_of = |needle: &str| bad.lines().position(|l| l == needle).unwrap() + 1;
    let file = path.display().to_string();
    let expected = [
        format!(
            "{file}:{}:11: route \"user\": service \"user\" is not defined (did you mean \"users\"?)",
            line_of("service = \"user\"")
        ),
        format!(
            "{file}:{}:10: weight: expected an integer 0..=100, found 300",
            line_of("weight = 300")
        ),
    ];
    rename_save(&path, &bad);

    let rejected = eventually(FLIP_DEADLINE, || async {
        !routes_doc(&running).await["last_reload_error"].is_null()
    })
    .await;
    assert!(
        rejected,
        "no last_reload_error after writing an invalid file"
    );
    let doc = routes_doc(&running).await;
    let errors: Vec<&str> = doc["last_reload_error"]["errors"]
        .as_array()
        .expect("errors is a list")
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors, expected, "{doc}");
    assert!(doc["last_reload_error"]["at"].is_string(), "{doc}");
    assert!(
        metric(
            &running,
            "strangler_config_reloads_total{result=\"rejected\"}"
        )
        .await
        .unwrap_or(0.0)
            >= 1.0
    );
    // Nothing changed: same revision, same digest, same routes, same traffic.
    assert_eq!(doc["revision"], good["revision"]);
    assert_eq!(doc["sha256"], good["sha256"]);
    assert_eq!(doc["routes"], good["routes"]);
    for _ in 0..20 {
        assert_eq!(backend(&running, "/api/users/1").await, "monolith");
    }
    assert_eq!(
        metric(&running, "strangler_config_revision").await,
        Some(1.0)
    );

    // Fixing the file applies it and clears the error.
    let start = Instant::now();
    rename_save(&path, &backends.table(100));
    let took = time_until_users_serve(&running, start).await;
    println!("fix after a rejection: traffic moved {took:?} after the write");
    let doc = routes_doc(&running).await;
    assert_eq!(doc["revision"], 2, "{doc}");
    assert!(doc["last_reload_error"].is_null(), "{doc}");
    assert_eq!(doc["sha256"], sha256_hex(backends.table(100).as_bytes()));
    assert!(
        metric(
            &running,
            "strangler_config_reloads_total{result=\"applied\"}"
        )
        .await
        .unwrap_or(0.0)
            >= 1.0
    );
}

/// An operator who saves a broken edit and then undoes it has a file identical to the one
/// serving. `/routes` must stop reporting the error: the file on disk is valid and in service.
#[tokio::test]
async fn reverting_a_rejected_edit_clears_the_reload_error() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-revert", 0).start().await;
    // The watcher may have refused it first; either way it is refused.
    assert!(matches!(
        running.rewrite(&backends.table(0).replace("weight = 0", "weight = 300")),
        Outcome::Rejected(_) | Outcome::StillRejected
    ));
    assert!(!routes_doc(&running).await["last_reload_error"].is_null());

    assert!(matches!(
        running.rewrite(&backends.table(0)),
        Outcome::Unchanged
    ));
    let doc = routes_doc(&running).await;
    assert!(
        doc["last_reload_error"].is_null(),
        "the file was reverted to the table in service, yet /routes still reports: {}",
        doc["last_reload_error"]
    );
}

/// What SIGHUP does, called directly: a changed file is applied at once, an unchanged one is not
/// a new revision.
#[tokio::test]
async fn an_explicit_reload_applies_a_change_and_ignores_an_unchanged_file() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-explicit", 0).start().await;
    // From here to the second reload there is no await: on this single-threaded runtime the
    // watcher task cannot run, so these reloads are the only ones and their outcomes are exact.
    assert_eq!(running.live.table().revision, 1);

    // Same bytes, new mtime: nothing to do.
    assert!(matches!(
        running.rewrite(&backends.table(0)),
        Outcome::Unchanged
    ));
    assert_eq!(running.live.table().revision, 1);

    match running.rewrite(&backends.table(100)) {
        Outcome::Applied(2) => {}
        other => panic!("expected Applied(2), got {other:?}"),
    }
    // Visible to the very next request, no polling.
    assert_eq!(backend(&running, "/api/users/1").await, "users");
    assert_eq!(revision(&running).await, 2);

    assert!(matches!(running.reloader.reload(), Outcome::Unchanged));
    assert!(matches!(running.reloader.reload(), Outcome::Unchanged));
    assert_eq!(running.live.table().revision, 2);
    let doc = routes_doc(&running).await;
    assert_eq!(doc["revision"], 2);
    assert_eq!(doc["sha256"], sha256_hex(backends.table(100).as_bytes()));
    assert_eq!(
        metric(&running, "strangler_config_revision").await,
        Some(2.0)
    );
}

/// A file changed the moment the proxy has started is still seen promptly, not only by the
/// slow safety-net poll.
#[tokio::test]
async fn a_change_written_right_after_start_is_seen_promptly() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-right-after-start", 0).start().await;
    // No await between start and the write: nothing else on this runtime has run yet.
    let start = Instant::now();
    rename_save(running.path(), &backends.table(100));
    let took = time_until_users_serve(&running, start).await;
    println!("write right after start: traffic moved {took:?} after the write");
}

#[derive(Default)]
struct LoadReport {
    ok: AtomicUsize,
    failed: AtomicUsize,
    monolith: AtomicUsize,
    users: AtomicUsize,
    first_failures: std::sync::Mutex<Vec<String>>,
}

impl LoadReport {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failures.lock().unwrap();
        if first.len() < 10 {
            first.push(why);
        }
    }
}

/// 16 clients send GETs until `done` (or 30 s, or 200k requests each), counting every answer.
fn spawn_load(
    public: SocketAddr,
    done: Arc<AtomicBool>,
    report: Arc<LoadReport>,
) -> Vec<tokio::task::JoinHandle<()>> {
    const CLIENTS: usize = 16;
    const MAX_TIME: Duration = Duration::from_secs(30);
    const MAX_REQUESTS_PER_CLIENT: usize = 200_000;
    (0..CLIENTS)
        .map(|c| {
            let (done, report) = (done.clone(), report.clone());
            tokio::spawn(async move {
                let client = client();
                let started = Instant::now();
                for i in 0..MAX_REQUESTS_PER_CLIENT {
                    if done.load(Ordering::Relaxed) || started.elapsed() > MAX_TIME {
                        break;
                    }
                    let target = url(public, &format!("/api/users/{c}-{i}"));
                    match send(&client, Method::GET, &target, &[]).await {
                        Ok(a) if a.status == StatusCode::OK => match a.backend().as_str() {
                            "monolith" => {
                                report.monolith.fetch_add(1, Ordering::Relaxed);
                                report.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            "users" => {
                                report.users.fetch_add(1, Ordering::Relaxed);
                                report.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => report.fail(format!("{target}: answered by {other:?}")),
                        },
                        Ok(a) => report.fail(format!("{target}: {} {}", a.status, a.text())),
                        Err(e) => report.fail(format!("{target}: {e}")),
                    }
                }
            })
        })
        .collect()
}

/// How a rewrite reaches the disk.
#[derive(Clone, Copy, Debug)]
enum Save {
    /// Temp file in the same directory, renamed over: a reader sees the old or the new file.
    Rename,
    /// Truncate, then write in two halves: a reader can see an empty or half-written file.
    InPlaceInTwoHalves,
}

async fn rewrites_under_load(save: Save) {
    const WRITES: usize = 50;
    let backends = Backends::echo().await;
    let running = backends
        .at(&format!("reload-under-load-{save:?}"), 0)
        .start()
        .await;
    let path = running.path().to_path_buf();
    assert_eq!(backend(&running, "/api/users/1").await, "monolith");

    let done = Arc::new(AtomicBool::new(false));
    let report = Arc::new(LoadReport::default());
    let load = spawn_load(running.public, done.clone(), report.clone());

    let started = Instant::now();
    let mut last = String::new();
    for i in 0..WRITES {
        // Odd writes send everything to users; the last write (49) is odd. The comment makes
        // every write new bytes, so each read of a whole file is a new revision.
        let weight = if i % 2 == 1 { 100 } else { 0 };
        last = backends.table_with("", weight, &format!("write {i}"));
        match save {
            Save::Rename => rename_save(&path, &last),
            Save::InPlaceInTwoHalves => write_in_two_halves(&path, &last),
        }
        // Pacing, not synchronisation: faster than the 50 ms debounce, so some writes are
        // coalesced and some are read while the next is on its way.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writing = started.elapsed();
    done.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let ok = report.ok.load(Ordering::Relaxed);
    let failed = report.failed.load(Ordering::Relaxed);
    let rejected = metric(
        &running,
        "strangler_config_reloads_total{result=\"rejected\"}",
    )
    .await
    .unwrap_or(0.0);
    println!(
        "{save:?}: {WRITES} writes in {writing:?}; {ok} ok ({} monolith, {} users), {failed} failed; \
         revision {} ; {rejected} rejected reloads",
        report.monolith.load(Ordering::Relaxed),
        report.users.load(Ordering::Relaxed),
        running.live.table().revision,
    );
    assert_eq!(
        failed,
        0,
        "requests failed during reloads: {:?}",
        report.first_failures.lock().unwrap()
    );
    assert!(ok > 300, "only {ok} requests made: the load did not run");
    assert!(
        report.monolith.load(Ordering::Relaxed) > 0 && report.users.load(Ordering::Relaxed) > 0,
        "traffic never moved during the rewrites"
    );

    // The last write wins, whole.
    let settled = eventually(FLIP_DEADLINE, || async {
        routes_doc(&running).await["sha256"] == sha256_hex(last.as_bytes())
    })
    .await;
    let doc = routes_doc(&running).await;
    assert!(settled, "the last write never became the table: {doc}");
    assert!(doc["revision"].as_u64().unwrap() > 1, "{doc}");
    assert!(doc["last_reload_error"].is_null(), "{doc}");
    assert_eq!(doc["routes"][0]["weight"], 100);
    assert_eq!(backend(&running, "/api/users/1").await, "users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_rename_saves_under_load_fail_no_request() {
    rewrites_under_load(Save::Rename).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_in_place_writes_under_load_fail_no_request() {
    rewrites_under_load(Save::InPlaceInTwoHalves).await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_table_it_started_with() {
    let (monolith, gate) = gated_upstream("monolith").await;
    let backends = Backends {
        monolith,
        users: support::echo_upstream("users").await,
    };
    let running = backends
        .at("reload-in-flight", 0)
        .proxy_key("backend_header = false")
        .start()
        .await;
    assert_eq!(revision(&running).await, 1);

    let in_flight = spawn_get(url(running.public, "/api/users/held/1"));
    assert!(
        eventually(Duration::from_secs(5), || async { gate.arrived() == 1 }).await,
        "the request never reached monolith"
    );

    // The new table moves the route and turns on the backend header.
    rename_save(
        running.path(),
        &backends.table_with("backend_header = true", 100, ""),
    );
    let start = Instant::now();
    let moved = eventually(FLIP_DEADLINE, || async {
        backend(&running, "/api/users/1").await == "users"
    })
    .await;
    assert!(moved, "the flip was not seen in {:?}", start.elapsed());
    assert_eq!(revision(&running).await, 2);
    assert!(
        !in_flight.is_finished(),
        "the held request must still be in flight"
    );

    gate.open();
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.backend(), "monolith");
    assert_eq!(answer.json()["path"], "/api/users/held/1");
    assert!(
        answer.headers.get("x-strangler-backend").is_none(),
        "the in-flight request was answered with the new table's settings"
    );

    let after = get(&url(running.public, "/api/users/held/2")).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.backend(), "users");
    assert_eq!(after.headers["x-strangler-backend"], "users");
}

/// Writes `text` to a temp file beside `path` and renames it over `path`.
fn rename_save(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Truncates `path` and writes `text` with two separate `write` calls.
fn write_in_two_halves(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let (a, b) = text.as_bytes().split_at(text.len() / 2);
    file.write_all(a).unwrap();
    file.flush().unwrap();
    file.write_all(b).unwrap();
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// A directory laid out the way kubelet projects a ConfigMap volume:
/// `routes.toml -> ..data/routes.toml`, `..data -> ..<timestamp>`, the file in `..<timestamp>/`.
struct ConfigMap {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMap {
    fn create(dir: &Path, text: &str) -> Self {
        let configmap = Self {
            dir: dir.to_path_buf(),
            generation: 1,
        };
        let data = configmap.write_generation(text);
        std::os::unix::fs::symlink(&data, dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/routes.toml", dir.join("routes.toml")).unwrap();
        configmap
    }

    fn generation_dir(&self) -> String {
        format!("..2026_11_23_10_04_{:02}.{:09}", self.generation, 42)
    }

    /// Writes the payload into a fresh timestamped directory; returns its name.
    fn write_generation(&self, text: &str) -> String {
        let name = self.generation_dir();
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join("routes.toml"), text).unwrap();
        name
    }

    /// Kubelet's AtomicWriter: new directory, `..data_tmp` symlink to it, rename over `..data`,
    /// delete the old directory.
    fn update(&mut self, text: &str) {
        let old = self.generation_dir();
        self.generation += 1;
        let new = self.write_generation(text);
        std::os::unix::fs::symlink(&new, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.join(old)).unwrap();
    }
}

/// An invalid file left on disk is refused once, not again at every poll or event.
#[tokio::test]
async fn the_same_invalid_file_is_refused_once() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-refused-once", 0).start().await;
    running.write(&backends.table(0).replace("weight = 0", "weight = 300"));
    for _ in 0..3 {
        assert!(matches!(
            running.reloader.reload(),
            Outcome::Rejected(_) | Outcome::StillRejected
        ));
    }
    let outcome = running.reloader.reload();
    assert!(matches!(outcome, Outcome::StillRejected), "{outcome:?}");
    let rejected = "strangler_config_reloads_total{result=\"rejected\"}";
    assert_eq!(metric(&running, rejected).await, Some(1.0));
    // A different invalid file is news again.
    running.write(&backends.table(0).replace("weight = 0", "weight = 400"));
    let counted = eventually(Duration::from_secs(2), || async {
        metric(&running, rejected).await == Some(2.0)
    })
    .await;
    assert!(
        counted,
        "{:?} rejections: {}",
        metric(&running, rejected).await,
        routes_doc(&running).await
    );
    assert!(
        routes_doc(&running).await["last_reload_error"]
            .to_string()
            .contains("found 400")
    );
}

/// A writer that stops for 80 ms between `[services]` and `[[routes]]`, the file open all
/// along: the first half (a valid table with no routes) must never serve. Clients keep asking
/// for `/api/users/...` throughout; every answer must come from `users`, and the save must
/// add exactly one revision with no rejection on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_in_two_halves_with_a_pause_is_read_once_whole() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-two-halves-paused", 100).start().await;
    assert_eq!(backend(&running, "/api/users/1").await, "users");
    assert_eq!(revision(&running).await, 1);
    let text = backends.table_with("", 100, "saved in two halves");
    let split = text.find("[[routes]]").expect("the table has a route");
    let (first, second) = text.split_at(split);

    let done = Arc::new(AtomicBool::new(false));
    let report = Arc::new(LoadReport::default());
    let load = spawn_load(running.public, done.clone(), report.clone());
    // Let the clients get going before the save.
    assert!(
        eventually(Duration::from_secs(5), || async {
            report.ok.load(Ordering::Relaxed) + report.failed.load(Ordering::Relaxed) > 50
        })
        .await
    );
    let path = running.path().to_path_buf();
    let (first, second) = (first.to_string(), second.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(first.as_bytes()).unwrap();
        file.flush().unwrap();
        // The writer's pause is the input under test, not synchronisation.
        std::thread::sleep(Duration::from_millis(80));
        file.write_all(second.as_bytes()).unwrap();
        // Closed here.
    })
    .await
    .unwrap();
    let settled = eventually(FLIP_DEADLINE, || async {
        routes_doc(&running).await["sha256"] == sha256_hex(text.as_bytes())
    })
    .await;
    // Keep asking a little past the swap, bounded by request count.
    let seen = report.ok.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || async {
            report.ok.load(Ordering::Relaxed) > seen + 100
        })
        .await
    );
    done.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let doc = routes_doc(&running).await;
    assert!(settled, "the whole file never became the table: {doc}");
    let misrouted = report.monolith.load(Ordering::Relaxed);
    assert_eq!(
        (misrouted, report.failed.load(Ordering::Relaxed)),
        (0, 0),
        "requests misrouted to monolith or failed while the file was half written: {:?}",
        report.first_failures.lock().unwrap()
    );
    assert_eq!(doc["revision"], 2, "one save, one revision: {doc}");
    assert!(doc["last_reload_error"].is_null(), "{doc}");
    let rejected = "strangler_config_reloads_total{result=\"rejected\"}";
    assert_eq!(
        metric(&running, rejected).await.unwrap_or(0.0),
        0.0,
        "the half-written file was read"
    );
}

/// A file without `[[routes]]` replacing a table that has some is refused (a half-written
/// file looks exactly like that) unless it says `routes = "none"`.
#[tokio::test]
async fn a_reload_dropping_every_route_is_refused_unless_the_file_says_so() {
    let backends = Backends::echo().await;
    let running = backends.at("reload-drops-every-route", 100).start().await;
    let no_routes = ProxyBuilder::new("unused")
        .service("monolith", backends.monolith)
        .service("users", backends.users)
        .text();

    let outcome = running.rewrite(&no_routes);
    let Outcome::Rejected(errors) = outcome else {
        panic!("a table dropping every route was not refused: {outcome:?}");
    };
    assert!(errors.to_string().contains("routes = \"none\""), "{errors}");
    let doc = routes_doc(&running).await;
    let error = doc["last_reload_error"]["errors"][0].as_str().unwrap_or("");
    assert!(
        error.contains("no [[routes]] but revision 1 serves 1 (users)")
            && error.contains("add `routes = \"none\"` under [proxy]"),
        "{doc}"
    );
    assert_eq!(doc["revision"], 1);
    assert_eq!(backend(&running, "/api/users/1").await, "users");

    let on_purpose = no_routes.replace(
        "access_log = false\n",
        "access_log = false\nroutes = \"none\"\n",
    );
    assert!(matches!(running.rewrite(&on_purpose), Outcome::Applied(2)));
    let doc = routes_doc(&running).await;
    assert_eq!(doc["routes"], serde_json::json!([]), "{doc}");
    assert!(doc["last_reload_error"].is_null(), "{doc}");
    assert_eq!(backend(&running, "/api/users/1").await, "monolith");
    // With no routes in service, a file without routes needs no permission.
    assert!(matches!(running.rewrite(&no_routes), Outcome::Applied(3)));
}
