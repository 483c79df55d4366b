//! `rollout ROUTE`: steps a route's weight up, judging the service against the default over
//! each interval, and writes the last safe weight back the moment a gate fails.
//!
//! The judgement ([`judge`]) is a pure function of one window's figures, so every gate, hold
//! and breach is tested with tables; [`run`] only edits the file, waits and reads metrics.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::figures::{RouteWindow, Side};
use crate::routes_file::{self, Change, RouteState};
use crate::signals::Stop;
use crate::source::{RouteNames, Source};
use crate::status::latency_cell;

/// The thresholds a step must pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gates {
    /// Highest acceptable share of service requests answered 5xx or failed.
    pub max_error_ratio: f64,
    /// Highest acceptable service p99 as a multiple of the default's.
    pub max_latency_ratio: f64,
    /// A service p99 at or under this never fails the latency gate (bucket noise at the low end).
    pub latency_floor: Duration,
    /// Lowest acceptable share of shadow comparisons that matched.
    pub min_shadow_match: f64,
    /// Fewest requests (or comparisons) a window needs before it proves a step safe.
    pub min_requests: u64,
}

/// What one window says about the current step.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every gate passed (notes say what could not be judged and why that is fine).
    Pass(Vec<String>),
    /// Not enough traffic to tell: keep the weight and look again.
    Hold(Vec<String>),
    /// A gate failed, with the figures.
    Breach(Vec<String>),
}

/// Judges one window of the route at `weight` (shadowing when `shadow`). `baseline_p99` is the
/// default's p99 from an earlier window, used when the default saw too little traffic in this
/// one (at 100% it sees none).
pub fn judge(
    w: &RouteWindow,
    weight: u8,
    shadow: bool,
    gates: &Gates,
    baseline_p99: Option<f64>,
) -> Verdict {
    let min = gates.min_requests as f64;
    let mut failures = Vec::new();
    let mut holds = Vec::new();
    let mut notes = Vec::new();

    let service_expected = weight > 0;
    let svc = &w.service;
    if service_expected || svc.requests > 0.0 {
        // With fewer requests than the minimum, count the missing ones as successes: a breach
        // that shows even then is real, anything else is too little to judge.
        let ratio = svc.errors / svc.requests.max(min).max(1.0);
        if ratio > gates.max_error_ratio {
            failures.push(format!(
                "error ratio: service {} > --max-error-ratio {} (default {})",
                side_errors(svc),
                gates.max_error_ratio,
                side_errors(&w.default)
            ));
        } else if svc.requests < min {
            holds.push(format!(
                "the service answered {:.0} requests in the interval, fewer than --min-requests {}",
                svc.requests, gates.min_requests
            ));
        }
    }
    if svc.requests >= min && svc.requests > 0.0 {
        let default_p99 = if w.default.requests >= min && w.default.requests > 0.0 {
            w.default.p99()
        } else {
            baseline_p99
        };
        match (svc.p99(), default_p99) {
            (Some(s), Some(d)) => {
                let limit = gates.max_latency_ratio * d;
                if s > limit && s > gates.latency_floor.as_secs_f64() {
                    failures.push(format!(
                        "p99 latency: service {} > --max-latency-ratio {} x default {} (= {})",
                        latency_cell(Some(s), ""),
                        gates.max_latency_ratio,
                        latency_cell(Some(d), ""),
                        latency_cell(Some(limit), "")
                    ));
                }
            }
            (Some(_), None) => notes.push(
                "latency not compared: the default has answered too little to have a p99".into(),
            ),
            _ => {}
        }
    }
    let compared = w.shadow.compared();
    let shadow_expected = shadow && weight < 100;
    if shadow_expected || compared > 0.0 {
        let unmatched = compared - w.shadow.matched;
        // As above: missing comparisons are counted as matches before declaring a breach.
        let worst_ratio = 1.0 - unmatched / compared.max(min).max(1.0);
        if worst_ratio < gates.min_shadow_match {
            failures.push(format!(
                "shadow match ratio: {:.4} ({:.0} of {:.0} comparisons matched, {:.0} differed, \
                 {:.0} failed) < --min-shadow-match {}",
                w.shadow.match_ratio().unwrap_or(0.0),
                w.shadow.matched,
                compared,
                w.shadow.mismatched,
                w.shadow.errors,
                gates.min_shadow_match
            ));
        } else if compared < min {
            holds.push(format!(
                "{compared:.0} shadow comparisons in the interval, fewer than --min-requests {}",
                gates.min_requests
            ));
        }
    }
    if !service_expected && !shadow_expected {
        notes.push("weight 0 without shadow: the service gets no traffic, nothing to judge".into());
    }
    if !failures.is_empty() {
        Verdict::Breach(failures)
    } else if !holds.is_empty() {
        Verdict::Hold(holds)
    } else {
        Verdict::Pass(notes)
    }
}

fn side_errors(s: &Side) -> String {
    match s.error_ratio() {
        Some(r) => format!("{r:.4} ({:.0} of {:.0} requests)", s.errors, s.requests),
        None => "- (no requests)".into(),
    }
}

/// One line of figures for a window.
pub fn describe_window(w: &RouteWindow) -> String {
    let side = |s: &Side| {
        format!(
            "{:.0} req, {} errors, p99 {}",
            s.requests,
            s.error_ratio()
                .map_or("-".to_string(), |r| format!("{:.2}%", 100.0 * r)),
            latency_cell(s.p99(), "")
        )
    };
    let mut line = format!(
        "{:.1}s: service {} | default {}",
        w.seconds,
        side(&w.service),
        side(&w.default)
    );
    if let Some(r) = w.shadow.match_ratio() {
        let _ = write!(
            line,
            " | shadow {:.2}% matched ({:.0}/{:.0})",
            100.0 * r,
            w.shadow.matched,
            w.shadow.compared()
        );
    }
    if w.fallbacks > 0.0 {
        let _ = write!(line, " | {:.0} fallbacks", w.fallbacks);
    }
    line
}

/// Everything a rollout needs.
#[derive(Clone, Debug)]
pub struct RolloutOptions {
    /// The routes file to edit.
    pub config: PathBuf,
    /// The route's name.
    pub route: String,
    /// Weights to step through, ascending.
    pub steps: Vec<u8>,
    /// Time at each step before judging it.
    pub interval: Duration,
    /// The thresholds.
    pub gates: Gates,
    /// Where figures come from.
    pub source: Source,
    /// Allow 1..=99% on a route that sends writes to the service.
    pub allow_split_writes: bool,
    /// Give up after this many holds in a row at one step (0: never).
    pub max_holds: u32,
    /// How long to wait for the proxy to report a new weight.
    pub apply_timeout: Duration,
}

/// How a rollout ended; each has its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every step passed (exit 0).
    Completed,
    /// A gate failed; the last safe weight was written back (exit 1).
    RolledBack,
    /// Refused to start: nothing changed (exit 2).
    Refused,
    /// Held too long for lack of traffic; the last safe weight was written back (exit 3).
    GaveUp,
    /// Stopped by Ctrl-C/SIGTERM; the last safe weight was written back (exit 130).
    Stopped,
}

impl Ending {
    /// The process exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            Ending::Completed => 0,
            Ending::RolledBack => 1,
            Ending::Refused => 2,
            Ending::GaveUp => 3,
            Ending::Stopped => 130,
        }
    }
}

/// Checks `--steps`: weights 0..=100, strictly ascending.
pub fn parse_steps(text: &str) -> Result<Vec<u8>, String> {
    let mut steps = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let w: u8 = part
            .parse()
            .ok()
            .filter(|w| *w <= 100)
            .ok_or_else(|| format!("step {part:?} is not a weight 0..=100"))?;
        if steps.last().is_some_and(|last| *last >= w) {
            return Err(format!(
                "steps must ascend: {w} comes after {}",
                steps.last().unwrap_or(&0)
            ));
        }
        steps.push(w);
    }
    if steps.is_empty() {
        return Err("no steps".into());
    }
    Ok(steps)
}

/// Runs a rollout, printing every step, window and verdict to `out`.
pub fn run(options: &RolloutOptions, stop: &Stop, out: &mut dyn Write) -> anyhow::Result<Ending> {
    let loaded = strangler_proxy::config::load(&options.config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the routes file must be valid before a rollout")?;
    let config = loaded.config;
    let Some(route) = config.routes.iter().find(|r| r.name == options.route) else {
        bail!(
            "{}: no route named {:?} (routes: {})",
            options.config.display(),
            options.route,
            config
                .routes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let names = RouteNames {
        route: route.name.clone(),
        service: route.service.clone(),
        default: config.proxy.default.clone(),
    };
    let state = RouteState::from(route);
    let splits: Vec<u8> = options
        .steps
        .iter()
        .copied()
        .filter(|w| (1..=99).contains(w))
        .collect();
    if state.includes_writes() && !splits.is_empty() && !options.allow_split_writes {
        writeln!(
            out,
            "refusing to roll out {:?}: it sends {} to {:?}, and steps {:?} would split them \
             between two databases (the service's and the monolith's), which is how data gets \
             lost. Restrict the route to reads first (scripts/shift {} {} --methods GET,HEAD), \
             step straight to 100 (--steps 100), or pass --allow-split-writes if the service \
             writes through to the monolith. Nothing was changed.",
            names.route,
            state.methods.as_ref().map_or(
                "every method (writes included)".to_string(),
                |m| format!("writes ({})", m.join(","))
            ),
            names.service,
            splits,
            names.route,
            state.weight
        )?;
        return Ok(Ending::Refused);
    }
    let start_weight = route.weight;
    let steps: Vec<u8> = options
        .steps
        .iter()
        .copied()
        .filter(|w| *w >= start_weight)
        .collect();
    let skipped: Vec<u8> = options
        .steps
        .iter()
        .copied()
        .filter(|w| *w < start_weight)
        .collect();
    if !skipped.is_empty() {
        writeln!(
            out,
            "route {} is at weight {start_weight}: skipping steps {skipped:?}",
            names.route
        )?;
    }
    writeln!(
        out,
        "rolling out route {} ({} ← {}) through {:?}, {:?} per step, reading {}",
        names.route,
        names.service,
        names.default,
        steps,
        options.interval,
        options.source.describe()
    )?;
    let mut last_safe = start_weight;
    let mut baseline_p99 = None;
    for (i, &weight) in steps.iter().enumerate() {
        let label = format!("step {}/{} ({weight}%)", i + 1, steps.len());
        let edited = routes_file::edit_file(
            &options.config,
            &names.route,
            &Change {
                weight: Some(i64::from(weight)),
                ..Change::default()
            },
        )?;
        writeln!(
            out,
            "{label}: {}",
            routes_file::describe(&names.route, &edited)
        )?;
        out.flush()?;
        if let Err(e) = wait_applied(
            &options.source,
            &names.route,
            weight,
            options.apply_timeout,
            stop,
        ) {
            writeln!(out, "{label}: {e:#}")?;
            return back_to(options, last_safe, Ending::RolledBack, out);
        }
        let mut holds = 0;
        loop {
            let window = match measure(options, &names, stop) {
                Ok(Some(w)) => w,
                Ok(None) => {
                    writeln!(out, "{label}: stopped")?;
                    return back_to(options, last_safe, Ending::Stopped, out);
                }
                Err(e) => {
                    writeln!(
                        out,
                        "{label}: cannot read metrics, so cannot judge the step: {e:#}"
                    )?;
                    return back_to(options, last_safe, Ending::RolledBack, out);
                }
            };
            writeln!(out, "{label}: {}", describe_window(&window))?;
            match judge(
                &window,
                weight,
                edited.after.shadow,
                &options.gates,
                baseline_p99,
            ) {
                Verdict::Pass(notes) => {
                    for n in notes {
                        writeln!(out, "{label}: note: {n}")?;
                    }
                    writeln!(out, "{label}: gates passed")?;
                    if window.default.requests >= options.gates.min_requests as f64 {
                        baseline_p99 = window.default.p99().or(baseline_p99);
                    }
                    last_safe = weight;
                    break;
                }
                Verdict::Hold(reasons) => {
                    holds += 1;
                    for r in reasons {
                        writeln!(
                            out,
                            "{label}: holding at {weight}%: {r}; waiting another interval"
                        )?;
                    }
                    if options.max_holds > 0 && holds >= options.max_holds {
                        writeln!(
                            out,
                            "{label}: still too little traffic after {holds} intervals (--max-holds); giving up"
                        )?;
                        return back_to(options, last_safe, Ending::GaveUp, out);
                    }
                }
                Verdict::Breach(failures) => {
                    for f in &failures {
                        writeln!(out, "{label}: GATE FAILED: {f}")?;
                    }
                    return back_to(options, last_safe, Ending::RolledBack, out);
                }
            }
            out.flush()?;
        }
        out.flush()?;
    }
    writeln!(
        out,
        "rollout of {} complete: weight {last_safe}",
        names.route
    )?;
    Ok(Ending::Completed)
}

/// Writes `weight` back and reports it; the rollout ends with `ending`.
fn back_to(
    options: &RolloutOptions,
    weight: u8,
    ending: Ending,
    out: &mut dyn Write,
) -> anyhow::Result<Ending> {
    let edited = routes_file::edit_file(
        &options.config,
        &options.route,
        &Change {
            weight: Some(i64::from(weight)),
            ..Change::default()
        },
    )
    .with_context(|| {
        format!(
            "COULD NOT WRITE THE LAST SAFE WEIGHT {weight} BACK to {}: set it by hand \
             (scripts/shift {} {weight})",
            options.config.display(),
            options.route
        )
    })?;
    writeln!(
        out,
        "wrote the last safe weight back: {} ({})",
        routes_file::describe(&options.route, &edited),
        options.config.display()
    )?;
    // Confirm the proxy took it; a stop request must not cut this short.
    match wait_applied(
        &options.source,
        &options.route,
        weight,
        options.apply_timeout,
        &Stop::new(),
    ) {
        Ok(()) => writeln!(out, "the proxy serves weight {weight} again")?,
        Err(e) => writeln!(out, "WARNING: {e:#}")?,
    }
    Ok(ending)
}

/// Waits until every proxy the source sees reports `weight` for the route, so a window never
/// mixes traffic from before the change.
fn wait_applied(
    source: &Source,
    route: &str,
    weight: u8,
    timeout: Duration,
    stop: &Stop,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    let mut last_err = None;
    while Instant::now() < deadline && !stop.is_set() {
        match source.weights(route) {
            Ok(weights) => {
                if !weights.is_empty() && weights.iter().all(|w| *w == f64::from(weight)) {
                    return Ok(());
                }
                last = weights;
            }
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if stop.is_set() {
        bail!("stopped while waiting for the proxy");
    }
    match last_err {
        Some(e) if last.is_empty() => Err(e.context(format!(
            "the proxy did not confirm weight {weight} within {timeout:?}"
        ))),
        _ => bail!(
            "the proxy did not report weight {weight} for route {route:?} within {timeout:?} \
             (it reports {last:?}): is it watching this routes file?"
        ),
    }
}

/// Measures one interval; `None` when stopped during it.
fn measure(
    options: &RolloutOptions,
    names: &RouteNames,
    stop: &Stop,
) -> anyhow::Result<Option<RouteWindow>> {
    let mark = options.source.mark()?;
    let end = Instant::now() + options.interval;
    while Instant::now() < end {
        if stop.is_set() {
            return Ok(None);
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
    options.source.window(&mark, names).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::Shadow;

    const GATES: Gates = Gates {
        max_error_ratio: 0.01,
        max_latency_ratio: 2.0,
        latency_floor: Duration::from_millis(10),
        min_shadow_match: 0.99,
        min_requests: 20,
    };

    fn side(requests: f64, errors: f64, p99_bucket: f64) -> Side {
        Side {
            requests,
            errors,
            buckets: vec![(p99_bucket, requests), (f64::INFINITY, requests)],
        }
    }

    fn window(service: Side, default: Side, shadow: Shadow) -> RouteWindow {
        RouteWindow {
            seconds: 1.0,
            service,
            default,
            fallbacks: 0.0,
            shadow,
        }
    }

    fn shadow(matched: f64, mismatched: f64) -> Shadow {
        Shadow {
            matched,
            mismatched,
            errors: 0.0,
        }
    }

    /// Window, weight, shadow on, baseline p99, expected verdict, text one message must hold.
    type Case = (
        RouteWindow,
        u8,
        bool,
        Option<f64>,
        &'static str,
        &'static str,
    );

    #[test]
    fn gates_table() {
        use Verdict::*;
        let none = Shadow::default();
        let fast = 0.005;
        let slow = 0.5;
        // (window, weight, shadow, baseline, expected verdict kind, text in the message)
        let cases: Vec<Case> = vec![
            (
                window(side(100.0, 0.0, fast), side(100.0, 0.0, fast), none),
                5,
                false,
                None,
                "pass",
                "",
            ),
            (
                window(side(100.0, 2.0, fast), side(100.0, 0.0, fast), none),
                5,
                false,
                None,
                "breach",
                "error ratio: service 0.0200 (2 of 100 requests)",
            ),
            (
                window(side(5.0, 0.0, fast), side(500.0, 0.0, fast), none),
                1,
                false,
                None,
                "hold",
                "answered 5 requests",
            ),
            // Five failures out of five is a breach even below the minimum.
            (
                window(side(5.0, 5.0, fast), side(500.0, 0.0, fast), none),
                1,
                false,
                None,
                "breach",
                "error ratio",
            ),
            (
                window(side(100.0, 0.0, slow), side(100.0, 0.0, 0.1), none),
                50,
                false,
                None,
                "breach",
                "p99 latency: service 495.0 ms > --max-latency-ratio 2 x default 99.0 ms (= 198.0 ms)",
            ),
            // Under the floor the ratio does not matter.
            (
                window(side(100.0, 0.0, 0.008), side(100.0, 0.0, 0.001), none),
                50,
                false,
                None,
                "pass",
                "",
            ),
            // At 100% the default has no traffic; the baseline from earlier steps is used.
            (
                window(side(100.0, 0.0, slow), Side::default(), none),
                100,
                false,
                Some(0.1),
                "breach",
                "p99 latency",
            ),
            (
                window(side(100.0, 0.0, slow), Side::default(), none),
                100,
                false,
                None,
                "pass",
                "",
            ),
            (
                window(Side::default(), side(100.0, 0.0, fast), shadow(100.0, 0.0)),
                0,
                true,
                None,
                "pass",
                "",
            ),
            (
                window(Side::default(), side(100.0, 0.0, fast), shadow(90.0, 10.0)),
                0,
                true,
                None,
                "breach",
                "shadow match ratio: 0.9000 (90 of 100",
            ),
            (
                window(Side::default(), side(100.0, 0.0, fast), shadow(3.0, 0.0)),
                0,
                true,
                None,
                "hold",
                "3 shadow comparisons",
            ),
            (
                window(Side::default(), side(100.0, 0.0, fast), none),
                0,
                false,
                None,
                "pass",
                "",
            ),
        ];
        for (i, (w, weight, shadow, baseline, kind, text)) in cases.into_iter().enumerate() {
            let verdict = judge(&w, weight, shadow, &GATES, baseline);
            let (got, messages) = match &verdict {
                Pass(m) => ("pass", m),
                Hold(m) => ("hold", m),
                Breach(m) => ("breach", m),
            };
            assert_eq!(got, kind, "case {i}: {verdict:?}");
            assert!(
                text.is_empty() || messages.iter().any(|m| m.contains(text)),
                "case {i}: {verdict:?} lacks {text:?}"
            );
        }
    }

    #[test]
    fn steps_must_ascend_within_0_to_100() {
        assert_eq!(
            parse_steps("0,1,5,25,50,100"),
            Ok(vec![0, 1, 5, 25, 50, 100])
        );
        assert!(parse_steps("0,5,5").is_err());
        assert!(parse_steps("50,101").is_err());
        assert!(parse_steps("").is_err());
    }
}
