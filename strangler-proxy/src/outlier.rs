//! Passive outlier detection, per service (Envoy's consecutive-failure ejection).
//!
//! A service that fails `outlier_failures` requests in a row (no answer, or 502–504) is
//! ejected for `outlier_cooldown`: requests routed to it go to the default when they may fall
//! back, and get a fast 503 otherwise, instead of each waiting for the hung service. After the
//! cool-down one request at a time is let through as a probe (half-open): an answer closes the
//! breaker, a failure ejects the service again for twice as long (up to 8 times the cool-down).
//!
//! A healthy service costs one relaxed atomic load per request ([`Outlier::admit`]); the lock
//! is taken only on the way into, during and out of an ejection.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Set in [`Outlier::word`] while the service is ejected (or probing).
const EJECTED: u64 = 1 << 63;
/// The cool-down doubles per failed probe, at most this many times.
const MAX_DOUBLINGS: u32 = 3;

/// One service's breaker.
pub struct Outlier {
    /// Consecutive failures that eject; 0 never ejects.
    threshold: u64,
    cooldown: Duration,
    /// [`EJECTED`] | consecutive failures: the only state the hot path reads.
    word: AtomicU64,
    ejection: Mutex<Ejection>,
}

struct Ejection {
    until: Instant,
    /// A probe is in flight: nothing else is let through.
    probing: bool,
    /// Failed probes since the last close, for the backoff.
    strikes: u32,
}

/// What [`Outlier::admit`] allows.
pub enum Admit<'a> {
    /// Send the request; report how it went with [`Ticket::record`].
    Send(Ticket<'a>),
    /// Do not send: the service is ejected for about this long still.
    Ejected(Duration),
}

/// A request let through, to be recorded. Dropped unrecorded (the client went away), a probe
/// lets the next request probe instead.
pub struct Ticket<'a> {
    outlier: &'a Outlier,
    /// The word seen at admission (closed state), or `None` for a probe.
    seen: Option<u64>,
}

/// A change of a breaker's state, for the caller to count and log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The service was ejected (again) for this long.
    Ejected(Duration),
    /// A probe succeeded: the service takes requests again.
    Closed,
}

/// A breaker's state for `/routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Taking requests; failures in a row so far.
    Closed(u64),
    /// Ejected until then.
    Ejected(SystemTime),
    /// One probe request is in flight (or the next request will be one).
    Probing,
}

impl Outlier {
    /// A closed breaker ejecting after `threshold` failures in a row (0: never) for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: u64::from(threshold),
            cooldown,
            word: AtomicU64::new(0),
            ejection: Mutex::new(Ejection {
                until: Instant::now(),
                probing: false,
                strikes: 0,
            }),
        }
    }

    /// Whether a request may be sent now.
    #[inline]
    pub fn admit(&self) -> Admit<'_> {
        let word = self.word.load(Ordering::Relaxed);
        if word & EJECTED == 0 {
            return Admit::Send(Ticket {
                outlier: self,
                seen: Some(word),
            });
        }
        self.admit_ejected()
    }

    #[cold]
    fn admit_ejected(&self) -> Admit<'_> {
        let mut e = self.lock();
        let now = Instant::now();
        if e.probing {
            return Admit::Ejected(self.cooldown);
        }
        if now < e.until {
            return Admit::Ejected(e.until - now);
        }
        e.probing = true;
        Admit::Send(Ticket {
            outlier: self,
            seen: None,
        })
    }

    /// The state now, for `/routes`.
    pub fn state(&self) -> State {
        let word = self.word.load(Ordering::Relaxed);
        if word & EJECTED == 0 {
            return State::Closed(word);
        }
        let e = self.lock();
        let now = Instant::now();
        if e.probing || now >= e.until {
            State::Probing
        } else {
            State::Ejected(SystemTime::now() + (e.until - now))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ejection> {
        self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self, seen: u64) -> Option<Transition> {
        if self.threshold == 0 || seen & EJECTED != 0 {
            return None;
        }
        let before = self.word.fetch_add(1, Ordering::Relaxed);
        // Exactly one request sees the count reach the threshold: it ejects.
        if before & EJECTED != 0 || before + 1 != self.threshold {
            return None;
        }
        let mut e = self.lock();
        e.until = Instant::now() + self.cooldown;
        e.probing = false;
        e.strikes = 0;
        self.word.store(EJECTED, Ordering::Relaxed);
        Some(Transition::Ejected(self.cooldown))
    }

    fn probed(&self, ok: bool) -> Transition {
        let mut e = self.lock();
        e.probing = false;
        if ok {
            e.strikes = 0;
            self.word.store(0, Ordering::Relaxed);
            return Transition::Closed;
        }
        e.strikes = e.strikes.saturating_add(1);
        let ejected_for = self.cooldown * (1 << e.strikes.min(MAX_DOUBLINGS));
        e.until = Instant::now() + ejected_for;
        Transition::Ejected(ejected_for)
    }
}

impl Ticket<'_> {
    /// Whether this request is the probe of an ejected service.
    pub fn is_probe(&self) -> bool {
        self.seen.is_none()
    }

    /// Records the request's outcome: `ok` when the service answered (anything but 502–504).
    pub fn record(mut self, ok: bool) -> Option<Transition> {
        let outlier = self.outlier;
        match self.seen.take() {
            None => {
                self.seen = Some(0);
                Some(outlier.probed(ok))
            }
            // A success after failures clears them; a healthy service's success writes nothing.
            Some(seen) if ok => {
                if seen != 0 {
                    outlier.word.fetch_and(EJECTED, Ordering::Relaxed);
                }
                // Recorded: Drop must not treat it as an abandoned probe.
                self.seen = Some(0);
                None
            }
            Some(seen) => {
                self.seen = Some(0);
                outlier.failed(seen)
            }
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.seen.is_none() {
            // An abandoned probe (the client went away): the next request probes.
            self.outlier.lock().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(o: &Outlier) -> Ticket<'_> {
        match o.admit() {
            Admit::Send(t) => t,
            Admit::Ejected(_) => panic!("ejected"),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_in_between_resets_them() {
        let o = Outlier::new(3, Duration::from_secs(60));
        assert_eq!(send(&o).record(false), None);
        assert_eq!(send(&o).record(false), None);
        assert_eq!(send(&o).record(true), None);
        assert_eq!(o.state(), State::Closed(0));
        assert_eq!(send(&o).record(false), None);
        assert_eq!(send(&o).record(false), None);
        assert_eq!(
            send(&o).record(false),
            Some(Transition::Ejected(Duration::from_secs(60)))
        );
        assert!(matches!(o.admit(), Admit::Ejected(_)));
        assert!(matches!(o.state(), State::Ejected(_)));
    }

    #[test]
    fn after_the_cooldown_one_probe_at_a_time_closes_or_re_ejects_with_backoff() {
        let o = Outlier::new(1, Duration::ZERO);
        assert_eq!(
            send(&o).record(false),
            Some(Transition::Ejected(Duration::ZERO))
        );
        let probe = send(&o);
        assert!(probe.is_probe());
        assert!(
            matches!(o.admit(), Admit::Ejected(_)),
            "one probe at a time"
        );
        drop(probe);
        let probe = send(&o);
        assert!(
            probe.is_probe(),
            "an abandoned probe lets the next one through"
        );
        assert_eq!(
            probe.record(false),
            Some(Transition::Ejected(Duration::ZERO))
        );
        assert_eq!(send(&o).record(true), Some(Transition::Closed));
        assert_eq!(o.state(), State::Closed(0));
        assert!(!send(&o).is_probe());
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_eight_times() {
        let o = Outlier::new(1, Duration::from_secs(1));
        o.word.store(EJECTED, Ordering::Relaxed);
        let seen: Vec<_> = (0..5).map(|_| o.probed(false)).collect();
        let secs = |s| Transition::Ejected(Duration::from_secs(s));
        assert_eq!(seen, [secs(2), secs(4), secs(8), secs(8), secs(8)]);
    }

    #[test]
    fn a_threshold_of_zero_never_ejects() {
        let o = Outlier::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            assert_eq!(send(&o).record(false), None);
        }
    }
}
