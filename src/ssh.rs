//! SSH into guests with russh: in-memory keys, readiness, streaming exec.
