//! `migrate-data RESOURCE`: copy, verify and (with `--follow`) keep following one resource, in
//! whichever direction [`crate::sync`] records: monolith → service until writes are switched,
//! service → monolith after.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use strangler_proxy::config::Config;

use crate::capture;
use crate::conflicts;
use crate::copy::{self, CopyOptions};
use crate::db::Db;
use crate::migrations::{DbUrl, Declared};
use crate::pair::{Open, Pair};
use crate::progress::{Display, Progress};
use crate::replication;
use crate::resource::Table;
use crate::signals::Stop;
use crate::sync::{self, Direction, Record, Side, SyncStage};
use crate::verify::Verification;

/// How `--follow` captures changes between two PostgreSQL databases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Capture {
    /// Logical replication where both sides are PostgreSQL and it is usable (and no trigger
    /// capture is under way already), triggers otherwise.
    #[default]
    Auto,
    /// Triggers into change tables, on any engines (what `cutover` and `complete` build on).
    Triggers,
    /// PostgreSQL logical replication (both sides PostgreSQL, `wal_level = logical`).
    Replication,
}

/// What to migrate and how.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// The resource whose table moves, as `migrations.toml` declares it.
    pub resource: Declared,
    /// Where relative `sqlite:` paths of the declaration point (`--data-dir`).
    pub data_dir: PathBuf,
    /// Batch size and pacing.
    pub copy: CopyOptions,
    /// Keep applying changes (in the recorded direction) after the copy until stopped.
    pub follow: bool,
    /// `--reverse`: writes are switched to the service; catch the monolith up instead of
    /// copying (refused when the recorded direction is not reverse).
    pub reverse: bool,
    /// How often `--follow` looks for new changes (a cheap check of the source database's
    /// `PRAGMA data_version`, so a few milliseconds cost little).
    pub poll: Duration,
    /// How often `--follow` prints its lag.
    pub report_every: Duration,
    /// Only compare both sides.
    pub verify_only: bool,
    /// Progress bar or log lines.
    pub display: Display,
    /// How `--follow` captures changes.
    pub capture: Capture,
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
    /// Nothing done, for the reason given (exit 1).
    Refused(String),
    /// The follower stopped after a cutover and left capture in place (exit 0).
    Detached,
    /// The follower exited because `complete` finished the migration (exit 0).
    Completed,
}

/// Why shadowing `resource` to its service now compares nothing useful: the service's database
/// (relative SQLite paths under `data_dir`) is missing or holds no row of the resource, so every
/// shadowed read that finds a row on the monolith mismatches until `migrate-data` copies them.
/// `None` when it holds rows (or cannot be read, which the service itself will say).
pub fn empty_service_database(data_dir: &Path, resource: &Declared) -> Option<String> {
    let name = resource.name();
    let copy = format!("run `scripts/migrate-data {name} --follow` first");
    let target = resource.target.url.resolve(data_dir);
    if let DbUrl::Sqlite(path) = &target
        && !path.is_file()
    {
        return Some(format!(
            "the {name} service has no database at {} yet: every shadowed read of an existing \
             {name} row will mismatch; {copy} (or pass --data-dir)",
            path.display()
        ));
    }
    if !crate::migrations::is_identifier(&resource.target.table) {
        return None;
    }
    let mut db = Db::open(&resource.target.url, data_dir, false).ok()?;
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) AS any_row",
        crate::resource::quote(&resource.target.table)
    );
    let rows = db.query_i64(&sql, &[]).ok()??;
    (rows == 0).then(|| {
        format!(
            "the {name} service's database ({}) holds no {name} yet: every shadowed read of an \
             existing {name} row will mismatch; {copy}",
            target.display()
        )
    })
}

/// Refuses a copy that would overwrite writes the service already takes: a route sending
/// non-safe methods of this resource to its service at a weight above 0 (or shadowing them).
pub fn guard(config: &Config, resource: &Declared) -> Result<(), String> {
    for route in config.routes.iter().filter(|r| r.name == resource.route) {
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
///
/// Errors: a database that cannot be opened, read or written; the tables do not match.
pub fn run(options: &MigrateOptions, stop: &Stop, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    if options.follow
        && !options.reverse
        && let Some(outcome) = by_replication(options, stop, out)?
    {
        return Ok(outcome);
    }
    let (mut pair, table) = Pair::open(&options.data_dir, &options.resource, Open::CreatingTarget)?;
    let pair = &mut pair;
    let table = &table;
    let name = table.name();
    let labels = sync::labels(&options.data_dir, &options.resource);
    if options.verify_only {
        let v = verify_now(pair, table, &labels)?;
        write!(out, "{}", v.render())?;
        return Ok(verdict(&v));
    }
    let rec = sync::load(&mut pair.service, table)?;
    if let Some(rec) = &rec {
        if rec.stage == SyncStage::Complete {
            return Ok(Outcome::Refused(format!(
                "the migration of {name} is complete: the service owns its data and nothing is \
                 copied or followed any more"
            )));
        }
        if (options.follow || options.reverse) && rec.follower_alive() {
            return Ok(Outcome::Refused(format!(
                "a follower of {name} is already running ({}); stop it first (Ctrl-C or kill \
                 -TERM), or wait {:?} after a kill -9",
                rec.describe_follower(),
                sync::LIVE
            )));
        }
    }
    let recorded = rec.as_ref().map(|r| r.direction);
    if options.reverse && recorded != Some(Direction::Reverse) {
        return Ok(Outcome::Refused(format!(
            "--reverse: the writes of {name} are not switched to the service (recorded direction: \
             {}), so there is nothing to carry back. Run `scripts/migrate-data {name} --follow` \
             to follow monolith → service, or switch writes first with `scripts/cutover {name}`",
            recorded.map_or("none, the migration has not started", Direction::as_str)
        )));
    }
    if recorded == Some(Direction::Reverse) {
        if !options.follow && !options.reverse {
            return Ok(Outcome::Refused(format!(
                "the writes of {name} are switched to the service (direction reverse): a copy \
                 from the monolith would overwrite the service's newer writes. Run \
                 `scripts/migrate-data {name} --reverse` to bring the monolith up to date \
                 instead (add --follow to keep it so)"
            )));
        }
        if !options.reverse {
            writeln!(
                out,
                "the writes of {name} are switched to the service (direction reverse): following \
                 {} instead, without copying",
                Direction::Reverse.arrow()
            )?;
        }
        return reverse(options, pair, table, &labels, stop, out);
    }
    if !options.follow {
        return copy_then_verify(options, pair, table, &labels, stop, out);
    }
    forward(options, pair, table, rec.as_ref(), &labels, stop, out)
}

/// `--follow` by logical replication when [`Capture`] and the databases say so; `None` when
/// triggers are to run instead.
fn by_replication(
    options: &MigrateOptions,
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<Option<Outcome>> {
    let r = &options.resource;
    let name = r.name();
    let both_postgres = matches!(
        (&r.source.url, &r.target.url),
        (DbUrl::Postgres(_), DbUrl::Postgres(_))
    );
    match (options.capture, both_postgres) {
        (_, false) if options.capture != Capture::Replication => return Ok(None),
        (Capture::Replication, false) => {
            return Ok(Some(Outcome::Refused(format!(
                "{name}: --capture replication needs PostgreSQL on both sides, and this is {} → \
                 {}; use --capture triggers",
                r.source.url.engine(),
                r.target.url.engine()
            ))));
        }
        _ => {}
    }
    let (mut source, mut target) = open_both(options)?;
    let table = Table::resolve_between(&mut source, &mut target, r)?;
    let subscribed = replication::subscribed(pg_of(&mut target)?, name)?;
    if subscribed {
        if options.capture == Capture::Triggers {
            return Ok(Some(Outcome::Refused(format!(
                "{name}: subscription {} still replicates (left by a follower that did not stop \
                 cleanly), and triggers beside it would be two mechanisms at once: follow \
                 without --capture triggers to resume it, or remove it first \
                 (`migrate-data {name} --remove-capture`)",
                replication::name_of(name)
            ))));
        }
        // A follower killed with -9 left the subscription replicating: resume watching it.
        return follow_logical(options, source, target, &table, stop, out).map(Some);
    }
    // A trigger capture under way, or writes switched (a cutover hands replication over to
    // triggers), keeps running on triggers.
    let triggers_running = sync::load(&mut target, &table)?.is_some();
    let unusable = match replication::unusable(pg_of(&mut source)?, r)? {
        Some(why) => Some(why),
        // A subscription copies the table itself and collides with rows already there.
        None if target.count_from(&table, Side::Service, i64::MIN)? > 0 => Some(format!(
            "the target table {} holds rows already (a subscription's own copy would collide \
             with them)",
            r.target.table
        )),
        None => None,
    };
    match (options.capture, triggers_running, unusable) {
        (Capture::Replication, true, _) => Ok(Some(Outcome::Refused(format!(
            "{name}: change capture by triggers is under way (see scripts/status); stop it \
             first (`migrate-data {name} --remove-capture`) or follow with --capture triggers"
        )))),
        (Capture::Replication, false, Some(why)) => Ok(Some(Outcome::Refused(format!(
            "{name}: logical replication cannot run here: {why}; use --capture triggers"
        )))),
        (Capture::Auto, true, _) | (Capture::Triggers, ..) => Ok(None),
        (Capture::Auto, false, Some(why)) => {
            writeln!(
                out,
                "note: logical replication cannot run here ({why}); capturing changes with \
                 triggers instead"
            )?;
            Ok(None)
        }
        (_, false, None) => follow_logical(options, source, target, &table, stop, out).map(Some),
    }
}

fn verdict(v: &Verification) -> Outcome {
    if v.matches() {
        Outcome::Verified
    } else {
        Outcome::Mismatch
    }
}

fn verify_now(
    pair: &mut Pair,
    table: &Table,
    labels: &(String, String),
) -> anyhow::Result<Verification> {
    let v = Verification::run(pair, table, labels.clone())?;
    sync::record_verified(&mut pair.service, table, v.matches())?;
    Ok(v)
}

fn install_both(pair: &mut Pair, table: &Table) -> anyhow::Result<()> {
    if pair.same_database()? {
        bail!(
            "resource {}: the monolith's table {} and the service's table {} are in the same \
             database, and change capture keeps one change table per database, so it cannot \
             tell their changes apart (every change would be a conflict, the service's \
             uncaptured): give the service its own database (the target url in \
             migrations.toml)",
            table.name(),
            table.table_on(Side::Monolith),
            table.table_on(Side::Service)
        );
    }
    for side in [Side::Monolith, Side::Service] {
        capture::install(pair.db(side), table, side).with_context(|| {
            format!(
                "installing change capture triggers on table {} in the {}'s database",
                table.table_on(side),
                side.label()
            )
        })?;
    }
    Ok(())
}

/// Removes capture on both sides, keeping changes already captured for a last catch-up.
fn uninstall_both(pair: &mut Pair, table: &Table) -> anyhow::Result<()> {
    capture::uninstall(&mut pair.monolith, table, Side::Monolith)?;
    capture::uninstall(&mut pair.service, table, Side::Service)
}

/// Leaves both databases as they were before `--follow`: no triggers, no change tables, no
/// sync row.
fn abandon(pair: &mut Pair, table: &Table) -> anyhow::Result<()> {
    uninstall_both(pair, table)?;
    for side in [Side::Monolith, Side::Service] {
        capture::discard(pair.db(side), table)?;
        capture::tidy(pair.db(side))?;
    }
    sync::forget_state(&mut pair.service, table)
}

/// `--follow` while the monolith takes the writes: capture on both sides, copy (unless a
/// follower that died left capture in place), catch up, verify, follow.
fn forward(
    options: &MigrateOptions,
    pair: &mut Pair,
    table: &Table,
    rec: Option<&Record>,
    labels: &(String, String),
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let name = table.name();
    let resume = rec.is_some_and(|r| matches!(r.stage, SyncStage::Following | SyncStage::Reversed))
        && capture::installed(&mut pair.monolith, table)?
        && capture::installed(&mut pair.service, table)?;
    if resume {
        let rec = rec.expect("resume implies a record");
        writeln!(
            out,
            "resuming: change capture on both sides was left in place by a follower that did not \
             stop cleanly ({}); applying what was captured since, without copying again",
            rec.describe_follower()
        )?;
    } else {
        // Before the copy, so that nothing written while it runs is missed.
        install_both(pair, table)?;
        sync::start(
            &mut pair.service,
            table,
            Direction::Forward,
            SyncStage::Copying,
        )?;
        writeln!(
            out,
            "change capture on: triggers on table {name} in {} and in {} record changed ids in {}",
            labels.0,
            labels.1,
            capture::CHANGES
        )?;
        match copy_then_verify(options, pair, table, labels, stop, out) {
            Ok(Outcome::Verified) => {}
            Ok(other) => {
                // Stopped mid-copy: leave the databases as we found them; the checkpoint stays.
                abandon(pair, table)?;
                return Ok(other);
            }
            Err(e) => {
                let _ = abandon(pair, table);
                return Err(e);
            }
        }
    }
    let v = catch_up_and_verify(pair, table, Direction::Forward, labels, out)?;
    write!(out, "{}", v.render())?;
    if !v.matches() {
        if !resume {
            abandon(pair, table)?;
            return Ok(Outcome::Mismatch);
        }
        writeln!(
            out,
            "warning: following although verification failed (the differences above stay until \
             repaired)"
        )?;
    }
    if !resume {
        sync::set_stage(&mut pair.service, table, SyncStage::Following)?;
    }
    writeln!(
        out,
        "following changes to {name} in the monolith; Ctrl-C or SIGTERM stops"
    )?;
    out.flush()?;
    let end = follow(pair, table, options, stop, out)?;
    finish(pair, table, end, labels, out)
}

/// `--reverse` (or `--follow` once writes are switched): catch the monolith up with the
/// service, verify, and with `--follow` keep following.
fn reverse(
    options: &MigrateOptions,
    pair: &mut Pair,
    table: &Table,
    labels: &(String, String),
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let name = table.name();
    if !capture::installed(&mut pair.service, table)? {
        writeln!(
            out,
            "warning: change capture on the service's {name} was not installed (removed by \
             --remove-capture --force?): changes made meanwhile were not captured; the \
             verification below shows any difference"
        )?;
    }
    install_both(pair, table)?;
    if let Some(id) = sync::fence_of(&mut pair.service, table)? {
        sync::place_fence(&mut pair.monolith, table, id)?;
    }
    let v = catch_up_and_verify(pair, table, Direction::Reverse, labels, out)?;
    writeln!(out, "caught up {} {}:", name, Direction::Reverse.arrow())?;
    write!(out, "{}", v.render())?;
    if !options.follow {
        return Ok(verdict(&v));
    }
    if !v.matches() {
        writeln!(
            out,
            "warning: following although verification failed (the differences above stay until \
             repaired)"
        )?;
    }
    writeln!(
        out,
        "following changes to {name} in the service; Ctrl-C or SIGTERM stops"
    )?;
    out.flush()?;
    let end = follow(pair, table, options, stop, out)?;
    finish(pair, table, end, labels, out)
}

/// How a follow loop ended.
enum End {
    /// Ctrl-C or SIGTERM.
    Stopped,
    /// `complete` recorded stage complete.
    Completed,
}

fn finish(
    pair: &mut Pair,
    table: &Table,
    end: End,
    labels: &(String, String),
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let name = table.name();
    if let End::Completed = end {
        writeln!(
            out,
            "the migration of {name} is complete: change capture was removed on both sides; \
             the follower exits"
        )?;
        return Ok(Outcome::Completed);
    }
    let rec = sync::load(&mut pair.service, table)?;
    let untouched = rec
        .as_ref()
        .is_some_and(|r| r.direction == Direction::Forward && r.stage == SyncStage::Following);
    if !untouched {
        sync::detach(&mut pair.service, table)?;
        writeln!(
            out,
            "stopped following {name}; change capture left in place on both sides because writes \
             were switched (stage {}): writes keep being captured, and a restarted follower \
             (`scripts/migrate-data {name} --follow`) resumes where this one stopped",
            rec.map_or("unknown", |r| r.stage.as_str())
        )?;
        return Ok(Outcome::Detached);
    }
    // Stop capturing first, then apply what was captured before, so nothing falls in between.
    uninstall_both(pair, table)?;
    let v = catch_up_and_verify(pair, table, Direction::Forward, labels, out)?;
    let direct = capture::discard(&mut pair.service, table)?;
    capture::tidy(&mut pair.monolith)?;
    capture::tidy(&mut pair.service)?;
    sync::forget_state(&mut pair.service, table)?;
    writeln!(
        out,
        "stopped following; change capture removed; final verification:"
    )?;
    if direct > 0 {
        writeln!(
            out,
            "note: {direct} change(s) made directly in the service's database were never carried \
             to the monolith"
        )?;
    }
    write!(out, "{}", v.render())?;
    Ok(verdict(&v))
}

fn copy_then_verify(
    options: &MigrateOptions,
    pair: &mut Pair,
    table: &Table,
    labels: &(String, String),
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    if let Some(stopped) = copy_reported(
        options,
        &mut pair.monolith,
        &mut pair.service,
        table,
        stop,
        out,
    )? {
        return Ok(stopped);
    }
    if options.follow {
        return Ok(Outcome::Verified);
    }
    let v = verify_now(pair, table, labels)?;
    write!(out, "{}", v.render())?;
    Ok(verdict(&v))
}

/// The resource's source and target as [`Db`]s.
fn open_both(options: &MigrateOptions) -> anyhow::Result<(Db, Db)> {
    let r = &options.resource;
    Ok((
        Db::open(&r.source.url, &options.data_dir, false)?,
        Db::open(&r.target.url, &options.data_dir, true)?,
    ))
}

/// Copies with a progress bar and prints the figures; `Some(Stopped)` when a signal ended it.
fn copy_reported(
    options: &MigrateOptions,
    source: &mut Db,
    target: &mut Db,
    table: &Table,
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<Option<Outcome>> {
    target.ensure_checkpoint(table.name())?;
    if let Some(after) = target.interrupted_at(table.name())? {
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
        source,
        target,
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
        let after = target.interrupted_at(table.name())?;
        match after {
            Some(id) => writeln!(
                out,
                "stopped after id {id}; run the same command again to continue"
            )?,
            None => writeln!(out, "stopped before the first batch")?,
        }
        return Ok(Some(Outcome::Stopped { after }));
    }
    Ok(None)
}

/// `--follow` between two PostgreSQL databases by logical replication: a publication, a slot
/// and a subscription ([`crate::replication`]) copy the table and stream its changes forward;
/// the service's table gets capture triggers (direct writes there are recorded, the
/// subscription's own are not: its workers run with `session_replication_role = replica`) and
/// the migration is recorded in `_strangler_sync` like a trigger capture, so `cutover` can
/// switch writes: it hands the forward direction over to triggers ([`sync::switch`]), and this
/// follower goes on following in whichever direction is recorded ([`follow`]). Verified once
/// caught up; on Ctrl-C or SIGTERM before any cutover, removed after a last catch-up and
/// verified again.
fn follow_logical(
    options: &MigrateOptions,
    source: Db,
    target: Db,
    table: &Table,
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let r = &options.resource;
    let name = r.name();
    let pub_name = replication::name_of(name);
    let DbUrl::Postgres(conninfo) = &r.source.url else {
        bail!("{name}: the source is not PostgreSQL");
    };
    let labels = sync::labels(&options.data_dir, r);
    let mut pair = Pair {
        monolith: source,
        service: target,
    };
    let pair = &mut pair;
    let resume = sync::replicated(pair, table)?;
    if resume {
        writeln!(
            out,
            "resuming: subscription {pub_name} exists on the target (left by a follower that did \
             not stop cleanly); it kept replicating meanwhile"
        )?;
    } else {
        capture::install(&mut pair.service, table, Side::Service)?;
        sync::start(
            &mut pair.service,
            table,
            Direction::Forward,
            SyncStage::Copying,
        )?;
        let (source, target) = (pg_of(&mut pair.monolith)?, pg_of(&mut pair.service)?);
        if let Err(e) = replication::start(source, target, table, conninfo) {
            let _ = abandon(pair, table);
            return Err(e);
        }
        writeln!(
            out,
            "change capture on: PostgreSQL logical replication (publication and slot {pub_name} \
             on {}, subscription {pub_name} on {}); no triggers on the monolith's table; the \
             subscription copies the table, then streams its changes",
            labels.0, labels.1
        )?;
    }
    out.flush()?;
    // The initial copy of a large table takes a while: no deadline but Ctrl-C.
    let synced = {
        let (source, target) = (pg_of(&mut pair.monolith)?, pg_of(&mut pair.service)?);
        replication::wait_synced(source, target, name, Duration::MAX, stop)
    };
    if let Err(e) = synced {
        if stop.is_set() {
            writeln!(
                out,
                "stopped before the subscription's copy finished: {e:#}"
            )?;
            remove_replication(pair, table)?;
            abandon(pair, table)?;
            return Ok(Outcome::Stopped { after: None });
        }
        return Err(e);
    }
    let v = verify_converged(pair, table, &labels, stop)?;
    sync::record_verified(&mut pair.service, table, v.matches())?;
    write!(out, "{}", v.render())?;
    if !v.matches() {
        writeln!(
            out,
            "warning: following although verification failed (the source kept changing, or the \
             tables differ; run --verify-only once writes pause)"
        )?;
    }
    if !resume {
        sync::set_stage(&mut pair.service, table, SyncStage::Following)?;
    }
    writeln!(
        out,
        "following changes to {name} in the source through subscription {pub_name}; Ctrl-C or \
         SIGTERM stops"
    )?;
    out.flush()?;
    if watch_logical(pair, table, options, stop, out)? {
        writeln!(
            out,
            "writes of {name} switched: subscription {pub_name} removed, the monolith's table \
             captured by triggers; now applying {}",
            Direction::Reverse.arrow()
        )?;
        out.flush()?;
        let end = follow(pair, table, options, stop, out)?;
        return finish(pair, table, end, &labels, out);
    }
    // The last changes stream in: wait for the two sides to agree (30 s at most), then stop.
    let v = verify_converged(pair, table, &labels, &Stop::new())?;
    remove_replication(pair, table)?;
    abandon(pair, table)?;
    writeln!(
        out,
        "stopped following; subscription, slot and publication {pub_name} removed; final \
         verification:"
    )?;
    write!(out, "{}", v.render())?;
    Ok(verdict(&v))
}

fn remove_replication(pair: &mut Pair, table: &Table) -> anyhow::Result<()> {
    let Pair { monolith, service } = pair;
    replication::remove(pg_of(monolith)?, pg_of(service)?, table.name())
}

/// Heartbeats and reports while the subscription carries changes forward, until `stop`
/// (`false`) or a cutover records the reverse direction (`true`).
///
/// Errors: the sync state disappears; the subscription disappears without a cutover.
fn watch_logical(
    pair: &mut Pair,
    table: &Table,
    options: &MigrateOptions,
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let name = table.name();
    let mut last_beat: Option<Instant> = None;
    let mut last_report = Instant::now();
    while !stop.is_set() {
        let rec = still_recorded(pair, table)?;
        if rec.direction == Direction::Reverse {
            return Ok(true);
        }
        if last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
            sync::heartbeat(&mut pair.service, table, Direction::Forward, None)?;
            last_beat = Some(Instant::now());
        }
        if last_report.elapsed() >= options.report_every {
            let Pair { monolith, service } = &mut *pair;
            match replication::status(pg_of(monolith)?, pg_of(service)?, name) {
                Ok(st) => writeln!(
                    out,
                    "following {name} (PostgreSQL logical replication): {} bytes of WAL not \
                     yet confirmed by subscription {}",
                    st.lag_bytes,
                    replication::name_of(name)
                )?,
                // A cutover removes the subscription just before it records the switch.
                Err(_) if !sync::replicated(pair, table)? => {}
                Err(e) => return Err(e),
            }
            out.flush()?;
            last_report = Instant::now();
        }
        std::thread::sleep(options.poll.max(Duration::from_millis(20)));
    }
    Ok(false)
}

/// Verifies until both sides agree (a subscription applies what the source commits a moment
/// later), for 30 s at most or until `stop`; returns the last verification.
fn verify_converged(
    pair: &mut Pair,
    table: &Table,
    labels: &(String, String),
    stop: &Stop,
) -> anyhow::Result<Verification> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = Verification::run(pair, table, labels.clone())?;
        if v.matches() || Instant::now() >= deadline || stop.is_set() {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The PostgreSQL session of a side known to be PostgreSQL.
fn pg_of(db: &mut Db) -> anyhow::Result<&mut postgres::Client> {
    db.postgres()
        .context("logical replication runs between two PostgreSQL databases")
}

/// Applies every captured change of `direction`, then digests both sides, the source in the
/// snapshot that finds its change table empty ([`Verification::drained`]), so the destination
/// holds exactly the changes made before it. Conflicts found on the way are recorded and
/// printed.
fn catch_up_and_verify(
    pair: &mut Pair,
    table: &Table,
    direction: Direction,
    labels: &(String, String),
    out: &mut dyn Write,
) -> anyhow::Result<Verification> {
    loop {
        let applied = capture::apply(pair, table, direction, 10_000)?;
        if applied.changes == 0
            && let Some(v) = Verification::drained(pair, table, direction.source(), labels.clone())?
        {
            sync::record_verified(&mut pair.service, table, v.matches())?;
            return Ok(v);
        }
        settle(pair, table, direction, &applied, out)?;
    }
}

/// After an [`capture::apply`]: records its conflicts, then forgets its changes (in that order,
/// so a crash in between records a conflict twice at worst, never loses one).
fn settle(
    pair: &mut Pair,
    table: &Table,
    direction: Direction,
    applied: &capture::Applied,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    conflicts::record(&mut pair.service, &applied.conflicts)?;
    capture::forget(pair.db(direction.source()), table, &applied.seqs)?;
    for c in &applied.conflicts {
        writeln!(out, "CONFLICT: {}", c.describe())?;
    }
    Ok(())
}

/// How often the follower writes its heartbeat (well inside [`sync::LIVE`]).
const HEARTBEAT: Duration = Duration::from_millis(200);

/// Applies changes of whatever direction is recorded, re-reading it every poll, until `stop`
/// or stage `complete`.
fn follow(
    pair: &mut Pair,
    table: &Table,
    options: &MigrateOptions,
    stop: &Stop,
    out: &mut dyn Write,
) -> anyhow::Result<End> {
    let name = table.name();
    let mut direction: Option<Direction> = None;
    let mut seen_version: Option<i64> = None;
    let mut last_beat: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut applied_since = 0u64;
    let mut total = 0u64;
    let mut slowest_ms = 0u64;
    let mut last_lag: Option<u64> = None;
    while !stop.is_set() {
        let rec = still_recorded(pair, table)?;
        if rec.stage == SyncStage::Complete {
            return Ok(End::Completed);
        }
        if direction != Some(rec.direction) {
            if let Some(before) = direction {
                writeln!(
                    out,
                    "direction of {name} changed from {} to {}: now applying {} (stage {})",
                    before.as_str(),
                    rec.direction.as_str(),
                    rec.direction.arrow(),
                    rec.stage.as_str()
                )?;
                out.flush()?;
            }
            direction = Some(rec.direction);
            seen_version = None;
            last_beat = None;
            if rec.direction == Direction::Reverse
                && let Some(id) = rec.fence_id
            {
                sync::place_fence(&mut pair.monolith, table, id)?;
            }
        }
        let dir = rec.direction;
        if last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
            sync::heartbeat(&mut pair.service, table, dir, last_lag)?;
            last_beat = Some(Instant::now());
        }
        let (changes, more, lag_ms) = match step(pair, table, dir, &mut seen_version, options, out)
        {
            Ok(done) => done,
            Err(e) if completing(pair, table)? => {
                let _ = e;
                return Ok(End::Completed);
            }
            Err(e) => return Err(e),
        };
        if changes > 0 {
            applied_since += changes;
            total += changes;
            slowest_ms = slowest_ms.max(lag_ms);
            last_lag = Some(lag_ms);
        }
        if last_report.elapsed() >= options.report_every {
            let (backlog, age_ms) = match capture::backlog(pair.db(dir.source()), table) {
                Ok(backlog) => backlog,
                Err(e) if completing(pair, table)? => {
                    let _ = e;
                    return Ok(End::Completed);
                }
                Err(e) => return Err(e),
            };
            writeln!(
                out,
                "following {name} ({}): {applied_since} changes applied in the last {:.0?} \
                 ({total} in all); backlog {backlog} (oldest {age_ms} ms); slowest change took \
                 {slowest_ms} ms to apply",
                dir.arrow(),
                last_report.elapsed(),
            )?;
            out.flush()?;
            last_report = Instant::now();
            applied_since = 0;
            slowest_ms = 0;
        }
        if !more {
            std::thread::sleep(options.poll);
        }
    }
    Ok(End::Stopped)
}

/// The resource's sync state, which a follower needs to go on.
///
/// Errors: it is gone (capture removed with `--remove-capture --force`), or unreadable.
fn still_recorded(pair: &mut Pair, table: &Table) -> anyhow::Result<Record> {
    sync::load(&mut pair.service, table)?.with_context(|| {
        format!(
            "the sync state of {} disappeared (capture removed with --remove-capture --force?); \
             stopping",
            table.name()
        )
    })
}

/// After a failed step: whether `complete` is finishing the migration under the follower. It
/// drops the change tables before it records stage `complete`, so a step can fail on a missing
/// table a moment before the stage says why: this waits up to 5 s for it.
fn completing(pair: &mut Pair, table: &Table) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if sync::load(&mut pair.service, table)?.is_some_and(|r| r.stage == SyncStage::Complete) {
            return Ok(true);
        }
        // Still capturing on the service: not a completion.
        if capture::installed(&mut pair.service, table)? || Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One poll: when the source's database changed since the last look (SQLite's
/// `data_version`; PostgreSQL is always looked at), applies the next batch of its changes.
/// Returns (changes applied, more waiting, lag in ms).
fn step(
    pair: &mut Pair,
    table: &Table,
    direction: Direction,
    seen_version: &mut Option<i64>,
    options: &MigrateOptions,
    out: &mut dyn Write,
) -> anyhow::Result<(u64, bool, u64)> {
    let source = pair.db(direction.source());
    // Another connection's commit changes the counter; nothing else can add changes, so an
    // unchanged counter means nothing to do, at the cost of one PRAGMA.
    let version = capture::data_version(source)?;
    if version.is_some() && *seen_version == version {
        return Ok((0, false, 0));
    }
    let applied = capture::apply(pair, table, direction, options.copy.batch)?;
    settle(pair, table, direction, &applied, out)?;
    let more = applied.changes >= u64::from(options.copy.batch);
    if !more {
        *seen_version = version;
    }
    Ok((applied.changes, more, applied.lag_ms))
}
