//! `solstice exec` as a user runs it: the real binary, a config file, a real
//! tiny guest. Exit codes, matrix expansion, the terminal log, and Ctrl-C.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::TestEnv;

fn solstice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_solstice"))
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `solstice exec --config CONFIG [extra…] WORKFLOW` in `cwd` and waits.
fn exec(
    config: &std::path::Path,
    extra: &[&str],
    wf: &std::path::Path,
    cwd: &std::path::Path,
) -> std::process::Output {
    solstice()
        .arg("exec")
        .args(extra)
        .arg("--config")
        .arg(config)
        .arg(wf)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Seconds from `1.23s`, `850ms` or `2m03s`.
fn secs(text: &str) -> Option<f64> {
    if let Some(ms) = text.strip_suffix("ms") {
        return Some(ms.parse::<f64>().ok()? / 1000.0);
    }
    let text = text.strip_suffix('s')?;
    match text.split_once('m') {
        Some((m, s)) => Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?),
        None => text.parse().ok(),
    }
}

/// (steps, wall) of `Job failed in 6.34s (25.1s with the VM's boot and teardown)`.
fn verdict_times(line: &str) -> Option<(f64, f64)> {
    let (_, rest) = line.split_once(" in ")?;
    let (steps, rest) = rest.split_once(" (")?;
    let wall = rest.strip_suffix(" with the VM's boot and teardown)")?;
    Some((secs(steps)?, secs(wall)?))
}

/// `solstice exec --config CONFIG WORKFLOW` with `auto` forced to take KVM
/// without its probe (the test switch).
fn exec_forcing_kvm(
    config: &std::path::Path,
    wf: &std::path::Path,
    cwd: &std::path::Path,
) -> std::process::Output {
    solstice()
        .args(["exec", "--config"])
        .arg(config)
        .arg(wf)
        .current_dir(cwd)
        .env("SOLSTICE_TEST_FORCE_KVM", "1")
        .output()
        .unwrap()
}

#[test]
fn matrix_runs_every_combination_and_the_exit_code_follows_the_jobs() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let wf = write(
        env.dir.path(),
        "matrix.yml",
        "on: push\njobs:\n  build:\n    runs-on: ${{ matrix.os }}\n    strategy:\n      matrix:\n        os: [tiny]\n        n: [1, 2]\n    steps:\n      - run: echo \"combo n=${{ matrix.n }} on $RUNNER_OS\"\n      - if: matrix.n == 2\n        run: exit 1\n",
    );
    let out = exec(&config, &[], &wf, env.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("combo n=1 on Linux"), "{stdout}");
    assert!(stdout.contains("combo n=2 on Linux"), "{stdout}");
    assert!(stdout.contains("build (tiny, 1) [1/2]"), "{stdout}");
    assert!(
        stdout.contains("1 of 2 matrix combinations succeeded"),
        "{stdout}"
    );
    assert!(stdout.contains("[solstice] accelerator: tcg"), "{stdout}");
    assert!(
        stdout.contains("Job succeeded") && stdout.contains("Job failed"),
        "{stdout}"
    );
    // Each verdict gives the steps' time and the wall time of the whole
    // run; the summary comes after the VM's teardown.
    let verdicts: Vec<(f64, f64)> = stdout
        .lines()
        .filter(|l| l.starts_with("Job "))
        .map(|l| verdict_times(l).unwrap_or_else(|| panic!("{l:?}\n{stdout}")))
        .collect();
    assert_eq!(verdicts.len(), 2, "{stdout}");
    for (steps, wall) in verdicts {
        assert!(wall > steps && wall > 1.0, "{stdout}");
    }
    let teardown = stdout.find("[solstice] teardown").unwrap();
    assert!(teardown < stdout.find("Summary:").unwrap(), "{stdout}");
    env.assert_no_leaks();

    // --matrix picks the passing combination only: exit 0.
    let out = exec(&config, &["--matrix", "n=1"], &wf, env.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("combo n=2"), "{stdout}");
    env.assert_no_leaks();
}

#[test]
fn exec_gives_the_declared_input_defaults_typed() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let wf = write(
        env.dir.path(),
        "dispatch.yml",
        "on:\n  push:\n  workflow_dispatch:\n    inputs:\n      target:\n        default: staging\n      dry:\n        type: boolean\n        default: true\n      level:\n        type: number\n        default: '2'\njobs:\n  deploy:\n    runs-on: tiny\n    steps:\n      - run: echo 'deploy to=${{ inputs.target }} dry=${{ inputs.dry == true }} level=${{ toJSON(inputs.level) }}.'\n",
    );
    let out = exec(&config, &[], &wf, env.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("deploy to=staging dry=true level=2."),
        "{stdout}"
    );
    env.assert_no_leaks();
}

#[test]
fn bad_input_fails_before_any_vm_starts() {
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let two_jobs = write(
        env.dir.path(),
        "two.yml",
        "jobs:\n  a:\n    steps:\n      - run: 'true'\n  b:\n    steps:\n      - run: 'true'\n",
    );
    let out = exec(&config, &[], &two_jobs, env.dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("several jobs (a, b); choose one with --job"),
        "{stderr}"
    );

    let no_image = write(
        env.dir.path(),
        "label.yml",
        "jobs:\n  a:\n    runs-on: [self-hosted, windows]\n    steps:\n      - run: 'true'\n",
    );
    // One image only: it is used even though the labels differ.
    let bad_yaml = write(env.dir.path(), "bad.yml", "jobs:\n  a:\n    stpes: []\n");
    let out = exec(&config, &[], &bad_yaml, env.dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yml"), "{stderr}");
    let out = exec(&config, &["--image", "nope"], &no_image, env.dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no image named `nope`"), "{stderr}");

    // What would only fail after a boot fails first, with every problem named.
    let unrunnable = write(
        env.dir.path(),
        "unrunnable.yml",
        "jobs:\n  a:\n    steps:\n      - uses: actions/setup-python\n      - if: github.ref ==\n        run: 'true'\n",
    );
    let out = exec(&config, &[], &unrunnable, env.dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "job `a`, step 1: Invalid `uses: actions/setup-python`: the version (`@ref`) is missing"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("job `a`, step 2, `if:`: "), "{stderr}");
    assert!(
        stderr.contains("cannot run as it is (2 problem(s) above); no VM was started"),
        "{stderr}"
    );
    let ok = write(
        env.dir.path(),
        "ok.yml",
        "jobs:\n  a:\n    steps:\n      - uses: actions/checkout@v4\n",
    );
    let out = exec(
        &config,
        &["--workdir", "/nonexistent/tree"],
        &ok,
        env.dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--workdir /nonexistent/tree: no such directory"),
        "{stderr}"
    );
    // None of these started a VM: the jobs directory was never made.
    assert!(!env.jobs_dir().exists(), "a VM was started");

    let broken_config = write(env.dir.path(), "broken.toml", "[daemon]\nmax_jobs = 3\n");
    let out = solstice()
        .args(["check-config"])
        .arg(&broken_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("broken.toml:2:1"), "{stderr}");
    let out = solstice()
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    env.assert_no_leaks();
}

/// Starts `solstice exec` on a job that prints `sleeping-now` and sleeps, and
/// returns once that line was printed (the step is running in the guest).
fn start_sleeping_job(
    env: &TestEnv,
    extra_step: &str,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
    Vec<String>,
) {
    let config = env.write_config_file();
    let wf = write(
        env.dir.path(),
        "sleep.yml",
        &format!(
            "jobs:\n  s:\n    steps:\n      - run: |\n          echo sleeping-now\n          sleep 600\n{extra_step}"
        ),
    );
    let mut child = solstice()
        .args(["exec", "--config"])
        .arg(&config)
        .arg(&wf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "sleeping-now" {
            break;
        }
    }
    assert!(seen.iter().any(|l| l == "sleeping-now"), "{seen:?}");
    (child, lines, seen)
}

#[test]
fn ctrl_c_cancels_the_job_destroys_the_vm_and_exits_130() {
    let env = TestEnv::tiny();
    let (mut child, lines, mut seen) = start_sleeping_job(
        &env,
        "      - if: always()\n        run: echo cleanup-ran\n",
    );
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    for line in lines {
        seen.push(line.unwrap());
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen:#?}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    assert!(seen.iter().any(|l| l == "cleanup-ran"), "{seen:#?}");
    env.assert_no_leaks();
}

#[test]
fn qemu_dies_when_solstice_is_killed() {
    let env = TestEnv::tiny();
    let (mut child, _lines, _) = start_sleeping_job(&env, "");
    let running = |env: &TestEnv| {
        solstice::testing::leaks::check(&env.jobs_dir())
            .into_iter()
            .filter(|l| l.starts_with("QEMU process"))
            .collect::<Vec<_>>()
    };
    assert_eq!(running(&env).len(), 1, "the job's QEMU should be running");
    child.kill().unwrap(); // SIGKILL: no cleanup code runs in solstice
    child.wait().unwrap();
    let t = Instant::now();
    while !running(&env).is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        running(&env).is_empty(),
        "QEMU outlived solstice: {:?}",
        running(&env)
    );
    // Nor does pasta, the uplink of the guest's network namespace.
    let pasta = |env: &TestEnv| {
        solstice::testing::leaks::check(&env.jobs_dir())
            .into_iter()
            .filter(|l| l.starts_with("pasta process"))
            .collect::<Vec<_>>()
    };
    while !pasta(&env).is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pasta(&env).is_empty(),
        "pasta outlived solstice: {:?}",
        pasta(&env)
    );
    // The job directory stays for the daemon's start-up reconcile to remove;
    // the test's temporary state directory goes with the test.
}

/// `auto` with KVM forced through the test switch, on a QEMU stand-in whose
/// KVM guests crawl (their boot loader prints its banner, then nothing comes
/// for minutes, or their kernel reports stalled CPUs): the first job's guest
/// is given up, the job boots again under TCG and succeeds, the log says
/// why, the next job of the same run goes straight to TCG, and so does the
/// next `solstice exec` (from the record in the state database).
#[test]
fn auto_falls_back_to_tcg_when_a_kvm_guest_makes_no_progress() {
    let mut env = TestEnv::tiny();
    env.config.qemu.accel = solstice::config::AccelChoice::Auto;
    env.config.qemu.system_binary = support::paused_kvm_qemu(env.dir.path());
    env.image_mut().boot_timeout = Duration::from_secs(300);
    let config = env.write_config_file();
    let wf = write(
        env.dir.path(),
        "two.yml",
        "jobs:\n  x:\n    strategy:\n      matrix:\n        n: [1, 2]\n    steps:\n      - run: echo \"job ${{ matrix.n }} ran\"\n",
    );
    let t = Instant::now();
    let out = exec_forcing_kvm(&config, &wf, env.dir.path());
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout
            .contains("[solstice] accelerator: kvm (auto: KVM forced by SOLSTICE_TEST_FORCE_KVM=1"),
        "{stdout}"
    );
    let fallbacks: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("[solstice] boot: KVM did not run this job's guest: "))
        .collect();
    assert_eq!(fallbacks.len(), 1, "{stdout}");
    // The crawling guest either stops printing after its boot loader, or its
    // kernel gets far enough to report stalled CPUs.
    assert!(
        fallbacks[0].contains(
            "the guest's console stopped for 45 s before its SSH server answered under KVM"
        ) || fallbacks[0].contains("the guest's kernel reported stalled CPUs or a panic under KVM"),
        "{stdout}"
    );
    assert!(
        fallbacks[0].contains("The VM was destroyed; booting the job again under TCG"),
        "{stdout}"
    );
    assert!(
        stdout.contains("job 1 ran") && stdout.contains("job 2 ran"),
        "{stdout}"
    );
    // Job 1: kvm, then tcg; job 2: tcg from the start.
    let provisions: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("[solstice] provision:"))
        .collect();
    assert_eq!(provisions.len(), 3, "{stdout}");
    assert!(provisions[0].ends_with("accelerator kvm"), "{stdout}");
    assert!(provisions[1].ends_with("accelerator tcg"), "{stdout}");
    assert!(provisions[2].ends_with("accelerator tcg"), "{stdout}");
    // Not the 300 s boot timeout: the window ended the KVM attempt.
    assert!(took < Duration::from_secs(300), "took {took:?}");
    eprintln!("two jobs with one KVM fallback took {took:?}");
    assert!(!stderr.contains("WARN"), "no plumbing on stderr: {stderr}");
    env.assert_no_leaks();

    // The next `solstice exec` on this host trusts the record: no KVM probe,
    // no stuck boot.
    let out = solstice()
        .args(["exec", "--config"])
        .arg(&config)
        .args(["--matrix", "n=1"])
        .arg(&wf)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("[solstice] accelerator: tcg (auto: a job's KVM guest failed on this host before (the guest's"),
        "{stdout}"
    );
    assert!(!stdout.contains("accelerator kvm"), "{stdout}");
    env.assert_no_leaks();
}

/// The same with this host's real QEMU and KVM: whatever KVM does here
/// (aborts, hangs, stops with an emulation error, or works), the job
/// succeeds and leaves nothing behind; where KVM is broken, the log says so.
#[test]
fn auto_with_kvm_forced_still_runs_the_job_on_this_host() {
    let mut env = TestEnv::tiny();
    env.config.qemu.accel = solstice::config::AccelChoice::Auto;
    let config = env.write_config_file();
    let wf = write(
        env.dir.path(),
        "one.yml",
        "jobs:\n  x:\n    steps:\n      - run: echo \"ran on $(uname -s)\"\n",
    );
    let out = exec_forcing_kvm(&config, &wf, env.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("ran on Linux"), "{stdout}");
    let fell_back = stdout.contains("KVM did not run this job's guest");
    let last = stdout
        .lines()
        .rfind(|l| l.starts_with("[solstice] provision:"))
        .unwrap_or_default();
    if fell_back {
        assert!(last.ends_with("accelerator tcg"), "{stdout}");
    } else {
        assert!(last.ends_with("accelerator kvm"), "a healthy KVM: {stdout}");
    }
    eprintln!("this host's KVM: fell back = {fell_back}");
    env.assert_no_leaks();
}

/// `accel = "kvm"` never falls back: a KVM guest that makes no progress
/// fails the job with a message that says what to do.
#[test]
fn explicit_kvm_never_falls_back() {
    let mut env = TestEnv::tiny();
    env.config.qemu.accel = solstice::config::AccelChoice::Kvm;
    env.config.qemu.system_binary = support::paused_kvm_qemu(env.dir.path());
    env.image_mut().boot_timeout = Duration::from_secs(20);
    let config = env.write_config_file();
    let wf = write(
        env.dir.path(),
        "one.yml",
        "jobs:\n  x:\n    steps:\n      - run: 'true'\n",
    );
    let out = exec(&config, &[], &wf, env.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(!stdout.contains("accelerator tcg"), "{stdout}");
    assert!(
        stderr.contains("within 20 s (`images.tiny.boot_timeout_secs`)")
            && stderr.contains("The guest ran under KVM, which is configured explicitly (`qemu.accel = \"kvm\"`): if KVM does not work on this host, set `qemu.accel = \"auto\"` (falls back to TCG) or `\"tcg\"`"),
        "{stderr}"
    );
    env.assert_no_leaks();
}

/// A guest that boots under neither accelerator (a blank disk) is the
/// image's fault: the job fails with the TCG attempt's error, and KVM is not
/// turned off (nothing is recorded).
#[test]
fn an_image_that_boots_nowhere_does_not_turn_kvm_off() {
    let dir = tempfile::tempdir().unwrap();
    let blank = support::blank_qcow2(dir.path(), "blank.qcow2", "64M");
    let mut img = support::image_config("blank", blank, "root", 128);
    img.boot_timeout = Duration::from_secs(8);
    let mut env = TestEnv::with_image(img);
    env.config.qemu.accel = solstice::config::AccelChoice::Auto;
    let config = env.write_config_file();
    let wf = write(
        env.dir.path(),
        "one.yml",
        "jobs:\n  x:\n    steps:\n      - run: 'true'\n",
    );
    let out = exec_forcing_kvm(&config, &wf, env.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("KVM did not run this job's guest"),
        "{stdout}"
    );
    assert!(stdout.contains("accelerator tcg"), "{stdout}");
    assert!(
        stderr
            .contains("The guest did not accept SSH within 8 s (`images.blank.boot_timeout_secs`)"),
        "{stderr}"
    );
    let db = env.config.daemon.state_dir.join("solstice.db");
    let record = solstice::store::Store::open(&db)
        .unwrap()
        .kvm_failure()
        .unwrap();
    assert_eq!(record, None, "a broken image must not turn KVM off");
    env.assert_no_leaks();
}

/// `solstice exec --actions-url URL` fetches `owner/repo@ref` actions from
/// URL (its host counts as allowed), and refuses a URL the workflow names on
/// another host, naming the config key that would allow it.
#[test]
fn exec_fetches_actions_from_the_actions_url_and_refuses_other_hosts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(solstice::testing::git_server::GitServer::start());
    support::actions::publish(&server, "composite-inner");
    let env = TestEnv::tiny();
    let config = env.write_config_file();
    let wf = write(
        env.dir.path(),
        "actions.yml",
        "jobs:\n  a:\n    runs-on: tiny\n    steps:\n      - id: up\n        uses: fixtures/composite-inner@v1\n        with:\n          text: from exec\n      - run: echo \"got ${{ steps.up.outputs.shout }}\"\n      - uses: http://127.0.0.1:9/fixtures/composite-inner@v1\n",
    );
    let out = exec(
        &config,
        &["--actions-url", server.url()],
        &wf,
        env.dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("got FROM EXEC"), "{stdout}");
    assert!(
        stdout.contains("Download action repository 'fixtures/composite-inner@v1'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("http://127.0.0.1:9/fixtures/composite-inner")
            && stdout.contains("[actions] allowed_hosts"),
        "{stdout}"
    );
    env.assert_no_leaks();
    drop(rt);
}
