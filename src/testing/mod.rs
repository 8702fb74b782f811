//! Test and benchmark support, compiled only with the `testkit` feature (the
//! tests enable it; `solstice bench` needs it): a strict fake Forgejo server,
//! the leak checker and an in-memory event sink. The product never contains it.

pub mod fake_forge;
pub mod fake_github;
pub mod git_server;
pub mod killable;
pub mod leaks;
pub mod sink;

pub use fake_forge::{FakeForge, FakeJob, FakeOptions};
pub use git_server::GitServer;
pub use sink::VecSink;
