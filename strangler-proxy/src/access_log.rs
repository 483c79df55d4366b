//! The access log: one line per answered request, written off the request path.
//!
//! A request formats its line into a shared buffer under a lock held for the formatting only
//! (no allocation once the buffer has grown, no `fmt` machinery: numbers are written with
//! `itoa`, the timestamp's seconds are formatted once per second); a writer thread takes the
//! buffer every [`FLUSH_EVERY`], or sooner when it holds [`FLUSH_AT`] bytes, and writes it to
//! stderr. A request never waits for the disk. If the writer falls behind by more than
//! [`MAX_PENDING`] bytes, lines are dropped and counted rather than block requests or grow
//! memory without bound; the count is logged when the writer catches up.
//!
//! The lines read like the proxy's other log lines (`--log-format human`, the default) or are
//! JSON objects (`--log-format json`), with the same fields: `request_id`, `method`, `path`
//! (never the query), `route`, `backend`, `status`, `duration_us`, `revision`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the writer thread writes what has accumulated.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes pending that wake the writer before [`FLUSH_EVERY`].
pub const FLUSH_AT: usize = 64 * 1024;
/// Bytes pending past which lines are dropped (and counted) instead of buffered.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `2026-11-30T04:29:15.123456Z  INFO strangler::access: request_id="…" method=GET …`
    Human,
    /// `{"timestamp":"…","level":"INFO","fields":{…},"target":"strangler::access"}`
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Sets the process's access log format (from `--log-format`); the first call wins.
pub fn set_format(format: Format) {
    let _ = FORMAT.set(format);
}

/// The process's access log format ([`Format::Human`] unless [`set_format`] said otherwise).
pub fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Human)
}

/// One answered request.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// `x-request-id` (the client's or the proxy's).
    pub request_id: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Request path, without the query (which may hold secrets).
    pub path: &'a str,
    /// Route name (`default` for unrouted paths).
    pub route: &'a str,
    /// Service that answered.
    pub backend: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Time from the request head to the response head, in microseconds.
    pub duration_us: u64,
    /// Revision of the route table that routed the request.
    pub revision: u64,
}

/// The access log of one proxy (cheap to clone).
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    format: Format,
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
    sink: Mutex<Box<dyn Write + Send>>,
}

struct Pending {
    buf: Vec<u8>,
    /// The Unix second `stamp` was formatted for.
    second: u64,
    /// `2026-11-30T04:29:15.` for `second`.
    stamp: Vec<u8>,
}

impl AccessLog {
    /// An access log writing to stderr in the process's [`format`].
    pub fn stderr() -> Self {
        Self::new(format(), Box::new(std::io::stderr()))
    }

    /// An access log writing `format` lines to `sink`, from a writer thread that ends soon
    /// after the last clone is dropped, writing what is pending.
    pub fn new(format: Format, sink: Box<dyn Write + Send>) -> Self {
        let shared = Arc::new(Shared {
            format,
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(FLUSH_AT),
                second: u64::MAX,
                stamp: Vec::new(),
            }),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            sink: Mutex::new(sink),
        });
        let weak = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_until_dropped(weak));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer; lines are written by each request");
        }
        Self { shared }
    }

    /// Appends `entry`'s line; never blocks on the sink.
    pub fn record(&self, entry: &Entry<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut pending = lock(&self.shared.pending);
        if pending.buf.len() >= MAX_PENDING {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let pending = &mut *pending;
        if pending.second != now.as_secs() {
            pending.second = now.as_secs();
            pending.stamp.clear();
            let stamp =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(now.as_secs()));
            // `2026-11-30T04:29:15Z` without its `Z`, then the fraction's dot.
            let text = stamp.to_string();
            pending
                .stamp
                .extend_from_slice(text.trim_end_matches('Z').as_bytes());
            pending.stamp.push(b'.');
        }
        let buf = &mut pending.buf;
        match self.shared.format {
            Format::Human => human(buf, &pending.stamp, now.subsec_micros(), entry),
            Format::Json => json(buf, &pending.stamp, now.subsec_micros(), entry),
        }
        if buf.len() >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
    }

    /// Writes what is pending now (at shutdown).
    pub fn flush(&self) {
        self.shared.write_pending(&mut Vec::new());
    }
}

impl Shared {
    /// Swaps the pending lines into `spare` and writes them; `spare` comes back empty.
    fn write_pending(&self, spare: &mut Vec<u8>) {
        {
            let mut pending = lock(&self.pending);
            std::mem::swap(&mut pending.buf, spare);
        }
        if !spare.is_empty() {
            let mut sink = lock(&self.sink);
            let _ = sink.write_all(spare);
            let _ = sink.flush();
        }
        spare.clear();
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "access log lines dropped: the log could not be written as fast as requests came"
            );
        }
    }
}

fn write_until_dropped(shared: Weak<Shared>) {
    let mut spare = Vec::with_capacity(FLUSH_AT);
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        {
            let pending = lock(&shared.pending);
            if pending.buf.len() < FLUSH_AT {
                let _ = shared.wake.wait_timeout(pending, FLUSH_EVERY);
            }
        }
        shared.write_pending(&mut spare);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        if !pending.buf.is_empty() {
            let sink = self.sink.get_mut().unwrap_or_else(|e| e.into_inner());
            let _ = sink.write_all(&pending.buf);
            let _ = sink.flush();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `{stamp}{micros}Z  INFO strangler::access: request_id="…" method=GET path=/x route="…"
/// backend="…" status=200 duration_us=12 revision=3`, as tracing's human format writes it.
fn human(buf: &mut Vec<u8>, stamp: &[u8], micros: u32, e: &Entry<'_>) {
    buf.extend_from_slice(stamp);
    micros6(buf, micros);
    buf.extend_from_slice(b"Z  INFO strangler::access: request_id=");
    quoted(buf, e.request_id);
    buf.extend_from_slice(b" method=");
    buf.extend_from_slice(e.method.as_bytes());
    buf.extend_from_slice(b" path=");
    buf.extend_from_slice(e.path.as_bytes());
    buf.extend_from_slice(b" route=");
    quoted(buf, e.route);
    buf.extend_from_slice(b" backend=");
    quoted(buf, e.backend);
    buf.extend_from_slice(b" status=");
    number(buf, e.status);
    buf.extend_from_slice(b" duration_us=");
    number(buf, e.duration_us);
    buf.extend_from_slice(b" revision=");
    number(buf, e.revision);
    buf.push(b'\n');
}

/// The same fields as tracing's JSON format writes them.
fn json(buf: &mut Vec<u8>, stamp: &[u8], micros: u32, e: &Entry<'_>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    buf.extend_from_slice(stamp);
    micros6(buf, micros);
    buf.extend_from_slice(b"Z\",\"level\":\"INFO\",\"fields\":{\"request_id\":");
    json_string(buf, e.request_id);
    buf.extend_from_slice(b",\"method\":");
    json_string(buf, e.method);
    buf.extend_from_slice(b",\"path\":");
    json_string(buf, e.path);
    buf.extend_from_slice(b",\"route\":");
    json_string(buf, e.route);
    buf.extend_from_slice(b",\"backend\":");
    json_string(buf, e.backend);
    buf.extend_from_slice(b",\"status\":");
    number(buf, e.status);
    buf.extend_from_slice(b",\"duration_us\":");
    number(buf, e.duration_us);
    buf.extend_from_slice(b",\"revision\":");
    number(buf, e.revision);
    buf.extend_from_slice(b"},\"target\":\"strangler::access\"}\n");
}

fn number(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Six digits, zero-padded.
fn micros6(buf: &mut Vec<u8>, micros: u32) {
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&digits);
}

/// A string as `Debug` shows it for the visible ASCII a header value holds: quoted, with `"`
/// and `\` escaped; anything else (never in these fields) as `\u{…}`.
fn quoted(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                buf.push(b'\\');
                buf.push(c as u8);
            }
            ' '..='~' => buf.push(c as u8),
            other => buf.extend_from_slice(other.escape_debug().to_string().as_bytes()),
        }
    }
    buf.push(b'"');
}

fn json_string(buf: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *buf, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry<'a>(request_id: &'a str) -> Entry<'a> {
        Entry {
            request_id,
            method: "GET",
            path: "/api/users/1",
            route: "users",
            backend: "users",
            status: 200,
            duration_us: 1234,
            revision: 7,
        }
    }

    #[test]
    fn human_lines_read_like_the_other_log_lines() {
        let sink = Sink::default();
        let log = AccessLog::new(Format::Human, Box::new(sink.clone()));
        log.record(&entry("abc\"d"));
        log.flush();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let (stamp, rest) = text.split_once("  ").unwrap();
        assert!(
            humantime::parse_rfc3339(stamp).is_ok() && stamp.len() == 27,
            "{stamp}"
        );
        assert_eq!(
            rest,
            "INFO strangler::access: request_id=\"abc\\\"d\" method=GET path=/api/users/1 \
             route=\"users\" backend=\"users\" status=200 duration_us=1234 revision=7\n"
        );
    }

    #[test]
    fn json_lines_parse_with_every_field() {
        let sink = Sink::default();
        let log = AccessLog::new(Format::Json, Box::new(sink.clone()));
        log.record(&entry("id\n1"));
        log.record(&entry("id2"));
        log.flush();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["fields"]["request_id"], "id\n1");
        assert_eq!(lines[0]["fields"]["status"], 200);
        assert_eq!(lines[0]["fields"]["duration_us"], 1234);
        assert_eq!(lines[1]["target"], "strangler::access");
        assert!(humantime::parse_rfc3339(lines[1]["timestamp"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn the_writer_thread_writes_without_a_flush() {
        let sink = Sink::default();
        let log = AccessLog::new(Format::Human, Box::new(sink.clone()));
        log.record(&entry("a"));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!sink.0.lock().unwrap().is_empty(), "nothing written in 5 s");
    }

    #[test]
    fn a_writer_that_falls_behind_drops_and_counts_lines_instead_of_growing() {
        /// A sink that blocks until released.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let log = AccessLog::new(Format::Human, Box::new(Stuck(gate.clone())));
        let line = 140;
        for _ in 0..(2 * MAX_PENDING / line + FLUSH_AT) {
            log.record(&entry("0123456789abcdef0123456789abcdef"));
        }
        assert!(lock(&log.shared.pending).buf.len() <= MAX_PENDING + 512);
        assert!(log.shared.dropped.load(Ordering::Relaxed) > 0);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }
}
