//! The data half of a reversible write cutover: which way a resource's rows flow between the
//! monolith's database and its service's, and the steps `cutover`, `complete` and `status`
//! take on it.
//!
//! One row per resource in `_strangler_sync`, in the service's database, records the
//! **direction** (`forward`: the monolith takes writes and the follower carries them to the
//! service; `reverse`: the service takes writes and the follower carries them back, keeping the
//! monolith's copy current), the **stage** (reference §7: `copying`, `following`, `writes_switched`,
//! `reversed`, `complete`; "reads switched" is derived from `routes.toml` and not stored) and
//! the follower's heartbeat. The follower (`migrate-data RESOURCE --follow`) re-reads it every
//! poll, so [`switch`] turns a running follower around and [`complete`] stops it.
//!
//! A cutover to the service is: hold the route's writes, [`drain`] forward, [`switch`] to
//! [`Direction::Reverse`], [`wait_follower`] for the reverse follower, release the writes.
//!
//! Each step runs over both databases ([`Pair`]), SQLite or PostgreSQL in any combination.
//! All SQL of the sync state lives here; the capture SQL lives in [`crate::capture`].

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::capture::{self, now_ms};
use crate::conflicts;
use crate::db::{Db, Value};
use crate::migrations::{DbUrl, Declared};
use crate::pair::{Open, Pair};
use crate::resource::Table;
use crate::verify::Verification;

/// The state table in the service's database: one row per resource.
pub const SYNC: &str = "_strangler_sync";

/// A heartbeat older than this is not a live follower.
pub const LIVE: Duration = Duration::from_secs(2);

/// How far above every existing id the old writer's id fence is placed (see
/// [`raise_high_water`]): the new writer can insert this many rows before its ids could meet
/// the old writer's straggler ids. Stays far below 2^53, so JavaScript clients read every id.
pub const FENCE_GAP: i64 = 1_000_000_000;

/// How often [`drain`] and [`wait_follower`] look.
const POLL: Duration = Duration::from_millis(10);

/// One of the two databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The monolith's (the declaration's source).
    Monolith,
    /// The service's (the declaration's target).
    Service,
}

impl Side {
    /// `monolith` or `service`, in messages and in `_strangler_conflicts.source`.
    pub fn label(self) -> &'static str {
        match self {
            Side::Monolith => "monolith",
            Side::Service => "service",
        }
    }

    /// The other database.
    pub fn other(self) -> Side {
        match self {
            Side::Monolith => Side::Service,
            Side::Service => Side::Monolith,
        }
    }
}

/// Which way the follower carries changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Monolith → service: the monolith takes the resource's writes.
    Forward,
    /// Service → monolith: the service takes the writes; the monolith's copy is kept current.
    Reverse,
}

impl Direction {
    /// `forward` or `reverse`, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }

    /// Reads [`Direction::as_str`] back.
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "forward" => Some(Direction::Forward),
            "reverse" => Some(Direction::Reverse),
            _ => None,
        }
    }

    /// The side whose changes are carried (the one taking writes).
    pub fn source(self) -> Side {
        match self {
            Direction::Forward => Side::Monolith,
            Direction::Reverse => Side::Service,
        }
    }

    /// The side changes are carried to.
    pub fn dest(self) -> Side {
        self.source().other()
    }

    /// `monolith → service` or `service → monolith`.
    pub fn arrow(self) -> String {
        format!("{} → {}", self.source().label(), self.dest().label())
    }
}

/// Where a resource's migration stands (reference §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncStage {
    /// The first copy into the service's database is running (or was interrupted).
    Copying,
    /// Copied and verified; forward capture keeps the service current.
    Following,
    /// The service takes the writes; reverse capture keeps the monolith current.
    WritesSwitched,
    /// Writes went back to the monolith after a switch; forward capture again.
    Reversed,
    /// Capture removed on both sides; the service owns the data.
    Complete,
}

impl SyncStage {
    /// `copying`, `following`, `writes switched`, `reversed`, `complete` (reference §7's words).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStage::Copying => "copying",
            SyncStage::Following => "following",
            SyncStage::WritesSwitched => "writes switched",
            SyncStage::Reversed => "reversed",
            SyncStage::Complete => "complete",
        }
    }

    /// The value stored in `_strangler_sync.stage` (`writes_switched` for the space).
    fn stored(self) -> &'static str {
        match self {
            SyncStage::WritesSwitched => "writes_switched",
            other => other.as_str(),
        }
    }

    fn parse(s: &str) -> Option<SyncStage> {
        [
            SyncStage::Copying,
            SyncStage::Following,
            SyncStage::WritesSwitched,
            SyncStage::Reversed,
            SyncStage::Complete,
        ]
        .into_iter()
        .find(|stage| stage.stored() == s)
    }
}

/// Captured changes waiting on one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many.
    pub changes: u64,
    /// Age of the oldest (zero when there is none).
    pub oldest_age: Duration,
}

/// Whether the follower `pid` with a heartbeat `age` old is running: a fresh heartbeat (under
/// [`LIVE`]) and, where `/proc` can tell, a process by that id (a follower killed with -9 is
/// seen as gone at once instead of after [`LIVE`]).
fn alive(pid: Option<u32>, age: Option<Duration>) -> bool {
    let Some(pid) = pid else {
        return false;
    };
    let proc = Path::new("/proc");
    // A process killed with -9 and not yet reaped by its parent is a zombie: gone too.
    let gone = proc.join("self").exists()
        && std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).map_or(true, |stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        });
    age.is_some_and(|a| a < LIVE) && !gone
}

impl SyncState {
    /// Whether a follower is running now (see [`Record::follower_alive`]).
    pub fn follower_alive(&self) -> bool {
        alive(self.follower_pid, self.follower_heartbeat_age)
    }
}

/// A resource's sync state as [`read_state`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncState {
    /// The recorded direction.
    pub direction: Direction,
    /// The recorded stage.
    pub stage: SyncStage,
    /// Time since the follower's last heartbeat; `None` if no follower ever ran.
    pub follower_heartbeat_age: Option<Duration>,
    /// The running follower's process id; `None` when the last one stopped cleanly.
    pub follower_pid: Option<u32>,
    /// Monolith changes not yet carried to the service.
    pub forward_backlog: Backlog,
    /// Service changes not yet carried to the monolith.
    pub reverse_backlog: Backlog,
    /// Unresolved conflicts.
    pub conflicts: u64,
    /// Whether the capture triggers are in place: (monolith, service).
    pub capture_installed: (bool, bool),
    /// Whether changes flow forward by PostgreSQL logical replication (the subscription
    /// exists) rather than by the monolith's triggers.
    pub forward_by_replication: bool,
    /// The outcome of the last verification (follower's or [`verify`]'s), if any.
    pub last_verified_ok: Option<bool>,
}

/// The stored row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Recorded direction.
    pub direction: Direction,
    /// Recorded stage.
    pub stage: SyncStage,
    /// The direction the follower last reported following.
    pub follower_direction: Option<Direction>,
    /// The follower's pid (cleared when it stops cleanly).
    pub follower_pid: Option<u32>,
    /// The follower's last heartbeat, ms since the epoch.
    pub heartbeat_ms: Option<i64>,
    /// When the direction was last switched, ms since the epoch.
    pub switched_at_ms: Option<i64>,
    /// The follower's last applied lag, ms.
    pub lag_ms: Option<i64>,
    /// The id of the fence row in the old writer's table, see [`raise_high_water`].
    pub fence_id: Option<i64>,
    /// The last verification's outcome.
    pub last_verified_ok: Option<bool>,
}

impl Record {
    /// Whether a follower heartbeat is fresher than [`LIVE`] and, where `/proc` tells, its
    /// process still exists (so a follower restarted right after a kill -9 is not refused).
    pub fn follower_alive(&self) -> bool {
        let age = self
            .heartbeat_ms
            .map(|hb| Duration::from_millis(now_ms().saturating_sub(hb).unsigned_abs()));
        alive(self.follower_pid, age)
    }

    /// "pid 123, heartbeat 0.2s ago" or "no follower ever ran".
    pub fn describe_follower(&self) -> String {
        match (self.follower_pid, self.heartbeat_ms) {
            (_, None) => "no follower ever ran".to_string(),
            (pid, Some(hb)) => format!(
                "{}last heartbeat {:.1}s ago",
                pid.map(|p| format!("follower pid {p}, "))
                    .unwrap_or_default(),
                now_ms().saturating_sub(hb) as f64 / 1000.0
            ),
        }
    }
}

// ---- the state table --------------------------------------------------------------------

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn int(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::Integer)
}

/// Creates `_strangler_sync` in the service's database `db` if missing.
///
/// Errors: the database refuses the statement.
pub fn ensure_table(db: &mut Db) -> anyhow::Result<()> {
    db.batch(&format!(
        "CREATE TABLE IF NOT EXISTS {SYNC} (
            resource TEXT PRIMARY KEY,
            direction TEXT NOT NULL,
            stage TEXT NOT NULL,
            follower_direction TEXT,
            follower_pid BIGINT,
            heartbeat_ms BIGINT,
            switched_at_ms BIGINT,
            lag_ms BIGINT,
            fence_id BIGINT,
            last_verified_ok BIGINT,
            updated_at_ms BIGINT NOT NULL
        )"
    ))
}

/// The resource's row in the service's database `db`, `None` when its migration never
/// started (or was stopped cleanly).
///
/// Errors: the table cannot be read.
pub fn load(db: &mut Db, table: &Table) -> anyhow::Result<Option<Record>> {
    if !db.has_table(SYNC)? {
        return Ok(None);
    }
    let rows = db.query(
        &format!(
            "SELECT direction, stage, follower_direction, follower_pid, heartbeat_ms, \
             switched_at_ms, lag_ms, fence_id, last_verified_ok FROM {SYNC} WHERE resource = ?1"
        ),
        &[text(table.name())],
    )?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let s = |i: usize| match &row[i] {
        Value::Text(t) => Some(t.clone()),
        _ => None,
    };
    let n = |i: usize| match &row[i] {
        Value::Integer(v) => Some(*v),
        _ => None,
    };
    Ok(Some(Record {
        direction: s(0)
            .as_deref()
            .and_then(Direction::parse)
            .unwrap_or(Direction::Forward),
        stage: s(1)
            .as_deref()
            .and_then(SyncStage::parse)
            .unwrap_or(SyncStage::Copying),
        follower_direction: s(2).as_deref().and_then(Direction::parse),
        follower_pid: n(3).and_then(|p| u32::try_from(p).ok()),
        heartbeat_ms: n(4),
        switched_at_ms: n(5),
        lag_ms: n(6),
        fence_id: n(7),
        last_verified_ok: n(8).map(|v| v != 0),
    }))
}

/// Records a fresh start of the migration: `direction` and `stage`, no follower yet.
///
/// Errors: the database refuses the statements.
pub fn start(
    db: &mut Db,
    table: &Table,
    direction: Direction,
    stage: SyncStage,
) -> anyhow::Result<()> {
    ensure_table(db)?;
    db.exec(
        &format!(
            "INSERT INTO {SYNC} (resource, direction, stage, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(resource) DO UPDATE SET direction = excluded.direction,
                stage = excluded.stage, updated_at_ms = excluded.updated_at_ms"
        ),
        &[
            text(table.name()),
            text(direction.as_str()),
            text(stage.stored()),
            Value::Integer(now_ms()),
        ],
    )?;
    Ok(())
}

/// Records a new stage.
///
/// Errors: the database refuses the statement.
pub fn set_stage(db: &mut Db, table: &Table, stage: SyncStage) -> anyhow::Result<()> {
    db.exec(
        &format!("UPDATE {SYNC} SET stage = ?2, updated_at_ms = ?3 WHERE resource = ?1"),
        &[
            text(table.name()),
            text(stage.stored()),
            Value::Integer(now_ms()),
        ],
    )?;
    Ok(())
}

/// The follower's heartbeat: it is alive, follows `following`, and its last lag.
///
/// Errors: the database refuses the statement.
pub fn heartbeat(
    db: &mut Db,
    table: &Table,
    following: Direction,
    lag_ms: Option<u64>,
) -> anyhow::Result<()> {
    let now = now_ms();
    db.exec(
        &format!(
            "UPDATE {SYNC} SET follower_direction = ?2, follower_pid = ?3, heartbeat_ms = ?4,
                lag_ms = coalesce(?5, lag_ms), updated_at_ms = ?6 WHERE resource = ?1"
        ),
        &[
            text(table.name()),
            text(following.as_str()),
            Value::Integer(std::process::id().into()),
            Value::Integer(now),
            int(lag_ms.map(|l| l as i64)),
            Value::Integer(now),
        ],
    )?;
    Ok(())
}

/// The follower stopped cleanly: no pid.
///
/// Errors: the database refuses the statement.
pub fn detach(db: &mut Db, table: &Table) -> anyhow::Result<()> {
    if db.has_table(SYNC)? {
        db.exec(
            &format!(
                "UPDATE {SYNC} SET follower_pid = NULL, updated_at_ms = ?2 WHERE resource = ?1"
            ),
            &[text(table.name()), Value::Integer(now_ms())],
        )?;
    }
    Ok(())
}

/// Deletes the resource's row (capture was removed with no cutover: back to "not started").
///
/// Errors: the database refuses the statement.
pub fn forget_state(db: &mut Db, table: &Table) -> anyhow::Result<()> {
    if db.has_table(SYNC)? {
        db.exec(
            &format!("DELETE FROM {SYNC} WHERE resource = ?1"),
            &[text(table.name())],
        )?;
    }
    Ok(())
}

/// Records a verification's outcome.
///
/// Errors: the database refuses the statement.
pub fn record_verified(db: &mut Db, table: &Table, ok: bool) -> anyhow::Result<()> {
    if db.has_table(SYNC)? {
        db.exec(
            &format!(
                "UPDATE {SYNC} SET last_verified_ok = ?2, updated_at_ms = ?3 WHERE resource = ?1"
            ),
            &[
                text(table.name()),
                Value::Integer(ok.into()),
                Value::Integer(now_ms()),
            ],
        )?;
    }
    Ok(())
}

/// The id of the resource's fence row, if one is recorded.
///
/// Errors: the table cannot be read.
pub fn fence_of(db: &mut Db, table: &Table) -> anyhow::Result<Option<i64>> {
    Ok(load(db, table)?.and_then(|r| r.fence_id))
}

fn set_fence(db: &mut Db, table: &Table, fence: Option<i64>) -> anyhow::Result<()> {
    db.exec(
        &format!("UPDATE {SYNC} SET fence_id = ?2, updated_at_ms = ?3 WHERE resource = ?1"),
        &[text(table.name()), int(fence), Value::Integer(now_ms())],
    )?;
    Ok(())
}

// ---- connections ------------------------------------------------------------------------

/// Opens both databases of a started migration (never creating one).
///
/// Errors: a missing database or table, an unreachable server.
pub fn connect(data_dir: &Path, resource: &Declared) -> anyhow::Result<(Pair, Table)> {
    Pair::open(data_dir, resource, Open::Existing)
}

fn started(db: &mut Db, table: &Table) -> anyhow::Result<Record> {
    load(db, table)?.with_context(|| {
        format!(
            "the migration of {0} has not started: run `scripts/migrate-data {0} --follow` first",
            table.name()
        )
    })
}

fn backlog_of(db: &mut Db, table: &Table) -> anyhow::Result<Backlog> {
    let (changes, age_ms) = capture::backlog(db, table)?;
    Ok(Backlog {
        changes,
        oldest_age: Duration::from_millis(age_ms),
    })
}

fn describe_conflicts(standing: &[conflicts::Conflict]) -> String {
    standing
        .iter()
        .map(|c| c.describe())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- the API ----------------------------------------------------------------------------

/// The resource's sync state; `None` when its migration never started (no service database,
/// or no row in `_strangler_sync`). Never creates a file.
///
/// Errors: a database that cannot be opened or read.
pub fn read_state(data_dir: &Path, resource: &Declared) -> anyhow::Result<Option<SyncState>> {
    for url in [&resource.source.url, &resource.target.url] {
        if let DbUrl::Sqlite(path) = url.resolve(data_dir)
            && !path.is_file()
        {
            return Ok(None);
        }
    }
    // Nothing recorded: not started, whatever the tables look like (a service database may
    // exist before its table does).
    let mut service = Db::open(&resource.target.url, data_dir, false)?;
    let recorded = service.has_table(SYNC)?
        && service.query_i64(
            &format!("SELECT count(*) FROM {SYNC} WHERE resource = ?1"),
            &[text(resource.name())],
        )? > Some(0);
    if !recorded {
        return Ok(None);
    }
    drop(service);
    let (mut pair, table) = connect(data_dir, resource)?;
    let table = &table;
    let Some(rec) = load(&mut pair.service, table)? else {
        return Ok(None);
    };
    Ok(Some(SyncState {
        direction: rec.direction,
        stage: rec.stage,
        follower_heartbeat_age: rec
            .heartbeat_ms
            .map(|hb| Duration::from_millis(now_ms().saturating_sub(hb).unsigned_abs())),
        follower_pid: rec.follower_pid,
        forward_backlog: backlog_of(&mut pair.monolith, table)?,
        reverse_backlog: backlog_of(&mut pair.service, table)?,
        conflicts: conflicts::count(&mut pair.service, table)?,
        capture_installed: (
            capture::installed(&mut pair.monolith, table)?,
            capture::installed(&mut pair.service, table)?,
        ),
        forward_by_replication: replicated(&mut pair, table)?,
        last_verified_ok: rec.last_verified_ok,
    }))
}

/// Whether the resource's changes flow forward by logical replication: both sides PostgreSQL
/// and its subscription exists on the service's.
///
/// Errors: the catalogue cannot be read.
pub fn replicated(pair: &mut Pair, table: &Table) -> anyhow::Result<bool> {
    match (pair.monolith.is_postgres(), pair.service.postgres()) {
        (true, Some(service)) => crate::replication::subscribed(service, table.name()),
        _ => Ok(false),
    }
}

/// Hands the forward direction over from logical replication to triggers, with the old
/// writer's writes held (the cutover's fence): the monolith's capture triggers go in first,
/// then the subscription, its slot and its publication are removed, so any write from then on
/// is captured and none is applied twice by two mechanisms.
///
/// Errors: a statement is refused (the triggers may then be in place, the subscription too).
fn replication_to_triggers(pair: &mut Pair, table: &Table) -> anyhow::Result<()> {
    capture::install(&mut pair.monolith, table, Side::Monolith)?;
    let Pair { monolith, service } = pair;
    let (Some(monolith), Some(service)) = (monolith.postgres(), service.postgres()) else {
        bail!("logical replication runs between two PostgreSQL databases");
    };
    crate::replication::remove(monolith, service, table.name())
}

/// Waits, polling every 10 ms until `timeout`, for `direction`'s source side to have no
/// captured change left; the running follower applies them.
///
/// Errors: an unresolved conflict stands or appears meanwhile (listing them: switching writes
/// over diverged rows would make the divergence permanent); the deadline passed (with the
/// backlog left and the follower's liveness); the migration never started.
pub fn drain(
    data_dir: &Path,
    resource: &Declared,
    direction: Direction,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (mut pair, table) = connect(data_dir, resource)?;
    let table = &table;
    started(&mut pair.service, table)?;
    let deadline = Instant::now() + timeout;
    if direction == Direction::Forward && replicated(&mut pair, table)? {
        return drain_replication(&mut pair, table, deadline, timeout);
    }
    loop {
        let standing = conflicts::unresolved(&mut pair.service, table)?;
        if !standing.is_empty() {
            bail!(
                "draining {} {}: {} unresolved conflict(s):\n{}\nmake each row the same on \
                 both sides (the right version), then `scripts/migrate-data {} \
                 --resolve-conflicts`",
                resource.name(),
                direction.arrow(),
                standing.len(),
                describe_conflicts(&standing),
                resource.name()
            );
        }
        let backlog = backlog_of(pair.db(direction.source()), table)?;
        if backlog.changes == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let rec = started(&mut pair.service, table)?;
            let why = if rec.direction != direction {
                format!(
                    "the recorded direction is {}, so no follower applies {} changes",
                    rec.direction.as_str(),
                    direction.as_str()
                )
            } else if !rec.follower_alive() {
                format!(
                    "no live follower ({}): start `scripts/migrate-data {} --follow`",
                    rec.describe_follower(),
                    resource.name()
                )
            } else {
                format!("the follower ({}) is behind", rec.describe_follower())
            };
            bail!(
                "draining {} {}: {} change(s) still waiting after {:?} (oldest {:.1?} old); {why}",
                resource.name(),
                direction.arrow(),
                backlog.changes,
                timeout,
                backlog.oldest_age
            );
        }
        std::thread::sleep(POLL);
    }
}

/// [`drain`] of a forward direction carried by logical replication: with the monolith's writes
/// held, the subscription has applied everything once both sides hold the same rows (the
/// slot's confirmed position trails by up to the subscriber's status interval, so it is not
/// the measure). Polls every 50 ms.
fn drain_replication(
    pair: &mut Pair,
    table: &Table,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    loop {
        let v = Verification::run(pair, table, (String::new(), String::new()))?;
        if v.matches() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "draining {} {}: subscription {} has not applied every change after {:?} (the \
                 monolith has {} rows, the service {}); check the subscription's worker in the \
                 service's server log",
                table.name(),
                Direction::Forward.arrow(),
                crate::replication::name_of(table.name()),
                timeout,
                v.source.rows,
                v.target.rows
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Compares both sides (row counts and checksums, leaving out the id fence) and lists
/// unresolved conflicts; records the outcome as `last_verified_ok`. Meaningful when the
/// writing side is held or drained, else it may see changes in flight.
///
/// Errors: a database that cannot be opened or read.
pub fn verify(data_dir: &Path, resource: &Declared) -> anyhow::Result<Verification> {
    let (mut pair, table) = connect(data_dir, resource)?;
    let v = Verification::run(&mut pair, &table, labels(data_dir, resource))?;
    record_verified(&mut pair.service, &table, v.matches())?;
    Ok(v)
}

/// How both databases are named in reports: the SQLite file, or the URL without password.
pub fn labels(data_dir: &Path, resource: &Declared) -> (String, String) {
    (
        resource.source.url.resolve(data_dir).display(),
        resource.target.url.resolve(data_dir).display(),
    )
}

/// Records `to` as the direction, with the stage `writes switched` (to
/// [`Direction::Reverse`]: writes now go to the service) or `reversed` (back to
/// [`Direction::Forward`]), and first raises the new writer's id high-water mark
/// ([`raise_high_water`]). A forward direction carried by logical replication is first handed
/// to triggers (the monolith's capture installed, the subscription removed): reverse sync and
/// any later forward sync run on triggers. The state changes in one statement on the service's
/// database; a running follower turns around at its next poll. Switching to the recorded
/// direction does nothing.
///
/// Errors: the migration never started, is still copying or is complete; the new writer lacks
/// rows the old one has (drain first).
pub fn switch(data_dir: &Path, resource: &Declared, to: Direction) -> anyhow::Result<()> {
    let (mut pair, table) = connect(data_dir, resource)?;
    let table = &table;
    let rec = started(&mut pair.service, table)?;
    match rec.stage {
        SyncStage::Copying => bail!(
            "cannot switch {}: its first copy has not finished (migrate-data {} --follow)",
            resource.name(),
            resource.name()
        ),
        SyncStage::Complete => bail!(
            "cannot switch {}: its migration is complete",
            resource.name()
        ),
        _ => {}
    }
    if rec.direction == to {
        return Ok(());
    }
    if to == Direction::Reverse && replicated(&mut pair, table)? {
        replication_to_triggers(&mut pair, table)?;
    }
    raise_high_water_on(&mut pair, table, to.source())?;
    let stage = match to {
        Direction::Reverse => SyncStage::WritesSwitched,
        Direction::Forward => SyncStage::Reversed,
    };
    let now = now_ms();
    pair.service.exec(
        &format!(
            "UPDATE {SYNC} SET direction = ?2, stage = ?3, switched_at_ms = ?4, updated_at_ms = ?5
             WHERE resource = ?1"
        ),
        &[
            text(table.name()),
            text(to.as_str()),
            text(stage.stored()),
            Value::Integer(now),
            Value::Integer(now),
        ],
    )?;
    Ok(())
}

/// Waits, polling every 10 ms until `timeout`, for a live follower (heartbeat fresher than
/// [`LIVE`], written at or after the last switch) that reports following `direction`.
///
/// Errors: the deadline passed (saying what the follower last reported), or the migration
/// never started.
pub fn wait_follower(
    data_dir: &Path,
    resource: &Declared,
    direction: Direction,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (mut pair, table) = connect(data_dir, resource)?;
    let deadline = Instant::now() + timeout;
    loop {
        let rec = started(&mut pair.service, &table)?;
        let after_switch = match (rec.heartbeat_ms, rec.switched_at_ms) {
            (Some(hb), Some(sw)) => hb >= sw,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if rec.follower_alive() && after_switch && rec.follower_direction == Some(direction) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "no follower of {} reported following {} within {:?} ({}, last reported {}): \
                 start `scripts/migrate-data {} --follow`",
                resource.name(),
                direction.arrow(),
                timeout,
                rec.describe_follower(),
                rec.follower_direction.map_or("nothing", Direction::as_str),
                resource.name()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// What [`raise_high_water`] arranged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HighWater {
    /// The side that takes writes from now on.
    pub writer: Side,
    /// The id the writer's next insert gets (its max + 1, above every row of either side).
    pub writer_next_id: i64,
    /// The id of the fence row placed in the old writer's table; its straggler inserts get ids
    /// above it. `None` when no fence is placed (see [`raise_high_water`]).
    pub fence: Option<i64>,
}

/// Makes sure ids handed out by `writer` (the side writes switch to) never collide with ids the
/// other side hands out to stragglers (writes that still land there).
///
/// How a table hands out ids decides how:
/// - A key with a sequence (PostgreSQL `serial` or identity; found by
///   `pg_get_serial_sequence`) is moved with `setval`: the writer's to at least max(both), so
///   its next id is above every row of either side (copied rows carry explicit ids and never
///   advanced it), and the old writer's, when switching to the service, to
///   max(both) + [`FENCE_GAP`] (or half-way to the largest id its key and sequence hold, when
///   that is nearer: an int4 `serial` survives repeated cutovers), so its straggler inserts
///   land far from the writer's ids. Sequences never move down.
/// - A key without one (SQLite's `INTEGER PRIMARY KEY` without AUTOINCREMENT: a new row gets
///   max(id) + 1): the writer's next id is already above every row once the old direction is
///   drained (it holds a copy of every row); this is checked, not assumed. Switching writes to
///   the service places a **fence row** in the monolith's table at max(both) + [`FENCE_GAP`]
///   (capped as above)
///   (empty texts, zero numbers, false booleans, the epoch for timestamps; inserted without
///   being captured, left out of verification, removed by a switch back and by [`complete`]):
///   a straggler insert on the monolith gets an id above it. Switching writes back to the
///   monolith removes the fence and places none in the service's table, where clients still
///   read: stragglers on the service may then take an id the monolith also takes, and conflict
///   detection is the guarantee (the follower records a conflict instead of overwriting).
///
/// Errors: the writer lacks rows the other side has (drain the old direction first).
pub fn raise_high_water(
    data_dir: &Path,
    resource: &Declared,
    writer: Side,
) -> anyhow::Result<HighWater> {
    let (mut pair, table) = connect(data_dir, resource)?;
    started(&mut pair.service, &table)?;
    raise_high_water_on(&mut pair, &table, writer)
}

fn max_id(db: &mut Db, side: Side, table: &Table, fence: Option<i64>) -> anyhow::Result<i64> {
    let k = table.sql_key(side);
    Ok(db
        .query_i64(
            &format!(
                "SELECT coalesce(max({k}), 0) FROM {} WHERE {k} <> CAST(?1 AS BIGINT)",
                table.sql_table(side)
            ),
            &[Value::Integer(fence.unwrap_or(i64::MIN))],
        )?
        .unwrap_or(0))
}

/// The sequence that hands out `side`'s keys, if one does (PostgreSQL only).
fn key_sequence(db: &mut Db, side: Side, table: &Table) -> anyhow::Result<Option<String>> {
    if !db.is_postgres() {
        return Ok(None);
    }
    let rows = db.query(
        "SELECT pg_get_serial_sequence(?1, ?2)",
        &[text(&table.sql_table(side)), text(table.key_on(side))],
    )?;
    Ok(
        match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
            Some(Value::Text(seq)) => Some(seq),
            _ => None,
        },
    )
}

/// How far above `top` the old writer's ids are placed: [`FENCE_GAP`], or half the room left
/// below `limit` when that is less (an int4 `serial` has room for two gaps at most).
fn fence_gap(limit: i64, top: i64) -> i64 {
    FENCE_GAP.min(limit.saturating_sub(top) / 2)
}

/// The largest id the monolith's key column holds: its PostgreSQL type's limit (`smallint`,
/// `integer`, `bigint`), and its sequence's `MAXVALUE` when `seq` hands out its ids;
/// `i64::MAX` on SQLite.
fn key_limit(db: &mut Db, table: &Table, seq: Option<&str>) -> anyhow::Result<i64> {
    if !db.is_postgres() {
        return Ok(i64::MAX);
    }
    let column = db
        .query_i64(
            "SELECT CASE atttypid WHEN 'int2'::regtype THEN 32767 \
             WHEN 'int4'::regtype THEN 2147483647 ELSE 9223372036854775807 END::int8 \
             FROM pg_catalog.pg_attribute \
             WHERE attrelid = CAST(?1 AS TEXT)::regclass AND attname = CAST(?2 AS TEXT)",
            &[
                text(&table.sql_table(Side::Monolith)),
                text(table.key_on(Side::Monolith)),
            ],
        )?
        .unwrap_or(i64::MAX);
    let sequence = match seq {
        Some(seq) => db
            .query_i64(
                "SELECT seqmax FROM pg_catalog.pg_sequence \
                 WHERE seqrelid = CAST(?1 AS TEXT)::regclass",
                &[text(seq)],
            )?
            .unwrap_or(i64::MAX),
        None => i64::MAX,
    };
    Ok(column.min(sequence))
}

/// Moves `seq` so that its next value is above `at_least` (never down).
fn raise_sequence(db: &mut Db, seq: &str, at_least: i64) -> anyhow::Result<()> {
    db.query(
        &format!(
            "SELECT setval(CAST(?1 AS TEXT)::regclass, greatest(?2::int8, \
             (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {seq})), true)"
        ),
        &[text(seq), Value::Integer(at_least.max(1))],
    )?;
    Ok(())
}

fn raise_high_water_on(pair: &mut Pair, table: &Table, writer: Side) -> anyhow::Result<HighWater> {
    let fence = fence_of(&mut pair.service, table)?;
    let writer_max = max_id(pair.db(writer), writer, table, fence)?;
    let other_max = max_id(pair.db(writer.other()), writer.other(), table, fence)?;
    if other_max > writer_max {
        bail!(
            "the {}'s {} go up to id {other_max} but the {}'s only to {writer_max}: rows are \
             not carried over yet; drain {} first",
            writer.other().label(),
            table.name(),
            writer.label(),
            match writer {
                Side::Service => Direction::Forward.arrow(),
                Side::Monolith => Direction::Reverse.arrow(),
            }
        );
    }
    let top = writer_max.max(other_max);
    if let Some(seq) = key_sequence(pair.db(writer), writer, table)? {
        raise_sequence(pair.db(writer), &seq, top)?;
    }
    match writer {
        Side::Service => {
            let seq = key_sequence(&mut pair.monolith, Side::Monolith, table)?;
            let limit = key_limit(&mut pair.monolith, table, seq.as_deref())?;
            let gap = fence_gap(limit, top);
            if gap < 2 {
                bail!(
                    "the monolith's {} key {} goes up to {limit} and its ids already reach \
                     {top}: no room is left above them to keep straggler inserts apart from the \
                     service's ids",
                    table.name(),
                    table.key_on(Side::Monolith)
                );
            }
            if let Some(seq) = seq {
                raise_sequence(&mut pair.monolith, &seq, top + gap)?;
                return Ok(HighWater {
                    writer,
                    writer_next_id: top + 1,
                    fence: None,
                });
            }
            let id = fence.unwrap_or(top + gap);
            // Recorded before it exists, so verification never counts it as a difference.
            set_fence(&mut pair.service, table, Some(id))?;
            place_fence(&mut pair.monolith, table, id)?;
            Ok(HighWater {
                writer,
                writer_next_id: top + 1,
                fence: Some(id),
            })
        }
        Side::Monolith => {
            if let Some(id) = fence {
                remove_fence(&mut pair.monolith, table, id)?;
                set_fence(&mut pair.service, table, None)?;
            }
            Ok(HighWater {
                writer,
                writer_next_id: writer_max + 1,
                fence: None,
            })
        }
    }
}

/// Inserts the fence row into the monolith's table (`monolith`), uncaptured (idempotent).
///
/// Errors: the database refuses the insert.
pub fn place_fence(monolith: &mut Db, table: &Table, id: i64) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO {} ({}) VALUES (?1{}{}) ON CONFLICT({}) DO NOTHING",
        table.sql_table(Side::Monolith),
        table.column_list(Side::Monolith),
        if table.columns.len() > 1 { ", " } else { "" },
        table.placeholder_values(),
        table.sql_key(Side::Monolith)
    );
    monolith.applying(|db| db.exec(&sql, &[Value::Integer(id)]))?;
    Ok(())
}

fn remove_fence(monolith: &mut Db, table: &Table, id: i64) -> anyhow::Result<()> {
    monolith.applying(|db| db.delete_keys(table, Side::Monolith, &[id]))?;
    Ok(())
}

/// What [`complete`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// Service changes the monolith's copy received in the final catch-up.
    pub final_changes_applied: u64,
    /// Whether the change and marker tables were dropped: (monolith, service). The monolith's
    /// stay while another resource still captures into them.
    pub change_tables_dropped: (bool, bool),
    /// Whether the fence row was removed from the monolith's table.
    pub fence_removed: bool,
    /// Whether `_strangler_conflicts` was dropped (it had no unresolved conflict).
    pub conflicts_table_dropped: bool,
    /// What the operator may do with the monolith's table now, in one sentence.
    pub monolith_note: String,
}

/// Finishes a migration whose writes are switched to the service: removes the capture triggers
/// on both sides, applies the service's last captured changes to the monolith, drops the
/// change and marker tables where nothing else uses them, removes the fence row, and records
/// stage `complete` (the row stays for `status`), which makes the follower exit 0. The
/// monolith's table is left in place as a stale copy.
///
/// Errors (nothing is removed): the migration never started; writes are not switched to the
/// service; unresolved conflicts stand; the monolith holds captured changes made after the
/// switch that were never carried to the service (they would be lost).
pub fn complete(data_dir: &Path, resource: &Declared) -> anyhow::Result<Completed> {
    let (mut pair, table) = connect(data_dir, resource)?;
    let table = &table;
    let name = resource.name();
    let rec = started(&mut pair.service, table)?;
    if rec.stage == SyncStage::Complete {
        bail!("the migration of {name} is already complete");
    }
    if rec.direction != Direction::Reverse || rec.stage != SyncStage::WritesSwitched {
        bail!(
            "cannot complete {name}: its writes are not switched to the service (stage {}, \
             direction {}); run `scripts/cutover {name}` first",
            rec.stage.as_str(),
            rec.direction.as_str()
        );
    }
    let open = conflicts::unresolved(&mut pair.service, table)?;
    if !open.is_empty() {
        bail!(
            "cannot complete {name}: {} unresolved conflict(s):\n{}\nmake each row the same on \
             both sides (the right version), then `scripts/migrate-data {name} \
             --resolve-conflicts`",
            open.len(),
            describe_conflicts(&open)
        );
    }
    // Stop capturing on the monolith and check for uncarried stragglers in one transaction, so
    // none can slip in between (the rollback of a refusal puts the triggers back).
    pair.monolith.transaction(true, |db| {
        capture::uninstall_in(db, table, Side::Monolith)?;
        let left = capture::pending_ids(db, table, 20)?;
        if !left.is_empty() {
            let (count, _) = capture::backlog(db, table)?;
            bail!(
                "cannot complete {name}: the monolith holds {count} change(s) made after writes \
                 were switched (ids {left:?}), never carried to the service; completing would \
                 lose them. Cut over back (`scripts/cutover {name} --reverse`) so the follower \
                 carries them, or repair them by hand and `scripts/migrate-data {name} \
                 --remove-capture --force`"
            );
        }
        Ok(())
    })?;
    capture::uninstall(&mut pair.service, table, Side::Service)?;
    // What the service captured before its triggers went: the monolith's copy gets it.
    let mut applied_total = 0;
    loop {
        let applied = capture::apply(&mut pair, table, Direction::Reverse, 10_000)?;
        capture::forget(&mut pair.service, table, &applied.seqs)?;
        applied_total += applied.changes;
        if applied.changes == 0 {
            break;
        }
    }
    let fence_removed = match rec.fence_id {
        Some(id) => {
            remove_fence(&mut pair.monolith, table, id)?;
            set_fence(&mut pair.service, table, None)?;
            true
        }
        None => false,
    };
    capture::discard(&mut pair.monolith, table)?;
    let dropped = (
        capture::tidy(&mut pair.monolith)?,
        capture::tidy(&mut pair.service)?,
    );
    let conflicts_table_dropped = conflicts::drop_if_empty(&mut pair.service)?;
    set_stage(&mut pair.service, table, SyncStage::Complete)?;
    Ok(Completed {
        final_changes_applied: applied_total,
        change_tables_dropped: dropped,
        fence_removed,
        conflicts_table_dropped,
        monolith_note: format!(
            "table {} in {} is now a stale copy that nothing updates: the monolith no longer \
             needs it once no route sends it requests that read {name} (its own foreign keys \
             to it included); drop it then",
            table.sql_table(Side::Monolith),
            labels(data_dir, resource).0
        ),
    })
}

/// What [`remove_capture`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// Whether triggers were there to remove: (monolith, service).
    pub triggers_removed: (bool, bool),
    /// Captured changes thrown away: (monolith, service).
    pub changes_discarded: (u64, u64),
    /// Whether the resource's `_strangler_sync` row was deleted (no cutover had happened, so
    /// the migration is back to "not started"; a forced removal after one keeps it).
    pub state_forgotten: bool,
}

/// Removes change capture of the resource from both databases — triggers, its captured
/// changes, the change and marker tables when nothing else uses them, the fence row — for a
/// follower killed with -9 that left triggers and a growing change table.
///
/// Errors (nothing removed) unless `force`: a live follower heartbeats; or writes are switched
/// to the service (capture is what keeps the monolith current: use [`complete`]).
pub fn remove_capture(
    data_dir: &Path,
    resource: &Declared,
    force: bool,
) -> anyhow::Result<Removed> {
    let (mut pair, table) = connect(data_dir, resource)?;
    let table = &table;
    let name = resource.name();
    let rec = load(&mut pair.service, table)?;
    if let Some(rec) = rec.as_ref().filter(|_| !force) {
        if rec.follower_alive() {
            bail!(
                "refusing to remove capture of {name}: a follower is running ({}); stop it \
                 (Ctrl-C or kill -TERM), or pass --force",
                rec.describe_follower()
            );
        }
        if rec.direction == Direction::Reverse {
            bail!(
                "refusing to remove capture of {name}: writes are switched to the service and \
                 capture keeps the monolith's copy current; finish with `scripts/complete \
                 {name}`, restart the follower with `scripts/migrate-data {name} --reverse \
                 --follow`, or pass --force"
            );
        }
    }
    let triggers_removed = (
        capture::installed(&mut pair.monolith, table)?,
        capture::installed(&mut pair.service, table)?,
    );
    capture::uninstall(&mut pair.monolith, table, Side::Monolith)?;
    capture::uninstall(&mut pair.service, table, Side::Service)?;
    let changes_discarded = (
        capture::discard(&mut pair.monolith, table)?,
        capture::discard(&mut pair.service, table)?,
    );
    capture::tidy(&mut pair.monolith)?;
    capture::tidy(&mut pair.service)?;
    if let Some(id) = rec.as_ref().and_then(|r| r.fence_id) {
        remove_fence(&mut pair.monolith, table, id)?;
        set_fence(&mut pair.service, table, None)?;
    }
    let cutover_happened = rec
        .as_ref()
        .is_some_and(|r| !matches!(r.stage, SyncStage::Copying | SyncStage::Following));
    let state_forgotten = rec.is_some() && !cutover_happened;
    if state_forgotten {
        forget_state(&mut pair.service, table)?;
    } else if rec.is_some() {
        detach(&mut pair.service, table)?;
    }
    Ok(Removed {
        triggers_removed,
        changes_discarded,
        state_forgotten,
    })
}

/// Marks the resource's unresolved conflicts resolved, after the operator repaired the rows on
/// the writing side; returns how many.
///
/// Errors: the rows in conflict still differ between the sides; a database that cannot be
/// opened or written.
pub fn resolve_conflicts(data_dir: &Path, resource: &Declared) -> anyhow::Result<u64> {
    let (mut pair, table) = connect(data_dir, resource)?;
    let table = &table;
    let name = table.name();
    let open = conflicts::unresolved(&mut pair.service, table)?;
    let mut ids: Vec<i64> = open.iter().map(|c| c.row_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut differ = Vec::new();
    for id in &ids {
        let monolith = capture::row_of(&mut pair.monolith, Side::Monolith, table, *id)?;
        let service = capture::row_of(&mut pair.service, Side::Service, table, *id)?;
        if monolith != service {
            let show = |row: Option<Vec<Value>>| {
                row.map_or("(none)".to_string(), |r| capture::row_json(table, &r))
            };
            differ.push(format!(
                "id {id}: monolith {}, service {}",
                show(monolith),
                show(service)
            ));
        }
    }
    if !differ.is_empty() {
        bail!(
            "the rows in conflict still differ between the two sides:\n{}\nmake each row the \
             same on both sides (the version that is right, or deleted on both), then run \
             `scripts/migrate-data {name} --resolve-conflicts` again",
            differ.join("\n")
        );
    }
    // Equal rows: the changes still captured for them on either side carry nothing, and left
    // in place they would raise the same conflict again.
    capture::discard_rows(&mut pair.monolith, table, &ids)?;
    pair.service.transaction(true, |db| {
        capture::discard_rows(db, table, &ids)?;
        conflicts::resolve_all(db, table)
    })
}
