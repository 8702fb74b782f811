//! GitHub behind the forge port (`shared/spec/github-runner-protocol.md`,
//! generation B as github.com speaks it).
//!
//! Solstice serves GitHub through ephemeral just-in-time runners: one per
//! free slot (and image), each registered through the REST API, each
//! holding its own broker session, each used for exactly one job.
//! - [`auth`]: JIT config, the runner's RSA key, the OAuth token exchange,
//!   and the REST credentials (GitHub App or token file).
//! - [`rest`]: the REST calls (JIT config, runner listing and removal).
//! - [`broker`]: the broker session, long poll and acknowledge.
//! - [`run`]: the run service (`acquirejob`, `renewjob`, `completejob`).
//! - [`job`]: the envelope of an acquired job (ids, endpoints, job token,
//!   steps); [`message`] reads the job message, [`translate`] turns it into
//!   the [`crate::job::JobSpec`] every forge runs.
//! - [`results`] and [`report`]: the job's report (step status, logs, the
//!   final `completejob`).
//! - [`pool`] and [`session`]: the port's implementation.
//! - [`user_keys`]: the users' published SSH keys (debug SSH).

pub mod auth;
pub mod broker;
pub mod error;
pub mod job;
pub mod message;
pub mod pool;
pub mod report;
pub mod rest;
pub mod results;
pub mod run;
pub mod session;
pub mod translate;
pub mod user_keys;
