//! `strangler-ops`: the operator scripts (`scripts/migrate-data`, `shift`, `rollout`,
//! `rollback`, `status`). Parses arguments and calls the library.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use strangler_ops::copy::CopyOptions;
use strangler_ops::cutover::{self, CutoverOptions};
use strangler_ops::migrate::{self, Capture, MigrateOptions, Outcome};
use strangler_ops::migrations::{self, Migrations};
use strangler_ops::progress::Display;
use strangler_ops::rollout::{self, Gates, RolloutOptions};
use strangler_ops::routes_file::{self, Change, EditError};
use strangler_ops::signals::Stop;
use strangler_ops::source::Source;
use strangler_ops::status::{self, StatusOptions};
use strangler_ops::sync;
use strangler_proxy::config::RouteConfig;

#[derive(Parser)]
#[command(
    name = "strangler-ops",
    version,
    about = "Operator scripts: move a resource's data to its service, shift and roll out traffic, roll back, switch writes over (cutover), finish (complete), show status"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// The route table the proxy serves.
    #[arg(long, value_name = "PATH", default_value = "./routes.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Copy a resource's rows from the monolith's database into its service's, then verify.
    ///
    /// Reads DATA/monolith.db and writes DATA/RESOURCE.db (created with the service's schema if
    /// missing), in batches, each an upsert of a range of ids plus removal of rows the monolith
    /// no longer has. A killed run continues where it stopped; a finished one can be run again
    /// (rows already right are left alone). Ends by comparing row counts and an order-independent
    /// checksum of both tables; exits 1 if they differ.
    ///
    /// --follow installs triggers on the resource's table in both databases (recording changed
    /// ids in a side table, invisible to clients) before copying, then keeps applying inserts,
    /// updates and deletes in the direction recorded in DATA/RESOURCE.db (_strangler_sync),
    /// re-read every poll: monolith → service until `scripts/cutover` switches writes to the
    /// service, service → monolith after (one line says when it turns), until Ctrl-C or SIGTERM,
    /// or until `scripts/complete` finishes the migration (exit 0). A change whose row the
    /// destination changed too is not applied but recorded as a conflict; verification fails
    /// while conflicts stand. Stopped before any cutover, it removes the triggers and verifies;
    /// after one it leaves capture in place so no write is missed, and a restarted follower
    /// resumes (also after kill -9) without copying again.
    ///
    /// --reverse: writes are switched to the service; bring the monolith's copy up to date and
    /// verify (with --follow, keep following). Refused unless the recorded direction is reverse,
    /// and any copy monolith → service is refused while it is.
    ///
    /// --remove-capture removes triggers and change tables left by a follower killed with -9.
    ///
    /// Exit status: 0 verified (or stopped cleanly), 1 mismatch, conflicts or refused (reason on
    /// the last line), 2 refused by routes.toml, 130 interrupted mid-copy.
    MigrateData(MigrateArgs),
    /// Set a route's weight (and optionally shadow and methods) in routes.toml.
    ///
    /// Edits the file in place keeping comments and layout, validates the result exactly as
    /// `strangler-proxy check` does, and replaces the file atomically (temporary file + rename),
    /// which the running proxy picks up within a second. An invalid result is refused and the
    /// file left untouched.
    Shift(ShiftArgs),
    /// Step a route's weight up while watching the proxy's metrics; roll back on a breach.
    ///
    /// At each step it waits for the proxy to apply the weight, watches one interval, then
    /// compares the service with the default: error ratio (5xx and failed requests) above
    /// --max-error-ratio, p99 above --max-latency-ratio x the default's, or shadow match ratio
    /// below --min-shadow-match writes the last safe weight back and exits 1, saying which gate
    /// failed with the figures. Too little traffic to judge holds the step (and says so).
    /// Exit status: 0 done, 1 rolled back, 2 refused (nothing changed), 3 gave up holding,
    /// 130 stopped (last safe weight written back).
    Rollout(RolloutArgs),
    /// Take a route's service out at once: weight 0 and shadow off.
    Rollback(RollbackArgs),
    /// Show every route of the running proxy: stage, weight, traffic, errors, latency, shadow.
    Status(StatusArgs),
    /// Switch a resource's writes to its service (or back with --reverse) behind a write fence.
    ///
    /// Checks that reads are at 100 % on the service, change capture runs with a live follower,
    /// no conflict stands and the last verification passed; then raises the route's write fence
    /// (hold_writes), waits until every proxy serves the fenced file (by sha256), until no write
    /// is in flight to the old writer and until the sync reaches lag 0, verifies both sides,
    /// records the new sync direction and, in one atomic edit, sends every method to the new
    /// writer and lifts the fence. Clients whose writes arrive meanwhile wait (at most
    /// [proxy] hold_timeout) instead of failing. Prints the longest hold.
    /// Exit status: 0 switched; 1 refused or failed before the flip (fence lifted, writes where
    /// they were); 3 switched, but a proxy or the follower did not confirm (printed); 130
    /// interrupted before the flip (fence lifted).
    Cutover(CutoverArgs),
    /// End a resource's migration: stop reverse sync and remove change capture on both sides.
    ///
    /// Refuses unless the route sends every method of the resource to its service, while a
    /// resource the monolith still writes refers to it (its foreign keys), while a conflict
    /// stands, or while the monolith holds changes made after the switch that were never
    /// carried over. Applies the service's last changes to the monolith, then drops triggers
    /// and change tables from both databases; says what the monolith no longer needs. Afterwards
    /// shift and rollback refuse to send the resource anywhere but its service.
    /// Exit status: 0 complete; 1 refused, nothing changed (the reason on the last line).
    Complete(CompleteArgs),
}

#[derive(Args, Clone)]
struct DataDirArg {
    /// Directory the relative `sqlite:` paths of migrations.toml are in (monolith.db and the
    /// services' databases).
    #[arg(long, value_name = "DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    migrations: MigrationsArg,
}

#[derive(Args, Clone)]
struct MigrationsArg {
    /// The declared resources (default: $STRANGLER_MIGRATIONS when set, else migrations.toml
    /// beside --config; without one, the tutorial's users, threads and posts). `scripts/up
    /// --postgres` writes data/migrations.toml and says to export STRANGLER_MIGRATIONS.
    #[arg(long, value_name = "PATH", env = "STRANGLER_MIGRATIONS")]
    migrations: Option<PathBuf>,
}

impl MigrationsArg {
    /// Loads the declarations: `--migrations` (or `STRANGLER_MIGRATIONS`), else
    /// `migrations.toml` beside `config`, else the tutorial's (the shipped file's) declarations.
    fn load(&self, config: &Path) -> anyhow::Result<Migrations> {
        let path = match &self.migrations {
            Some(path) => path.clone(),
            None => config
                .parent()
                .unwrap_or(Path::new("."))
                .join(migrations::FILE_NAME),
        };
        let loaded = if self.migrations.is_some() || path.exists() {
            Migrations::load(&path)
        } else {
            Ok(Migrations::tutorial())
        };
        loaded.map_err(|e| anyhow::anyhow!("{e}"))
    }
}

#[derive(Args)]
struct CutoverArgs {
    /// The resource whose writes move (as named in migrations.toml).
    resource: String,
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    data: DataDirArg,
    /// Switch writes back from the service to the monolith.
    #[arg(long)]
    reverse: bool,
    /// A proxy's admin or metrics URL; repeat it once per replica (default: the admin address
    /// in the config). Read directly, so the fence is judged as soon as each replica serves it.
    #[arg(long, value_name = "URL", conflicts_with = "prometheus")]
    metrics: Vec<String>,
    /// A Prometheus server scraping every proxy replica; the fence and the flip count as
    /// served when every replica reports the file's sha256. Each wait lasts at least a scrape
    /// interval or two: keep [proxy] hold_timeout above that.
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// How long every proxy may take to serve an edited routes file.
    #[arg(long, default_value = "15s", value_parser = duration)]
    apply_timeout: Duration,
    /// How long writes in flight may take to finish and the sync to reach lag 0.
    #[arg(long, default_value = "3s", value_parser = duration)]
    drain_timeout: Duration,
}

#[derive(Args)]
struct CompleteArgs {
    /// The resource whose migration ends (as named in migrations.toml).
    resource: String,
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    data: DataDirArg,
}

#[derive(Args)]
struct MigrateArgs {
    /// The resource to migrate (as named in migrations.toml).
    resource: String,
    #[command(flatten)]
    config: ConfigArg,
    /// Directory the relative `sqlite:` paths of migrations.toml are in.
    #[arg(long, value_name = "DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    migrations: MigrationsArg,
    /// After the copy, keep applying changes in the recorded direction until Ctrl-C, SIGTERM
    /// or `complete`.
    #[arg(long)]
    follow: bool,
    /// Writes are switched to the service: carry its changes to the monolith and verify,
    /// instead of copying monolith → service.
    #[arg(long)]
    reverse: bool,
    /// How --follow captures changes: `triggers` (any engines; what cutover and complete
    /// build on), `replication` (PostgreSQL logical replication, both sides PostgreSQL), or
    /// `auto` (replication where both sides are PostgreSQL and it is usable, else triggers).
    #[arg(long, value_enum, default_value = "auto")]
    capture: CaptureArg,
    /// Only compare both sides (and list unresolved conflicts); copy nothing.
    #[arg(long, conflicts_with_all = ["follow", "reverse"])]
    verify_only: bool,
    /// Remove the change capture a follower killed with -9 left behind (triggers, change
    /// tables); refused while a follower runs or writes are switched, unless --force.
    #[arg(long, conflicts_with_all = ["follow", "reverse", "verify_only", "resolve_conflicts"])]
    remove_capture: bool,
    /// Mark the resource's conflicts resolved, once the rows are repaired on the side that
    /// takes writes.
    #[arg(long, conflicts_with_all = ["follow", "reverse", "verify_only"])]
    resolve_conflicts: bool,
    /// Rows per transaction.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// How often --follow looks for changes (a cheap check; reverse sync must be quick
    /// because the monolith may wait for a row the service just created).
    #[arg(long, default_value = "5ms", value_parser = duration)]
    poll: Duration,
    /// How often --follow prints its lag.
    #[arg(long, default_value = "10s", value_parser = duration)]
    report_every: Duration,
    /// Copy even though routes.toml sends this resource's writes to its service; with
    /// --remove-capture, remove even while a follower runs or writes are switched.
    #[arg(long)]
    force: bool,
    /// Pause after each batch (lets tests interrupt a copy midway).
    #[arg(long, hide = true, default_value = "0ms", value_parser = duration_or_zero)]
    batch_pause: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Args)]
struct ShiftArgs {
    /// The route's name (its `name`, or its service's when it has none).
    route: String,
    /// Percent of the route's requests the service serves, 0..=100.
    #[arg(allow_negative_numbers = true)]
    weight: i64,
    #[command(flatten)]
    config: ConfigArg,
    /// Mirror what the default serves to the service and compare the answers.
    #[arg(long, value_enum)]
    shadow: Option<OnOff>,
    /// Only these methods are peeled off (e.g. GET,HEAD); `all` removes the restriction.
    #[arg(long, value_name = "LIST")]
    methods: Option<String>,
    /// Allow a weight of 1..=99 on a route that sends writes to the service (as `rollout`).
    #[arg(long)]
    allow_split_writes: bool,
    #[command(flatten)]
    data: DataDirArg,
}

#[derive(Args)]
struct RollbackArgs {
    /// The route's name.
    route: String,
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    data: DataDirArg,
}

#[derive(Args)]
struct RolloutArgs {
    /// The route's name.
    route: String,
    #[command(flatten)]
    config: ConfigArg,
    /// Weights to step through, ascending.
    #[arg(long, default_value = "0,1,5,25,50,100", value_parser = steps)]
    steps: Steps,
    /// Time at each step before it is judged.
    #[arg(long, default_value = "30s", value_parser = duration)]
    interval: Duration,
    /// Highest acceptable share of the service's requests that fail (5xx or upstream errors).
    #[arg(long, default_value_t = 0.01)]
    max_error_ratio: f64,
    /// Highest acceptable service p99 as a multiple of the default's.
    #[arg(long, default_value_t = 2.0)]
    max_latency_ratio: f64,
    /// A service p99 at or below this never fails the latency gate.
    #[arg(long, default_value = "10ms", value_parser = duration)]
    latency_floor: Duration,
    /// Lowest acceptable share of shadow comparisons that match.
    #[arg(long, default_value_t = 0.999)]
    min_shadow_match: f64,
    /// Lowest share of shadowed requests that must have been compared (not skipped or
    /// dropped) for the match ratio to promote a step; below it the step holds.
    #[arg(long, default_value_t = 0.95)]
    min_shadow_coverage: f64,
    /// Fewest requests (or shadow comparisons) an interval needs to prove a step safe;
    /// fewer holds the step.
    #[arg(long, default_value_t = 20)]
    min_requests: u64,
    /// One proxy's metrics URL (default: the admin address in the config).
    #[arg(long, value_name = "URL", conflicts_with = "prometheus")]
    metrics: Option<String>,
    /// A Prometheus server scraping every proxy replica, e.g. http://127.0.0.1:9090.
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// Allow weights 1..=99 on a route that sends writes to the service.
    #[arg(long)]
    allow_split_writes: bool,
    /// Give up (writing the last safe weight back, exit 3) after this many intervals in a row
    /// at one step that cannot be judged: fewer than --min-requests requests (or shadow
    /// comparisons), or shadow coverage under --min-shadow-coverage. 0 waits forever.
    #[arg(long, default_value_t = rollout::DEFAULT_MAX_HOLDS)]
    max_holds: u32,
    #[command(flatten)]
    data: DataDirArg,
    /// How long to wait for the proxy to report a new weight.
    #[arg(long, default_value = "15s", value_parser = duration)]
    apply_timeout: Duration,
}

#[derive(Clone, Debug)]
struct Steps(Vec<u8>);

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The proxy's admin URL (default: `[proxy] admin` from the config).
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// Time between the two scrapes the rates are computed from.
    #[arg(long, default_value = "1s", value_parser = duration)]
    window: Duration,
    /// Show the status again every --interval, in place on a terminal, until Ctrl-C (or
    /// --count refreshes).
    #[arg(long)]
    watch: bool,
    /// With --watch: time from one refresh to the next (at least --window).
    #[arg(long, default_value = "2s", value_parser = duration, requires = "watch")]
    interval: Duration,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
    #[command(flatten)]
    data: DataDirArg,
}

fn duration(s: &str) -> Result<Duration, String> {
    strangler_proxy::config::parse_duration(s)
}

fn duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim_start_matches('0')
        .trim_end_matches("ms")
        .trim_end_matches('s')
        .is_empty()
    {
        return Ok(Duration::ZERO);
    }
    duration(s)
}

fn steps(s: &str) -> Result<Steps, String> {
    rollout::parse_steps(s).map(Steps)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::MigrateData(args) => migrate_data(args),
        Command::Shift(args) => shift(args),
        Command::Rollback(args) => rollback(args),
        Command::Rollout(args) => run_rollout(args),
        Command::Status(args) => run_status(args),
        Command::Cutover(args) => run_cutover(args),
        Command::Complete(args) => run_complete(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--capture`, see [`Capture`].
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CaptureArg {
    Auto,
    Triggers,
    Replication,
}

fn migrate_data(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let declared = args.migrations.load(&args.config.config)?;
    let resource = declared.get(&args.resource)?.clone();
    let resource = &resource;
    if args.remove_capture {
        return remove_capture(&args.data_dir, resource, args.force);
    }
    if args.resolve_conflicts {
        let n = sync::resolve_conflicts(&args.data_dir, resource)?;
        println!("{n} conflict(s) of {} marked resolved", resource.name());
        return Ok(ExitCode::SUCCESS);
    }
    // Once writes are switched nothing is copied towards the service, so routes.toml sending
    // writes there is expected.
    let switched = sync::read_state(&args.data_dir, resource)?
        .is_some_and(|s| s.direction == sync::Direction::Reverse);
    if !args.verify_only && !args.force && !args.reverse && !switched {
        match strangler_proxy::config::load(&args.config.config) {
            Ok(loaded) => {
                if let Err(refusal) = migrate::guard(&loaded.config, resource) {
                    eprintln!("refusing to copy {}: {refusal}", resource.name());
                    return Ok(ExitCode::from(2));
                }
            }
            Err(e) if !args.config.config.exists() => {
                let _ = e;
                eprintln!(
                    "note: {} not found; not checking whether the service already takes writes",
                    args.config.config.display()
                );
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!(
                    "refusing to copy: {} is invalid, so whether the service already takes writes \
                     cannot be checked (fix it, or pass --force)",
                    args.config.config.display()
                );
                return Ok(ExitCode::from(2));
            }
        }
    }
    let options = MigrateOptions {
        resource: resource.clone(),
        data_dir: args.data_dir,
        copy: CopyOptions {
            batch: args.batch,
            pause: args.batch_pause,
        },
        follow: args.follow,
        reverse: args.reverse,
        poll: args.poll,
        report_every: args.report_every,
        verify_only: args.verify_only,
        display: Display::detect(),
        capture: match args.capture {
            CaptureArg::Auto => Capture::Auto,
            CaptureArg::Triggers => Capture::Triggers,
            CaptureArg::Replication => Capture::Replication,
        },
    };
    let stop = Stop::on_signals();
    let mut out = std::io::stdout().lock();
    let outcome = migrate::run(&options, &stop, &mut out)?;
    out.flush()?;
    Ok(match outcome {
        Outcome::Verified | Outcome::Detached | Outcome::Completed => ExitCode::SUCCESS,
        Outcome::Mismatch => ExitCode::FAILURE,
        Outcome::Refused(reason) => {
            eprintln!("refusing: {reason}");
            ExitCode::FAILURE
        }
        Outcome::Stopped { .. } => ExitCode::from(130),
    })
}

fn remove_capture(
    data_dir: &Path,
    resource: &migrations::Declared,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let removed = match sync::remove_capture(data_dir, resource, force) {
        Ok(removed) => removed,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let yes_no = |b: bool| if b { "removed" } else { "none found" };
    println!(
        "change capture of {}: monolith triggers {}, service triggers {}; discarded {} captured change(s) in the monolith's database and {} in the service's{}",
        resource.name(),
        yes_no(removed.triggers_removed.0),
        yes_no(removed.triggers_removed.1),
        removed.changes_discarded.0,
        removed.changes_discarded.1,
        if removed.state_forgotten {
            "; the migration is back to not started (the next --follow copies again)"
        } else {
            ""
        }
    );
    // Between two PostgreSQL databases a follower may have left a subscription replicating.
    if matches!(
        (&resource.source.url, &resource.target.url),
        (
            migrations::DbUrl::Postgres(_),
            migrations::DbUrl::Postgres(_)
        )
    ) {
        let name = strangler_ops::replication::name_of(resource.name());
        match strangler_ops::replication::remove_declared(data_dir, resource) {
            Ok(true) => println!(
                "logical replication of {}: subscription, slot and publication {name} removed",
                resource.name()
            ),
            Ok(false) => {}
            Err(e) => {
                eprintln!("{e:#}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_edit(
    path: &Path,
    route: &str,
    result: Result<routes_file::Edited, EditError>,
) -> anyhow::Result<ExitCode> {
    match result {
        Ok(edited) => {
            let what = routes_file::describe(route, &edited);
            if edited.written {
                println!("{}: {what}", path.display());
            } else {
                println!("{}: {what}; nothing to write", path.display());
            }
            let after = &edited.after;
            if (1..=99).contains(&after.weight) && after.includes_writes() {
                eprintln!(
                    "warning: route {route} now splits writes between the service's database and \
                     the monolith's (--allow-split-writes): the service must write through to \
                     the monolith"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn shift(args: ShiftArgs) -> anyhow::Result<ExitCode> {
    let methods = args.methods.map(|m| {
        if m.eq_ignore_ascii_case("all") {
            None
        } else {
            Some(
                m.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            )
        }
    });
    let change = Change {
        weight: Some(args.weight),
        shadow: args.shadow.map(|s| matches!(s, OnOff::On)),
        methods,
        hold_writes: None,
    };
    let declared = args.data.migrations.load(&args.config.config)?;
    let path = args.config.config;
    let data_dir = args.data.data_dir;
    let allow_split = args.allow_split_writes;
    let check = |r: &RouteConfig| {
        cutover::guard_split_writes(r, &[r.weight], allow_split)?;
        cutover::guard_writes(&data_dir, &declared, r)
    };
    let result = routes_file::edit_file_checked(&path, &args.route, &change, &check);
    let shadowed = result.is_ok() && change.shadow == Some(true);
    let code = print_edit(&path, &args.route, result)?;
    if shadowed
        && let Ok(loaded) = strangler_proxy::config::load(&path)
        && let Some(route) = loaded.config.routes.iter().find(|r| r.name == args.route)
        && let Some(resource) = declared.by_route(&route.name)
        && let Some(why) = migrate::empty_service_database(&data_dir, resource)
    {
        eprintln!("warning: {why}");
    }
    Ok(code)
}

fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let change = Change {
        weight: Some(0),
        shadow: Some(false),
        methods: None,
        hold_writes: None,
    };
    let declared = args.data.migrations.load(&args.config.config)?;
    let path = args.config.config;
    let data_dir = args.data.data_dir;
    let check = |r: &RouteConfig| cutover::guard_writes(&data_dir, &declared, r);
    let result = routes_file::edit_file_checked(&path, &args.route, &change, &check);
    print_edit(&path, &args.route, result)
}

fn run_cutover(args: CutoverArgs) -> anyhow::Result<ExitCode> {
    let source = match args.metrics.as_slice() {
        [_, _, ..] => Source::Proxies(
            args.metrics
                .iter()
                .map(|m| match Source::proxy(m) {
                    Source::Proxy(url) => url,
                    _ => unreachable!("Source::proxy makes a proxy source"),
                })
                .collect(),
        ),
        one => metrics_source(&one.first().cloned(), &args.prometheus, &args.config.config)?,
    };
    let migrations = args.data.migrations.load(&args.config.config)?;
    let options = CutoverOptions {
        resource: migrations.get(&args.resource)?.clone(),
        migrations,
        config: args.config.config,
        data_dir: args.data.data_dir,
        source,
        reverse: args.reverse,
        apply_timeout: args.apply_timeout,
        drain_timeout: args.drain_timeout,
    };
    let stop = Stop::on_signals();
    let mut out = LineOut;
    Ok(match cutover::run(&options, &stop, &mut out)? {
        cutover::Ending::Switched => ExitCode::SUCCESS,
        cutover::Ending::NotSwitched(_) => ExitCode::FAILURE,
        cutover::Ending::Interrupted => ExitCode::from(130),
        cutover::Ending::SwitchedWithWarning(_) => ExitCode::from(3),
    })
}

fn run_complete(args: CompleteArgs) -> anyhow::Result<ExitCode> {
    let mut out = LineOut;
    let migrations = args.data.migrations.load(&args.config.config)?;
    let resource = migrations.get(&args.resource)?;
    Ok(
        match cutover::complete(
            &args.data.data_dir,
            &args.config.config,
            &migrations,
            resource,
            &mut out,
        )? {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
    )
}

fn admin_from_config(path: &Path) -> anyhow::Result<String> {
    let loaded = strangler_proxy::config::load(path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "reading [proxy] admin from {} (or name the proxy with --admin or --metrics URL)",
                path.display()
            )
        })?;
    Ok(status::admin_url(loaded.config.proxy.admin))
}

/// `--prometheus URL`, else `--metrics URL`, else the admin listener named in the config.
fn metrics_source(
    metrics: &Option<String>,
    prometheus: &Option<String>,
    config: &Path,
) -> anyhow::Result<Source> {
    Ok(match (metrics, prometheus) {
        (_, Some(url)) => Source::prometheus(url),
        (Some(url), None) => Source::proxy(url),
        (None, None) => Source::proxy(&admin_from_config(config)?),
    })
}

fn run_rollout(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    // A rollout ends at 100: refuse at once what the last step would be refused.
    if let Ok(loaded) = strangler_proxy::config::load(&args.config.config)
        && let Some(route) = loaded.config.routes.iter().find(|r| r.name == args.route)
    {
        let mut last = route.clone();
        last.weight = 100;
        let declared = args.data.migrations.load(&args.config.config)?;
        if let Err(why) = cutover::guard_writes(&args.data.data_dir, &declared, &last) {
            println!(
                "refusing to roll out {:?}: {why}. Nothing was changed.",
                args.route
            );
            return Ok(ExitCode::from(2));
        }
    }
    let source = metrics_source(&args.metrics, &args.prometheus, &args.config.config)?;
    let options = RolloutOptions {
        config: args.config.config,
        route: args.route,
        steps: args.steps.0,
        interval: args.interval,
        gates: Gates {
            max_error_ratio: args.max_error_ratio,
            max_latency_ratio: args.max_latency_ratio,
            latency_floor: args.latency_floor,
            min_shadow_match: args.min_shadow_match,
            min_shadow_coverage: args.min_shadow_coverage,
            min_requests: args.min_requests,
        },
        source,
        allow_split_writes: args.allow_split_writes,
        max_holds: args.max_holds,
        apply_timeout: args.apply_timeout,
    };
    let stop = Stop::on_signals();
    let mut out = LineOut;
    let ending = rollout::run(&options, &stop, &mut out)?;
    Ok(ExitCode::from(ending.exit_code()))
}

/// The admin listener `status` asks: `--admin`, else the config's `[proxy] admin` — read
/// even from a file with errors elsewhere, since the proxy keeps serving its last good table
/// and `status` is how to look at it then.
fn status_admin(admin: Option<String>, config: &Path) -> anyhow::Result<String> {
    if let Some(url) = admin {
        return Ok(url);
    }
    if let Ok(url) = admin_from_config(config) {
        return Ok(url);
    }
    let text = std::fs::read_to_string(config).with_context(|| {
        format!(
            "reading {} (or name the proxy with --admin URL)",
            config.display()
        )
    })?;
    match strangler_proxy::config::admin_address(&text) {
        Some(addr) => Ok(status::admin_url(addr)),
        None => anyhow::bail!(
            "{} is invalid and its [proxy] admin cannot be read from it; name the proxy with \
             --admin URL (`strangler-proxy check {}` shows the errors)",
            config.display(),
            config.display()
        ),
    }
}

fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let admin = status_admin(args.admin, &args.config.config)?;
    let admin = if admin.contains("://") {
        admin
    } else {
        format!("http://{admin}")
    };
    let options = StatusOptions {
        admin,
        window: args.window,
        migrations: args.data.migrations.load(&args.config.config)?,
        data_dir: Some(args.data.data_dir),
    };
    let config = args
        .config
        .config
        .exists()
        .then_some(args.config.config.as_path());
    if args.watch {
        let stop = Stop::on_signals();
        let in_place = std::io::stdout().is_terminal();
        let every = args.interval.max(args.window);
        status::watch(
            &options,
            config,
            every,
            args.count,
            &stop,
            in_place,
            &mut LineOut,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    status::run(&options, config, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// Stdout flushed after every write, so a rollout's progress shows as it happens even when
/// piped to a log.
struct LineOut;

impl std::io::Write for LineOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}
