//! `posts-service`: the posts resource, extracted from the monolith into its own process and database.

use monolith::serve::{self, POSTS, ServiceArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::init_tracing();
    let args: ServiceArgs = POSTS.parse_args();
    serve::serve_service(&POSTS, &args).await?;
    Ok(())
}
