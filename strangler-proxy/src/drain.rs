//! Whether the process is draining: set once by the shutdown, read by `/readyz` (503 so load
//! balancers stop sending) and by the request path.

use std::sync::atomic::{AtomicBool, Ordering};

/// The draining flag, shared by the server, the proxy and the admin listener.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    /// Marks the process as draining; it never goes back.
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown has begun.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
