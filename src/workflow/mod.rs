//! Workflow files and action metadata: the typed job model, `${{ }}` expressions and matrix expansion.
//! Pure logic, no I/O.

pub mod action;
pub mod expr;
pub mod hashfiles;
pub mod inputs;
pub mod matrix;
pub mod model;

pub use inputs::{InputSource, inputs_context};
pub use matrix::{
    Combination, expand_matrix, filter_matrix, job_display_name, parse_matrix_selector,
};
pub use model::{
    ContainerSpec, Credentials, Defaults, InputSpec, Job, RunDefaults, Scalar, Step, Strategy,
    Triggers, Workflow, WorkflowError, parse_workflow, select_job,
};
