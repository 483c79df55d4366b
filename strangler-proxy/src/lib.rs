//! strangler-proxy: peels path prefixes off a monolith onto extracted services.
//!
//! `config` reads `routes.toml`, `routes` compiles it into the table `reload` keeps live,
//! `proxy` answers requests with `forward`, `metrics` and `admin` make it observable, and
//! `server` ties the listeners and signals together.

pub mod admin;
pub mod compare;
pub mod config;
pub mod forward;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod random;
pub mod reload;
pub mod routes;
pub mod server;
pub mod shadow;
pub mod upstream;
