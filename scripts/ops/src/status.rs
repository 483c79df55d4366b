//! `status`: one line per route of what the running proxy serves — stage, weight, requests/s,
//! error ratio and p99 for the service and the default, shadow match ratio and the coverage
//! it speaks for, fallbacks — from
//! its admin endpoint (`/routes`, and `/metrics` scraped twice a window apart).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use strangler_proxy::admin::{Moved, RouteDoc, RoutesDoc};

use crate::exposition::Scrape;
use crate::fetch;
use crate::figures::{RouteWindow, Shadow, Side, increases, names};
use crate::migrations::Migrations;
use crate::source::scrape;
use crate::sync::{self, Direction, SyncStage, SyncState};
use crate::text_table::TextTable;

/// What `status` reads.
#[derive(Clone, Debug)]
pub struct StatusOptions {
    /// Admin base URL, `http://127.0.0.1:9901`.
    pub admin: String,
    /// Time between the two scrapes.
    pub window: Duration,
    /// Where the migration state of each resource is kept (`monolith.db` and the services'
    /// databases); `None` leaves the migrations table out.
    pub data_dir: Option<PathBuf>,
    /// The declared resources (`migrations.toml`).
    pub migrations: Migrations,
}

/// The admin address of `[proxy] admin` as a URL; a wildcard listen address is reached on
/// loopback.
pub fn admin_url(addr: std::net::SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("http://{ip}:{}", addr.port())
}

/// Prints the status table; `config` (the local routes file) is compared with what the
/// proxy serves.
pub fn run(
    options: &StatusOptions,
    config: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let base = options.admin.trim_end_matches('/');
    let routes_url = format!("{base}/routes");
    let doc: RoutesDoc = serde_json::from_str(
        &fetch::get(&routes_url, Duration::from_secs(5))
            .with_context(|| format!("is the proxy running with its admin listener at {base}?"))?,
    )
    .with_context(|| format!("{routes_url}: the answer is not the /routes document"))?;
    let metrics_url = format!("{base}/metrics");
    let first = scrape(&metrics_url)?;
    let started = std::time::Instant::now();
    std::thread::sleep(options.window);
    let second = scrape(&metrics_url)?;
    let seconds = started.elapsed().as_secs_f64();

    let invalid = config.and_then(|path| strangler_proxy::config::load(path).err());
    writeln!(
        out,
        "proxy {base}: revision {}, loaded {}, default {}{}",
        doc.revision,
        doc.loaded_at,
        doc.default,
        if invalid.is_some() {
            String::new()
        } else {
            file_note(&doc, config)
        },
    )?;
    if let Some(errors) = &invalid {
        // The proxy's own refusal, printed next, lists the same errors.
        let listed = doc.last_reload_error.is_none();
        writeln!(
            out,
            "WARNING: {} is invalid; the proxy keeps serving its last good table (revision {}) \
             until the file is fixed (`strangler-proxy check {}`){}",
            errors.file,
            doc.revision,
            errors.file,
            if listed { ":" } else { "." }
        )?;
        if listed {
            for e in errors.to_string().lines() {
                writeln!(out, "  {e}")?;
            }
        }
    }
    if let Some(rejected) = &doc.last_reload_error {
        writeln!(
            out,
            "WARNING: the last reload was rejected at {} (the proxy keeps serving revision {}):",
            rejected.at, doc.revision
        )?;
        for e in &rejected.errors {
            writeln!(out, "  {e}")?;
        }
    }
    write!(
        out,
        "{}",
        render(&doc.routes, &doc.default, &first, &second, seconds)
    )?;
    write!(out, "{}", settings(&doc))?;
    write!(out, "{}", near_miss_notes(&doc.routes, &first, &second))?;
    if let Some(data_dir) = &options.data_dir {
        write!(
            out,
            "{}",
            migrations(data_dir, &options.migrations, &doc.routes)?
        )?;
    }
    Ok(())
}

/// The subscription's state of a resource carried forward by logical replication.
///
/// Errors: either database refuses the connection; the subscription or its slot is gone.
fn logical(
    data_dir: &Path,
    resource: &crate::migrations::Declared,
) -> anyhow::Result<crate::replication::Status> {
    let mut source = crate::db::Db::open(&resource.source.url, data_dir, false)?;
    let mut target = crate::db::Db::open(&resource.target.url, data_dir, false)?;
    let (Some(s), Some(t)) = (source.postgres(), target.postgres()) else {
        anyhow::bail!("logical replication runs between two PostgreSQL databases");
    };
    crate::replication::status(s, t, resource.name())
}

/// The migrations table: per resource with a recorded migration, its state (reference §7), the
/// sync direction and lag, the follower, conflicts and the write fence.
pub fn migrations(
    data_dir: &Path,
    declared: &Migrations,
    routes: &[RouteDoc],
) -> anyhow::Result<String> {
    let mut t = TextTable::new([
        "resource",
        "state",
        "sync",
        "lag",
        "follower",
        "conflicts",
        "write fence",
    ]);
    let mut notes = Vec::new();
    let mut any = false;
    for resource in &declared.resources {
        let name = resource.name();
        let route = routes.iter().find(|r| r.name == resource.route);
        let fence = match route {
            Some(r) if r.hold_writes => format!("UP ({} held)", r.held),
            Some(_) => "-".to_string(),
            None => "no route".to_string(),
        };
        let Some(state) = sync::read_state(data_dir, resource)? else {
            continue;
        };
        let logical = if state.forward_by_replication && state.stage != SyncStage::Complete {
            match logical(data_dir, resource) {
                Ok(st) => Some(st),
                Err(e) => {
                    notes.push(format!(
                        "{name}: cannot read its logical replication: {e:#}"
                    ));
                    None
                }
            }
        } else {
            None
        };
        any = true;
        let backlog = match state.direction {
            Direction::Forward => state.forward_backlog,
            Direction::Reverse => state.reverse_backlog,
        };
        let alive = state.follower_alive();
        let follower = match (alive, state.follower_pid) {
            (true, Some(pid)) => format!("running (pid {pid})"),
            (true, None) => "running".to_string(),
            (false, _) if state.stage == SyncStage::Complete => "-".to_string(),
            (false, _) => "NOT RUNNING".to_string(),
        };
        if !alive && state.stage != SyncStage::Complete && state.capture_installed != (false, false)
        {
            let remedy = if state.direction == Direction::Reverse {
                // The service takes the writes: only a follower carries them to the monolith.
                format!("start `scripts/migrate-data {name} --follow`; it resumes where it stopped")
            } else {
                format!(
                    "`scripts/migrate-data {name} --follow` resumes; `scripts/migrate-data {name} \
                     --remove-capture` removes the capture instead"
                )
            };
            notes.push(format!(
                "{name}: change capture is installed but no follower runs; {} change(s) wait. \
                 {remedy}",
                state.forward_backlog.changes + state.reverse_backlog.changes
            ));
        }
        let (sync, lag) = match (&logical, state.stage) {
            (_, SyncStage::Complete) => ("-".to_string(), "-".to_string()),
            // Carried forward by the subscription: its unconfirmed WAL is the lag.
            (Some(st), _) => (
                format!("{} (logical replication)", Direction::Forward.arrow()),
                format!("{} bytes of WAL unconfirmed", st.lag_bytes),
            ),
            (None, _) if state.forward_by_replication => (
                format!("{} (logical replication)", Direction::Forward.arrow()),
                "unknown (see NOTE)".to_string(),
            ),
            (None, _) => (
                state.direction.arrow(),
                format!(
                    "{} change(s), oldest {:.1}s",
                    backlog.changes,
                    backlog.oldest_age.as_secs_f64()
                ),
            ),
        };
        t.row([
            name.to_string(),
            state_name(&state, route).to_string(),
            sync,
            lag,
            follower,
            state.conflicts.to_string(),
            fence,
        ]);
    }
    if !any {
        return Ok(String::new());
    }
    let mut out = format!(
        "migrations (declared in {}; relative SQLite paths under {}):\n{}",
        declared.file,
        data_dir.display(),
        t.render()
    );
    for note in notes {
        out.push_str(&format!("NOTE: {note}\n"));
    }
    Ok(out)
}

/// The reference §7 state: the recorded stage, with `reads switched` derived from the route
/// (its reads at 100 % on the service while writes stay on the monolith).
fn state_name(state: &SyncState, route: Option<&RouteDoc>) -> &'static str {
    let reads_switched = route.is_some_and(|r| {
        r.weight == 100
            && !r.sends_writes
            && r.methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| m == "GET"))
    });
    match state.stage {
        SyncStage::Following if reads_switched => "reads switched",
        stage => stage.as_str(),
    }
}

fn file_note(doc: &RoutesDoc, config: Option<&Path>) -> String {
    let Some(path) = config else {
        return String::new();
    };
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let local = strangler_proxy::config::sha256_hex(&bytes);
    if doc.sha256 == local {
        format!(" (serving {} as saved)", path.display())
    } else {
        format!(
            "\nNOTE: {} differs from what the proxy serves (not reloaded yet, invalid, or another file)",
            path.display()
        )
    }
}

/// The table: figures over the window between the two scrapes; where a side saw no traffic in
/// the window, its ratios since the proxy started, marked `*`.
pub fn render(
    routes: &[RouteDoc],
    default: &str,
    first: &Scrape,
    second: &Scrape,
    seconds: f64,
) -> String {
    let mut t = TextTable::new([
        "route",
        "stage",
        "weight",
        "req/s svc",
        "req/s default",
        "errors svc",
        "errors default",
        "p99 svc",
        "p99 default",
        "shadow match",
        "fallbacks",
    ]);
    let empty = Scrape::default();
    let mut starred = false;
    let mut notes = Vec::new();
    for r in routes {
        let window = RouteWindow::from_increases(
            &increases(first, second, &r.name),
            &r.service,
            default,
            seconds,
        );
        let life = RouteWindow::from_increases(
            &increases(&empty, second, &r.name),
            &r.service,
            default,
            seconds,
        );
        let mut pick = |w: &Side, l: &Side| {
            if w.requests > 0.0 {
                (w.clone(), "")
            } else if l.requests > 0.0 {
                starred = true;
                (l.clone(), "*")
            } else {
                (w.clone(), "")
            }
        };
        let (svc, svc_mark) = pick(&window.service, &life.service);
        let (def, def_mark) = pick(&window.default, &life.default);
        let shadow = if window.shadow.shadowed() > 0.0 {
            shadow_cell(&window.shadow, "")
        } else if life.shadow.shadowed() > 0.0 {
            starred = true;
            shadow_cell(&life.shadow, "*")
        } else {
            "-".into()
        };
        let seen = if window.shadow.shadowed() > 0.0 {
            &window.shadow
        } else {
            &life.shadow
        };
        if seen.coverage().is_some_and(|c| c < LOW_COVERAGE) {
            notes.push(format!(
                "{}: the shadow match ratio speaks for {:.2}% of shadowed requests only ({:.0} of \
                 {:.0} compared; not compared: {}); see strangler_shadow_skipped_total",
                r.name,
                100.0 * seen.coverage().unwrap_or(0.0),
                seen.compared(),
                seen.shadowed(),
                seen.uncompared()
            ));
        }
        t.row([
            r.name.clone(),
            stage_cell(r),
            r.weight.to_string(),
            format!("{:.1}", window.service.requests / seconds.max(1e-9)),
            format!("{:.1}", window.default.requests / seconds.max(1e-9)),
            ratio_cell(svc.errors, svc.requests, svc_mark),
            ratio_cell(def.errors, def.requests, def_mark),
            latency_cell(svc.p99(), svc_mark),
            latency_cell(def.p99(), def_mark),
            shadow,
            format!("{:.0} ({:.0} in all)", window.fallbacks, life.fallbacks),
        ]);
    }
    let mut out = format!("over the last {seconds:.1}s:\n{}", t.render());
    if starred {
        out.push_str("* no traffic in the window: figure since the proxy started\n");
    }
    for note in notes {
        out.push_str(&format!("NOTE: {note}\n"));
    }
    out
}

/// What each route moved and how (the dashboard's per-route facts), then each service's outlier
/// state.
pub fn settings(doc: &RoutesDoc) -> String {
    let mut t = TextTable::new([
        "route", "prefix", "service", "moved", "sticky", "shadow", "fence",
    ]);
    for r in &doc.routes {
        let moved = match &r.methods {
            Some(methods) if r.moved != Moved::Nothing => {
                format!("{} ({})", r.moved.as_str(), methods.join(" "))
            }
            _ => r.moved.as_str().to_string(),
        };
        t.row([
            r.name.clone(),
            r.prefix.clone(),
            r.service.clone(),
            moved,
            r.sticky.clone().unwrap_or_else(|| "-".into()),
            if r.shadow { "on" } else { "off" }.to_string(),
            match (r.hold_writes, r.held) {
                (true, held) => format!("UP ({held} held)"),
                (false, 0) => "-".to_string(),
                (false, held) => format!("{held} held"),
            },
        ]);
    }
    let services: Vec<String> = doc
        .services
        .iter()
        .map(|s| match (s.name == doc.default, s.outlier.as_deref()) {
            (true, _) => format!("{} default", s.name),
            (false, Some("ejected")) => format!(
                "{} EJECTED until {}",
                s.name,
                s.ejected_until.as_deref().unwrap_or("?")
            ),
            (false, Some("probing")) => format!("{} PROBING", s.name),
            (false, Some(_)) if s.consecutive_failures > 0 => {
                format!(
                    "{} closed ({} failures in a row)",
                    s.name, s.consecutive_failures
                )
            }
            (false, Some(state)) => format!("{} {state}", s.name),
            (false, None) => format!("{} unused", s.name),
        })
        .collect();
    format!("{}services: {}\n", t.render(), services.join(", "))
}

/// Runs [`run`] every `every` until `stop` is set or `count` renderings were shown: on a
/// terminal each replaces the last in place, elsewhere they follow one another under a
/// timestamp. A proxy that cannot be reached is said so, and watching goes on.
pub fn watch(
    options: &StatusOptions,
    config: Option<&Path>,
    every: Duration,
    count: Option<u64>,
    stop: &crate::signals::Stop,
    in_place: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut shown = 0u64;
    while !stop.is_set() && count.is_none_or(|n| shown < n) {
        let started = std::time::Instant::now();
        let mut page = Vec::new();
        if let Err(e) = run(options, config, &mut page) {
            writeln!(page, "error: {e:#}")?;
        }
        let now = strangler_proxy::admin::rfc3339(std::time::SystemTime::now());
        if in_place {
            // Home, the page, then clear what an earlier, longer page left below it.
            write!(out, "\x1b[H\x1b[2J")?;
            writeln!(
                out,
                "{now}  every {:.1}s; Ctrl-C stops",
                every.as_secs_f64()
            )?;
        } else {
            writeln!(out, "--- {now}")?;
        }
        out.write_all(&page)?;
        out.flush()?;
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            break;
        }
        let next = started + every;
        while !stop.is_set() && std::time::Instant::now() < next {
            let left = next.saturating_duration_since(std::time::Instant::now());
            std::thread::sleep(Duration::from_millis(50).min(left));
        }
    }
    Ok(())
}

/// One note per route with near misses (`strangler_route_near_misses_total`): requests the
/// default served that match the route only when letter case is ignored, which a
/// case-insensitive legacy router serves as the route's.
pub fn near_miss_notes(routes: &[RouteDoc], first: &Scrape, second: &Scrape) -> String {
    let count = |scrape: &Scrape, route: &str| -> f64 {
        scrape
            .named(names::ROUTE_NEAR_MISSES)
            .filter(|s| s.label("route") == route)
            .map(|s| s.value)
            .sum()
    };
    let mut out = String::new();
    for r in routes {
        let (before, now) = (count(first, &r.name), count(second, &r.name));
        if now <= 0.0 {
            continue;
        }
        // A counter that shrank was reset (the proxy restarted): all of it is new.
        let window = if now >= before { now - before } else { now };
        out.push_str(&format!(
            "NOTE: route {}: {window:.0} near miss(es) in the window ({now:.0} since the proxy \
             started): requests matching {} only when letter case is ignored went to the \
             default, which a case-insensitive legacy router serves as the route's{}; see the \
             proxy's log (\"near miss\") or set [proxy] ignore_case = true\n",
            r.name,
            r.prefix,
            if r.sends_writes {
                " (its writes are split)"
            } else {
                ""
            },
        ));
    }
    out
}

/// Coverage under which `status` explains what was not compared (`rollout`'s default
/// `--min-shadow-coverage`).
pub const LOW_COVERAGE: f64 = 0.95;

/// `98.00% (49/50), covers 80.00% (50/62)`: the match ratio over what was compared, then how
/// much of the shadowed traffic that was.
fn shadow_cell(s: &Shadow, mark: &str) -> String {
    format!(
        "{}, covers {}",
        ratio_cell(s.matched, s.compared(), ""),
        ratio_cell(s.compared(), s.shadowed(), mark)
    )
}

/// The route's stage, saying so when a `live` route still sends writes to the default, or when
/// its write fence is up.
fn stage_cell(r: &RouteDoc) -> String {
    let mut stage = r.stage.as_str().to_string();
    if r.moved == Moved::Reads {
        stage.push_str(" (reads)");
    }
    if r.hold_writes {
        stage.push_str(" FENCED");
    }
    stage
}

fn ratio_cell(part: f64, whole: f64, mark: &str) -> String {
    if whole <= 0.0 {
        return "-".into();
    }
    format!("{:.2}% ({part:.0}/{whole:.0}){mark}", 100.0 * part / whole)
}

/// `3.2 ms` or `1.50 s`.
pub fn latency_cell(seconds: Option<f64>, mark: &str) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.1} ms{mark}", s * 1000.0),
        Some(s) => format!("{s:.2} s{mark}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_admin_addresses_are_reached_on_loopback() {
        assert_eq!(
            admin_url("0.0.0.0:9901".parse().unwrap()),
            "http://127.0.0.1:9901"
        );
        assert_eq!(admin_url("[::]:9901".parse().unwrap()), "http://[::1]:9901");
        assert_eq!(
            admin_url("10.1.2.3:1".parse().unwrap()),
            "http://10.1.2.3:1"
        );
    }
}
