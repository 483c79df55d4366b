//! `monolith`: serves the whole legacy board, or fills a database with `generate`.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use monolith::generate::{self, GenerateArgs};
use monolith::serve::{self, MONOLITH, MonolithArgs};

#[derive(Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    serve: MonolithArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Fill a database with a deterministic synthetic board.
    Generate(GenerateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = MONOLITH.parse_args();
    match cli.command {
        Some(Command::Generate(args)) => {
            let took = generate::run(&args)
                .with_context(|| format!("generating into {}", args.db.display()))?;
            println!(
                "generated {} users, {} threads, {} posts into {} in {:.2?}",
                args.users,
                args.threads,
                args.posts,
                args.db.display(),
                took
            );
            Ok(())
        }
        None => {
            serve::init_tracing();
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            Ok(runtime.block_on(serve::serve_monolith(&cli.serve))?)
        }
    }
}
