//! Keep-alive HTTP/1.1 connections to one service, built on `hyper::client::conn::http1`.
//!
//! hyper-util's legacy client pays, on every request, for a pool key hashed with SipHash, a
//! mutex, a channel and a boxed future; a proxy sending to a fixed address needs none of it. A
//! [`Pool`] is a stack of idle connections (the most recently used first, so a quiet service
//! lets the surplus age out) behind one uncontended lock taken twice per request: once to
//! check a connection out, once to return it. The [`Body`] of a response returns its
//! connection when the last byte has been read, which is when HTTP/1.1 lets the connection
//! carry the next request (RFC 9112 §9.3); a body dropped early closes it instead.
//!
//! Idle connections close after the service's `idle_timeout`: checked at check-out, and by a
//! sweep that runs while anything is idle.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::upstream::UpstreamBody;

/// Idle connections kept per service and worker beyond this many are closed when returned.
const MAX_IDLE: usize = 1024;

/// Idle stacks per pool: one per worker thread, and one (index 0) for every other thread.
/// Worker numbers past the last stack share stacks (correct, just not private).
const STACKS: usize = 65;

thread_local! {
    /// This thread's stack index: its worker number, 0 when it is no worker.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as worker `n` (1-based): its requests take and return idle
/// connections on a stack of their own, so a connection stays with the runtime that drives
/// it and no two workers contend for one lock.
pub fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n));
}

fn stack_index() -> usize {
    WORKER.with(std::cell::Cell::get) % STACKS
}

/// Connections to one service: where, how long to wait for a connect, how long an idle one
/// is kept.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    authority: Authority,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Per worker ([`set_worker`]), most recently returned last.
    idle: Vec<Mutex<Vec<Idle>>>,
    /// Whether a sweep task is running for this pool.
    sweeping: AtomicBool,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// Which connection a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// An idle pooled connection when one is ready, else a new one.
    Pooled,
    /// Always a new connection: the retry of a request whose pooled connection the service
    /// closed must not pick another it may be closing too.
    Fresh,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, resolution failed, or none within
    /// `connect_timeout`).
    Connect(io::Error),
    /// The connection failed before the response headers arrived.
    Http(hyper::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("client error (Connect)"),
            SendError::Http(_) => f.write_str("client error (SendRequest)"),
        }
    }
}

impl StdError for SendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Http(e) => Some(e),
        }
    }
}

impl Pool {
    /// A pool for `authority` (`host:port`); nothing connects until the first request.
    pub fn new(authority: Authority, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                authority,
                connect_timeout,
                idle_timeout,
                idle: (0..STACKS).map(|_| Mutex::new(Vec::new())).collect(),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (origin-form target; `Host` added when missing) and waits for the response headers. A
    /// pooled connection the service closed before the request was written to it is left for
    /// a new one, once: the request was never sent, so sending it is not a retry.
    ///
    /// # Errors
    /// [`SendError::Connect`] when no connection could be made, [`SendError::Http`] when the
    /// connection failed before the response headers.
    pub async fn send(
        &self,
        mut req: Request<UpstreamBody>,
        reuse: Reuse,
    ) -> Result<Response<Body>, SendError> {
        if !req.headers().contains_key(http::header::HOST) {
            // HTTP/1.1 requires one (RFC 9112 §3.2); a client that sent none gets the service's.
            if let Ok(host) = http::HeaderValue::from_str(self.shared.authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, host);
            }
        }
        let pooled = match reuse {
            Reuse::Pooled => self.shared.checkout(),
            Reuse::Fresh => None,
        };
        let req = match pooled {
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.lease(response, Some(sender))),
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(SendError::Http(e.into_error())),
                },
            },
            None => req,
        };
        let mut sender = self.shared.connect().await?;
        let response = sender.send_request(req).await.map_err(SendError::Http)?;
        // A connection opened for a retry is used once: the service that closed the last one
        // may be closing its connections.
        let keep = (reuse == Reuse::Pooled).then_some(sender);
        Ok(self.lease(response, keep))
    }

    fn lease(
        &self,
        response: Response<Incoming>,
        sender: Option<SendRequest<UpstreamBody>>,
    ) -> Response<Body> {
        // A connection switched to another protocol never carries HTTP again.
        let reusable = response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let lease = sender.filter(|_| reusable).map(|sender| Lease {
            sender,
            pool: self.shared.clone(),
        });
        response.map(|inner| Body { inner, lease })
    }

    /// Idle connections now, all workers (for tests and `/routes`).
    pub fn idle(&self) -> usize {
        self.shared.idle.iter().map(|stack| lock(stack).len()).sum()
    }
}

impl Shared {
    /// The most recently returned idle connection that can take a request now; expired or
    /// closed ones met on the way are closed. One whose connection task has not yet taken in
    /// the end of its last response (returned a moment ago) stays for the next request.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut idle = lock(&self.idle[stack_index()]);
        let mut not_yet = Vec::new();
        let mut found = None;
        while let Some(candidate) = idle.pop() {
            if now.duration_since(candidate.since) >= self.idle_timeout
                || candidate.sender.is_closed()
            {
                continue;
            }
            if candidate.sender.is_ready() {
                found = Some(candidate.sender);
                break;
            }
            not_yet.push(candidate);
        }
        // Back in their order, most recent on top.
        idle.extend(not_yet.into_iter().rev());
        found
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, SendError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| {
            SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            ))
        })?
        .map_err(SendError::Connect)?;
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        let (mut sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        sender.ready().await.map_err(SendError::Http)?;
        Ok(sender)
    }

    /// Puts a connection whose last response was read whole back on the stack.
    fn give_back(self: &Arc<Self>, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let since = Instant::now();
        {
            let mut idle = lock(&self.idle[stack_index()]);
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push(Idle { sender, since });
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            self.start_sweep();
        }
    }

    /// Closes idle connections past `idle_timeout` while any is idle; ends when none is (the
    /// next return starts it again) or when the pool is gone.
    fn start_sweep(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Shared> = Arc::downgrade(self);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut left = 0;
                for stack in &pool.idle {
                    let mut idle = lock(stack);
                    idle.retain(|c| {
                        now.duration_since(c.since) < pool.idle_timeout && !c.sender.is_closed()
                    });
                    left += idle.len();
                }
                if left == 0 {
                    pool.sweeping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection a response arrived on, returned to its pool when the body has been read.
struct Lease {
    sender: SendRequest<UpstreamBody>,
    pool: Arc<Shared>,
}

/// A response body from a pooled connection: hyper's [`Incoming`], streamed as it comes; the
/// connection goes back to the pool once the body has ended (also when it ended before anyone
/// read it, as a HEAD or 204 answer does).
pub struct Body {
    inner: Incoming,
    lease: Option<Lease>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("inner", &self.inner)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

impl Body {
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.pool.give_back(lease.sender);
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A failed body leaves the connection in an unknown state: it closes.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
