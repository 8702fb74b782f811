//! Test and benchmark support that must live in the library (so that
//! `solstice bench` can use it too): a strict fake Forgejo server.

pub mod fake_forge;

pub use fake_forge::{FakeForge, FakeJob, FakeOptions};
