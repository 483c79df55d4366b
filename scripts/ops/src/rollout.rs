//! `rollout ROUTE`: steps a route's weight up, judging the service against the default over
//! each interval, and writes the last safe weight back the moment a gate fails.
//!
//! The plan ([`Plan::new`]: which steps, refused or not) is a pure function of the validated
//! file and the options, and the judgement ([`judge`]) of one window's figures, so both are
//! tested with tables; [`run`] is a loop over the plan's steps, each of which edits the file,
//! waits, reads metrics and decides.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use strangler_proxy::config::Config;

use crate::figures::{RouteWindow, Side};
use crate::routes_file::{self, Change, Edited};
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
    /// Lowest share of shadowed requests that must have been compared for the match ratio to
    /// count: below it the step holds, as the ratio speaks for too little of the traffic.
    pub min_shadow_coverage: f64,
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
        // Too few requests say nothing either way: one failure in two is not a 50 % error
        // ratio, so neither errors nor latency are judged below the minimum.
        if svc.requests < min || svc.requests <= 0.0 {
            holds.push(format!(
                "the service answered {:.0} requests in the interval, fewer than --min-requests {}",
                svc.requests, gates.min_requests
            ));
        } else if svc.errors / svc.requests > gates.max_error_ratio {
            failures.push(format!(
                "error ratio: service {} > --max-error-ratio {} (default {})",
                side_errors(svc),
                gates.max_error_ratio,
                side_errors(&w.default)
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
    let shadowed = w.shadow.shadowed();
    let shadow_expected = shadow && weight < 100;
    if shadow_expected || shadowed > 0.0 {
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
        // A match ratio over a fraction of the traffic proves nothing about the rest (the
        // answers skipped are often exactly the odd ones: empty, huge, compressed oddly).
        if let Some(coverage) = w.shadow.coverage()
            && shadowed >= min
            && coverage < gates.min_shadow_coverage
        {
            holds.push(format!(
                "shadow coverage {coverage:.4} ({compared:.0} of {shadowed:.0} shadowed requests \
                 compared; not compared: {}) < --min-shadow-coverage {}: the match ratio speaks \
                 for too little of the traffic to promote on",
                w.shadow.uncompared(),
                gates.min_shadow_coverage
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
    if let Some(c) = w.shadow.coverage() {
        let _ = write!(
            line,
            ", coverage {:.2}% ({:.0}/{:.0})",
            100.0 * c,
            w.shadow.compared(),
            w.shadow.shadowed()
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
    /// Give up after this many holds in a row at one step (0: never; the command's default
    /// is [`DEFAULT_MAX_HOLDS`]).
    pub max_holds: u32,
    /// How long to wait for the proxy to report a new weight.
    pub apply_timeout: Duration,
}

/// `--max-holds` unless told otherwise: a step that cannot be judged for this many intervals
/// in a row (too few requests or shadow comparisons, too little shadow coverage) ends the
/// rollout with the last safe weight written back (exit 3), never a wait without end.
pub const DEFAULT_MAX_HOLDS: u32 = 10;

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

/// What a rollout will do, decided from the validated file before anything changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The route's labels in the metrics.
    pub names: RouteNames,
    /// The route's weight now: the last safe weight until a step passes.
    pub start_weight: u8,
    /// The steps still ahead, ascending: those at or above the start weight.
    pub steps: Vec<u8>,
    /// The steps below the start weight, which are left out.
    pub skipped: Vec<u8>,
}

/// Why a rollout cannot start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No route has the name asked for (an error: the command was wrong).
    UnknownRoute {
        /// The names the file has.
        known: Vec<String>,
    },
    /// The steps would split writes between two databases (exit 2, nothing changed).
    SplitsWrites(String),
}

impl Plan {
    /// Plans the rollout of `options.route` in `config`, or says why it must not start.
    pub fn new(config: &Config, options: &RolloutOptions) -> Result<Plan, Refusal> {
        let Some(route) = config.routes.iter().find(|r| r.name == options.route) else {
            return Err(Refusal::UnknownRoute {
                known: config.routes.iter().map(|r| r.name.clone()).collect(),
            });
        };
        let names = RouteNames {
            route: route.name.clone(),
            service: route.service.clone(),
            default: config.proxy.default.clone(),
        };
        crate::cutover::guard_split_writes(route, &options.steps, options.allow_split_writes)
            .map_err(|why| Refusal::SplitsWrites(format!("refusing to roll out: {why}")))?;
        let start_weight = route.weight;
        let (skipped, steps) = options.steps.iter().partition(|w| **w < start_weight);
        Ok(Plan {
            names,
            start_weight,
            steps,
            skipped,
        })
    }
}

/// Runs a rollout, printing every step, window and verdict to `out`.
pub fn run(options: &RolloutOptions, stop: &Stop, out: &mut dyn Write) -> anyhow::Result<Ending> {
    let loaded = strangler_proxy::config::load(&options.config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the routes file must be valid before a rollout")?;
    let plan = match Plan::new(&loaded.config, options) {
        Ok(plan) => plan,
        Err(Refusal::UnknownRoute { known }) => bail!(
            "{}: no route named {:?} (routes: {})",
            options.config.display(),
            options.route,
            known.join(", ")
        ),
        Err(Refusal::SplitsWrites(why)) => {
            writeln!(out, "{why}")?;
            return Ok(Ending::Refused);
        }
    };
    let names = &plan.names;
    if !plan.skipped.is_empty() {
        writeln!(
            out,
            "route {} is at weight {}: skipping steps {:?}",
            names.route, plan.start_weight, plan.skipped
        )?;
    }
    writeln!(
        out,
        "rolling out route {} ({} ← {}) through {:?}, {:?} per step, reading {}",
        names.route,
        names.service,
        names.default,
        plan.steps,
        options.interval,
        options.source.describe()
    )?;
    let mut rollout = Rollout {
        options,
        names,
        stop,
        last_safe: plan.start_weight,
        baseline_p99: None,
    };
    for (i, &weight) in plan.steps.iter().enumerate() {
        let label = format!("step {}/{} ({weight}%)", i + 1, plan.steps.len());
        if let Some(ending) = rollout.step(&label, weight, out)? {
            return Ok(ending);
        }
        out.flush()?;
    }
    writeln!(
        out,
        "rollout of {} complete: weight {}",
        names.route, rollout.last_safe
    )?;
    Ok(Ending::Completed)
}

/// A rollout under way: what the steps so far have established.
struct Rollout<'a> {
    options: &'a RolloutOptions,
    names: &'a RouteNames,
    stop: &'a Stop,
    /// The highest weight that passed its gates (the start weight before any did).
    last_safe: u8,
    /// The default's p99 from the last window where it answered enough to have one.
    baseline_p99: Option<f64>,
}

/// What a judged window leads to.
enum Next {
    /// The step passed: on to the next.
    Passed,
    /// Too little traffic: judge another interval at the same weight.
    Again,
    /// The rollout ends here.
    End(Ending),
}

impl Rollout<'_> {
    /// Applies `weight` and judges it, one interval at a time, until it passes (`None`) or the
    /// rollout ends (the last safe weight written back).
    fn step(
        &mut self,
        label: &str,
        weight: u8,
        out: &mut dyn Write,
    ) -> anyhow::Result<Option<Ending>> {
        let Some(edited) = self.apply(label, weight, out)? else {
            return self.end(Ending::RolledBack, out);
        };
        let mut holds = 0;
        loop {
            let window = match self.wait(label, out)? {
                Ok(window) => window,
                Err(ending) => return self.end(ending, out),
            };
            let verdict = judge(
                &window,
                weight,
                edited.after.shadow,
                &self.options.gates,
                self.baseline_p99,
            );
            match self.decide(label, weight, &window, verdict, &mut holds, out)? {
                Next::Passed => return Ok(None),
                Next::Again => out.flush()?,
                Next::End(ending) => return self.end(ending, out),
            }
        }
    }

    /// Writes `weight` to the file and waits for the proxy to serve it; `None` when it did not.
    fn apply(
        &self,
        label: &str,
        weight: u8,
        out: &mut dyn Write,
    ) -> anyhow::Result<Option<Edited>> {
        let options = self.options;
        let edited = routes_file::edit_file(
            &options.config,
            &self.names.route,
            &Change {
                weight: Some(i64::from(weight)),
                ..Change::default()
            },
        )?;
        writeln!(
            out,
            "{label}: {}",
            routes_file::describe(&self.names.route, &edited)
        )?;
        out.flush()?;
        match wait_applied(
            &options.source,
            &self.names.route,
            weight,
            options.apply_timeout,
            self.stop,
        ) {
            Ok(()) => Ok(Some(edited)),
            Err(e) => {
                writeln!(out, "{label}: {e:#}")?;
                Ok(None)
            }
        }
    }

    /// Waits one interval and reads its window, or says how the rollout ends instead.
    fn wait(
        &self,
        label: &str,
        out: &mut dyn Write,
    ) -> anyhow::Result<Result<RouteWindow, Ending>> {
        let window = match measure(self.options, self.names, self.stop) {
            Ok(Some(w)) => w,
            Ok(None) => {
                writeln!(out, "{label}: stopped")?;
                return Ok(Err(Ending::Stopped));
            }
            Err(e) => {
                writeln!(
                    out,
                    "{label}: cannot read metrics, so cannot judge the step: {e:#}"
                )?;
                return Ok(Err(Ending::RolledBack));
            }
        };
        writeln!(out, "{label}: {}", describe_window(&window))?;
        Ok(Ok(window))
    }

    /// Reports `verdict` on `window` at `weight` and decides what comes next.
    fn decide(
        &mut self,
        label: &str,
        weight: u8,
        window: &RouteWindow,
        verdict: Verdict,
        holds: &mut u32,
        out: &mut dyn Write,
    ) -> anyhow::Result<Next> {
        let gates = &self.options.gates;
        match verdict {
            Verdict::Pass(notes) => {
                for n in notes {
                    writeln!(out, "{label}: note: {n}")?;
                }
                writeln!(out, "{label}: gates passed")?;
                if window.default.requests >= gates.min_requests as f64 {
                    self.baseline_p99 = window.default.p99().or(self.baseline_p99);
                }
                self.last_safe = weight;
                Ok(Next::Passed)
            }
            Verdict::Hold(reasons) => {
                *holds += 1;
                let max_holds = self.options.max_holds;
                let count = if max_holds > 0 {
                    format!(" (hold {holds} of --max-holds {max_holds})")
                } else {
                    format!(" (hold {holds}; --max-holds 0 waits forever)")
                };
                let last = max_holds > 0 && *holds >= max_holds;
                for r in reasons.iter().filter(|_| !last) {
                    writeln!(
                        out,
                        "{label}: holding at {weight}%: {r}; waiting another interval{count}"
                    )?;
                }
                if last {
                    writeln!(
                        out,
                        "{label}: still holding after {holds} intervals (--max-holds {max_holds}): \
                         {}; giving up",
                        reasons.join("; ")
                    )?;
                    return Ok(Next::End(Ending::GaveUp));
                }
                Ok(Next::Again)
            }
            Verdict::Breach(failures) => {
                for f in &failures {
                    writeln!(out, "{label}: GATE FAILED: {f}")?;
                }
                Ok(Next::End(Ending::RolledBack))
            }
        }
    }

    /// Ends the rollout with the last safe weight written back.
    fn end(&self, ending: Ending, out: &mut dyn Write) -> anyhow::Result<Option<Ending>> {
        back_to(self.options, self.last_safe, ending, out).map(Some)
    }
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
        min_shadow_coverage: 0.95,
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
            near_misses: 0.0,
        }
    }

    fn shadow(matched: f64, mismatched: f64) -> Shadow {
        Shadow {
            matched,
            mismatched,
            ..Shadow::default()
        }
    }

    fn skipping(matched: f64, skipped: f64) -> Shadow {
        Shadow {
            matched,
            skipped,
            skipped_by_reason: [("client_aborted".to_string(), skipped)].into(),
            ..Shadow::default()
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
        let none = Shadow::default;
        let fast = 0.005;
        let slow = 0.5;
        // (window, weight, shadow, baseline, expected verdict kind, text in the message)
        let cases: Vec<Case> = vec![
            (
                window(side(100.0, 0.0, fast), side(100.0, 0.0, fast), none()),
                5,
                false,
                None,
                "pass",
                "",
            ),
            (
                window(side(100.0, 2.0, fast), side(100.0, 0.0, fast), none()),
                5,
                false,
                None,
                "breach",
                "error ratio: service 0.0200 (2 of 100 requests)",
            ),
            (
                window(side(5.0, 0.0, fast), side(500.0, 0.0, fast), none()),
                1,
                false,
                None,
                "hold",
                "answered 5 requests",
            ),
            // Below the minimum errors are not judged: five failures of five hold the step.
            (
                window(side(5.0, 5.0, fast), side(500.0, 0.0, fast), none()),
                1,
                false,
                None,
                "hold",
                "answered 5 requests in the interval, fewer than --min-requests 20",
            ),
            // Nor latency.
            (
                window(side(5.0, 0.0, slow), side(500.0, 0.0, 0.001), none()),
                1,
                false,
                None,
                "hold",
                "answered 5 requests",
            ),
            // 15 of 24 shadowed compared, all matching: held, not promoted.
            (
                window(Side::default(), side(100.0, 0.0, fast), skipping(15.0, 9.0)),
                0,
                true,
                None,
                "hold",
                "shadow coverage 0.6250 (15 of 24 shadowed requests compared; not compared: 9 skipped (client_aborted 9)) < --min-shadow-coverage 0.95",
            ),
            (
                window(Side::default(), side(100.0, 0.0, fast), skipping(96.0, 4.0)),
                0,
                true,
                None,
                "pass",
                "",
            ),
            // Mismatches are a breach whatever the coverage.
            (
                window(
                    Side::default(),
                    side(100.0, 0.0, fast),
                    Shadow {
                        mismatched: 20.0,
                        ..skipping(0.0, 80.0)
                    },
                ),
                0,
                true,
                None,
                "breach",
                "shadow match ratio",
            ),
            (
                window(side(100.0, 0.0, slow), side(100.0, 0.0, 0.1), none()),
                50,
                false,
                None,
                "breach",
                "p99 latency: service 495.0 ms > --max-latency-ratio 2 x default 99.0 ms (= 198.0 ms)",
            ),
            // Under the floor the ratio does not matter.
            (
                window(side(100.0, 0.0, 0.008), side(100.0, 0.0, 0.001), none()),
                50,
                false,
                None,
                "pass",
                "",
            ),
            // At 100% the default has no traffic; the baseline from earlier steps is used.
            (
                window(side(100.0, 0.0, slow), Side::default(), none()),
                100,
                false,
                Some(0.1),
                "breach",
                "p99 latency",
            ),
            (
                window(side(100.0, 0.0, slow), Side::default(), none()),
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
                window(Side::default(), side(100.0, 0.0, fast), none()),
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

    fn options(route: &str, steps: &[u8], allow_split_writes: bool) -> RolloutOptions {
        RolloutOptions {
            config: PathBuf::from("routes.toml"),
            route: route.into(),
            steps: steps.to_vec(),
            interval: Duration::from_secs(1),
            gates: GATES,
            source: Source::Proxy("http://127.0.0.1:9901/metrics".into()),
            allow_split_writes,
            max_holds: 0,
            apply_timeout: Duration::from_secs(1),
        }
    }

    fn config(weight: u8, methods: &str) -> Config {
        strangler_proxy::config::parse(&format!(
            "[proxy]\ndefault = \"monolith\"\n\
             [services.monolith]\nurl = \"http://127.0.0.1:1\"\n\
             [services.users]\nurl = \"http://127.0.0.1:2\"\n\
             [[routes]]\nname = \"users\"\nprefix = \"/api/users\"\nservice = \"users\"\n\
             weight = {weight}\n{methods}"
        ))
        .expect("valid")
    }

    #[test]
    fn a_plan_skips_steps_below_the_current_weight() {
        let plan = Plan::new(
            &config(25, "methods = [\"GET\"]"),
            &options("users", &[0, 5, 25, 50, 100], false),
        );
        assert_eq!(
            plan,
            Ok(Plan {
                names: RouteNames {
                    route: "users".into(),
                    service: "users".into(),
                    default: "monolith".into(),
                },
                start_weight: 25,
                steps: vec![25, 50, 100],
                skipped: vec![0, 5],
            })
        );
    }

    #[test]
    fn an_unknown_route_is_refused_with_the_known_names() {
        assert_eq!(
            Plan::new(&config(0, ""), &options("user", &[100], false)),
            Err(Refusal::UnknownRoute {
                known: vec!["users".into()]
            })
        );
    }

    /// One line per case: methods, steps, --allow-split-writes, whether the plan is refused.
    #[test]
    fn splitting_writes_is_refused_unless_reads_only_straight_to_100_or_allowed() {
        let cases: &[(&str, &[u8], bool, bool)] = &[
            ("", &[1, 50, 100], false, true),
            ("methods = [\"GET\", \"POST\"]", &[50], false, true),
            ("methods = [\"GET\", \"HEAD\"]", &[1, 50, 100], false, false),
            ("", &[0, 100], false, false),
            ("", &[1, 50, 100], true, false),
        ];
        for (methods, steps, allow, refused) in cases {
            let plan = Plan::new(&config(0, methods), &options("users", steps, *allow));
            assert_eq!(
                matches!(&plan, Err(Refusal::SplitsWrites(why)) if why.contains("Nothing was changed")),
                *refused,
                "{methods:?} {steps:?} {allow}: {plan:?}"
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
