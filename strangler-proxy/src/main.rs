//! `strangler-proxy`: serve a `routes.toml`, or check one.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use strangler_proxy::access_log;

/// mimalloc: fewer instructions per allocation than glibc's malloc on the request path, and
/// memory returned to the system under the same peak (BENCHMARKS.md, "Instructions per
/// request").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "The migration proxy: peels path prefixes off a monolith onto extracted services"
)]
struct Args {
    /// The route table to serve; reloaded live when it changes.
    #[arg(long, default_value = "routes.toml")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a routes.toml: every error as FILE:LINE:COL: message, exit 1 if any; warnings
    /// (same form, on stderr) leave the exit code alone.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Check { file }) = &args.command {
        return match strangler_proxy::config::load(file) {
            Ok(loaded) => {
                let c = &loaded.config;
                println!(
                    "{}: ok: {} services, {} routes, default {:?}",
                    file.display(),
                    c.services.len(),
                    c.routes.len(),
                    c.proxy.default
                );
                if !loaded.warnings.errors.is_empty() {
                    eprintln!("{}", loaded.warnings);
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a file or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => {
            access_log::set_format(access_log::Format::Json);
            builder.json().init()
        }
    }
    // The control plane (admin listener, reloads, signals) on this thread; requests are
    // served by the workers `server::start` spawns, each on a runtime of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(strangler_proxy::server::run(&args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strangler-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
