//! Ctrl-C and SIGTERM as a flag long-running loops check between units of work, so a stop
//! never lands in the middle of a batch; a second signal exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        let watcher = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || watch(&flag));
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
}

fn watch(stop: &Stop) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warning: cannot watch for Ctrl-C ({e}); it will stop the process at once");
            return;
        }
    };
    runtime.block_on(async {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            let terminate = async {
                match term.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let terminate = std::future::pending::<()>();
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                () = terminate => {}
            }
            if stop.is_set() {
                eprintln!("second stop signal: exiting now");
                std::process::exit(130);
            }
            eprintln!("stop requested: finishing the current step (signal again to exit at once)");
            stop.set();
        }
    });
}
