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
//! All SQL of the sync state lives here (SQLite); the capture SQL lives in [`crate::capture`].

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, TransactionBehavior, params};

use crate::capture::{self, now_ms};
use crate::conflicts;
use crate::migrate::paths;
use crate::migrations::Declared;
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

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One of the two databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// `DATA/monolith.db`, attached as `src`.
    Monolith,
    /// `DATA/RESOURCE.db`, the connection's `main`.
    Service,
}

impl Side {
    /// The schema name on a connection from [`crate::migrate::open`] or [`connect`].
    pub fn schema(self) -> &'static str {
        match self {
            Side::Monolith => "src",
            Side::Service => "main",
        }
    }

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

fn has_table(conn: &Connection, schema: &str, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!("SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?1"),
        [name],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Creates `_strangler_sync` in the service's database if missing.
pub fn ensure_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS main.{SYNC} (
            resource TEXT PRIMARY KEY,
            direction TEXT NOT NULL,
            stage TEXT NOT NULL,
            follower_direction TEXT,
            follower_pid INTEGER,
            heartbeat_ms INTEGER,
            switched_at_ms INTEGER,
            lag_ms INTEGER,
            fence_id INTEGER,
            last_verified_ok INTEGER,
            updated_at_ms INTEGER NOT NULL
        );"
    ))
}

/// The resource's row, `None` when its migration never started (or was stopped cleanly).
pub fn load(conn: &Connection, table: &Table) -> rusqlite::Result<Option<Record>> {
    if !has_table(conn, "main", SYNC)? {
        return Ok(None);
    }
    conn.query_row(
        &format!(
            "SELECT direction, stage, follower_direction, follower_pid, heartbeat_ms, \
             switched_at_ms, lag_ms, fence_id, last_verified_ok FROM main.{SYNC} WHERE resource = ?1"
        ),
        [table.name()],
        |row| {
            let direction: String = row.get(0)?;
            let stage: String = row.get(1)?;
            let follower: Option<String> = row.get(2)?;
            Ok(Record {
                direction: Direction::parse(&direction).unwrap_or(Direction::Forward),
                stage: SyncStage::parse(&stage).unwrap_or(SyncStage::Copying),
                follower_direction: follower.as_deref().and_then(Direction::parse),
                follower_pid: row.get(3)?,
                heartbeat_ms: row.get(4)?,
                switched_at_ms: row.get(5)?,
                lag_ms: row.get(6)?,
                fence_id: row.get(7)?,
                last_verified_ok: row.get(8)?,
            })
        },
    )
    .optional()
}

/// Records a fresh start of the migration: `direction` and `stage`, no follower yet.
pub fn start(
    conn: &Connection,
    table: &Table,
    direction: Direction,
    stage: SyncStage,
) -> rusqlite::Result<()> {
    ensure_table(conn)?;
    conn.execute(
        &format!(
            "INSERT INTO main.{SYNC} (resource, direction, stage, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(resource) DO UPDATE SET direction = excluded.direction,
                stage = excluded.stage, updated_at_ms = excluded.updated_at_ms"
        ),
        params![table.name(), direction.as_str(), stage.stored(), now_ms()],
    )?;
    Ok(())
}

/// Records a new stage.
pub fn set_stage(conn: &Connection, table: &Table, stage: SyncStage) -> rusqlite::Result<()> {
    conn.execute(
        &format!("UPDATE main.{SYNC} SET stage = ?2, updated_at_ms = ?3 WHERE resource = ?1"),
        params![table.name(), stage.stored(), now_ms()],
    )?;
    Ok(())
}

/// The follower's heartbeat: it is alive, follows `following`, and its last lag.
pub fn heartbeat(
    conn: &Connection,
    table: &Table,
    following: Direction,
    lag_ms: Option<u64>,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE main.{SYNC} SET follower_direction = ?2, follower_pid = ?3, heartbeat_ms = ?4,
                lag_ms = coalesce(?5, lag_ms), updated_at_ms = ?4 WHERE resource = ?1"
        ),
        params![
            table.name(),
            following.as_str(),
            std::process::id(),
            now_ms(),
            lag_ms.map(|l| l as i64)
        ],
    )?;
    Ok(())
}

/// The follower stopped cleanly: no pid.
pub fn detach(conn: &Connection, table: &Table) -> rusqlite::Result<()> {
    if has_table(conn, "main", SYNC)? {
        conn.execute(
            &format!(
                "UPDATE main.{SYNC} SET follower_pid = NULL, updated_at_ms = ?2 WHERE resource = ?1"
            ),
            params![table.name(), now_ms()],
        )?;
    }
    Ok(())
}

/// Deletes the resource's row (capture was removed with no cutover: back to "not started").
pub fn forget_state(conn: &Connection, table: &Table) -> rusqlite::Result<()> {
    if has_table(conn, "main", SYNC)? {
        conn.execute(
            &format!("DELETE FROM main.{SYNC} WHERE resource = ?1"),
            [table.name()],
        )?;
    }
    Ok(())
}

/// Records a verification's outcome.
pub fn record_verified(conn: &Connection, table: &Table, ok: bool) -> rusqlite::Result<()> {
    if has_table(conn, "main", SYNC)? {
        conn.execute(
            &format!(
                "UPDATE main.{SYNC} SET last_verified_ok = ?2, updated_at_ms = ?3 WHERE resource = ?1"
            ),
            params![table.name(), ok, now_ms()],
        )?;
    }
    Ok(())
}

/// The id of the resource's fence row, if one is recorded.
pub fn fence_of(conn: &Connection, table: &Table) -> rusqlite::Result<Option<i64>> {
    Ok(load(conn, table)?.and_then(|r| r.fence_id))
}

fn set_fence(conn: &Connection, table: &Table, fence: Option<i64>) -> rusqlite::Result<()> {
    conn.execute(
        &format!("UPDATE main.{SYNC} SET fence_id = ?2, updated_at_ms = ?3 WHERE resource = ?1"),
        params![table.name(), fence, now_ms()],
    )?;
    Ok(())
}

// ---- connections ------------------------------------------------------------------------

/// Opens `DATA/RESOURCE.db` with `DATA/monolith.db` attached as `src`, both read-write and
/// never created: errors when either file is missing.
pub fn connect(data_dir: &Path, resource: &Declared) -> anyhow::Result<Connection> {
    let (monolith, service) = paths(data_dir, resource)?;
    for path in [&monolith, &service] {
        if !path.is_file() {
            bail!(
                "no database at {}: has `migrate-data {} --follow` run here (--data-dir)?",
                path.display(),
                resource.name()
            );
        }
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&service, flags)
        .with_context(|| format!("opening {}", service.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // As in `migrate::open`: the applier keeps copies, it does not enforce references.
    conn.pragma_update(None, "foreign_keys", false)?;
    let uri = format!("file:{}?mode=rw", uri_path(&monolith)?);
    conn.execute("ATTACH DATABASE ?1 AS src", [uri])
        .with_context(|| format!("attaching {}", monolith.display()))?;
    Ok(conn)
}

/// A path as the path part of an SQLite `file:` URI.
fn uri_path(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", path.display()))?;
    Ok(text
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23"))
}

fn started(conn: &Connection, table: &Table) -> anyhow::Result<Record> {
    load(conn, table)?.with_context(|| {
        format!(
            "the migration of {0} has not started: run `scripts/migrate-data {0} --follow` first",
            table.name()
        )
    })
}

fn backlog_of(conn: &Connection, table: &Table, side: Side) -> rusqlite::Result<Backlog> {
    let (changes, age_ms) = capture::backlog(conn, table, side, 0)?;
    Ok(Backlog {
        changes,
        oldest_age: Duration::from_millis(age_ms),
    })
}

// ---- the API ----------------------------------------------------------------------------

/// The resource's sync state; `None` when its migration never started (no service database,
/// or no row in `_strangler_sync`). Never creates a file.
///
/// Errors: a database that cannot be opened or read.
pub fn read_state(data_dir: &Path, resource: &Declared) -> anyhow::Result<Option<SyncState>> {
    // Change capture runs between two SQLite databases only: elsewhere nothing is recorded.
    let Ok((monolith, service)) = paths(data_dir, resource) else {
        return Ok(None);
    };
    if !service.is_file() || !monolith.is_file() {
        return Ok(None);
    }
    let conn = connect(data_dir, resource)?;
    // Nothing recorded: not started, whatever the tables look like (a service database may
    // exist before its table does).
    let recorded = has_table(&conn, "main", SYNC)?
        && conn.query_row(
            &format!("SELECT count(*) FROM main.{SYNC} WHERE resource = ?1"),
            [resource.name()],
            |row| row.get::<_, i64>(0),
        )? > 0;
    if !recorded {
        return Ok(None);
    }
    let table = &Table::resolve(&conn, resource)?;
    let Some(rec) = load(&conn, table)? else {
        return Ok(None);
    };
    Ok(Some(SyncState {
        direction: rec.direction,
        stage: rec.stage,
        follower_heartbeat_age: rec
            .heartbeat_ms
            .map(|hb| Duration::from_millis(now_ms().saturating_sub(hb).unsigned_abs())),
        follower_pid: rec.follower_pid,
        forward_backlog: backlog_of(&conn, table, Side::Monolith)?,
        reverse_backlog: backlog_of(&conn, table, Side::Service)?,
        conflicts: conflicts::count(&conn, table)?,
        capture_installed: (
            capture::installed(&conn, table, Side::Monolith)?,
            capture::installed(&conn, table, Side::Service)?,
        ),
        last_verified_ok: rec.last_verified_ok,
    }))
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
    let conn = connect(data_dir, resource)?;
    let table = &Table::resolve(&conn, resource)?;
    started(&conn, table)?;
    let deadline = Instant::now() + timeout;
    loop {
        let standing = conflicts::unresolved(&conn, table)?;
        if !standing.is_empty() {
            let lines: Vec<String> = standing.iter().map(|c| c.describe()).collect();
            bail!(
                "draining {} {}: {} unresolved conflict(s):\n{}\nmake each row the same on \
                 both sides (the right version), then `scripts/migrate-data {} \
                 --resolve-conflicts`",
                resource.name(),
                direction.arrow(),
                standing.len(),
                lines.join("\n"),
                resource.name()
            );
        }
        let backlog = backlog_of(&conn, table, direction.source())?;
        if backlog.changes == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let rec = started(&conn, table)?;
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

/// Compares both sides (row counts and checksums, leaving out the id fence) and lists
/// unresolved conflicts, in one read transaction; records the outcome as `last_verified_ok`.
/// Meaningful when the writing side is held or drained, else it may see changes in flight.
///
/// Errors: a database that cannot be opened or read.
pub fn verify(data_dir: &Path, resource: &Declared) -> anyhow::Result<Verification> {
    let mut conn = connect(data_dir, resource)?;
    let table = &Table::resolve(&conn, resource)?;
    let (monolith, service) = paths(data_dir, resource)?;
    let tx = conn.transaction()?;
    let v = Verification::run(
        &tx,
        table,
        monolith.display().to_string(),
        service.display().to_string(),
    )?;
    tx.commit()?;
    record_verified(&conn, table, v.matches())?;
    Ok(v)
}

/// Records `to` as the direction, with the stage `writes switched` (to
/// [`Direction::Reverse`]: writes now go to the service) or `reversed` (back to
/// [`Direction::Forward`]), and first raises the new writer's id high-water mark
/// ([`raise_high_water`]). The state changes in one transaction on the service's database; a
/// running follower turns around at its next poll. Switching to the recorded direction does
/// nothing.
///
/// Errors: the migration never started, is still copying or is complete; the new writer lacks
/// rows the old one has (drain first).
pub fn switch(data_dir: &Path, resource: &Declared, to: Direction) -> anyhow::Result<()> {
    let mut conn = connect(data_dir, resource)?;
    let table = &Table::resolve(&conn, resource)?;
    let rec = started(&conn, table)?;
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
    raise_high_water_on(&mut conn, table, to.source())?;
    let stage = match to {
        Direction::Reverse => SyncStage::WritesSwitched,
        Direction::Forward => SyncStage::Reversed,
    };
    let tx = conn.transaction()?;
    let now = now_ms();
    tx.execute(
        &format!(
            "UPDATE main.{SYNC} SET direction = ?2, stage = ?3, switched_at_ms = ?4, updated_at_ms = ?4
             WHERE resource = ?1"
        ),
        params![table.name(), to.as_str(), stage.stored(), now],
    )?;
    tx.commit()?;
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
    let conn = connect(data_dir, resource)?;
    let table = &Table::resolve(&conn, resource)?;
    let deadline = Instant::now() + timeout;
    loop {
        let rec = started(&conn, table)?;
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
        let _ = table;
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
/// The tables are `id INTEGER PRIMARY KEY` without AUTOINCREMENT, so SQLite gives a new row
/// max(id) + 1 and nothing that is deleted again raises that persistently. Therefore:
/// - The writer's next id is already above every row of either side once the old direction is
///   drained (it holds a copy of every row); this is checked, not assumed.
/// - Switching writes to the service places a **fence row** in the monolith's table at
///   max(both) + [`FENCE_GAP`] (empty texts, references to 0, inserted without being captured,
///   left out of verification, removed by a switch back and by [`complete`]): a straggler
///   insert on the monolith gets an id above it, far from the service's. The fence is visible
///   to whoever reads the monolith's table directly (reads are switched by then).
/// - Switching writes back to the monolith removes the fence and places none in the service's
///   table, where clients still read: stragglers on the service may then take an id the
///   monolith also takes, and conflict detection is the guarantee (the follower records a
///   conflict instead of overwriting).
///
/// Errors: the writer lacks rows the other side has (drain the old direction first).
pub fn raise_high_water(
    data_dir: &Path,
    resource: &Declared,
    writer: Side,
) -> anyhow::Result<HighWater> {
    let mut conn = connect(data_dir, resource)?;
    let table = &Table::resolve(&conn, resource)?;
    started(&conn, table)?;
    raise_high_water_on(&mut conn, table, writer)
}

fn max_id(
    conn: &Connection,
    side: Side,
    table: &Table,
    fence: Option<i64>,
) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!(
            "SELECT coalesce(max({k}), 0) FROM {} WHERE ?1 IS NULL OR {k} IS NOT ?1",
            table.qualified(side),
            k = table.key_on(side)
        ),
        [fence],
        |row| row.get(0),
    )
}

fn raise_high_water_on(
    conn: &mut Connection,
    table: &Table,
    writer: Side,
) -> anyhow::Result<HighWater> {
    let fence = fence_of(conn, table)?;
    let writer_max = max_id(conn, writer, table, fence)?;
    let other_max = max_id(conn, writer.other(), table, fence)?;
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
    match writer {
        Side::Service => {
            let id = fence.unwrap_or(writer_max.max(other_max) + FENCE_GAP);
            // Recorded before it exists, so verification never counts it as a difference.
            set_fence(conn, table, Some(id))?;
            place_fence(conn, table, id)?;
            Ok(HighWater {
                writer,
                writer_next_id: writer_max + 1,
                fence: Some(id),
            })
        }
        Side::Monolith => {
            if let Some(id) = fence {
                remove_fence(conn, table, id)?;
                set_fence(conn, table, None)?;
            }
            Ok(HighWater {
                writer,
                writer_next_id: writer_max + 1,
                fence: None,
            })
        }
    }
}

/// Inserts the fence row into the monolith's table, uncaptured (idempotent).
pub fn place_fence(conn: &mut Connection, table: &Table, id: i64) -> rusqlite::Result<()> {
    let tx = capture::begin(conn, Side::Monolith)?;
    tx.execute(
        &format!(
            "INSERT INTO {} ({}) VALUES (?1{}{}) ON CONFLICT({}) DO NOTHING",
            table.qualified(Side::Monolith),
            table.column_list(Side::Monolith),
            if table.columns.len() > 1 { ", " } else { "" },
            table.placeholder_values(),
            table.key_on(Side::Monolith)
        ),
        [id],
    )?;
    capture::commit(tx, Side::Monolith)
}

fn remove_fence(conn: &mut Connection, table: &Table, id: i64) -> rusqlite::Result<()> {
    let tx = capture::begin(conn, Side::Monolith)?;
    tx.execute(
        &format!(
            "DELETE FROM {} WHERE {} = ?1",
            table.qualified(Side::Monolith),
            table.key_on(Side::Monolith)
        ),
        [id],
    )?;
    capture::commit(tx, Side::Monolith)
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
    let mut conn = connect(data_dir, resource)?;
    let table = &Table::resolve(&conn, resource)?;
    let name = resource.name();
    let rec = started(&conn, table)?;
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
    let open = conflicts::unresolved(&conn, table)?;
    if !open.is_empty() {
        let lines: Vec<String> = open.iter().map(|c| c.describe()).collect();
        bail!(
            "cannot complete {name}: {} unresolved conflict(s):\n{}\nmake each row the same on \
             both sides (the right version), then `scripts/migrate-data {name} \
             --resolve-conflicts`",
            open.len(),
            lines.join("\n")
        );
    }
    // Stop capturing on the monolith and check for uncarried stragglers in one transaction, so
    // none can slip in between.
    {
        let tx = conn.transaction()?;
        for event in ["insert", "update", "delete"] {
            tx.execute_batch(&format!(
                "DROP TRIGGER IF EXISTS src._strangler_capture_{name}_{event}"
            ))?;
        }
        let left = capture::pending_ids(&tx, table, Side::Monolith, 20)?;
        if !left.is_empty() {
            let (count, _) = capture::backlog(&tx, table, Side::Monolith, 0)?;
            tx.rollback()?;
            bail!(
                "cannot complete {name}: the monolith holds {count} change(s) made after writes \
                 were switched (ids {left:?}), never carried to the service; completing would \
                 lose them. Cut over back (`scripts/cutover {name} --reverse`) so the follower \
                 carries them, or repair them by hand and `scripts/migrate-data {name} \
                 --remove-capture --force`"
            );
        }
        tx.commit()?;
    }
    capture::uninstall(&mut conn, table, Side::Service)?;
    // What the service captured before its triggers went: the monolith's copy gets it.
    let mut applied_total = 0;
    loop {
        let tx = capture::begin(&mut conn, Side::Monolith)?;
        let applied = capture::apply(&tx, table, Direction::Reverse, 0, 10_000)?;
        capture::commit(tx, Side::Monolith)?;
        capture::forget(&conn, table, Side::Service, applied.last_seq)?;
        applied_total += applied.changes;
        if applied.changes == 0 {
            break;
        }
    }
    let fence_removed = match rec.fence_id {
        Some(id) => {
            remove_fence(&mut conn, table, id)?;
            set_fence(&conn, table, None)?;
            true
        }
        None => false,
    };
    capture::discard(&conn, table, Side::Monolith)?;
    let dropped = (
        capture::tidy(&conn, Side::Monolith)?,
        capture::tidy(&conn, Side::Service)?,
    );
    let conflicts_table_dropped = conflicts::drop_if_empty(&conn)?;
    set_stage(&conn, table, SyncStage::Complete)?;
    let (monolith, _) = paths(data_dir, resource)?;
    Ok(Completed {
        final_changes_applied: applied_total,
        change_tables_dropped: dropped,
        fence_removed,
        conflicts_table_dropped,
        monolith_note: format!(
            "table {name} in {} is now a stale copy that nothing updates: the monolith no \
             longer needs it once no route sends it requests that read {name} (its own \
             foreign keys to it included); drop it then",
            monolith.display()
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
    let mut conn = connect(data_dir, resource)?;
    let table = &Table::resolve(&conn, resource)?;
    let name = resource.name();
    let rec = load(&conn, table)?;
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
        capture::installed(&conn, table, Side::Monolith)?,
        capture::installed(&conn, table, Side::Service)?,
    );
    capture::uninstall(&mut conn, table, Side::Monolith)?;
    capture::uninstall(&mut conn, table, Side::Service)?;
    let changes_discarded = (
        capture::discard(&conn, table, Side::Monolith)?,
        capture::discard(&conn, table, Side::Service)?,
    );
    capture::tidy(&conn, Side::Monolith)?;
    capture::tidy(&conn, Side::Service)?;
    if let Some(id) = rec.as_ref().and_then(|r| r.fence_id) {
        remove_fence(&mut conn, table, id)?;
        set_fence(&conn, table, None)?;
    }
    let cutover_happened = rec
        .as_ref()
        .is_some_and(|r| !matches!(r.stage, SyncStage::Copying | SyncStage::Following));
    let state_forgotten = rec.is_some() && !cutover_happened;
    if state_forgotten {
        forget_state(&conn, table)?;
    } else if rec.is_some() {
        detach(&conn, table)?;
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
/// Errors: a database that cannot be opened or written.
pub fn resolve_conflicts(data_dir: &Path, resource: &Declared) -> anyhow::Result<u64> {
    let mut conn = connect(data_dir, resource)?;
    let table = &Table::resolve(&conn, resource)?;
    let name = table.name();
    let open = conflicts::unresolved(&conn, table)?;
    let mut ids: Vec<i64> = open.iter().map(|c| c.row_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut differ = Vec::new();
    for id in &ids {
        let monolith = capture::row_json(&conn, Side::Monolith, table, *id)?;
        let service = capture::row_json(&conn, Side::Service, table, *id)?;
        if monolith != service {
            differ.push(format!(
                "id {id}: monolith {}, service {}",
                monolith.as_deref().unwrap_or("(none)"),
                service.as_deref().unwrap_or("(none)")
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
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for side in [Side::Monolith, Side::Service] {
        if capture::exists(&tx, side, "table", capture::CHANGES)? {
            let mut forget = tx.prepare(&format!(
                "DELETE FROM {}.{} WHERE resource = ?1 AND row_id = ?2",
                side.schema(),
                capture::CHANGES
            ))?;
            for id in &ids {
                forget.execute(params![name, id])?;
            }
        }
    }
    let resolved = conflicts::resolve_all(&tx, table)?;
    tx.commit()?;
    Ok(resolved)
}
