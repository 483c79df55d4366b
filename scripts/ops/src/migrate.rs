//! `migrate-data RESOURCE`: copy, verify and (with `--follow`) keep following one resource.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use monolith::db::Seed;
use monolith::legacy::Resource;
use rusqlite::Connection;
use strangler_proxy::config::Config;

use crate::capture;
use crate::copy::{self, CopyOptions};
use crate::progress::{Display, Progress};
use crate::resource::Table;
use crate::signals::Stop;
use crate::verify::Verification;

/// How long a statement waits for the monolith or the service holding a write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What to migrate and how.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// The resource whose table moves.
    pub resource: Resource,
    /// Holds `monolith.db` and the services' databases.
    pub data_dir: PathBuf,
    /// Batch size and pacing.
    pub copy: CopyOptions,
    /// Keep applying the monolith's changes after the copy until stopped.
    pub follow: bool,
    /// How often `--follow` looks for new changes.
    pub poll: Duration,
    /// How often `--follow` prints its lag.
    pub report_every: Duration,
    /// Only compare both sides.
    pub verify_only: bool,
    /// Progress bar or log lines.
    pub display: Display,
}

/// How a migration ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides verified equal.
    Verified,
    /// Verification found a difference (exit 1).
    Mismatch,
    /// Stopped by a signal before the copy finished; the checkpoint is kept (exit 130).
    Stopped {
        /// Last id copied.
        after: Option<i64>,
    },
}

/// `DATA/monolith.db` and `DATA/RESOURCE.db`.
pub fn paths(data_dir: &Path, resource: Resource) -> (PathBuf, PathBuf) {
    (
        data_dir.join("monolith.db"),
        data_dir.join(format!("{}.db", resource.name())),
    )
}

/// Opens the service's database (creating it with the schema the service itself creates) with
/// the monolith's attached as `src`.
pub fn open(source: &Path, target: &Path, table: Table) -> anyhow::Result<Connection> {
    if !source.is_file() {
        bail!(
            "no monolith database at {} (start the monolith once, or pass --data-dir)",
            source.display()
        );
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut conn =
        Connection::open(target).with_context(|| format!("opening {}", target.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The services open their databases in WAL mode too; it lets them read while we write.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Ids arrive in order but the posts indexes (by thread, by user) take them at random
    // places: a cache that holds those indexes saves most of a large copy's I/O.
    conn.pragma_update(None, "cache_size", -256 * 1024)?;
    monolith::db::init(&mut conn, &[table.resource], Seed::Empty).with_context(|| {
        format!(
            "preparing the {} table in {}",
            table.name(),
            target.display()
        )
    })?;
    let source_text = source
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", source.display()))?;
    conn.execute("ATTACH DATABASE ?1 AS src", [source_text])
        .with_context(|| format!("attaching {}", source.display()))?;
    let has_table: i64 = conn.query_row(
        "SELECT count(*) FROM src.sqlite_master WHERE type = 'table' AND name = ?1",
        [table.name()],
        |row| row.get(0),
    )?;
    if has_table == 0 {
        bail!(
            "{} has no {} table: is it the monolith's database?",
            source.display(),
            table.name()
        );
    }
    copy::ensure_checkpoint(&conn, table)?;
    Ok(conn)
}

/// Refuses a copy that would overwrite writes the service already takes: a route sending
/// non-safe methods of this resource to its service at a weight above 0 (or shadowing them).
pub fn guard(config: &Config, resource: Resource) -> Result<(), String> {
    for route in config
        .routes
        .iter()
        .filter(|r| r.service == resource.name())
    {
        if route.sends_writes() {
            return Err(format!(
                "route {:?} sends writes to service {:?} (weight {}): the service's database \
                 already takes changes the monolith does not have, and a copy would overwrite \
                 them. Roll the route back first (scripts/rollback {}), restrict it to reads \
                 (scripts/shift {} {} --methods GET,HEAD), or pass --force",
                route.name, route.service, route.weight, route.name, route.name, route.weight
            ));
        }
        if route.mirrors_writes() {
            return Err(format!(
                "route {:?} mirrors writes to service {:?} (shadow_methods): they land in the \
                 service's database while it is being copied. Turn shadow off \
                 (scripts/shift {} {} --shadow off) or pass --force",
                route.name, route.service, route.name, route.weight
            ));
        }
    }
    Ok(())
}

/// Runs a migration; reports go to `out`, progress to stderr.
pub fn run(options: &MigrateOptions, stop: &Stop, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let table = Table::of(options.resource);
    let (source, target) = paths(&options.data_dir, options.resource);
    let mut conn = open(&source, &target, table)?;
    let labels = (source.display().to_string(), target.display().to_string());
    if options.verify_only {
        return verify(&mut conn, table, &labels, out);
    }
    if options.follow {
        // Before the copy, so that nothing written while it runs is missed.
        capture::install(&mut conn, table).with_context(|| {
            format!("installing change capture triggers in {}", source.display())
        })?;
        writeln!(
            out,
            "change capture on: triggers on table {} in {} record changed ids in {}",
            table.name(),
            source.display(),
            capture::CHANGES
        )?;
    }
    let result = copy_then_verify(options, &mut conn, table, &labels, stop, out);
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            if options.follow {
                // Leave the monolith as we found it; the next run copies everything again.
                let _ = capture::uninstall(&mut conn, table);
            }
            return Err(e);
        }
    };
    Ok(outcome)
}

fn copy_then_verify(
    options: &MigrateOptions,
    conn: &mut Connection,
    table: Table,
    labels: &(String, String),
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    if let Some(after) = copy::interrupted_at(conn, table)? {
        writeln!(
            out,
            "resuming the interrupted copy of {} after id {after} (earlier rows were copied by the \
             previous run; verification below checks them all)",
            table.name()
        )?;
    }
    let mut progress: Option<Progress> = None;
    let label = format!("copying {}", table.name());
    let copied = copy::run(
        conn,
        table,
        options.copy,
        &mut |done, total| match &mut progress {
            Some(p) => p.advance(done),
            None => progress = Some(Progress::rows(&label, total, options.display)),
        },
        stop,
    )?;
    if let Some(p) = &mut progress {
        p.finish();
    }
    let secs = copied.elapsed.as_secs_f64();
    writeln!(
        out,
        "copied {}: {} rows read, {} written, {} removed (gone from the monolith), {} batches in \
         {:.2}s ({:.0} rows/s)",
        table.name(),
        copied.scanned,
        copied.written,
        copied.removed,
        copied.batches,
        secs,
        if secs > 0.0 {
            copied.scanned as f64 / secs
        } else {
            0.0
        }
    )?;
    if copied.stopped {
        let after = copy::interrupted_at(conn, table)?;
        if options.follow {
            capture::uninstall(conn, table)?;
        }
        match after {
            Some(id) => writeln!(
                out,
                "stopped after id {id}; run the same command again to continue"
            )?,
            None => writeln!(out, "stopped before the first batch")?,
        }
        return Ok(Outcome::Stopped { after });
    }
    if !options.follow {
        return verify(conn, table, labels, out);
    }
    let (v, mut cursor) = catch_up_and_verify(conn, table, 0, labels)?;
    if report(&v, out)? == Outcome::Mismatch {
        capture::uninstall(conn, table)?;
        return Ok(Outcome::Mismatch);
    }
    writeln!(
        out,
        "following changes to {} in the monolith; Ctrl-C or SIGTERM stops",
        table.name()
    )?;
    out.flush()?;
    cursor = follow(conn, table, cursor, options, stop, out)?;
    // Stop capturing first, then apply what was captured before, so nothing falls in between.
    capture::uninstall(conn, table)?;
    let (v, cursor) = catch_up_and_verify(conn, table, cursor, labels)?;
    capture::forget(conn, table, cursor)?;
    capture::tidy(conn)?;
    writeln!(
        out,
        "stopped following; change capture removed; final verification:"
    )?;
    report(&v, out)
}

/// Digests both sides in one transaction and reports what it found.
fn verify(
    conn: &mut Connection,
    table: Table,
    labels: &(String, String),
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let tx = conn.transaction()?;
    let v = Verification::run(&tx, table, labels.0.clone(), labels.1.clone())?;
    tx.commit()?;
    report(&v, out)
}

/// Prints a verification's table; both sides equal is [`Outcome::Verified`].
fn report(v: &Verification, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    write!(out, "{}", v.render())?;
    Ok(if v.matches() {
        Outcome::Verified
    } else {
        Outcome::Mismatch
    })
}

/// Applies every captured change and digests both sides in one transaction, so the monolith's
/// side is a single snapshot and the service's holds exactly the changes made before it.
fn catch_up_and_verify(
    conn: &mut Connection,
    table: Table,
    mut cursor: i64,
    labels: &(String, String),
) -> anyhow::Result<(Verification, i64)> {
    let tx = copy::begin_on_target(conn, table)?;
    loop {
        let applied = capture::apply(&tx, table, cursor, 10_000)?;
        cursor = applied.last_seq;
        if applied.changes == 0 {
            break;
        }
    }
    let v = Verification::run(&tx, table, labels.0.clone(), labels.1.clone())?;
    tx.commit()?;
    capture::forget(conn, table, cursor)?;
    Ok((v, cursor))
}

/// Applies changes as they arrive until `stop`; returns the last applied sequence number.
fn follow(
    conn: &mut Connection,
    table: Table,
    mut cursor: i64,
    options: &MigrateOptions,
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<i64> {
    let mut last_report = Instant::now();
    let mut applied_since = 0u64;
    let mut total = 0u64;
    let mut slowest_ms = 0u64;
    while !stop.is_set() {
        let (waiting, _) = capture::backlog(conn, table, cursor)?;
        if waiting > 0 {
            let tx = copy::begin_on_target(conn, table)?;
            let applied = capture::apply(&tx, table, cursor, options.copy.batch)?;
            tx.commit()?;
            capture::forget(conn, table, applied.last_seq)?;
            cursor = applied.last_seq;
            applied_since += applied.changes;
            total += applied.changes;
            slowest_ms = slowest_ms.max(applied.lag_ms);
        }
        if last_report.elapsed() >= options.report_every {
            let (backlog, age_ms) = capture::backlog(conn, table, cursor)?;
            writeln!(
                out,
                "following {}: {applied_since} changes applied in the last {:.0?} ({total} in all); \
                 backlog {backlog} (oldest {age_ms} ms); slowest change took {slowest_ms} ms to apply",
                table.name(),
                last_report.elapsed(),
            )?;
            out.flush()?;
            last_report = Instant::now();
            applied_since = 0;
            slowest_ms = 0;
        }
        if waiting < u64::from(options.copy.batch) {
            std::thread::sleep(options.poll);
        }
    }
    Ok(cursor)
}
