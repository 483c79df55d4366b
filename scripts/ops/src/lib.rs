//! Operator scripts behind `scripts/migrate-data`, `shift`, `rollout`, `rollback` and `status`:
//! move a resource's rows from the monolith's database into its service's, keep them in step,
//! and move traffic over (and back) by editing `routes.toml` while watching the proxy's metrics.
//!
//! The binary only parses arguments; every step worth testing is a function here.

pub mod capture;
pub mod conflicts;
pub mod copy;
pub mod cutover;
pub mod db;
pub mod exposition;
pub mod fetch;
pub mod figures;
pub mod migrate;
pub mod migrations;
pub mod pair;
pub mod progress;
pub mod replication;
pub mod resource;
pub mod rollout;
pub mod routes_file;
pub mod signals;
pub mod source;
pub mod status;
pub mod sync;
pub mod text_table;
pub mod verify;
