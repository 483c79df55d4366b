//! Progress of a long copy: an indicatif bar (rows/s, ETA) on a terminal, a plain line about
//! once a second otherwise, so logs of a CI job or a pod stay readable.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// A redrawn bar on stderr.
    Bar,
    /// A log line on stderr every so often.
    Lines,
}

impl Display {
    /// A bar when stderr is a terminal, lines otherwise.
    pub fn detect() -> Display {
        if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// Progress through a known number of rows.
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    every: Duration,
    last_line: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts counting towards `total` rows.
    pub fn rows(label: &str, total: u64, display: Display) -> Progress {
        let bar = (display == Display::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:40.cyan/blue}] {human_pos}/{human_len} rows  {rate}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} rows/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            total,
            done: 0,
            started: now,
            every: Duration::from_secs(1),
            last_line: now,
            bar,
        }
    }

    /// Counts `n` more rows done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_line.elapsed() >= self.every => {
                self.last_line = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    /// Ends the display with a last line.
    pub fn finish(&mut self) {
        // The bar gives way to the same summary line a log gets, so what follows starts on a
        // line of its own.
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("{}", self.line());
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let percent = if self.total > 0 {
            100.0 * self.done as f64 / self.total as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 {
            format!("{:.0}s", self.total.saturating_sub(self.done) as f64 / rate)
        } else {
            "?".into()
        };
        format!(
            "{}: {}/{} rows ({percent:.1}%), {rate:.0} rows/s, eta {eta}",
            self.label, self.done, self.total
        )
    }
}
