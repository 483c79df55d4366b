//! Client connections of one listener: which are idle and since when, and closing the ones
//! that hold a descriptor without using it, so silent clients cannot starve the process of
//! descriptors.
//!
//! A connection is busy from the moment its service is called until the response body is
//! dropped (hyper drops it once it is written), and idle otherwise. An idle connection is
//! closed when it sent nothing within `first_byte` of being accepted, when a request head is
//! not complete within `header_read` of its first byte, or after `idle` without a request. At
//! `max` connections the listener keeps accepting and closes the connection idle the longest
//! instead, so a flood of silent connections costs its own members, not new clients.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a connection asked to close with nothing in flight may take to go before it is
/// dropped (a half-read request head would otherwise keep it).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The timeouts and the cap of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Silence allowed after accept.
    pub first_byte: Duration,
    /// Time from a request head's first byte to its end.
    pub header_read: Duration,
    /// Time without a request in flight.
    pub idle: Duration,
    /// Open connections before the oldest idle one is closed.
    pub max: usize,
}

/// The open connections of one listener.
pub struct Connections {
    limits: Limits,
    epoch: Instant,
    open: Mutex<HashMap<u64, Arc<State>>>,
    next: AtomicU64,
    emptied: Notify,
}

/// One connection's state, shared by its task, its I/O and its in-flight requests.
pub struct State {
    epoch: Instant,
    /// Requests in flight (more than one on HTTP/2).
    busy: AtomicUsize,
    /// Milliseconds since `epoch` when `busy` last became 0 (accept time at first).
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` + 1 of the first byte read while idle, 0 when none.
    head_started: AtomicU64,
    /// Whether a request was ever served.
    served: AtomicBool,
    /// HTTP/2: frames read while idle (pings, settings) do not start a request head.
    h2: AtomicBool,
    /// Milliseconds since `epoch` + 1 when the connection was asked to close, 0 when not.
    closing: AtomicU64,
    /// Closing lets a connection that has not served yet answer its first request (its bytes
    /// may be on their way): set by the drain, not by the cap.
    patient: AtomicBool,
    wake: Notify,
}

impl State {
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn close(&self) -> bool {
        let first = self
            .closing
            .compare_exchange(0, self.now() + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        self.wake.notify_one();
        first
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }

    /// When to look at the connection next: its deadline as things stand, or sooner, the
    /// earliest any deadline could fall if something changed now (a request head started on
    /// an idle connection, a busy one went idle): the state changes on the request path
    /// without waking the connection's task, and a deadline is never missed, only checked
    /// again.
    fn next_check(&self, limits: &Limits) -> Instant {
        let soonest_new = Instant::now() + limits.header_read.min(limits.idle);
        match self.deadline(limits) {
            Some((at, _)) => at.min(soonest_new),
            None => soonest_new,
        }
    }

    /// When the connection must go if nothing changes, and whether it may go gracefully.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Why)> {
        if !self.is_idle() {
            return None;
        }
        let idle_since = self.idle_since.load(Ordering::SeqCst);
        let closing = self.closing.load(Ordering::SeqCst);
        if closing > 0 {
            let from = (closing - 1).max(idle_since);
            return Some((self.at(from) + CLOSE_GRACE, Why::Closing));
        }
        let head = self.head_started.load(Ordering::SeqCst);
        if head > 0 {
            return Some((self.at(head - 1) + limits.header_read, Why::HeaderRead));
        }
        if !self.served.load(Ordering::SeqCst) {
            return Some((self.at(idle_since) + limits.first_byte, Why::FirstByte));
        }
        Some((self.at(idle_since) + limits.idle, Why::Idle))
    }
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    FirstByte,
    HeaderRead,
    Idle,
    Closing,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Connections {
    /// No connections yet.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            epoch: Instant::now(),
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            emptied: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<State>>> {
        // A panic while holding the lock leaves the map consistent (single inserts/removes).
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers an accepted stream; at the cap, asks the connection idle the longest to
    /// close.
    pub fn open(self: &Arc<Self>, stream: TcpStream) -> (Watched, Conn) {
        let now = millis(self.epoch.elapsed());
        let state = Arc::new(State {
            epoch: self.epoch,
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            closing: AtomicU64::new(0),
            patient: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let over = {
            let mut open = self.lock();
            open.insert(id, state.clone());
            open.len() > self.limits.max
        };
        if over && !self.close_oldest_idle() {
            tracing::debug!(
                max = self.limits.max,
                "connection cap reached with every connection busy; accepting anyway"
            );
        }
        let watched = Watched {
            stream,
            state: state.clone(),
        };
        let conn = Conn {
            id,
            state,
            connections: self.clone(),
        };
        (watched, conn)
    }

    /// Asks the connection idle the longest (and not already closing) to close. Returns
    /// whether there was one.
    pub fn close_oldest_idle(&self) -> bool {
        let oldest = self
            .lock()
            .values()
            .filter(|s| s.is_idle() && s.closing.load(Ordering::SeqCst) == 0)
            .min_by_key(|s| s.idle_since.load(Ordering::SeqCst))
            .cloned();
        oldest.is_some_and(|s| s.close())
    }

    /// Asks every connection to close: idle ones go at once, busy ones after their responses,
    /// and ones that have not sent a request yet after their first (a client that just
    /// connected has its request on the way) or a second of silence.
    pub fn close_all(&self) {
        for state in self.lock().values() {
            state.patient.store(true, Ordering::SeqCst);
            state.close();
        }
    }

    /// Returns once no connection is open.
    pub async fn closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

/// One open connection: drives it and unregisters it when done.
pub struct Conn {
    id: u64,
    state: Arc<State>,
    connections: Arc<Connections>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let empty = {
            let mut open = self.connections.lock();
            open.remove(&self.id);
            open.is_empty()
        };
        if empty {
            self.connections.emptied.notify_waiters();
        }
    }
}

impl Conn {
    /// A handle for the connection's service to mark requests with.
    pub fn requests(&self) -> Requests {
        Requests(self.state.clone())
    }

    /// Serves `conn` until it ends, a timeout closes it, or it is asked to close.
    pub async fn drive<C>(self, conn: C)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let limits = self.connections.limits;
        tokio::pin!(conn);
        let mut graceful_sent = false;
        // One timer per connection, re-armed only when it fires or the connection is asked
        // to close: a request costs no wake-up and no timer of its own (see `next_check`).
        let check = tokio::time::sleep_until(self.state.next_check(&limits));
        tokio::pin!(check);
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.state.wake.notified() => {}
                () = check.as_mut() => {
                    // Re-read: a request may have started as the timer fired.
                    match self.state.deadline(&limits) {
                        Some((at, why)) if at <= Instant::now() => {
                            if why == Why::Idle {
                                self.state.close();
                            } else {
                                tracing::debug!(?why, "closing a connection that sent no request");
                                return;
                            }
                        }
                        _ => {}
                    }
                }
            }
            check.as_mut().reset(self.state.next_check(&limits));
            let state = &self.state;
            let wait_for_first =
                state.patient.load(Ordering::SeqCst) && !state.served.load(Ordering::SeqCst);
            if !graceful_sent && state.closing.load(Ordering::SeqCst) > 0 && !wait_for_first {
                conn.as_mut().graceful_shutdown();
                graceful_sent = true;
            }
        }
    }
}

/// Marks requests of one connection (cheap to clone into a service).
#[derive(Clone)]
pub struct Requests(Arc<State>);

impl Requests {
    /// Marks a request in flight until the returned guard is dropped.
    pub fn start(&self, version: http::Version) -> Active {
        Active::new(self.0.clone(), version)
    }
}

/// A request in flight; the connection is busy while any exists.
pub struct Active(Arc<State>);

impl Active {
    fn new(state: Arc<State>, version: http::Version) -> Self {
        state.busy.fetch_add(1, Ordering::SeqCst);
        state.served.store(true, Ordering::SeqCst);
        state.head_started.store(0, Ordering::SeqCst);
        if version == http::Version::HTTP_2 {
            state.h2.store(true, Ordering::SeqCst);
        }
        Self(state)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let state = &self.0;
        state.idle_since.store(state.now(), Ordering::SeqCst);
        // Only a closing connection needs its task now: it may go as soon as it is idle.
        if state.busy.fetch_sub(1, Ordering::SeqCst) == 1
            && state.closing.load(Ordering::SeqCst) > 0
        {
            state.wake.notify_one();
        }
    }
}

pin_project! {
    /// A response body that keeps its request [`Active`] until hyper is done with it.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        active: Active,
    }
}

impl<B> Tracked<B> {
    /// `body`, keeping `active` alive as long as it is.
    pub fn new(body: B, active: Active) -> Self {
        Self { body, active }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An accepted stream that notes when a request head starts arriving on an idle connection.
pub struct Watched {
    stream: TcpStream,
    state: Arc<State>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let state = &this.state;
        if buf.filled().len() > before
            && state.is_idle()
            && state.head_started.load(Ordering::SeqCst) == 0
            && !state.h2.load(Ordering::SeqCst)
        {
            state.head_started.store(state.now() + 1, Ordering::SeqCst);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
