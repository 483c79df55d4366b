//! strangler-proxy: peels path prefixes off a monolith onto extracted services.

pub mod config;
pub mod path;
