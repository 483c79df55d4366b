//! `cutover RESOURCE [--reverse]`: switch a resource's writes between the monolith and its
//! service without losing one, and `complete RESOURCE` once they stay on the service.
//!
//! The sequence follows Vitess MoveTables' `SwitchTraffic` for writes and PgDog's cutover:
//! check preconditions → raise the route's write fence (`hold_writes`) → wait until every proxy
//! serves the fenced file (judged by its sha256) → wait until no write is in flight to the old
//! writer → let change capture reach lag 0 → verify counts and checksums → record the new sync
//! direction → in **one** atomic edit send every method to the new writer and lift the fence →
//! wait for the follower to turn around → report the longest hold. Any failure before the flip
//! lifts the fence with writes where they were (exit 1); clients only ever waited.
//!
//! [`guard_writes`] is the other half of "no silent overwrite": `shift`, `rollback` and
//! `rollout` may not move a resource's writes while its sync runs the other way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use strangler_proxy::config::{self, Config, RouteConfig};

use crate::db::Db;
use crate::figures::names;
use crate::migrations::{DbUrl, Declared, Migrations};
use crate::routes_file::{self, Change};
use crate::signals::Stop;
use crate::source::Source;
use crate::sync::{self, Direction, SyncStage};

/// What `cutover` needs.
#[derive(Clone, Debug)]
pub struct CutoverOptions {
    /// The resource whose writes move.
    pub resource: Declared,
    /// Every declared resource (references between them order cutovers).
    pub migrations: Migrations,
    /// The routes file every proxy serves.
    pub config: PathBuf,
    /// Holds `monolith.db` and the services' databases.
    pub data_dir: PathBuf,
    /// One proxy's metrics, or a Prometheus server scraping every replica.
    pub source: Source,
    /// Writes back from the service to the monolith (`ReverseTraffic`).
    pub reverse: bool,
    /// Longest wait for every proxy to serve an edited file.
    pub apply_timeout: Duration,
    /// Longest wait for in-flight writes to finish and for the sync to reach lag 0.
    pub drain_timeout: Duration,
}

/// How a cutover ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Writes switched, verified, reverse sync confirmed (exit 0).
    Switched,
    /// Refused or failed before the flip; the fence is lifted, writes are where they were
    /// (exit 1). The reason is the last line printed.
    NotSwitched(String),
    /// Stopped by a signal before the flip; same promise as `NotSwitched` (exit 130).
    Interrupted,
    /// Writes switched, but a step after the flip did not confirm (exit 3): what to do is
    /// printed.
    SwitchedWithWarning(String),
}

/// The route that peels `resource` off: the one `migrations.toml` names.
///
/// Errors: the routes file has no route of that name.
pub fn route_of<'c>(config: &'c Config, resource: &Declared) -> anyhow::Result<&'c RouteConfig> {
    config
        .routes
        .iter()
        .find(|r| r.name == resource.route)
        .with_context(|| {
            format!(
                "no route named {:?} (the route of resource {} in migrations.toml) in the routes \
                 file",
                resource.route,
                resource.name()
            )
        })
}

/// Refuses weights that would split `route`'s writes between the service's database and the
/// monolith's ([`RouteConfig::splits_writes_at`]) unless `allow` (the service writes through
/// to the monolith): the one rule `shift` and `rollout` share. `weights` are the weights the
/// command would set (a rollout's steps, a shift's one weight).
pub fn guard_split_writes(route: &RouteConfig, weights: &[u8], allow: bool) -> Result<(), String> {
    let splits: Vec<u8> = weights
        .iter()
        .copied()
        .filter(|w| route.splits_writes_at(*w))
        .collect();
    if splits.is_empty() || allow {
        return Ok(());
    }
    let what = route
        .methods
        .as_ref()
        .map_or("every method (writes included)".to_string(), |m| {
            format!(
                "writes ({})",
                m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
            )
        });
    let weights = splits
        .iter()
        .map(|w| format!("{w}%"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "route {:?} sends {what} to {:?}, and {weights} would split them between two databases \
         (the service's and the monolith's), which is how data gets lost. Move reads first \
         (scripts/shift {} WEIGHT --methods GET,HEAD), move every method at once (weight 100), \
         or pass --allow-split-writes if the service writes through to the monolith. Nothing \
         was changed.",
        route.name, route.service, route.name
    ))
}

/// Refuses a table that would move `route`'s writes against the running sync: while changes
/// flow monolith → service (forward), writes must stay on the monolith; once writes switched
/// (reverse sync), they must all stay on the service. Only `cutover` moves them, behind the
/// fence. No sync state (never migrated, or complete) means no constraint.
pub fn guard_writes(
    data_dir: &Path,
    migrations: &Migrations,
    route: &RouteConfig,
) -> Result<(), String> {
    let Some(resource) = migrations.by_route(&route.name) else {
        return Ok(());
    };
    let state = match sync::read_state(data_dir, resource) {
        Ok(Some(state)) => state,
        _ => return Ok(()),
    };
    let name = resource.name();
    if state.stage == SyncStage::Complete {
        if route.sends_writes() && route.weight == 100 {
            return Ok(());
        }
        return Err(format!(
            "the migration of {name} is complete: the monolith's copy of {name} is stale (no sync \
             runs any more), and route {:?} would send some requests of {name} back to it, \
             where writes would take ids the service has already given out. Keep the route at \
             weight 100 for every method",
            route.name
        ));
    }
    match state.direction {
        Direction::Forward if route.sends_writes() => Err(format!(
            "route {:?} would send writes of {name} to its service while change capture copies \
             the monolith's writes into it (sync {}, stage {}): an acknowledged write on either \
             side could be overwritten. Keep writes on the monolith (--methods GET,HEAD) and \
             switch them with `scripts/cutover {name}`",
            route.name,
            Direction::Forward.arrow(),
            state.stage.as_str()
        )),
        Direction::Reverse if !(route.sends_writes() && route.weight == 100) => Err(format!(
            "route {:?} would send some writes of {name} back to the monolith while the \
             service owns them (sync {}, stage {}): switch them back with `scripts/cutover \
             {name} --reverse`",
            route.name,
            Direction::Reverse.arrow(),
            state.stage.as_str()
        )),
        _ => Ok(()),
    }
}

/// The steps, each printed as it starts; the outcome on the last line.
struct Run<'a> {
    options: &'a CutoverOptions,
    stop: &'a Stop,
    out: &'a mut dyn Write,
    route: String,
    /// Sync direction before the switch (the old writer is its source).
    from: Direction,
    /// The `backend` label of the old writer.
    old_writer: String,
    fenced_at: Option<Instant>,
    /// The hold histogram before the fence, so the report covers this cutover only.
    holds_before: Vec<(f64, f64)>,
}

/// Runs a cutover; see the module documentation.
pub fn run(options: &CutoverOptions, stop: &Stop, out: &mut dyn Write) -> anyhow::Result<Ending> {
    let loaded = config::load(&options.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let route = route_of(&loaded.config, &options.resource)?.clone();
    let from = if options.reverse {
        Direction::Reverse
    } else {
        Direction::Forward
    };
    let old_writer = match from {
        Direction::Forward => loaded.config.proxy.default.clone(),
        Direction::Reverse => route.service.clone(),
    };
    let mut run = Run {
        options,
        stop,
        out,
        route: route.name.clone(),
        from,
        old_writer,
        fenced_at: None,
        holds_before: Vec::new(),
    };
    if let Err(why) = run.preconditions(&route, &loaded.config) {
        writeln!(run.out, "refused: {why}")?;
        return Ok(Ending::NotSwitched(why));
    }
    run.warn_of_near_misses(&route);
    match run.before_flip() {
        Ok(()) => {}
        Err(Stop_::Interrupted) => {
            run.lift("interrupted")?;
            return Ok(Ending::Interrupted);
        }
        Err(Stop_::Failed(why)) => {
            run.lift(&why)?;
            writeln!(run.out, "cutover failed: {why}")?;
            return Ok(Ending::NotSwitched(why));
        }
    }
    run.flip_and_after()
}

/// Why the steps before the flip ended early.
enum Stop_ {
    Interrupted,
    Failed(String),
}

impl From<anyhow::Error> for Stop_ {
    fn from(e: anyhow::Error) -> Self {
        Stop_::Failed(format!("{e:#}"))
    }
}

impl<'a> Run<'a> {
    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn resource(&self) -> &'a Declared {
        &self.options.resource
    }

    /// Reads at 100 % on the service, writes where `from` says, change capture installed on
    /// both sides and followed, no conflict, the last verification good.
    fn preconditions(&self, route: &RouteConfig, config: &Config) -> Result<(), String> {
        let name = self.resource().name();
        let reads_on_service = route.weight == 100
            && route
                .methods
                .as_ref()
                .is_none_or(|m| m.contains(&http::Method::GET) && m.contains(&http::Method::HEAD));
        if !reads_on_service {
            return Err(format!(
                "reads of {name} are not at 100 % on the service (route {:?}: weight {}); step \
                 them over first (scripts/rollout {})",
                route.name, route.weight, route.name
            ));
        }
        match self.from {
            Direction::Forward if route.sends_writes() => {
                return Err(format!(
                    "route {:?} already sends the writes of {name} to the service",
                    route.name
                ));
            }
            Direction::Reverse if !route.sends_writes() => {
                return Err(format!(
                    "route {:?} does not send the writes of {name} to the service: nothing to reverse",
                    route.name
                ));
            }
            _ => {}
        }
        let state = sync::read_state(&self.options.data_dir, self.resource())
            .map_err(|e| format!("{e:#}"))?
            .ok_or_else(|| {
                format!(
                    "change capture for {name} is not installed: run `scripts/migrate-data \
                     {name} --follow` and leave it running"
                )
            })?;
        if state.direction != self.from {
            return Err(format!(
                "the sync of {name} runs {} (stage {}), not {}: {}",
                state.direction.arrow(),
                state.stage.as_str(),
                self.from.arrow(),
                if self.options.reverse {
                    "its writes are not switched"
                } else {
                    "its writes are already switched; use --reverse to switch them back"
                }
            ));
        }
        if !matches!(
            state.stage,
            SyncStage::Following | SyncStage::WritesSwitched | SyncStage::Reversed
        ) {
            return Err(format!(
                "the migration of {name} is at stage {}, not following",
                state.stage.as_str()
            ));
        }
        // Carried forward by logical replication, the monolith's table has no triggers until
        // the switch hands over to them.
        let needed = (!state.forward_by_replication, true);
        if (
            state.capture_installed.0 || !needed.0,
            state.capture_installed.1,
        ) != (true, true)
        {
            return Err(format!(
                "change capture for {name} is not installed on both sides (monolith {}, \
                 service {}): restart `scripts/migrate-data {name} --follow`",
                state.capture_installed.0, state.capture_installed.1
            ));
        }
        if !state.follower_alive() {
            return Err(format!(
                "no follower applies the changes of {name} (lag not measurable): start \
                 `scripts/migrate-data {name} --follow`"
            ));
        }
        if state.conflicts > 0 {
            return Err(format!(
                "{} unresolved conflict(s) for {name}: see `scripts/migrate-data {name} \
                 --verify-only`",
                state.conflicts
            ));
        }
        if state.last_verified_ok != Some(true) {
            return Err(format!(
                "the last verification of {name} did not pass: run `scripts/migrate-data {name} \
                 --verify-only`"
            ));
        }
        match reference_order(
            &self.options.data_dir,
            &self.options.migrations,
            config,
            self.resource(),
            self.from,
        ) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// A warning, not a refusal: requests that match the route only when letter case is
    /// ignored reach the default, and a case-insensitive legacy router serves them as the
    /// route's, so some writes would stay on the monolith after the switch.
    fn warn_of_near_misses(&mut self, route: &RouteConfig) {
        let line = match self.options.source.near_misses(&route.name) {
            Ok(n) if n > 0.0 => format!(
                "WARNING: {n:.0} request(s) matched route {:?} only when letter case is ignored \
                 ({}); they go to the default, which may serve them as {} (writes included) \
                 after the switch: set [proxy] ignore_case = true if the default's router \
                 ignores case",
                route.name,
                names::ROUTE_NEAR_MISSES,
                route.prefix
            ),
            Ok(_) => return,
            Err(e) => format!(
                "WARNING: could not read near misses of route {:?} from {}: {e:#}",
                route.name,
                self.options.source.describe()
            ),
        };
        self.say(&line);
    }

    fn check_stop(&self) -> Result<(), Stop_> {
        if self.stop.is_set() {
            Err(Stop_::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Fence → every proxy fenced → no write in flight → lag 0 → verified.
    fn before_flip(&mut self) -> Result<(), Stop_> {
        let name = self.resource().name();
        self.say(&format!(
            "1/6 raising the write fence on route {:?} (hold_writes = true)",
            self.route
        ));
        self.holds_before = self
            .options
            .source
            .hold_histogram(&self.route)
            .unwrap_or_default();
        let sha = self.edit(&Change {
            hold_writes: Some(true),
            ..Change::default()
        })?;
        self.fenced_at = Some(Instant::now());
        self.say("2/6 waiting until every proxy serves the fenced file");
        self.wait_served(&sha)?;
        self.check_stop()?;
        self.say(&format!(
            "3/6 waiting for writes in flight to {} to finish",
            self.old_writer
        ));
        self.wait_no_writes_in_flight()?;
        self.check_stop()?;
        self.say(&format!(
            "4/6 waiting for the sync {} to reach lag 0",
            self.from.arrow()
        ));
        sync::drain(
            &self.options.data_dir,
            self.resource(),
            self.from,
            self.options.drain_timeout,
        )?;
        self.check_stop()?;
        let v = sync::verify(&self.options.data_dir, self.resource())?;
        if !v.matches() {
            let _ = write!(self.out, "{}", v.render());
            return Err(Stop_::Failed(format!(
                "verification of {name} failed with writes paused"
            )));
        }
        let _ = write!(self.out, "{}", v.render());
        self.say("5/6 verified with writes paused");
        self.check_stop()?;
        Ok(())
    }

    /// Records the new direction, flips the route in one edit, waits for the proxies and the
    /// follower, and reports the longest hold.
    fn flip_and_after(mut self) -> anyhow::Result<Ending> {
        let name = self.resource().name();
        let to = match self.from {
            Direction::Forward => Direction::Reverse,
            Direction::Reverse => Direction::Forward,
        };
        if let Err(e) = sync::switch(&self.options.data_dir, self.resource(), to) {
            let why = format!("recording the switch failed: {e:#}");
            self.lift(&why)?;
            writeln!(self.out, "cutover failed: {why}")?;
            return Ok(Ending::NotSwitched(why));
        }
        let flip = Change {
            weight: Some(100),
            methods: Some(match to {
                // Every method to the service.
                Direction::Reverse => None,
                // Reads stay on the service; writes go back.
                Direction::Forward => Some(vec!["GET".into(), "HEAD".into()]),
            }),
            hold_writes: Some(false),
            ..Change::default()
        };
        let sha = match self.edit(&flip) {
            Ok(sha) => sha,
            Err(e) => {
                let why = match e {
                    Stop_::Failed(why) => why,
                    Stop_::Interrupted => "interrupted".into(),
                };
                let _ = sync::switch(&self.options.data_dir, self.resource(), self.from);
                self.lift(&why)?;
                writeln!(self.out, "cutover failed: {why}")?;
                return Ok(Ending::NotSwitched(why));
            }
        };
        self.say(&format!(
            "6/6 flipped route {:?}: {} writes now go to {}; fence lifted",
            self.route,
            name,
            match to {
                Direction::Reverse => "the service",
                Direction::Forward => "the monolith",
            }
        ));
        let mut warnings = Vec::new();
        if let Err(Stop_::Failed(why)) = self.wait_served(&sha) {
            warnings.push(format!(
                "{why}; writes stay held (and fail with 503 after hold_timeout) until they do"
            ));
        }
        let fence_up = self.fenced_at.map_or(Duration::ZERO, |t| t.elapsed());
        match sync::wait_follower(
            &self.options.data_dir,
            self.resource(),
            to,
            self.options.apply_timeout,
        ) {
            Ok(()) => self.say(&format!("sync now runs {}", to.arrow())),
            Err(e) => warnings.push(format!(
                "{e:#}; until a follower runs, the {} copy falls behind",
                match to {
                    Direction::Reverse => "monolith's",
                    Direction::Forward => "service's",
                }
            )),
        }
        let hold = self.longest_hold();
        self.say(&format!(
            "writes were fenced for {:.3}s; longest hold a client saw: {hold}",
            fence_up.as_secs_f64()
        ));
        if warnings.is_empty() {
            self.say(&format!(
                "cutover of {name} done: writes switched {}",
                if self.options.reverse {
                    "back to the monolith"
                } else {
                    "to the service"
                }
            ));
            Ok(Ending::Switched)
        } else {
            let why = warnings.join("; ");
            self.say(&format!("WARNING: writes switched, but {why}"));
            Ok(Ending::SwitchedWithWarning(why))
        }
    }

    /// Applies `change` to the route; returns the new file's sha256.
    fn edit(&mut self, change: &Change) -> Result<String, Stop_> {
        let path = &self.options.config;
        routes_file::edit_file(path, &self.route, change)
            .map_err(|e| Stop_::Failed(e.to_string()))?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading {}", path.display()))
            .map_err(Stop_::from)?;
        Ok(config::sha256_hex(&bytes))
    }

    /// Lifts the fence after a failure before the flip; says so.
    fn lift(&mut self, why: &str) -> anyhow::Result<()> {
        if self.fenced_at.is_none() {
            return Ok(());
        }
        let lifted = self.edit(&Change {
            hold_writes: Some(false),
            ..Change::default()
        });
        match lifted {
            Ok(_) => writeln!(
                self.out,
                "fence lifted: {} writes stay on {} ({why})",
                self.resource().name(),
                self.old_writer
            )?,
            Err(Stop_::Failed(e)) => writeln!(
                self.out,
                "WARNING: could not lift the fence ({e}): remove `hold_writes = true` from route \
                 {:?} in {} by hand",
                self.route,
                self.options.config.display()
            )?,
            Err(Stop_::Interrupted) => {}
        }
        Ok(())
    }

    /// Polls until every proxy the source sees serves the file with `sha`.
    fn wait_served(&mut self, sha: &str) -> Result<(), Stop_> {
        let deadline = Instant::now() + self.options.apply_timeout;
        let mut last: Vec<String>;
        loop {
            match self.options.source.served_files() {
                Ok(served) if !served.is_empty() && served.iter().all(|s| s == sha) => {
                    return Ok(());
                }
                Ok(served) => last = served,
                Err(e) => last = vec![format!("unreadable: {e:#}")],
            }
            self.check_stop()?;
            if Instant::now() >= deadline {
                return Err(Stop_::Failed(format!(
                    "not every proxy serves the edited file (sha256 {}…) within {:?}: {} \
                     report {:?}",
                    &sha[..12.min(sha.len())],
                    self.options.apply_timeout,
                    self.options.source.describe(),
                    last.iter()
                        .map(|s| s.chars().take(12).collect::<String>())
                        .collect::<Vec<_>>()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until no write of the route is in flight to the old writer on any proxy.
    fn wait_no_writes_in_flight(&mut self) -> Result<(), Stop_> {
        let deadline = Instant::now() + self.options.drain_timeout;
        loop {
            let n = self
                .options
                .source
                .writes_in_flight(&self.route, &self.old_writer)?;
            if n == 0.0 {
                return Ok(());
            }
            self.check_stop()?;
            if Instant::now() >= deadline {
                return Err(Stop_::Failed(format!(
                    "{n} write(s) still in flight to {} after {:?}",
                    self.old_writer, self.options.drain_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// "≤ 0.25 s (12 writes held)" from the proxies' hold histogram, or why it is unknown.
    fn longest_hold(&self) -> String {
        match self.options.source.hold_histogram(&self.route) {
            Ok(after) => describe_longest(&since(&self.holds_before, &after)),
            Err(e) => format!("unknown ({e:#})"),
        }
    }
}

/// The growth of cumulative buckets between two readings (a bucket missing before counts
/// from zero; a counter that shrank was reset and counts whole).
pub fn since(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, n)| {
            let old = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, o)| *o);
            (*le, if *n >= old { n - old } else { *n })
        })
        .collect()
}

/// The longest hold from cumulative buckets `(le, count)`: the smallest bound every observation
/// is under.
pub fn describe_longest(buckets: &[(f64, f64)]) -> String {
    let total = buckets
        .iter()
        .find(|(le, _)| le.is_infinite())
        .map_or(0.0, |(_, n)| *n);
    if total == 0.0 {
        return "none (no write arrived while fenced)".into();
    }
    let bound = buckets
        .iter()
        .filter(|(le, _)| le.is_finite())
        .find(|(_, n)| *n >= total)
        .map(|(le, _)| *le);
    match bound {
        Some(le) => format!("≤ {le}s ({total:.0} write(s) held)"),
        None => format!("over the largest bucket ({total:.0} write(s) held)"),
    }
}

/// What `complete` did, for the report.
pub fn complete(
    data_dir: &Path,
    config_path: &Path,
    migrations: &Migrations,
    resource: &Declared,
    out: &mut dyn Write,
) -> anyhow::Result<Result<(), String>> {
    let loaded = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let route = route_of(&loaded.config, resource)?;
    let name = resource.name();
    if !(route.sends_writes() && route.weight == 100 && route.methods.is_none()) {
        let why = format!(
            "route {:?} does not send every method of {name} to its service (weight {}, \
             methods {}): cut writes over first (scripts/cutover {name})",
            route.name,
            route.weight,
            route.methods.as_ref().map_or("all".into(), |m| m
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(","))
        );
        writeln!(out, "refused: {why}")?;
        return Ok(Err(why));
    }
    if let Some(why) = still_referenced(data_dir, migrations, resource)? {
        writeln!(out, "refused: {why}")?;
        return Ok(Err(why));
    }
    let done = match sync::complete(data_dir, resource) {
        Ok(done) => done,
        Err(e) => {
            let why = format!("{e:#}");
            writeln!(out, "refused: {why}")?;
            return Ok(Err(why));
        }
    };
    writeln!(
        out,
        "reverse sync of {name} stopped after applying its last {} change(s)",
        done.final_changes_applied
    )?;
    let table = |dropped: bool, side: &str| {
        if dropped {
            format!("the {side}'s change table dropped")
        } else {
            format!("the {side}'s change table kept (another resource still captures into it)")
        }
    };
    writeln!(
        out,
        "change capture removed: triggers gone on both sides; {}; {}{}",
        table(done.change_tables_dropped.0, "monolith"),
        table(done.change_tables_dropped.1, "service"),
        if done.fence_removed {
            "; the id fence row removed from the monolith's table"
        } else {
            ""
        }
    )?;
    writeln!(out, "{}", done.monolith_note)?;
    writeln!(out, "the migration of {name} is complete")?;
    Ok(Ok(()))
}

/// The references between declared resources as the source databases' own catalogues declare
/// them: `(from, to)` (resource names) for every foreign key of `from`'s source table that
/// points at `to`'s source table in the same database.
fn foreign_keys(data_dir: &Path, migrations: &Migrations) -> anyhow::Result<Vec<(String, String)>> {
    let mut edges = Vec::new();
    for from in &migrations.resources {
        if let DbUrl::Sqlite(path) = from.source.url.resolve(data_dir)
            && !path.is_file()
        {
            continue;
        }
        let targets =
            Db::open(&from.source.url, data_dir, false)?.foreign_key_targets(&from.source.table)?;
        for to in &migrations.resources {
            let edge = (from.name.clone(), to.name.clone());
            if to.name != from.name
                && to.source.url == from.source.url
                && targets.contains(&to.source.table)
                && !edges.contains(&edge)
            {
                edges.push(edge);
            }
        }
    }
    Ok(edges)
}

/// Whether the service owns `resource`'s writes: they were switched (reverse sync) or the
/// migration is complete.
fn writes_moved(data_dir: &Path, resource: &Declared) -> anyhow::Result<bool> {
    Ok(sync::read_state(data_dir, resource)?
        .is_some_and(|s| s.direction == Direction::Reverse || s.stage == SyncStage::Complete))
}

/// A resource whose rows the monolith still writes and that refers to `resource`: once
/// capture stops, the monolith's copy of `resource` goes stale and those writes would be
/// refused for rows created on the service.
fn still_referenced(
    data_dir: &Path,
    migrations: &Migrations,
    resource: &Declared,
) -> anyhow::Result<Option<String>> {
    let name = resource.name();
    for (other, _) in foreign_keys(data_dir, migrations)?
        .into_iter()
        .filter(|(_, to)| to == name)
    {
        if !writes_moved(data_dir, migrations.get(&other)?)? {
            return Ok(Some(format!(
                "the monolith still takes writes of {other} (its table {other} refers to {name}): \
                 once the reverse sync of {name} stops, the monolith would refuse {other} naming \
                 a {name} row created on the service. Cut {other} over first (scripts/cutover \
                 {other}), then complete {name}"
            )));
        }
    }
    Ok(None)
}

/// Why switching `resource`'s writes (`from` the current writer) now would make a reference
/// race the sync, if it would.
///
/// Forward: a service checks the rows it refers to through the proxy. If a referenced
/// resource's reads are on its service while its writes are still on the monolith, a row
/// created an instant earlier may not have reached that service yet: 422. So the referenced
/// resource goes first. Reverse: the same race seen from the other end, for a resource whose
/// writes are on its service and that refers to this one.
fn reference_order(
    data_dir: &Path,
    migrations: &Migrations,
    config: &Config,
    resource: &Declared,
    from: Direction,
) -> anyhow::Result<Option<String>> {
    let name = resource.name();
    for (from_table, to_table) in foreign_keys(data_dir, migrations)? {
        match from {
            Direction::Forward if from_table == name => {
                let other = migrations.get(&to_table)?;
                let reads_on_service = route_of(config, other).is_ok_and(|r| {
                    r.weight > 0
                        && r.methods
                            .as_ref()
                            .is_none_or(|m| m.contains(&http::Method::GET))
                });
                if reads_on_service && !writes_moved(data_dir, other)? {
                    return Ok(Some(format!(
                        "{name} refers to {other}, whose reads are on its service while its \
                         writes are still on the monolith: the {name} service would look up a \
                         {other} row created an instant earlier before the sync carried it over \
                         (422). Cut {other} over first (scripts/cutover {other})",
                        other = other.name()
                    )));
                }
            }
            Direction::Reverse if to_table == name => {
                let other = migrations.get(&from_table)?;
                if writes_moved(data_dir, other)? {
                    return Ok(Some(format!(
                        "the writes of {other} are on its service and refer to {name}: with the \
                         writes of {name} back on the monolith, the {other} service would look up a {name} \
                         row created an instant earlier before the sync carried it over (422). \
                         Switch {other} back first (scripts/cutover {other} --reverse)",
                        other = other.name()
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_hold_is_the_smallest_bucket_holding_every_observation() {
        let b = [
            (0.001, 0.0),
            (0.01, 3.0),
            (0.1, 5.0),
            (1.0, 5.0),
            (f64::INFINITY, 5.0),
        ];
        assert_eq!(describe_longest(&b), "≤ 0.1s (5 write(s) held)");
        let before = [
            (0.001, 0.0),
            (0.01, 3.0),
            (0.1, 3.0),
            (1.0, 3.0),
            (f64::INFINITY, 3.0),
        ];
        assert_eq!(
            describe_longest(&since(&before, &b)),
            "≤ 0.1s (2 write(s) held)"
        );
        let none = [(0.1, 0.0), (f64::INFINITY, 0.0)];
        assert!(describe_longest(&none).starts_with("none"));
        let over = [(0.1, 1.0), (f64::INFINITY, 2.0)];
        assert!(describe_longest(&over).starts_with("over the largest"));
    }
}
