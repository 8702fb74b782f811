//! Workflow files: the typed job model, `${{ }}` expressions and matrix expansion.
//! Pure logic, no I/O.

pub mod expr;
pub mod model;

pub use model::{Defaults, Job, RunDefaults, Step, Workflow};
