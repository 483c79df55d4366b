//! strangler-proxy: peels path prefixes off a monolith onto extracted services.
//!
//! `config` reads `routes.toml`, `routes` compiles it into the table `live` holds and `reload`
//! replaces, `proxy` answers requests with `forward` (and `shadow`), `metrics` and `admin` make
//! it observable, and `server` builds the per-process state and ties the listeners and signals
//! together; `history` keeps the last 15 minutes of each route's traffic for the dashboard,
//! folded by `figures`. Imports run one way, down this list: server → admin, reload, proxy →
//! shadow → forward → upstream, routes → config → compare → decode, history → figures,
//! metrics, path, headers.

pub mod access_log;
pub mod admin;
pub mod compare;
pub mod config;
pub mod connections;
pub mod decode;
pub mod drain;
pub mod figures;
pub mod forward;
pub mod headers;
pub mod history;
pub mod live;
pub mod metrics;
pub mod near_miss;
pub mod outlier;
pub mod path;
pub mod pool;
pub mod proxy;
pub mod random;
pub mod reload;
pub mod routes;
pub mod server;
pub mod shadow;
pub mod upstream;
