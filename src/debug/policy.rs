//! Whether a failed job may keep its VM for debugging: the job asked, the
//! operator allows it for the job's forge, repository and event. Pure.
