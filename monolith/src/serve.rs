//! Starting a server process: flags, database, listener, logging and graceful shutdown, shared
//! by the monolith and the extracted services so each `main.rs` is a few lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::app::Board;
use crate::db::{Db, DbError, Location, Seed};
use crate::legacy::Resource;
use crate::references::{InvalidApiBase, LocalReferences, RemoteReferences};

/// Flags every server process takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Database: a SQLite file, created with its directory if missing, or a
    /// `postgres://user:password@host:port/database` (or `postgresql://`) URL of an existing
    /// PostgreSQL database, whose tables are created if missing.
    #[arg(long, value_name = "FILE|URL", value_parser = parse_location)]
    pub db: Location,
}

/// Flags of the monolith.
#[derive(Parser, Clone, Debug)]
pub struct MonolithArgs {
    /// Where to listen and store.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// How long a write waits for a user or thread it refers to that is missing, re-checking
    /// every 5 ms, before answering 422 (e.g. `2s`; `0` answers at once). Once a resource's
    /// writes are switched to its service, its new rows reach this database a few milliseconds
    /// later through reverse sync.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_wait)]
    pub reference_wait: Duration,
}

/// Reads `--db` (see [`Location::parse`]).
fn parse_location(text: &str) -> Result<Location, String> {
    Ok(Location::from(text))
}

/// Reads `0`, `250ms`, `2s`.
pub fn parse_wait(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 500ms or 2s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "" if n == 0 => Ok(Duration::ZERO),
        _ => Err(format!(
            "{text:?}: expected a duration such as 500ms or 2s (units ms, s)"
        )),
    }
}

/// Flags of an extracted service.
#[derive(Parser, Clone, Debug)]
pub struct ServiceArgs {
    /// Where to listen and store.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Public API (normally the proxy) asked whether users and threads this service does not
    /// own exist.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api_base: String,
}

/// One of the board's server processes: its name, what it owns and its flag defaults.
#[derive(Clone, Copy, Debug)]
pub struct Process {
    /// Binary name, used in `--help` and logs.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Resources whose paths and tables it owns.
    pub owned: &'static [Resource],
    /// Default `--listen`.
    pub listen: &'static str,
    /// Default `--db`.
    pub db: &'static str,
}

/// The legacy monolith: every resource, seeded from the original data set.
pub const MONOLITH: Process = Process {
    name: "monolith",
    about: "The legacy message board: every resource in one process and one database",
    owned: &Resource::ALL,
    listen: "127.0.0.1:3000",
    db: "data/monolith.db",
};

/// The extracted users service.
pub const USERS: Process = Process {
    name: "users-service",
    about: "The users resource, extracted from the monolith into its own process and database",
    owned: &[Resource::Users],
    listen: "127.0.0.1:3001",
    db: "data/users.db",
};

/// The extracted threads service.
pub const THREADS: Process = Process {
    name: "threads-service",
    about: "The threads resource, extracted from the monolith into its own process and database",
    owned: &[Resource::Threads],
    listen: "127.0.0.1:3002",
    db: "data/threads.db",
};

/// The extracted posts service.
pub const POSTS: Process = Process {
    name: "posts-service",
    about: "The posts resource, extracted from the monolith into its own process and database",
    owned: &[Resource::Posts],
    listen: "127.0.0.1:3003",
    db: "data/posts.db",
};

/// Why a server process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be opened or prepared.
    #[error("database {location}: {source}")]
    Db {
        /// The `--db` file or URL (shown without its password).
        location: Location,
        /// Why.
        source: DbError,
    },
    /// `--api-base` is unusable.
    #[error(transparent)]
    ApiBase(#[from] InvalidApiBase),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using it? pass --listen)")]
    Bind {
        /// The `--listen` address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

impl Process {
    /// Parses the command line into `T` with this process's defaults for `--listen` and `--db`.
    pub fn parse_args<T: Parser>(&self) -> T {
        let command = T::command()
            .name(self.name)
            .about(self.about)
            .mut_arg("listen", |arg| {
                arg.default_value(self.listen).required(false)
            })
            .mut_arg("db", |arg| arg.default_value(self.db).required(false));
        let matches = command.get_matches();
        T::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }

    /// Opens `--db` on the blocking pool (the PostgreSQL client blocks, and must not on a
    /// thread that drives tasks).
    async fn open(&self, args: &ServeArgs, seed: Seed) -> Result<Db, ServeError> {
        let (location, owned) = (args.db.clone(), self.owned);
        tokio::task::spawn_blocking(move || Db::open_at(&location, owned, seed))
            .await
            .map_err(DbError::from)
            .and_then(|opened| opened)
            .map_err(|source| ServeError::Db {
                location: args.db.clone(),
                source,
            })
    }
}

/// Runs the monolith until SIGTERM or Ctrl-C: a new database gets the legacy data set and
/// references are checked in the same database, waiting up to `--reference-wait` for a
/// missing one.
pub async fn serve_monolith(args: &MonolithArgs) -> Result<(), ServeError> {
    let db = MONOLITH.open(&args.serve, Seed::Legacy).await?;
    let references = Arc::new(LocalReferences::with_wait(db.clone(), args.reference_wait));
    tracing::info!(
        db = %args.serve.db,
        reference_wait = ?args.reference_wait,
        "{} starting",
        MONOLITH.name
    );
    serve(
        args.serve.listen,
        Board::new(db, MONOLITH.owned, references).router(),
    )
    .await
}

/// Runs an extracted service until SIGTERM or Ctrl-C: a new database starts empty (data
/// arrives by migration) and references are checked through `--api-base`.
pub async fn serve_service(process: &Process, args: &ServiceArgs) -> Result<(), ServeError> {
    let references = Arc::new(RemoteReferences::new(&args.api_base)?);
    let db = process.open(&args.serve, Seed::Empty).await?;
    tracing::info!(
        db = %args.serve.db,
        api_base = references.api_base(),
        "{} starting",
        process.name
    );
    serve(
        args.serve.listen,
        Board::new(db, process.owned, references).router(),
    )
    .await
}

/// Serves `router` on `listen` until SIGTERM or Ctrl-C, then lets requests in flight finish.
pub async fn serve(listen: SocketAddr, router: Router) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(listen = %local, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(ServeError::Serve)?;
    tracing::info!("stopped");
    Ok(())
}

/// Logs to stdout, filtered by `RUST_LOG` (default `info`), in colour only on a terminal.
pub fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}

/// Resolves on SIGTERM (how orchestrators stop us) or Ctrl-C. A signal that cannot be
/// watched never resolves, rather than stopping the server at once.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_waits_parse_with_units() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("0", Some(Duration::ZERO)),
            ("2s", Some(Duration::from_secs(2))),
            ("250ms", Some(Duration::from_millis(250))),
            ("0ms", Some(Duration::ZERO)),
            ("2", None),
            ("2m", None),
            ("fast", None),
            ("-1s", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_wait(text).ok(), *expected, "{text}");
        }
    }
}
