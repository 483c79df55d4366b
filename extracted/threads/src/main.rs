//! `threads-service`: the threads resource, extracted from the monolith into its own process and database.

use monolith::serve::{self, ServiceArgs, THREADS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_tracing();
    let args: ServiceArgs = THREADS.parse_args();
    serve::serve_service(&THREADS, &args).await?;
    Ok(())
}
