//! Shadow traffic: the default answers the client; a copy of the request goes to the service
//! and the two answers are compared off the request path.
//!
//! The client never waits for a shadow: the default's body is captured as it streams to the
//! client ([`Tee`]), and the comparison runs in its own task once both answers are in. Shadow
//! work is bounded by `[proxy] shadow_concurrency` permits; without a permit the shadow is
//! dropped and counted, never queued. Mismatches are kept per route, the latest
//! [`MAX_MISMATCHES`], for `/diffs`.
//!
//! Every shadowed request ends in one verdict ([`Verdict`]): `match`, `mismatch`, `error`
//! (the service failed to answer: a verdict against it), `skipped` (the two answers cannot be
//! compared, with a bounded [`Skip`] reason) or, counted by the proxy before any work,
//! `dropped`. Bodies are compared decoded (`decode`), empty ones included: a HEAD, a 204 or a
//! zero-length answer never reaches the [`Tee`]'s capture, since hyper never polls such a body,
//! so it is handed over as complete at once.
//!
//! Noise cancellation (after Twitter's Diffy): with `shadow_noise_check`, some requests go to
//! the default twice; JSON fields that differ between two answers of the default are learned as
//! noise for the route and not held against the service.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::Request;
use http::header::{self, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::compare::{self, Answer, Asked, Difference, HeaderRules, Ignored};
use crate::decode::{self, DecodeError};
use crate::forward;
use crate::headers::X_STRANGLER_SHADOW;
use crate::metrics::{Metrics, shadow_result};
use crate::upstream::{BoxError, Upstream, UpstreamBody};

/// Largest body captured for comparison, before and after decoding; larger answers are
/// `skipped{reason="too_large"}`.
pub const CAPTURE_LIMIT: usize = 1024 * 1024;
/// Mismatches kept per route.
pub const MAX_MISMATCHES: usize = 100;
/// Every shadowed request of a route is noise-checked until this many have been, then one in
/// [`NOISE_SAMPLE_EVERY`].
const NOISE_WARMUP: u64 = 20;
const NOISE_SAMPLE_EVERY: u64 = 10;

/// One recorded mismatch.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// When it was compared.
    pub at: SystemTime,
    /// Request method.
    pub method: String,
    /// Request path and query as routed, query values redacted (`show_query_keys` aside).
    pub path: String,
    /// The request's id.
    pub request_id: String,
    /// The default's status.
    pub default_status: u16,
    /// The service's status.
    pub service_status: u16,
    /// Readable differences, one per line.
    pub diff: String,
    /// The same differences, one per field.
    pub differences: Vec<Difference>,
}

/// How one shadowed request ended (the `result` label of `strangler_shadow_comparisons_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Same answer from both.
    Match,
    /// Different answers.
    Mismatch,
    /// The service failed to answer: compared, and not matching.
    Error,
    /// The answers could not be compared, and why.
    Skipped(Skip),
}

impl Verdict {
    /// The `result` label.
    pub fn result(self) -> &'static str {
        match self {
            Verdict::Match => shadow_result::MATCH,
            Verdict::Mismatch => shadow_result::MISMATCH,
            Verdict::Error => shadow_result::ERROR,
            Verdict::Skipped(_) => shadow_result::SKIPPED,
        }
    }
}

/// Why a shadowed request was not compared (the `reason` label of
/// `strangler_shadow_skipped_total`): a fixed set, so the series count stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A body (request, default's or service's answer) over [`CAPTURE_LIMIT`], before or after
    /// decoding.
    TooLarge,
    /// The client went away before the default's answer (or its own request body) was whole.
    ClientAborted,
    /// The default's answer or the request body failed mid-stream.
    BodyError,
    /// The comparison outlived the service's deadline plus the client grace.
    Timeout,
    /// An answer in a content coding this proxy cannot undo (or the default's does not decode).
    Undecodable,
}

impl Skip {
    /// Every reason, for dashboards and tests.
    pub const ALL: [Skip; 5] = [
        Skip::TooLarge,
        Skip::ClientAborted,
        Skip::BodyError,
        Skip::Timeout,
        Skip::Undecodable,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::TooLarge => "too_large",
            Skip::ClientAborted => "client_aborted",
            Skip::BodyError => "body_error",
            Skip::Timeout => "timeout",
            Skip::Undecodable => "undecodable",
        }
    }

    fn of(captured: Captured) -> Result<Bytes, Skip> {
        match captured {
            Captured::Complete(bytes) => Ok(bytes),
            Captured::TooLarge => Err(Skip::TooLarge),
            Captured::Aborted => Err(Skip::ClientAborted),
            Captured::Failed => Err(Skip::BodyError),
        }
    }
}

#[derive(Default)]
struct RouteRecord {
    mismatches: VecDeque<Mismatch>,
    noise: Ignored,
    shadowed: u64,
}

/// Shadow state that outlives reloads: permits, recent mismatches and learned noise per route.
pub struct Shadows {
    permits: Arc<Semaphore>,
    records: Mutex<HashMap<String, RouteRecord>>,
    /// Where comparisons run; unset: on the runtime of the request that started them.
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl Shadows {
    /// At most `concurrency` shadows in flight.
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            records: Mutex::new(HashMap::new()),
            runtime: std::sync::OnceLock::new(),
        }
    }

    /// Runs every comparison on `runtime` (the control plane's), off the workers that serve
    /// clients: a shadow's request, its wait for both answers and the diff never take a
    /// worker's time from the next client. The first call wins.
    pub fn run_on(&self, runtime: tokio::runtime::Handle) {
        let _ = self.runtime.set(runtime);
    }

    /// A permit for one shadow, or `None` when the bound is reached.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    fn with_record<T>(&self, route: &str, f: impl FnOnce(&mut RouteRecord) -> T) -> T {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        match records.get_mut(route) {
            Some(record) => f(record),
            None => f(records.entry(route.to_string()).or_default()),
        }
    }

    /// The latest mismatches of `route`, newest first.
    pub fn mismatches(&self, route: &str) -> Vec<Mismatch> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records
            .get(route)
            .map(|r| r.mismatches.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Pointers learned as noise for `route`.
    pub fn noise(&self, route: &str) -> Vec<String> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records
            .get(route)
            .map(|r| r.noise.patterns().map(String::from).collect())
            .unwrap_or_default()
    }

    fn record(&self, route: &str, mismatch: Mismatch) {
        self.with_record(route, |r| {
            if r.mismatches.len() == MAX_MISMATCHES {
                r.mismatches.pop_front();
            }
            r.mismatches.push_back(mismatch);
        });
    }
}

/// What a capture ended with.
#[derive(Debug)]
pub enum Captured {
    /// The whole body.
    Complete(Bytes),
    /// Larger than [`CAPTURE_LIMIT`].
    TooLarge,
    /// Dropped before its end: the client went away.
    Aborted,
    /// The stream failed.
    Failed,
}

/// A capture that is already complete and empty: for a body hyper will never poll (HEAD, 204,
/// 304, `content-length: 0`), whose [`Tee`] would otherwise never say it ended.
pub fn captured_empty() -> oneshot::Receiver<Captured> {
    let (done, rx) = oneshot::channel();
    let _ = done.send(Captured::Complete(Bytes::new()));
    rx
}

pin_project! {
    /// A body passed through unchanged while, when asked, a copy of it is kept and handed over
    /// at its end. Without a capture it only forwards frames.
    pub struct Tee<B> {
        #[pin]
        inner: B,
        capture: Option<Capture>,
    }

    impl<B> PinnedDrop for Tee<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the end (client went away): say so instead of leaving the
            // comparison waiting.
            if let Some(capture) = this.project().capture.take() {
                let _ = capture.done.send(Captured::Aborted);
            }
        }
    }
}

struct Capture {
    buf: BytesMut,
    overflow: bool,
    done: oneshot::Sender<Captured>,
}

/// How long a comparison may wait for the client to finish with the default's answer, beyond
/// the service's own deadline; after it the shadow is `skipped` and its permit returned.
const CLIENT_GRACE: Duration = Duration::from_secs(30);

impl<B> Tee<B> {
    /// Forwards `inner` untouched.
    pub fn passthrough(inner: B) -> Self {
        Self {
            inner,
            capture: None,
        }
    }

    /// Forwards `inner` and hands a copy over when it ends.
    pub fn capture(inner: B) -> (Self, oneshot::Receiver<Captured>) {
        let (done, rx) = oneshot::channel();
        let capture = Capture {
            buf: BytesMut::new(),
            overflow: false,
            done,
        };
        (
            Self {
                inner,
                capture: Some(capture),
            },
            rx,
        )
    }
}

impl<B: Body<Data = Bytes>> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Some(capture) = this.capture.as_mut() {
            let mut ended = false;
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if capture.buf.len() + data.len() > CAPTURE_LIMIT {
                            // Say so now: the comparison should not wait for the rest.
                            capture.overflow = true;
                            ended = true;
                        } else {
                            capture.buf.extend_from_slice(data);
                        }
                    }
                    // hyper stops polling once a body says it has ended, so the final
                    // `None` may never come: the end is noticed here too.
                    ended |= this.inner.is_end_stream();
                }
                Poll::Ready(None) => ended = true,
                Poll::Ready(Some(Err(_))) => {
                    if let Some(capture) = this.capture.take() {
                        let _ = capture.done.send(Captured::Failed);
                    }
                }
                Poll::Pending => {}
            }
            if ended && let Some(capture) = this.capture.take() {
                let result = if capture.overflow {
                    Captured::TooLarge
                } else {
                    Captured::Complete(capture.buf.freeze())
                };
                let _ = capture.done.send(result);
            }
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

/// Everything one shadow comparison needs, gathered on the request path and run in a task.
pub struct Job {
    /// Route label.
    pub route: String,
    /// Pointers the route's config ignores.
    pub ignore: Ignored,
    /// Pointers whose values never appear in `/diffs` or logs (`shadow_redact`).
    pub redact: Ignored,
    /// Query keys whose values `/diffs` and logs show (`[proxy] show_query_keys`).
    pub show_query_keys: Vec<String>,
    /// Response headers the route compares.
    pub headers: HeaderRules,
    /// Learn noise (only ever set for safe, bodiless requests: they are sent twice).
    pub noise_check: bool,
    /// The request as sent to the default (body replaced below).
    pub template: Request<()>,
    /// The request body's capture, or `None` for an empty body.
    pub request_body: Option<oneshot::Receiver<Captured>>,
    /// The default's status and headers.
    pub default_head: (u16, http::HeaderMap),
    /// The default's body capture.
    pub default_body: oneshot::Receiver<Captured>,
    /// The service being compared.
    pub service: Arc<Upstream>,
    /// The default, for noise checks.
    pub default: Arc<Upstream>,
    /// The request id, for the mismatch record.
    pub request_id: String,
    /// Held until the comparison ends.
    pub permit: OwnedSemaphorePermit,
}

/// Runs a comparison in its own task; its verdict is counted (and, when skipped, logged with
/// its reason) once, at the end.
pub fn spawn(job: Job, shadows: Arc<Shadows>, metrics: Arc<Metrics>) {
    let runtime = shadows
        .runtime
        .get()
        .cloned()
        .unwrap_or_else(tokio::runtime::Handle::current);
    runtime.spawn(async move {
        let route = job.route.clone();
        let request_id = job.request_id.clone();
        // Saturating: `check` bounds request_timeout, but a configured value must never be
        // able to panic this task.
        let deadline = job
            .service
            .config
            .request_timeout
            .saturating_add(CLIENT_GRACE);
        let verdict = tokio::time::timeout(deadline, run(job, &shadows))
            .await
            .unwrap_or(Verdict::Skipped(Skip::Timeout));
        metrics
            .shadow_comparisons
            .with_label_values(&[&route, verdict.result()])
            .inc();
        if let Verdict::Skipped(skip) = verdict {
            tracing::debug!(route, request_id, reason = skip.as_str(), "shadow skipped");
            metrics
                .shadow_skipped
                .with_label_values(&[&route, skip.as_str()])
                .inc();
        }
    });
}

async fn run(job: Job, shadows: &Shadows) -> Verdict {
    let started = Instant::now();
    let _permit = job.permit;
    let request_body = match job.request_body {
        None => Bytes::new(),
        Some(rx) => match rx.await.map_or(Err(Skip::ClientAborted), Skip::of) {
            Ok(bytes) => bytes,
            Err(skip) => return Verdict::Skipped(skip),
        },
    };
    let to_service = ask(&job.service, &job.template, request_body.clone(), true);
    let noise_check = job.noise_check && {
        let n = shadows.with_record(&job.route, |r| {
            r.shadowed += 1;
            r.shadowed
        });
        n <= NOISE_WARMUP || crate::random::next_u64().is_multiple_of(NOISE_SAMPLE_EVERY)
    };
    let again = async {
        if noise_check {
            Some(ask(&job.default, &job.template, request_body.clone(), false).await)
        } else {
            None
        }
    };
    let (service, again) = tokio::join!(to_service, again);
    let default_body = match job
        .default_body
        .await
        .map_or(Err(Skip::ClientAborted), Skip::of)
    {
        Ok(bytes) => bytes,
        Err(skip) => return Verdict::Skipped(skip),
    };
    let (status, headers) = job.default_head;
    let default = match decoded(status, headers, default_body) {
        Ok(answer) => answer,
        Err(DecodeError::TooLarge) => return Verdict::Skipped(Skip::TooLarge),
        Err(_) => return Verdict::Skipped(Skip::Undecodable),
    };
    let service = match service {
        Ok(raw) => raw,
        Err(Asking::TooLarge) => return Verdict::Skipped(Skip::TooLarge),
        Err(Asking::Failed(why)) => {
            tracing::debug!(
                route = job.route,
                request_id = job.request_id,
                "shadow failed: {why}"
            );
            return Verdict::Error;
        }
    };
    let asked = Asked {
        head: job.template.method() == http::Method::HEAD,
        accept_encoding: job
            .template
            .headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    };
    let (service_status, service_headers, service_body) = service;
    let differences = match decoded(service_status, service_headers.clone(), service_body) {
        Ok(service) => {
            if let Some(Ok((status, headers, body))) = again
                && let Ok(second) = decoded(status, headers, body)
            {
                learn_noise(shadows, &job.route, &default, &second);
            }
            let mut ignored = job.ignore;
            shadows.with_record(&job.route, |r| ignored.extend(&r.noise));
            compare::compare(
                &default,
                &service,
                &ignored,
                &job.redact,
                &job.headers,
                &asked,
            )
        }
        Err(DecodeError::TooLarge) => return Verdict::Skipped(Skip::TooLarge),
        Err(DecodeError::Unknown(_)) => return Verdict::Skipped(Skip::Undecodable),
        // A known coding that does not decode: the client would have got garbage from the
        // service, which is a difference, not something that cannot be compared.
        Err(corrupt @ DecodeError::Corrupt { .. }) => {
            let service = Answer {
                status: service_status,
                headers: service_headers,
                body: Bytes::new(),
            };
            let mut out = compare::compare(
                &default,
                &service,
                &Ignored::new([String::new()]),
                &job.redact,
                &job.headers,
                &asked,
            );
            out.push(Difference {
                at: "body".into(),
                default: format!("{} bytes", default.body.len()),
                service: corrupt.to_string(),
            });
            out
        }
    };
    if differences.is_empty() {
        return Verdict::Match;
    }
    let path = compare::redact_query(
        job.template
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str()),
        &job.show_query_keys,
    );
    let diff = compare::render(&differences);
    tracing::info!(
        route = job.route,
        request_id = job.request_id,
        path,
        took_ms = started.elapsed().as_millis() as u64,
        "shadow mismatch:\n{diff}"
    );
    shadows.record(
        &job.route,
        Mismatch {
            at: SystemTime::now(),
            method: job.template.method().to_string(),
            path,
            request_id: job.request_id,
            default_status: default.status,
            service_status,
            diff,
            differences,
        },
    );
    Verdict::Mismatch
}

/// An answer with its body's content codings undone, bounded by [`CAPTURE_LIMIT`].
fn decoded(status: u16, headers: http::HeaderMap, body: Bytes) -> Result<Answer, DecodeError> {
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = decode::decode(&body, coding.as_deref(), CAPTURE_LIMIT)?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn learn_noise(shadows: &Shadows, route: &str, first: &Answer, second: &Answer) {
    let noisy: Vec<Difference> =
        compare::compare_bodies(first, second, &Ignored::default(), &Ignored::default());
    let learned: Vec<String> = noisy
        .iter()
        .filter(|d| d.at.starts_with('/'))
        .map(|d| compare::generalize(&d.at))
        .collect();
    shadows.with_record(route, |r| {
        for pointer in learned {
            if r.noise.insert(pointer.clone()) {
                tracing::info!(route, pointer, "learned a noisy field of the default");
            }
        }
    });
}

/// Why [`ask`] has no answer to compare.
enum Asking {
    /// The body is over [`CAPTURE_LIMIT`] (still encoded).
    TooLarge,
    /// No answer: refused, reset, timed out.
    Failed(String),
}

/// Sends a copy of the request to `upstream` and reads the whole answer (bounded), as it came:
/// status, headers and still-encoded body.
async fn ask(
    upstream: &Upstream,
    template: &Request<()>,
    body: Bytes,
    mark_shadow: bool,
) -> Result<(u16, http::HeaderMap, Bytes), Asking> {
    let body = if body.is_empty() {
        boxed(Empty::new())
    } else {
        boxed(Full::new(body))
    };
    let mut req = forward::from_template(template, body);
    if mark_shadow {
        req.headers_mut()
            .insert(&X_STRANGLER_SHADOW, HeaderValue::from_static("1"));
    }
    let response = forward::send(upstream, req)
        .await
        .map_err(|f| Asking::Failed(format!("{}: {}", f.kind.as_str(), f.detail)))?;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(
        upstream.config.request_timeout,
        Limited::new(body, CAPTURE_LIMIT).collect(),
    )
    .await
    .map_err(|_| Asking::Failed("body timed out".to_string()))?
    .map_err(|e| {
        if e.is::<LengthLimitError>() {
            Asking::TooLarge
        } else {
            Asking::Failed(format!("body: {e}"))
        }
    })?
    .to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}

fn boxed<B>(body: B) -> UpstreamBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
