//! Drives a job's steps through a guest session.
