//! The route table in service now: an immutable snapshot swapped whole.
//!
//! Requests load an `Arc<RouteTable>` once and keep it until they finish, so a swap never
//! changes the table under a request in flight. Nothing here reads files: a `Live` is built
//! from a table (in tests, from a string), and [`crate::reload::Reloader`] is what replaces it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::routes::RouteTable;

/// The swappable table every request reads.
pub struct Live {
    table: ArcSwap<RouteTable>,
    /// The revision in service, for requests waiting behind a write fence.
    stored: watch::Sender<u64>,
}

impl Live {
    /// Serves `table` until something stores another.
    pub fn new(table: RouteTable) -> Arc<Self> {
        let (stored, _) = watch::channel(table.revision);
        Arc::new(Self {
            table: ArcSwap::from_pointee(table),
            stored,
        })
    }

    /// A receiver that wakes at every later [`Live::store`]; subscribe *before* reading the
    /// table, so a swap in between is not missed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.stored.subscribe()
    }

    /// The table in service now; hold it for the whole request.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Puts `table` in service; requests already holding the previous one keep it.
    pub fn store(&self, table: Arc<RouteTable>) {
        let revision = table.revision;
        self.table.store(table);
        self.stored.send_replace(revision);
    }
}
