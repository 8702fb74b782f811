//! `solstice exec`: run one job of a workflow file in fresh VMs (one per matrix
//! combination), streaming the log to the terminal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indexmap::IndexMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::ExecArgs;
use super::error::{CliError, Exit};
use super::term::TerminalSink;
use crate::events::Conclusion;
use crate::job::{self, CheckoutSource, JobSpec, RunError, VmRun};
use crate::secret::Secret;
use crate::startup::{ConfigNotice, load_config_to, resolve_accel};
use crate::workflow::{self, Workflow};

/// Exit status of `solstice exec` (documented in docs/reference/cli.md),
/// from the one mapping [`Exit::code`].
pub mod exit {
    use super::Exit;
    pub const JOB_FAILED: u8 = Exit::JobFailed.code();
    pub const USAGE: u8 = Exit::Usage.code();
    pub const INFRA: u8 = Exit::Infra.code();
    /// The async runtime could not start (any command that runs one).
    pub const NO_RUNTIME: u8 = Exit::NoRuntime.code();
    pub const INTERRUPTED: u8 = Exit::Interrupted.code();
}

pub async fn exec_main(args: ExecArgs) -> Result<(), CliError> {
    let (_, config) = load_config_to(args.config.as_deref(), ConfigNotice::Stdout)?;
    crate::store::check_state_dir(&config.daemon.state_dir).map_err(CliError::usage)?;
    let file = args.workflow.display();
    let text = std::fs::read_to_string(&args.workflow)
        .map_err(|e| CliError::usage(format!("cannot read {file}: {e}")))?;
    let in_file = |e: &dyn std::fmt::Display| CliError::usage(format!("{file}: {e}"));
    let wf = workflow::parse_workflow(&text).map_err(|e| in_file(&e))?;
    let (job_id, job) = workflow::select_job(&wf, args.job.as_deref()).map_err(|e| in_file(&e))?;
    let combos = workflow::expand_matrix(job).map_err(|e| in_file(&e))?;
    // Everything that would only fail after a VM has booted fails now.
    let problems = crate::executor::preflight::preflight(&wf, job_id, job);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {}: {p}", args.workflow.display());
        }
        return Err(CliError::usage(format!(
            "{file} cannot run as it is ({} problem(s) above); no VM was started",
            problems.len()
        )));
    }
    if let Some(dir) = &args.workdir
        && !dir.is_dir()
    {
        return Err(CliError::usage(format!(
            "--workdir {}: no such directory (it is what actions/checkout copies into the guest)",
            dir.display()
        )));
    }
    let actions_url = match &args.actions_url {
        Some(u) => crate::actions::policy::HttpUrl::parse(u)
            .map_err(|e| CliError::usage(format!("--actions-url {e}")))?
            .as_str()
            .to_owned(),
        None => config.actions.default_url.clone(),
    };
    let action_cache = Arc::new(crate::actions::ActionCache::new(
        config
            .actions
            .cache_settings(&config.daemon.state_dir, [actions_url.as_str()]),
    ));
    let all = combos.clone();
    let combos = workflow::filter_matrix(combos, &args.matrix);
    if combos.is_empty() {
        let selectors: Vec<String> = args
            .matrix
            .iter()
            .map(|(k, v)| format!("--matrix {k}={v}"))
            .collect();
        let mut msg = format!(
            "no matrix combination of job `{job_id}` matches {} ({} combination{} in all):",
            selectors.join(" "),
            all.len(),
            if all.len() == 1 { "" } else { "s" }
        );
        for line in workflow::matrix::explain_no_match(&all, &args.matrix) {
            msg.push_str(&format!("\n  {line}"));
        }
        return Err(CliError::usage(msg));
    }
    // Choose every image before starting anything, so a bad label fails fast.
    let mut plan = Vec::new();
    for combo in &combos {
        let placed = crate::job::placement::place_workflow_job(
            &config.images,
            args.image.as_deref(),
            job,
            combo,
        )
        .map_err(CliError::usage)?;
        if let Some(notice) = &placed.notice {
            println!("[solstice] {notice}");
        }
        plan.push((combo, placed.image));
    }
    let accel = resolve_accel(&config).await?;
    let cache = if config.cache.enabled {
        let service = crate::cache_service::CacheService::start(config.cache.settings())
            .await
            .map_err(|e| {
                CliError::infra(format!(
                    "cannot start the cache service (`[cache]`; `enabled = false` turns it off): {e}"
                ))
            })?;
        Some(Arc::new(service))
    } else {
        None
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
                default_actions_url: Some(actions_url.clone()),
                actions: Some(action_cache.clone()),
                cache: cache.clone(),
                extra_contexts: Default::default(),
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
                debug: None,
                warm: None,
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
                Err(e) => return Err(CliError::infra(e)),
            }
        }
        Ok(())
    };
    let result = tokio::select! {
        r = run_all => r,
        // A second Ctrl-C: dropping the run future destroys the VM at once.
        _ = hard_stop.cancelled() => Err(CliError::reported(Exit::Interrupted)),
    };
    result?;
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("interrupted: the job was cancelled and its VM destroyed");
        return Err(CliError::reported(Exit::Interrupted));
    }
    if total > 1 {
        println!(
            "\n{} of {total} matrix combinations succeeded",
            total - failed
        );
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::reported(Exit::JobFailed))
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
