//! `solstice bench` as a user runs it: the real binary, a config file, real
//! tiny guests. `bench runner` runs with tiny figures (one job per capacity,
//! a 1 MB log, 3 s idle) and must print every row of its table, write its
//! JSON and leave no VM or directory behind. `bench actions` prints its
//! fetch table without a VM, and every part on the tiny guest. `bench github`
//! runs one job per forge with a 2 s settle and prints both columns.
//! `bench warm` measures its cold part alone, and all three start kinds
//! (cold, warm pool, snapshot-restored) side by side, on the tiny guest.

use crate::support;

use std::process::Command;

use support::TestEnv;
use support::daemon::qemu_processes_under;

fn solstice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_solstice"))
}

#[test]
fn bench_help_names_every_benchmark() {
    let out = solstice().args(["bench", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("engine"), "{text}");
    assert!(text.contains("runner"), "{text}");
    assert!(text.contains("actions"), "{text}");
    assert!(text.contains("network"), "{text}");
    assert!(text.contains("github"), "{text}");
    assert!(text.contains("warm"), "{text}");
    let out = solstice()
        .args(["bench", "warm", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--runs",
        "--idle-secs",
        "--ready-timeout-secs",
        "--only",
        "--json",
        "--image",
        "--config",
        "cold",
        "pool",
        "restored",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    for bad in [
        &["--only", "warm"][..],
        &["--only", "cold,nope"],
        &["--runs", "0"],
        &["--idle-secs", "0"],
        &["--ready-timeout-secs", "0"],
    ] {
        let out = solstice()
            .args(["bench", "warm"])
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    let out = solstice()
        .args(["bench", "actions", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--steps", "--runs", "--jobs", "--only", "--image", "--config",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    // A part that does not exist, or zero steps: usage errors.
    for bad in [
        &["--only", "nope"][..],
        &["--steps", "0"],
        &["--only", "fetch,nope"],
    ] {
        let out = solstice()
            .args(["bench", "actions"])
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    let out = solstice()
        .args(["bench", "runner", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--jobs", "--log-mb", "--idle-secs", "--json", "--image"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    // No benchmark named: usage error, nothing started.
    let out = solstice().arg("bench").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_runner_prints_every_row_with_tiny_figures() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    // The runner's work directory goes under TMPDIR: keep it in the test's dir.
    let tmp = env.dir.path().join("t");
    std::fs::create_dir_all(&tmp).unwrap();
    let json = env.dir.path().join("bench.json");
    let out = solstice()
        .args(["bench", "runner", "--jobs", "1", "--log-mb", "1"])
        .args(["--idle-secs", "3", "--runs", "1", "--config"])
        .arg(&config)
        .arg("--json")
        .arg(&json)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench runner failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for row in [
        "host load average (1 min):",
        "baseline: plain QEMU + ssh polling, boot to SSH (median of 1)",
        "THROUGHPUT",
        "capacity 1: 1 job(s)",
        "capacity 2: 1 job(s)",
        "jobs/min",
        "% of ideal",
        "LATENCY",
        "provision (receipt → QEMU spawned)",
        "boot (QEMU spawned → guest SSH port answers)",
        "SSH ready (port answers → session ready)",
        "first step (session ready → step 0 running)",
        "total: task received → first step running",
        "forge view: job available → step 0 started_at",
        "IDLE",
        "resident memory (VmRSS, largest sample)",
        "target < 30.0 MiB:",
        "CPU (utime + stime)",
        "target < 1%:",
        "LOG STREAMING (1 MB of 100-byte lines)",
        "baseline: ssh … cat to the host",
        "solstice: step start → forge acknowledged the last row",
        "% of baseline, target >= 50%:",
        "daemon peak resident memory while streaming (VmHWM)",
        "target < 64.0 MiB:",
        "fake forge: no protocol violations",
    ] {
        assert!(stdout.contains(row), "{row:?} missing from:\n{stdout}");
    }
    // Progress went to stderr, not into the table.
    assert!(stderr.contains("[bench] streaming:"), "{stderr}");
    assert!(!stdout.contains("[bench]"), "{stdout}");

    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(figures["throughput"].as_array().unwrap().len(), 2);
    assert_eq!(figures["log_streaming"]["bytes"], 1_000_000);
    assert!(figures["latency_ms"]["boot"].as_f64().unwrap() > 0.0);
    assert!(figures["idle"]["rss_kib"].as_u64().unwrap() > 0);
    assert!(figures["violations"].as_array().unwrap().is_empty());

    // Nothing left: no QEMU, no work directory, no baseline directory.
    assert!(qemu_processes_under(env.dir.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    let state: Vec<_> = std::fs::read_dir(&env.config.daemon.state_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        state
            .iter()
            .all(|n| !n.to_string_lossy().starts_with("bench-")),
        "baseline directories left: {state:?}"
    );
}

/// `bench actions --only fetch` needs no VM and no configuration: it prints
/// the fetch table for both actions and leaves nothing in TMPDIR.
#[test]
fn bench_actions_fetch_part_prints_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = solstice()
        .args(["bench", "actions", "--only", "fetch", "--runs", "1"])
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench actions failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for row in [
        "FETCH (git server on 127.0.0.1, a fresh cache each run; medians of 1)",
        "bench/noop-js (archive",
        "bench/noop-big (archive 20",
        "first fetch by tag (ls-remote, fetch, archive)",
        "cached, by tag (ls-remote, then the cache)",
        "cached, by full sha (no network)",
        "first is",
    ] {
        assert!(stdout.contains(row), "{row:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("STEPS"), "{stdout}");
    assert!(
        stderr.contains("[bench] fetch bench/noop-big 1/1"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// The whole of `bench actions` on the tiny guest (no node there): the
/// steps table says so instead of a node figure; the daemon's jobs fetch
/// the action through its cache.
#[test]
fn bench_actions_on_the_tiny_guest_prints_every_part() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let tmp = env.dir.path().join("t");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = solstice()
        .args([
            "bench", "actions", "--steps", "1", "--runs", "1", "--jobs", "1",
        ])
        .arg("--config")
        .arg(&config)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench actions failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for row in [
        "FETCH",
        "STEPS (one job on image tiny",
        "baseline: `run: 'true'`",
        "composite action (one `run: 'true'`)",
        "action plumbing: composite − run (medians)",
        "JavaScript action: no figure, no usable node in image tiny",
        "DAEMON MEMORY",
        "baseline: `run: 'true'` jobs",
        "jobs using a fetched action (2 MiB file)",
        "with the action cache in use",
    ] {
        assert!(stdout.contains(row), "{row:?} missing from:\n{stdout}");
    }
    assert!(qemu_processes_under(env.dir.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// `bench github` with one job per forge and a 2 s settle: both columns, the
/// ratios, no protocol violation, nothing left behind.
#[test]
fn bench_github_prints_both_forges_and_the_ratios() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let tmp = env.dir.path().join("t");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = solstice()
        .args([
            "bench",
            "github",
            "--jobs",
            "1",
            "--idle-secs",
            "2",
            "--config",
        ])
        .arg(&config)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench github failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for row in [
        "forgejo       github      gh/fj",
        "IDLE MEMORY (2 runners polling, after 2 s)",
        "daemon VmRSS",
        "daemon VmHWM",
        "daemon CPU over the settle time",
        "provision (receipt → QEMU spawned)",
        "total: task received → first step running",
        "daemon CPU per job",
        "fake forgejo: no protocol violations",
        "fake github: no protocol violations",
    ] {
        assert!(stdout.contains(row), "{row:?} missing from:\n{stdout}");
    }
    assert!(
        stderr.contains("[bench] github: 2 JIT runners polling"),
        "{stderr}"
    );
    assert!(!stdout.contains("[bench]"), "{stdout}");
    assert!(qemu_processes_under(env.dir.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// Runs `solstice bench warm` with `args` on the tiny guest; returns the
/// test environment (kept for its checks), stdout, stderr, the JSON figures
/// and the exit status.
fn bench_warm(args: &[&str]) -> (TestEnv, String, String, serde_json::Value, Option<i32>) {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let tmp = env.dir.path().join("t");
    std::fs::create_dir_all(&tmp).unwrap();
    let json = env.dir.path().join("warm.json");
    let out = solstice()
        .args(["bench", "warm", "--idle-secs", "2", "--config"])
        .arg(&config)
        .arg("--json")
        .arg(&json)
        .args(args)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let figures = std::fs::read_to_string(&json)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null);
    // Nothing left: no QEMU, no work directory.
    assert!(qemu_processes_under(env.dir.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    (env, stdout, stderr, figures, out.status.code())
}

/// The cold part on its own: the baseline and cold columns hold figures,
/// the other start kinds say they were not run, the job really booted cold.
#[test]
fn bench_warm_cold_part_prints_its_column() {
    let (_env, stdout, stderr, figures, code) = bench_warm(&["--only", "cold", "--runs", "1"]);
    assert_eq!(code, Some(0), "bench warm failed:\n{stdout}\n{stderr}");
    let line = |start: &str| {
        stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in:\n{stdout}"))
    };
    assert!(
        line("jobs started as").ends_with("- 1 cold not run not run"),
        "{stdout}"
    );
    let total = line("total: task received → first step running");
    let cells: Vec<&str> = total
        .trim_start_matches("total: task received → first step running ")
        .split(' ')
        .collect();
    // "<baseline> ms <cold> ms not run not run"
    assert_eq!(cells.len(), 8, "{total}");
    assert!(cells[0].parse::<u64>().unwrap() > 0, "{total}");
    assert!(cells[2].parse::<u64>().unwrap() > 0, "{total}");
    assert!(line("ratio to cold (total)").contains("1.00"), "{stdout}");
    for row in [
        "solstice bench warm: image tiny",
        "provision (receipt → QEMU spawned / take starts)",
        "guest (boot to SSH port / take or restore)",
        "target: a warm guest's job < 1000 ms from task to first step: no pool figure",
        "IDLE WARM GUEST: no figure",
        "SNAPSHOT TEMPLATE: no figure",
        "fake forge: no protocol violations",
    ] {
        assert!(stdout.contains(row), "{row:?} missing from:\n{stdout}");
    }
    assert!(
        stderr.contains("[bench] cold job 1/1: succeeded (cold start)"),
        "{stderr}"
    );
    assert!(!stdout.contains("[bench]"), "{stdout}");
    let cold = &figures["modes"]["cold"];
    assert_eq!(cold["jobs"][0]["start"], "cold", "{figures}");
    assert!(cold["median_total_ms"].as_f64().unwrap() > 0.0, "{figures}");
    assert!(cold["error"].is_null(), "{figures}");
    assert!(figures["modes"].get("pool").is_none(), "{figures}");
    assert_eq!(figures["baseline_boots_ms"].as_array().unwrap().len(), 1);
}

/// Issue 17's figure: cold, warm-pool and snapshot-restored starts side by
/// side, each job really started that way, the warm guest's memory and the
/// template's figures read. Needs the warm pools, the warm store rows and
/// the snapshot templates in the build.
#[test]
fn bench_warm_all_start_kinds_side_by_side() {
    let (_env, stdout, stderr, figures, code) = bench_warm(&["--runs", "2"]);
    assert_eq!(code, Some(0), "bench warm failed:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("WARNING"), "{stdout}");
    for kind in ["cold", "pool", "restored"] {
        let m = &figures["modes"][kind];
        assert_eq!(m["jobs"].as_array().unwrap().len(), 2, "{kind}: {figures}");
        assert_eq!(m["mismatched_starts"], 0, "{kind}: {figures}");
        assert!(
            m["median_total_ms"].as_f64().unwrap() > 0.0,
            "{kind}: {figures}"
        );
    }
    let cold = figures["modes"]["cold"]["median_total_ms"]
        .as_f64()
        .unwrap();
    let pool = figures["modes"]["pool"]["median_total_ms"]
        .as_f64()
        .unwrap();
    assert!(
        pool < cold,
        "a warm guest's job is not faster than a cold one: {figures}"
    );
    let samples = figures["idle_guest"]["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{figures}");
    assert!(
        samples[0]["qemu_rss_kib"].as_u64().unwrap() > 10 * 1024,
        "{figures}"
    );
    assert!(
        figures["template"]["state_bytes"].as_u64().unwrap() > 0,
        "{figures}"
    );
    assert!(
        figures["template"]["build_ms"].as_f64().unwrap() > 0.0,
        "{figures}"
    );
    assert!(
        stdout.contains("IDLE WARM GUEST (VmRSS after 2 s idle"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SNAPSHOT TEMPLATE (restored part)"),
        "{stdout}"
    );
    assert_eq!(
        figures["template"]["build_from_daemon_log"], true,
        "{figures}"
    );
}
