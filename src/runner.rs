//! Runs one job end to end: provision a VM, wait for SSH, execute, tear down.
