//! Solstice: a self-hosted CI runner that runs every Actions job in a fresh,
//! throw-away QEMU virtual machine.
//!
//! The binary (`src/main.rs`) is thin; everything lives here so that tests can
//! drive it. One module per external boundary: see `docs/explanation/architecture.md`.

pub mod actions;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cache_service;
pub mod civil;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod debug;
pub mod errors;
pub mod events;
pub mod executor;
pub mod forge;
pub mod guest;
pub mod human;
pub mod job;
pub mod metrics;
pub mod secret;
pub mod ssh;
pub mod startup;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testing;
pub mod vm;
pub mod warm;
pub mod workflow;
