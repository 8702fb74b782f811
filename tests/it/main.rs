//! Solstice's integration tests, one binary with a module per area (one
//! binary links the library once; see CONTRIBUTING.md). Shared support lives
//! in `support` and `ssh_common`. Run one area with
//! `cargo test --test it exec_tiny::`.

mod ssh_common;
mod support;

mod actions_cache;
mod actions_local;
mod actions_vm;
mod architecture;
mod bench_cli;
mod cache_service;
mod cache_vm;
mod checkout_gitless;
mod cli_messages;
mod config_check;
mod containers_action;
mod containers_engine;
mod containers_job;
mod debug_gateway;
mod debug_scrub;
mod debug_ssh;
mod docs_match_code;
mod doctor_cli;
mod exec_cli;
mod exec_debian;
mod exec_runner;
mod exec_tiny;
mod executor_local;
mod executor_shells;
mod fake_forge;
mod fake_github;
mod forge_artifacts;
mod forge_client;
mod forge_containers;
mod forge_e2e;
mod forge_e2e_gone;
mod forge_reporter;
mod forge_user_keys;
mod git_server;
mod github_e2e;
mod github_pool;
mod github_report;
mod github_translate;
mod guest_network;
mod hashfiles;
mod nixos_module;
mod run_cli;
mod ssh_client;
mod ssh_throughput;
mod store;
mod vm_boot;
mod warm_pool;
mod warm_snapshot;
mod workflow_expr;
mod workflow_matrix;
mod workflow_model;
