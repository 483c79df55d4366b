//! strangler-proxy: peels path prefixes off a monolith onto extracted services.

pub mod config;
pub mod metrics;
pub mod path;
pub mod routes;
pub mod upstream;
