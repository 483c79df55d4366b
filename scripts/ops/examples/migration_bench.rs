//! Measures the data tools (BENCHMARKS.md, "Data tools"): the wall time of `migrate-data`'s copy
//! and verification of ROWS rows SQLite → PostgreSQL and PostgreSQL → PostgreSQL, and the
//! follower's lag under a steady write load (SQLite → SQLite by capture triggers, PostgreSQL →
//! PostgreSQL by logical replication).
//!
//! ```sh
//! cargo run --release -p strangler-ops --example migration_bench -- [ROWS] [WRITES_PER_S] [SECONDS]
//! ```
//!
//! Defaults: 1,000,000 rows; 200 writes/s for 20 s. It starts its own throwaway PostgreSQL
//! cluster on 127.0.0.1 (Debian's `postgresql` package; as `nobody` when run as root) with the
//! server's default durability settings, and stops it by its PID at the end. Every figure is
//! measured, none asserted.

#[path = "../tests/common/accounts.rs"]
mod accounts;

use accounts::{PG_ACCOUNTS as PG_TABLE, SQLITE_ACCOUNTS as SQLITE_TABLE};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strangler_ops::copy::CopyOptions;
use strangler_ops::migrate::{self, Capture, MigrateOptions, Outcome};
use strangler_ops::migrations::Migrations;
use strangler_ops::progress::Display;
use strangler_ops::signals::Stop;

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: ROWS WRITES_PER_S SECONDS"))
        .collect();
    let rows = args.first().copied().unwrap_or(1_000_000);
    let rate = args.get(1).copied().unwrap_or(200);
    let seconds = args.get(2).copied().unwrap_or(20);
    let dir =
        std::env::temp_dir().join(format!("strangler-migration-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, rows, rate, seconds);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path, rows: u64, rate: u64, seconds: u64) -> anyhow::Result<()> {
    println!(
        "machine: {} CPUs; {rows} rows; PostgreSQL from {}",
        cpus(),
        test_postgres::bin_dir().display()
    );
    let cluster = test_postgres::Cluster::start_with(&[]);
    for db in ["shop", "ledger_a", "ledger_b"] {
        cluster.create_db(db);
    }
    for db in ["ledger_a", "ledger_b"] {
        cluster.client(db).batch_execute(PG_TABLE)?;
    }
    let t = Instant::now();
    fill_sqlite(&dir.join("monolith.db"), rows)?;
    println!("filled SQLite in {:.1?} (not counted)", t.elapsed());
    let t = Instant::now();
    let mut shop = cluster.client("shop");
    shop.batch_execute(PG_TABLE)?;
    shop.execute(
        "INSERT INTO accounts SELECT g * 3, 'user' || g || '@example.org', g % 1000, g % 2 = 0,
                timestamp '2024-03-01' + g * interval '1 second',
                CASE WHEN g % 5 = 0 THEN NULL ELSE g / 4.0 END,
                CASE WHEN g % 4 = 0 THEN NULL ELSE 'nick ' || g END
           FROM generate_series(1, $1::int8) g",
        &[&(rows as i64)],
    )?;
    shop.batch_execute("VACUUM ANALYZE accounts")?;
    println!("filled PostgreSQL in {:.1?} (not counted)", t.elapsed());

    println!();
    println!("| copy and verify | rows | copy + verify wall time | rows/s |");
    println!("|---|---|---|---|");
    for (label, source, target) in [
        (
            "SQLite → PostgreSQL",
            "sqlite:monolith.db".to_string(),
            cluster.url("ledger_a"),
        ),
        (
            "PostgreSQL → PostgreSQL",
            cluster.url("shop"),
            cluster.url("ledger_b"),
        ),
    ] {
        let decl = declaration(&source, &target);
        let options = options(dir, &decl, false, Capture::Auto);
        let mut out = Vec::new();
        let started = Instant::now();
        let outcome = migrate::run(&options, &Stop::new(), &mut out)?;
        let took = started.elapsed();
        let report = String::from_utf8_lossy(&out);
        assert_eq!(outcome, Outcome::Verified, "{report}");
        println!(
            "| {label} | {rows} | {:.2} s | {:.0} |",
            took.as_secs_f64(),
            rows as f64 / took.as_secs_f64()
        );
        for line in report
            .lines()
            .filter(|l| l.starts_with("copied") || l.starts_with("verification"))
        {
            eprintln!("  {label}: {line}");
        }
    }

    println!();
    println!("| follow | writes | rate | lag p50 | lag p99 | lag max |");
    println!("|---|---|---|---|---|---|");
    let source = dir.join("lag-monolith.db");
    fill_sqlite(&source, 100_000)?;
    let target = dir.join("lag-ledger.db");
    rusqlite::Connection::open(&target)?.execute_batch(SQLITE_TABLE)?;
    follow_lag(
        "SQLite → SQLite, capture triggers, `--poll 5ms`",
        dir,
        Store::Sqlite(source),
        Store::Sqlite(target),
        declaration("sqlite:lag-monolith.db", "sqlite:lag-ledger.db"),
        (rate, seconds),
        Capture::Triggers,
    )?;
    let source = dir.join("lag-monolith-2.db");
    fill_sqlite(&source, 100_000)?;
    cluster.create_db("lag_dst_s");
    cluster.client("lag_dst_s").batch_execute(PG_TABLE)?;
    follow_lag(
        "SQLite → PostgreSQL, capture triggers, `--poll 5ms`",
        dir,
        Store::Sqlite(source),
        Store::Postgres(cluster.url("lag_dst_s")),
        declaration("sqlite:lag-monolith-2.db", &cluster.url("lag_dst_s")),
        (rate, seconds),
        Capture::Triggers,
    )?;
    for (src, dst, label, capture) in [
        (
            "lag_src",
            "lag_dst",
            "PostgreSQL → PostgreSQL, logical replication",
            Capture::Replication,
        ),
        (
            "lag_src_t",
            "lag_dst_t",
            "PostgreSQL → PostgreSQL, capture triggers, `--poll 5ms`",
            Capture::Triggers,
        ),
    ] {
        for db in [src, dst] {
            cluster.create_db(db);
            cluster.client(db).batch_execute(PG_TABLE)?;
        }
        cluster.client(src).batch_execute(
            "INSERT INTO accounts SELECT g * 3, 'user' || g || '@example.org', g % 1000, g % 2 = 0,
                    timestamp '2024-03-01' + g * interval '1 second', g / 4.0, NULL
               FROM generate_series(1, 100000) g",
        )?;
        follow_lag(
            label,
            dir,
            Store::Postgres(cluster.url(src)),
            Store::Postgres(cluster.url(dst)),
            declaration(&cluster.url(src), &cluster.url(dst)),
            (rate, seconds),
            capture,
        )?;
    }
    drop(cluster);
    Ok(())
}

/// Where the lag test writes and looks.
#[derive(Clone)]
enum Store {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Store {
    fn open(&self) -> anyhow::Result<Handle> {
        Ok(match self {
            Store::Sqlite(path) => {
                let c = rusqlite::Connection::open(path)?;
                c.busy_timeout(Duration::from_secs(10))?;
                Handle::Sqlite(c)
            }
            Store::Postgres(url) => {
                Handle::Postgres(Box::new(postgres::Client::connect(url, postgres::NoTls)?))
            }
        })
    }
}

enum Handle {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

impl Handle {
    fn insert(&mut self, key: i64) -> anyhow::Result<()> {
        match self {
            Handle::Sqlite(c) => {
                c.execute(
                    "INSERT INTO accounts VALUES (?1, 'w@example.org', 1, 1, '2025-01-01 00:00:00', 1.5, 'w')",
                    [key],
                )?;
            }
            Handle::Postgres(c) => {
                c.execute(
                    "INSERT INTO accounts VALUES ($1, 'w@example.org', 1, true, '2025-01-01 00:00:00', 1.5, 'w')",
                    &[&key],
                )?;
            }
        }
        Ok(())
    }

    fn max_key(&mut self) -> anyhow::Result<i64> {
        Ok(match self {
            Handle::Sqlite(c) => c.query_row(
                "SELECT coalesce(max(account_no), 0) FROM accounts",
                [],
                |r| r.get(0),
            )?,
            Handle::Postgres(c) => c
                .query_one(
                    "SELECT coalesce(max(account_no), 0)::int8 FROM accounts",
                    &[],
                )?
                .get(0),
        })
    }
}

/// Starts a follower, writes `rate` rows a second into `source` for `seconds`, and reports how
/// long each took to appear in `target` (a reader polling every millisecond).
fn follow_lag(
    label: &str,
    dir: &Path,
    source: Store,
    target: Store,
    decl: strangler_ops::migrations::Declared,
    (rate, seconds): (u64, u64),
    capture: Capture,
) -> anyhow::Result<()> {
    let options = options(dir, &decl, true, capture);
    let stop = Stop::new();
    let mut out_log = Vec::new();
    let follower = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            migrate::run(&options, &stop, &mut out).map(|o| (o, out))
        })
    };
    // Following once every pre-existing row is in the target.
    let mut probe = target.open()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while probe.max_key()? < 300_000 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the follower did not copy the table"
        );
        anyhow::ensure!(!follower.is_finished(), "the follower stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the follower reach its loop (verification of the first copy) before the load starts.
    std::thread::sleep(Duration::from_secs(2));
    let committed: Arc<Mutex<BTreeMap<i64, Instant>>> = Arc::default();
    let writer = {
        let committed = committed.clone();
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut w = source.open()?;
            let every = Duration::from_secs_f64(1.0 / rate as f64);
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(seconds) {
                let key = 10_000_000 + n as i64;
                w.insert(key)?;
                committed.lock().unwrap().insert(key, Instant::now());
                n += 1;
                let next = start + every * n as u32;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(n)
        })
    };
    let mut lags: Vec<Duration> = Vec::new();
    let mut seen = 9_999_999i64;
    let end = Instant::now() + Duration::from_secs(seconds + 30);
    loop {
        let max = probe.max_key()?;
        let now = Instant::now();
        if max > seen {
            let committed = committed.lock().unwrap();
            for (_, at) in committed.range(seen + 1..=max) {
                lags.push(now.saturating_duration_since(*at));
            }
            seen = max;
        }
        if writer.is_finished()
            && committed
                .lock()
                .unwrap()
                .keys()
                .next_back()
                .is_some_and(|k| *k <= seen)
        {
            break;
        }
        anyhow::ensure!(now < end, "the follower fell behind by more than 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let written = writer.join().expect("writer")?;
    stop.set();
    let (outcome, out) = follower.join().expect("follower")?;
    out_log.extend(out);
    let report = String::from_utf8_lossy(&out_log);
    anyhow::ensure!(
        outcome == Outcome::Verified,
        "final verification failed: {report}"
    );
    lags.sort();
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];
    println!(
        "| {label}: inserts into a 100,000-row table | {written} | {rate}/s for {seconds} s | {:.1} ms | {:.1} ms | {:.1} ms |",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*lags.last().unwrap())
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn declaration(source: &str, target: &str) -> strangler_ops::migrations::Declared {
    let text = format!(
        "[resources.accounts]\nroute = \"accounts\"\nkey = \"account_no\"\n\
         source = {{ url = \"{source}\", table = \"accounts\" }}\n\
         target = {{ url = \"{target}\", table = \"accounts\" }}\n"
    );
    Migrations::parse("bench", &text)
        .expect("valid declaration")
        .resources
        .remove(0)
}

fn options(
    dir: &Path,
    decl: &strangler_ops::migrations::Declared,
    follow: bool,
    capture: Capture,
) -> MigrateOptions {
    MigrateOptions {
        resource: decl.clone(),
        data_dir: dir.to_path_buf(),
        copy: CopyOptions {
            batch: 50_000,
            pause: Duration::ZERO,
        },
        follow,
        reverse: false,
        poll: Duration::from_millis(5),
        report_every: Duration::from_secs(3600),
        verify_only: false,
        display: Display::Lines,
        capture,
    }
}

fn fill_sqlite(path: &Path, rows: u64) -> anyhow::Result<()> {
    Ok(accounts::fill_sqlite(path, rows as i64)?)
}
