//! The GitHub job report against the strict fake GitHub: a job acquired
//! through Solstice's own client (JIT runner, token exchange, broker,
//! `acquirejob`, first renewal), then reported by
//! `forge::github::report` while events come in as the executor sends them.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use solstice::events::{Conclusion, EventSink, JobEvent, LineKind, Phase};
use solstice::forge::github::auth::{RestCredentials, RunnerTokens, parse_jit_config};
use solstice::forge::github::broker::{Agent, Broker, BrokerMessage, RunnerStatus};
use solstice::forge::github::job::JobEnvelope;
use solstice::forge::github::report::{self, ReportOptions};
use solstice::forge::github::rest::Rest;
use solstice::forge::github::{message, run, translate};
use solstice::forge::{MemorySpool, TaskReport};
use solstice::secret::Secret;
use solstice::testing::fake_github::{FakeGithub, FakeGithubJob, FakeGithubOptions, FakeJobState};
use tokio_util::sync::CancellationToken;

const PAT: &str = "github_pat_report_0123456789";

/// A started fake with one job for label `deb`, acquired and renewed once
/// as the pool does it: the fake, the job's index and its envelope.
async fn acquired(job: FakeGithubJob) -> (FakeGithub, u64, JobEnvelope, reqwest::Client) {
    let fake = FakeGithub::start(FakeGithubOptions {
        poll_hold: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .unwrap();
    fake.add_token(PAT);
    let http = reqwest::Client::builder()
        .user_agent("solstice-test")
        .build()
        .unwrap();
    let rest = Rest::new(
        http.clone(),
        &fake.api_url(),
        "repos/octo-org/hello",
        RestCredentials::Token(Secret::new(PAT)),
    );
    let labels = vec!["self-hosted".to_string(), "deb".to_string()];
    let runner = rest
        .generate_jitconfig("r-deb-00000001", 1, &labels)
        .await
        .unwrap();
    let jit = parse_jit_config(&runner.jit_config).unwrap();
    let tokens = Arc::new(RunnerTokens::new(
        http.clone(),
        jit.oauth.clone(),
        Arc::new(jit.key),
    ));
    let broker = Broker::new(
        http.clone(),
        &jit.runner.broker_url,
        tokens.clone(),
        Agent {
            id: jit.runner.agent_id,
            name: jit.runner.agent_name.clone(),
            version: "2.336.0".into(),
            os: "Linux",
            arch: "X64",
        },
    );
    let session = broker.create_session("test").await.unwrap();
    let index = fake.enqueue(job);
    let reference = loop {
        if let Some(BrokerMessage::JobRequest(r)) = broker
            .get_message(&session, RunnerStatus::Online)
            .await
            .unwrap()
        {
            break r;
        }
    };
    if reference.should_acknowledge {
        broker
            .acknowledge(&session, RunnerStatus::Online, &reference.runner_request_id)
            .await
            .unwrap();
    }
    let token = tokens.get().await.unwrap();
    let body = run::acquire_job(
        &http,
        &reference.run_service_url,
        &token,
        &reference.runner_request_id,
        reference.billing_owner_id.as_deref(),
    )
    .await
    .unwrap();
    let msg = message::parse_message(&body).unwrap();
    let envelope = translate::envelope(&msg).unwrap();
    run::renew_job(
        &http,
        &envelope.run_service_url,
        &envelope.job_token,
        &envelope.plan_id,
        &envelope.job_id,
    )
    .await
    .unwrap();
    (fake, index, envelope, http)
}

fn options() -> ReportOptions {
    ReportOptions {
        renew_period: Duration::from_millis(200),
        complete_pause: Duration::from_millis(50),
        results_pause: Duration::from_millis(50),
        tick: Duration::from_millis(50),
        feed_interval: Duration::from_millis(50),
        ..ReportOptions::default()
    }
}

fn line(step: Option<usize>, text: &str) -> JobEvent {
    JobEvent::Line {
        step,
        kind: LineKind::Stdout,
        text: text.into(),
    }
}

fn finished(index: usize, c: Conclusion) -> JobEvent {
    JobEvent::StepFinished {
        index,
        outcome: c,
        conclusion: c,
        duration: Duration::from_millis(10),
    }
}

#[tokio::test]
async fn a_job_report_passes_the_strict_fake() {
    let job = FakeGithubJob::new(&["self-hosted", "deb"])
        .run("echo one")
        .run("echo two")
        .output("answer", "${{ steps.x.outputs.y }}");
    let (fake, index, envelope, http) = acquired(job).await;
    let spool = Arc::new(MemorySpool::new());
    let report = report::start(envelope, http, spool, CancellationToken::new(), options());
    let runner = {
        let r = report.clone();
        tokio::spawn(async move { r.run(CancellationToken::new()).await })
    };
    report.emit(JobEvent::Phase {
        phase: Phase::Boot,
        detail: "deb".into(),
    });
    report.emit(JobEvent::StepStarted {
        index: 0,
        name: "Run echo one".into(),
    });
    report.emit(line(Some(0), "one"));
    // A token GitHub's mask regexes cover (the job message's `mask`).
    report.emit(line(Some(0), &format!("ghp_{}", "a".repeat(36))));
    report.emit(finished(0, Conclusion::Success));
    report.emit(JobEvent::StepStarted {
        index: 1,
        name: "Run echo two".into(),
    });
    report.emit(line(Some(1), "two"));
    report.emit(JobEvent::StepSummary {
        index: 1,
        markdown: "## two\n".into(),
    });
    report.emit(finished(1, Conclusion::Success));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut outputs = IndexMap::new();
    outputs.insert("answer".to_string(), "42".to_string());
    report.close(Conclusion::Success, &outputs, None);
    runner.await.unwrap().unwrap();

    let snap = fake
        .wait_job_final(index, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(fake.violations(), Vec::<String>::new());
    assert_eq!(snap.state, FakeJobState::Completed);
    assert_eq!(snap.conclusion.as_deref(), Some("succeeded"));
    assert_eq!(snap.outputs.get("answer").map(String::as_str), Some("42"));
    assert!(
        snap.renewals >= 2,
        "renewed while running: {}",
        snap.renewals
    );
    let ids = snap.step_ids.clone();
    assert_eq!(snap.step_log_lines.get(&ids[0]), Some(&2));
    assert_eq!(snap.step_log_lines.get(&ids[1]), Some(&1));
    let log0 = &snap.step_logs[&ids[0]];
    assert!(log0.contains(" one\n") && log0.contains("***"), "{log0}");
    assert!(!log0.contains("ghp_"), "{log0}");
    assert_eq!(
        snap.step_summaries.get(&ids[1]).map(String::as_str),
        Some("## two\n")
    );
    let job_log = snap.job_log.clone().unwrap();
    assert!(job_log.contains(" Booting: deb\n"), "{job_log}");
    assert_eq!(job_log.lines().count(), 1 + 1 + 2 + 1);
    // The live feed got the step lines, masked.
    let fed: Vec<String> = snap
        .feed_frames
        .iter()
        .flat_map(|f| f["value"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert!(fed.iter().any(|l| l == "one"), "{fed:?}");
    assert!(!fed.iter().any(|l| l.contains("ghp_")), "{fed:?}");
    let latest = snap.latest_steps();
    for id in &ids {
        assert_eq!(latest[id]["status"], 6, "{latest:?}");
        assert_eq!(latest[id]["conclusion"], 2, "{latest:?}");
    }
}

#[tokio::test]
async fn renew_404_abandons_the_job_at_the_fake() {
    let job = FakeGithubJob::new(&["self-hosted", "deb"]).run("sleep 100");
    let (fake, index, envelope, http) = acquired(job).await;
    let report = report::start(
        envelope,
        http,
        Arc::new(MemorySpool::new()),
        CancellationToken::new(),
        options(),
    );
    report.emit(JobEvent::StepStarted {
        index: 0,
        name: "sleep".into(),
    });
    fake.set_renew_404(index);
    let cancel = CancellationToken::new();
    let e = report.run(cancel.clone()).await.unwrap_err();
    assert!(e.is_task_gone(), "{e}");
    assert!(cancel.is_cancelled());
    let snap = fake.job(index).unwrap();
    assert!(snap.complete_body.is_none());
    assert_eq!(fake.violations(), Vec::<String>::new());
}
