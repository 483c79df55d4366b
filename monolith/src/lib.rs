//! The legacy message board being strangled, as a library: the monolith binary and the three
//! extracted services are thin wrappers around [`app::Board`], so they share one reading of the
//! legacy contract instead of copies of it.

pub mod app;
pub mod db;
pub mod error;
pub mod generate;
pub mod input;
pub mod legacy;
pub mod posts;
pub mod references;
pub mod response;
pub mod serve;
pub mod sql;
pub mod threads;
pub mod users;
