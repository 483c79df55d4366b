//! Ctrl-C and SIGTERM as a flag long-running loops check between units of work, so a stop
//! never lands in the middle of a batch; a second signal exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Set once a stop was asked for.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A flag nothing sets but [`Stop::set`] (tests, one-shot commands).
    pub fn new() -> Stop {
        Stop::default()
    }

    /// A flag set by the first Ctrl-C or SIGTERM; the second one exits with status 130.
    pub fn on_signals() -> Stop {
        let stop = Stop::new();
        let flag = stop.clone();
        // The messages are printed from a thread, not the handler, where printing is not safe.
        let watcher = Signals::new([SIGINT, SIGTERM]).and_then(|mut signals| {
            std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        flag.on_signal();
                    }
                })
        });
        if let Err(e) = watcher {
            eprintln!("warning: cannot watch for Ctrl-C ({e}); it will stop the process at once");
        }
        stop
    }

    /// Asks for a stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn on_signal(&self) {
        if self.is_set() {
            eprintln!("second stop signal: exiting now");
            std::process::exit(130);
        }
        eprintln!("stop requested: finishing the current step (signal again to exit at once)");
        self.set();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn sigterm_and_sigint_set_the_flag() {
        let stop = Stop::on_signals();
        for signal in [SIGTERM, SIGINT] {
            stop.0.store(false, Ordering::SeqCst);
            signal_hook::low_level::raise(signal).expect("raise");
            let deadline = Instant::now() + Duration::from_secs(5);
            while !stop.is_set() {
                assert!(
                    Instant::now() < deadline,
                    "signal {signal} did not set the flag"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
