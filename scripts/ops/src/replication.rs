//! `migrate-data R --follow` when both sides are PostgreSQL with `wal_level = logical`:
//! PostgreSQL's own logical replication instead of capture triggers — a publication of the
//! table on the source, a replication slot, and a subscription on the target that copies the
//! table (`copy_data = true`, from the slot's snapshot, so no change falls between the copy and
//! the stream) and then applies every committed change.
//!
//! Names: publication, slot and subscription are all `strangler_RESOURCE`. The slot is created
//! by us (`pg_create_logical_replication_slot`) rather than by `CREATE SUBSCRIPTION`, which
//! waits forever when source and target databases share one server.
//!
//! The subscription runs inside the target server: a follower killed with -9 stops reporting,
//! not replicating; started again it finds the subscription and resumes watching it. Stopped
//! with Ctrl-C or SIGTERM it waits for lag 0, removes subscription, slot and publication, and
//! verifies.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use postgres::Client;

use crate::migrations::Declared;
use crate::resource::Table;
use crate::signals::Stop;
use crate::sync::Side;

/// The publication, slot and subscription of `resource`.
pub fn name_of(resource: &str) -> String {
    format!("strangler_{resource}")
}

/// Why logical replication cannot carry `decl` between these two servers, if it cannot:
/// the source's `wal_level` is not `logical`, or a column is renamed (a subscription matches
/// columns by name), or the tables are named differently.
///
/// Errors: the source cannot be asked.
pub fn unusable(source: &mut Client, decl: &Declared) -> anyhow::Result<Option<String>> {
    let wal_level: String = source.query_one("SHOW wal_level", &[])?.get(0);
    if wal_level != "logical" {
        return Ok(Some(format!(
            "the source server runs with wal_level = {wal_level}: set wal_level = logical \
             (postgresql.conf, then restart) for logical replication"
        )));
    }
    if !decl.rename.is_empty() {
        return Ok(Some(
            "migrations.toml renames columns, and a subscription matches columns by name".into(),
        ));
    }
    if decl.source.table != decl.target.table {
        return Ok(Some(format!(
            "the source table {} and the target table {} are named differently, and a \
             subscription matches tables by name",
            decl.source.table, decl.target.table
        )));
    }
    Ok(None)
}

/// Whether the subscription exists on the target.
///
/// Errors: the catalogue cannot be read.
pub fn subscribed(target: &mut Client, resource: &str) -> anyhow::Result<bool> {
    Ok(target
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1",
            &[&name_of(resource)],
        )?
        .is_some())
}

/// Creates publication and slot on the source and the subscription on the target (which
/// copies the table, then streams). `source_conninfo` is how the *target server* reaches the
/// source (the source URL as declared).
///
/// Errors: the target table holds rows (the subscription's copy would collide with them: empty
/// it first); a statement is refused (e.g. missing privileges: publications need the table's
/// owner, subscriptions a superuser or `pg_create_subscription` from PostgreSQL 16).
pub fn start(
    source: &mut Client,
    target: &mut Client,
    table: &Table,
    source_conninfo: &str,
) -> anyhow::Result<()> {
    let name = name_of(table.name());
    let t = table.table_on(Side::Service);
    let rows: i64 = target
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])?
        .get(0);
    if rows > 0 {
        bail!(
            "the target table {t} holds {rows} rows: the subscription copies the table itself \
             from the replication slot's snapshot, and its copy would collide with them. Empty \
             it (TRUNCATE {t}) once you are sure the service has taken no writes, then follow again"
        );
    }
    let columns = table.column_list(Side::Monolith);
    source
        .batch_execute(&format!(
            "CREATE PUBLICATION {name} FOR TABLE {} ({columns})",
            table.sql_table(Side::Monolith)
        ))
        .context("creating the publication on the source")?;
    source
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .context("creating the replication slot on the source")?;
    target
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION {name} \
             WITH (create_slot = false, slot_name = '{name}', copy_data = true)",
            source_conninfo.replace('\'', "''")
        ))
        .context("creating the subscription on the target")?;
    Ok(())
}

/// Where the subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The table's initial copy is done and changes stream (`pg_subscription_rel` state `r`).
    pub synced: bool,
    /// WAL the source wrote that the subscription has not confirmed yet, in bytes (an idle
    /// subscription confirms every few seconds, so this stays above 0 for a while after the
    /// last change).
    pub lag_bytes: i64,
}

/// Reads the subscription's state on the target and the slot's position on the source.
///
/// Errors: the subscription or the slot is gone; a catalogue cannot be read.
pub fn status(source: &mut Client, target: &mut Client, resource: &str) -> anyhow::Result<Status> {
    let name = name_of(resource);
    let synced = target
        .query(
            "SELECT r.srsubstate::text FROM pg_subscription_rel r \
             JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1",
            &[&name],
        )?
        .iter()
        .all(|r| r.get::<_, String>(0) == "r");
    let lag: Option<i64> = source
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )?
        .with_context(|| format!("the replication slot {name} is gone from the source"))?
        .get(0);
    Ok(Status {
        synced,
        lag_bytes: lag.unwrap_or(i64::MAX),
    })
}

/// Waits (polling every 20 ms, until `timeout` or `stop`) for the subscription's initial
/// copy of the table to finish (`pg_subscription_rel` state `r`: changes stream from then on).
///
/// Errors: the deadline passed or a stop was requested.
pub fn wait_synced(
    source: &mut Client,
    target: &mut Client,
    resource: &str,
    timeout: Duration,
    stop: &Stop,
) -> anyhow::Result<()> {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        if status(source, target, resource)?.synced {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || stop.is_set() {
            bail!(
                "subscription {} is still copying the table",
                name_of(resource)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the subscription (target), then the slot and the publication (source); each step
/// is skipped when already gone.
///
/// Errors: a statement is refused.
pub fn remove(source: &mut Client, target: &mut Client, resource: &str) -> anyhow::Result<()> {
    let name = name_of(resource);
    if subscribed(target, resource)? {
        // Detached from its slot first, so dropping it never reaches back to the source.
        target.batch_execute(&format!(
            "ALTER SUBSCRIPTION {name} DISABLE; ALTER SUBSCRIPTION {name} SET (slot_name = NONE); \
             DROP SUBSCRIPTION {name}"
        ))?;
    }
    // A slot stays active for a moment after its subscription's worker stops.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let active: Option<bool> = source
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )?
            .map(|r| r.get(0));
        match active {
            None => break,
            Some(false) => {
                source.execute("SELECT pg_drop_replication_slot($1)", &[&name])?;
                break;
            }
            Some(true) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Some(true) => bail!("the replication slot {name} stays in use; drop it by hand"),
        }
    }
    source.batch_execute(&format!("DROP PUBLICATION IF EXISTS {name}"))?;
    Ok(())
}

/// `migrate-data R --remove-capture` for a resource whose two sides are PostgreSQL: removes
/// what a follower killed with -9 left replicating (subscription, slot, publication), so the
/// slot stops holding the source's WAL. Returns whether a subscription was there.
///
/// Errors: either database refuses the connection or a statement.
pub fn remove_declared(data_dir: &std::path::Path, decl: &Declared) -> anyhow::Result<bool> {
    use crate::db::Db;
    let mut source = Db::open(&decl.source.url, data_dir, false)?;
    let mut target = Db::open(&decl.target.url, data_dir, false)?;
    let (Some(s), Some(t)) = (source.postgres(), target.postgres()) else {
        bail!(
            "{}: logical replication runs between two PostgreSQL databases",
            decl.name()
        );
    };
    let was = subscribed(t, decl.name())?;
    remove(s, t, decl.name())?;
    Ok(was)
}
