//! `users-service`: the users resource, extracted from the monolith into its own process and database.

use monolith::serve::{self, ServiceArgs, USERS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_tracing();
    let args: ServiceArgs = USERS.parse_args();
    serve::serve_service(&USERS, &args).await?;
    Ok(())
}
