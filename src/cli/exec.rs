//! `solstice exec`: run one job of a workflow file in fresh VMs (one per matrix
//! combination), streaming the log to the terminal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indexmap::IndexMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::ExecArgs;
use super::term::TerminalSink;
use crate::config::Config;
use crate::events::Conclusion;
use crate::job::{self, CheckoutSource, JobSpec, RunError, VmRun};
use crate::secret::Secret;
use crate::vm::accel::Accelerator;
use crate::workflow::{self, Workflow};

/// Exit status of `solstice exec` (documented in docs/reference/cli.md).
pub mod exit {
    pub const JOB_FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const INFRA: u8 = 3;
    /// The async runtime could not start (any command that runs one).
    pub const NO_RUNTIME: u8 = 70;
    pub const INTERRUPTED: u8 = 130;
}

/// Prints an error and its causes to stderr.
pub fn report_error(err: &(dyn std::error::Error + 'static)) {
    eprintln!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
}

/// Where a command says which config file it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigNotice {
    /// With the job's progress lines (`exec`).
    Stdout,
    /// Where stdout is data (`status`, `bench`) or the log goes to stderr (`run`).
    Stderr,
}

/// Finds and loads the configuration (see [`crate::config::find_config`]),
/// prints `[solstice] config: PATH` on stderr, and prints every problem.
/// Errors are exit status 2.
pub fn load_config(explicit: Option<&Path>) -> Result<(PathBuf, Config), ExitCode> {
    load_config_to(explicit, ConfigNotice::Stderr)
}

/// [`load_config`], saying which file was used on `notice`.
pub fn load_config_to(
    explicit: Option<&Path>,
    notice: ConfigNotice,
) -> Result<(PathBuf, Config), ExitCode> {
    let path = crate::config::find_config(explicit)
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(exit::USAGE)
        })?
        .path;
    let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    match notice {
        ConfigNotice::Stdout => println!("[solstice] config: {}", shown.display()),
        ConfigNotice::Stderr => eprintln!("[solstice] config: {}", shown.display()),
    }
    match crate::config::load(&path) {
        Ok(c) => Ok((path, c)),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("error: {} is not valid (see above)", path.display());
            Err(ExitCode::from(exit::USAGE))
        }
    }
}

/// Resolves the accelerator without blocking the runtime; prints the choice.
/// A KVM failure recorded in the state database counts, and a fallback in
/// this run is recorded there (when the database is this user's, see
/// [`state_for_accel`]).
pub async fn resolve_accel(config: &Config) -> Result<Accelerator, ExitCode> {
    let config = config.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        let (store, writable) = match state_for_accel(&config) {
            Some((store, writable)) => (Some(std::sync::Arc::new(store)), writable),
            None => (None, false),
        };
        let remembered = store.as_deref().and_then(job::remembered_kvm_failure);
        Accelerator::resolve(&config.qemu, remembered.as_ref()).map(|a| match store {
            Some(store) if writable => {
                a.with_listener(Box::new(move |f| job::record_kvm_failure(&store, f)))
            }
            _ => a,
        })
    })
    .await;
    match resolved {
        Ok(Ok(a)) => {
            println!("[solstice] accelerator: {}", a.describe());
            Ok(a)
        }
        Ok(Err(e)) => {
            report_error(&e);
            Err(ExitCode::from(exit::INFRA))
        }
        Err(e) => {
            eprintln!("error: accelerator probe failed: {e}");
            Err(ExitCode::from(exit::INFRA))
        }
    }
}

/// The state database for the KVM failure record, and whether this process
/// may write to it. The database belongs to whoever runs the daemon: it is
/// opened for writing (and created) only when it (or, before it exists, the
/// state directory) belongs to this user; another user's database is only
/// read, so that `sudo solstice exec` never leaves a root-owned file the
/// daemon's user cannot open. `None` (at debug level) when there is none.
fn state_for_accel(config: &Config) -> Option<(crate::store::Store, bool)> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let db = crate::daemon::database_path(config);
    let mine = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == me);
    let opened = if db.exists() {
        if mine(&db) {
            crate::store::Store::open(&db).map(|s| (s, true))
        } else {
            crate::store::Store::open_read_only(&db).map(|s| (s, false))
        }
    } else if mine(&config.daemon.state_dir) {
        crate::store::Store::open(&db).map(|s| (s, true))
    } else {
        return None;
    };
    match opened {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "no state database for the KVM failure record");
            None
        }
    }
}

pub async fn exec_main(args: ExecArgs) -> ExitCode {
    let (_, config) = match load_config_to(args.config.as_deref(), ConfigNotice::Stdout) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = crate::store::check_state_dir(&config.daemon.state_dir) {
        report_error(&e);
        return ExitCode::from(exit::USAGE);
    }
    let text = match std::fs::read_to_string(&args.workflow) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.workflow.display());
            return ExitCode::from(exit::USAGE);
        }
    };
    let wf = match workflow::parse_workflow(&text) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {}: {e}", args.workflow.display());
            return ExitCode::from(exit::USAGE);
        }
    };
    let (job_id, job) = match workflow::select_job(&wf, args.job.as_deref()) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {}: {e}", args.workflow.display());
            return ExitCode::from(exit::USAGE);
        }
    };
    let combos = match workflow::expand_matrix(job) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", args.workflow.display());
            return ExitCode::from(exit::USAGE);
        }
    };
    // Everything that would only fail after a VM has booted fails now.
    let problems = crate::executor::preflight::preflight(&wf, job_id, job, None);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {}: {p}", args.workflow.display());
        }
        eprintln!(
            "error: {} cannot run as it is ({} problem(s) above); no VM was started",
            args.workflow.display(),
            problems.len()
        );
        return ExitCode::from(exit::USAGE);
    }
    if let Some(dir) = &args.workdir
        && !dir.is_dir()
    {
        eprintln!(
            "error: --workdir {}: no such directory (it is what actions/checkout copies into the guest)",
            dir.display()
        );
        return ExitCode::from(exit::USAGE);
    }
    let all = combos.clone();
    let combos = workflow::filter_matrix(combos, &args.matrix);
    if combos.is_empty() {
        let selectors: Vec<String> = args
            .matrix
            .iter()
            .map(|(k, v)| format!("--matrix {k}={v}"))
            .collect();
        eprintln!(
            "error: no matrix combination of job `{job_id}` matches {} ({} combination{} in all):",
            selectors.join(" "),
            all.len(),
            if all.len() == 1 { "" } else { "s" }
        );
        for line in workflow::matrix::explain_no_match(&all, &args.matrix) {
            eprintln!("  {line}");
        }
        return ExitCode::from(exit::USAGE);
    }
    // Choose every image before starting anything, so a bad label fails fast.
    let mut plan = Vec::new();
    for combo in &combos {
        match crate::job::placement::place_workflow_job(
            &config.images,
            args.image.as_deref(),
            job,
            combo,
        ) {
            Ok(placed) => {
                if let Some(notice) = &placed.notice {
                    println!("[solstice] {notice}");
                }
                plan.push((combo, placed.image));
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(exit::USAGE);
            }
        }
    }
    let accel = match resolve_accel(&config).await {
        Ok(a) => a,
        Err(code) => return code,
    };

    let workdir = match args.workdir.clone() {
        Some(d) => d,
        None => default_workdir(&args.workflow),
    };
    let secrets: BTreeMap<String, Secret> = args
        .secrets
        .iter()
        .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
        .collect();
    let vars: BTreeMap<String, String> = args.vars.iter().cloned().collect();
    let extra_env: IndexMap<String, String> = args.env.iter().cloned().collect();
    let github = local_github_context(&wf, job_id, &args.workflow, &workdir);
    // No event locally: the inputs are the declared defaults.
    let inputs = workflow::inputs_context(&wf, workflow::InputSource::Local);

    let cancel = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let interrupted = Arc::new(AtomicBool::new(false));
    spawn_interrupt_handler(cancel.clone(), hard_stop.clone(), interrupted.clone());

    let sink = TerminalSink::new();
    let runner_name = format!("solstice-{}", hostname());
    let total = plan.len();
    let mut failed = 0usize;
    let run_all = async {
        for (i, (combo, image)) in plan.iter().enumerate() {
            if cancel.is_cancelled() {
                break;
            }
            let display = workflow::job_display_name(job_id, job, combo);
            if total > 1 {
                println!("\n=== {display} [{}/{total}] ===", i + 1);
            }
            let spec = JobSpec {
                workflow: wf.clone(),
                job_id: job_id.to_string(),
                matrix: (*combo).clone(),
                github: github.clone(),
                secrets: secrets.clone(),
                vars: vars.clone(),
                inputs: inputs.clone(),
                needs: json!({}),
                extra_env: extra_env.clone(),
                checkout: CheckoutSource::LocalTree {
                    root: workdir.clone(),
                    exclude: vec![config.daemon.state_dir.clone()],
                },
                max_job_timeout: None,
                extra_masks: Vec::new(),
                default_actions_url: None,
            };
            let run_id = job::id::new_job_id("exec");
            let vm_run = VmRun {
                config: &config,
                image,
                accel: &accel,
                job_id: &run_id,
                spec: &spec,
                runner_name: &runner_name,
                observer: None,
            };
            let started = std::time::Instant::now();
            let result = job::run_in_vm(&vm_run, &sink, &cancel).await;
            // The summary waits for the teardown, to give the wall time too.
            sink.print_finish(started.elapsed());
            match result {
                Ok(report) => {
                    if report.outcome.conclusion != Conclusion::Success {
                        failed += 1;
                    }
                }
                Err(RunError::Cancelled) => {
                    failed += 1;
                    break;
                }
                Err(e) => {
                    report_error(&e);
                    return Err(ExitCode::from(exit::INFRA));
                }
            }
        }
        Ok(())
    };
    let result = tokio::select! {
        r = run_all => r,
        // A second Ctrl-C: dropping the run future destroys the VM at once.
        _ = hard_stop.cancelled() => Err(ExitCode::from(exit::INTERRUPTED)),
    };
    if let Err(code) = result {
        return code;
    }
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("interrupted: the job was cancelled and its VM destroyed");
        return ExitCode::from(exit::INTERRUPTED);
    }
    if total > 1 {
        println!(
            "\n{} of {total} matrix combinations succeeded",
            total - failed
        );
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::JOB_FAILED)
    }
}

/// First Ctrl-C (or SIGTERM) cancels the job: the running step is stopped, `always()`
/// steps run and the VM is destroyed. A second one stops at once.
fn spawn_interrupt_handler(
    cancel: CancellationToken,
    hard_stop: CancellationToken,
    interrupted: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut count = 0;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
            count += 1;
            interrupted.store(true, Ordering::SeqCst);
            if count == 1 {
                eprintln!(
                    "\n[solstice] interrupted: cancelling the job (press Ctrl-C again to stop at once)"
                );
                cancel.cancel();
            } else {
                eprintln!("\n[solstice] stopping now");
                hard_stop.cancel();
                return;
            }
        }
    });
}

/// The `github` context of a local run, filled from the work tree's git state
/// where there is one.
pub fn local_github_context(wf: &Workflow, job_id: &str, file: &Path, workdir: &Path) -> Value {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(workdir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    let sha = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "0".repeat(40));
    let branch = git(&["symbolic-ref", "--short", "HEAD"]).unwrap_or_else(|| "main".into());
    let dir_name = workdir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "workspace".into());
    let actor = std::env::var("USER").unwrap_or_else(|_| "local".into());
    let workflow_name = wf
        .name
        .clone()
        .unwrap_or_else(|| file.display().to_string());
    let run_id = (rand::random::<u32>() % 1_000_000_000).to_string();
    json!({
        "event_name": "push",
        "event": { "ref": format!("refs/heads/{branch}"), "after": sha },
        "repository": format!("local/{dir_name}"),
        "repository_owner": "local",
        "ref": format!("refs/heads/{branch}"),
        "ref_name": branch,
        "ref_type": "branch",
        "ref_protected": false,
        "sha": sha,
        "head_ref": "",
        "base_ref": "",
        "workflow": workflow_name,
        "workflow_ref": format!("local/{dir_name}/{}@refs/heads/{branch}", file.display()),
        "job": job_id,
        "run_id": run_id,
        "run_number": "1",
        "run_attempt": "1",
        "actor": actor,
        "triggering_actor": actor,
        "server_url": "http://localhost",
        "api_url": "http://localhost/api/v1",
        "graphql_url": "",
        "retention_days": "0",
        "secret_source": "None",
    })
}

/// What `actions/checkout` copies by default: the git work tree that holds the
/// workflow file, else the current directory.
fn default_workdir(workflow: &Path) -> PathBuf {
    let dir = workflow
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let toplevel = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| p.is_dir());
    toplevel.unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
