//! The state database on real files: open/refuse rules, jobs, VM records, the
//! log spool, start-up reconciliation with real processes, and `solstice status`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use solstice::secret::Secret;
use solstice::store::{
    self, APPLICATION_ID, CredentialsRow, HoldRow, JobState, JobTimings, LogRowData, NewJob,
    SCHEMA_VERSION, Store, StoreError, WarmKind, reconcile_vms, reconcile_warm,
};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn new_job(id: &str, task_id: i64, received_secs: u64) -> NewJob {
    NewJob {
        id: id.to_string(),
        forge: "codeberg".to_string(),
        task_id,
        job_name: "build".to_string(),
        repository: "owner/repo".to_string(),
        image: Some("debian".to_string()),
        received_at: UNIX_EPOCH + Duration::from_secs(received_secs),
    }
}

fn row(i: usize) -> LogRowData {
    LogRowData {
        time: UNIX_EPOCH + Duration::new(1_700_000_000 + i as u64, (i % 1000) as u32 * 1000),
        content: format!("line {i}"),
    }
}

// ---- opening ----

#[test]
fn new_database_is_private_wal_and_versioned() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a/b/solstice.db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.path(), path);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    // WAL in use while open, and its files are private too.
    let wal = tmp.path().join("a/b/solstice.db-wal");
    assert!(wal.exists());
    assert_eq!(mode(&wal), 0o600);

    let other = rusqlite::Connection::open(&path).unwrap();
    let jm: String = other
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "wal");
    let app: i32 = other
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(app, APPLICATION_ID);
    let v: i64 = other
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    drop(other);
    drop(store);

    // Reopening keeps the data and does not migrate again.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.unfinished_jobs().unwrap().len(), 1);
}

#[test]
fn a_looser_existing_file_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    drop(Store::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Store::open(&path).unwrap());
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn an_empty_file_becomes_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    std::fs::write(&path, b"").unwrap();
    let store = Store::open(&path).unwrap();
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
}

#[test]
fn a_foreign_sqlite_database_is_refused_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    // With another application id.
    let path = tmp.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA application_id = 42; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Foreign { found: 42, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a Solstice state database"), "{msg}");
    assert!(msg.contains("move the file away"), "{msg}");
    assert!(matches!(
        Store::open_read_only(&path).unwrap_err(),
        StoreError::Foreign { .. }
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was changed"
    );

    // Without an application id, but with tables of its own.
    let path = tmp.path().join("plain.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t(x);").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Foreign { found: 0, .. }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was changed"
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, content) in [
        (
            "text.db",
            b"these are not the bytes you are looking for\n".repeat(20),
        ),
        ("short.db", b"SQLite format 3\0 but short".to_vec()),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, &content).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::NotSqlite { .. }),
            "{name}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("move it away"), "{msg}");
        assert!(matches!(
            Store::open_read_only(&path).unwrap_err(),
            StoreError::NotSqlite { .. }
        ));
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name} was changed");
        assert!(!tmp.path().join(format!("{name}-wal")).exists());
    }
}

#[test]
fn a_damaged_database_is_refused_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    {
        let store = Store::open(&path).unwrap();
        store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    }
    // Keep the header, scribble over the schema page.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4096, "{}", bytes.len());
    for b in &mut bytes[100..4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt { .. } | StoreError::NotSqlite { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("restore a backup"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was changed");
}

#[test]
fn a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    drop(Store::open(&path).unwrap());
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    match &err {
        StoreError::TooNew {
            found, supported, ..
        } => {
            assert_eq!(*found, SCHEMA_VERSION + 1);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("run a newer Solstice"), "{msg}");
    assert!(matches!(
        Store::open_read_only(&path).unwrap_err(),
        StoreError::TooNew { .. }
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was changed"
    );
}

#[test]
fn an_older_schema_is_migrated_but_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    {
        // Ours, at schema version 0 (as if created before any migration).
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
    }
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::TooOld { found: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("start the daemon once"), "{err}");
    let store = Store::open(&path).unwrap();
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    drop(store);
    assert_eq!(
        Store::open_read_only(&path)
            .unwrap()
            .unfinished_jobs()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn read_only_open_works_beside_the_writer_and_cannot_write() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    assert!(matches!(
        Store::open_read_only(&path).unwrap_err(),
        StoreError::Missing { .. }
    ));
    assert!(!path.exists(), "a read-only open must not create the file");

    let writer = Store::open(&path).unwrap();
    writer.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.unfinished_jobs().unwrap().len(), 1);
    // New writes are visible to the reader.
    writer.insert_job(&new_job("task-a-2-x", 2, 1001)).unwrap();
    assert_eq!(reader.unfinished_jobs().unwrap().len(), 2);
    assert!(reader.insert_job(&new_job("task-a-3-x", 3, 1002)).is_err());
    drop(writer);
    // And after the writer closed (WAL checkpointed and removed).
    drop(reader);
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.recent_jobs(10).unwrap().len(), 2);
}

// ---- credentials and jobs ----

#[test]
fn credentials_round_trip_and_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
    assert_eq!(store.get_credentials("codeberg").unwrap(), None);
    let mut creds = CredentialsRow {
        url: "https://codeberg.org".into(),
        uuid: "6a3d6a5c-0000-4000-8000-000000000001".into(),
        token: Secret::new("s3cr3t-token"),
        runner_id: 17,
        declared_labels: vec!["debian".into(), "linux".into()],
    };
    store.save_credentials("codeberg", &creds).unwrap();
    assert_eq!(
        store.get_credentials("codeberg").unwrap(),
        Some(creds.clone())
    );
    assert_eq!(store.get_credentials("other").unwrap(), None);
    creds.token = Secret::new("new-token");
    creds.declared_labels.clear();
    store.save_credentials("codeberg", &creds).unwrap();
    let got = store.get_credentials("codeberg").unwrap().unwrap();
    assert_eq!(got.token.expose(), "new-token");
    assert!(got.declared_labels.is_empty());
    assert!(!format!("{got:?}").contains("new-token"));
}

#[test]
fn job_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    let store = Store::open(&path).unwrap();
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    store.insert_job(&new_job("task-a-2-x", 2, 1001)).unwrap();
    store.insert_job(&new_job("task-a-3-x", 3, 1002)).unwrap();
    assert!(store.insert_job(&new_job("task-a-1-x", 1, 1000)).is_err());

    let j = store.job("task-a-1-x").unwrap().unwrap();
    assert_eq!(j.state, JobState::Received);
    assert_eq!(j.task_id, 1);
    assert_eq!(j.image.as_deref(), Some("debian"));
    assert_eq!(j.received_at, UNIX_EPOCH + Duration::from_secs(1000));
    assert!(!j.reported);
    assert_eq!(j.result, None);

    store
        .set_job_state("task-a-1-x", JobState::Provisioning)
        .unwrap();
    store
        .set_job_state("task-a-2-x", JobState::Running)
        .unwrap();
    store.set_job_image("task-a-2-x", "tiny").unwrap();
    store.set_job_steps("task-a-2-x", 4).unwrap();
    store
        .record_timings(
            "task-a-2-x",
            &JobTimings {
                provision_ms: Some(300),
                boot_ms: Some(9000),
                ..Default::default()
            },
        )
        .unwrap();
    // Later segments keep the earlier ones.
    store
        .record_timings(
            "task-a-2-x",
            &JobTimings {
                ssh_ready_ms: Some(500),
                first_step_ms: Some(200),
                ..Default::default()
            },
        )
        .unwrap();
    let j = store.job("task-a-2-x").unwrap().unwrap();
    assert_eq!(j.image.as_deref(), Some("tiny"));
    assert_eq!(j.n_steps, Some(4));
    assert_eq!(
        j.timings,
        JobTimings {
            provision_ms: Some(300),
            boot_ms: Some(9000),
            ssh_ready_ms: Some(500),
            first_step_ms: Some(200),
        }
    );
    assert_eq!(j.timings.to_first_step_ms(), Some(10_000));

    let ids = |rows: Vec<store::JobRow>| rows.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(store.running_jobs().unwrap()), ["task-a-2-x"]);
    assert_eq!(
        ids(store.unfinished_jobs().unwrap()),
        ["task-a-1-x", "task-a-2-x", "task-a-3-x"]
    );

    let done = UNIX_EPOCH + Duration::from_secs(1100);
    store.finish_job("task-a-2-x", "success", done).unwrap();
    store
        .finish_job("task-a-1-x", "cancelled", done + Duration::from_secs(1))
        .unwrap();
    assert_eq!(ids(store.unfinished_jobs().unwrap()), ["task-a-3-x"]);
    assert!(store.running_jobs().unwrap().is_empty());
    assert_eq!(
        ids(store.recent_jobs(10).unwrap()),
        ["task-a-3-x", "task-a-2-x", "task-a-1-x"]
    );
    assert_eq!(ids(store.recent_jobs(1).unwrap()), ["task-a-3-x"]);
    assert_eq!(
        ids(store.recent_finished_jobs(10).unwrap()),
        ["task-a-1-x", "task-a-2-x"]
    );
    let j = store.job("task-a-2-x").unwrap().unwrap();
    assert_eq!(j.state, JobState::Finished);
    assert_eq!(j.result.as_deref(), Some("success"));
    assert_eq!(j.duration(), Some(Duration::from_secs(99)));

    // Crash before the final report: still to report after a restart.
    assert_eq!(
        ids(store.unreported_finished_jobs().unwrap()),
        ["task-a-2-x", "task-a-1-x"]
    );
    store.mark_reported("task-a-2-x").unwrap();
    std::mem::forget(store); // no orderly close, as in a SIGKILL
    let store = Store::open(&path).unwrap();
    assert_eq!(
        ids(store.unreported_finished_jobs().unwrap()),
        ["task-a-1-x"]
    );

    for err in [
        store.set_job_state("nope", JobState::Running),
        store.set_job_steps("nope", 1),
        store.finish_job("nope", "success", done),
        store.mark_reported("nope"),
        store.record_timings("nope", &JobTimings::default()),
    ] {
        let err = err.unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownJob { ref id } if id == "nope"),
            "{err:?}"
        );
    }

    // Pruning keeps unfinished, unreported and the newest finished jobs.
    store.mark_reported("task-a-1-x").unwrap();
    assert_eq!(store.prune_finished_jobs(1).unwrap(), 1);
    assert_eq!(
        ids(store.recent_jobs(10).unwrap()),
        ["task-a-3-x", "task-a-1-x"]
    );
}

#[test]
fn vm_records() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
    let dir = tmp.path().join("jobs/task-a-1-x");
    assert!(matches!(
        store.record_vm("task-a-1-x", &dir).unwrap_err(),
        StoreError::UnknownJob { .. }
    ));
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    store.record_vm("task-a-1-x", &dir).unwrap();
    let vms = store.vm_records().unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].dir, dir);
    assert_eq!(vms[0].pid, None);
    store.record_vm_process("task-a-1-x", 4242, 2222).unwrap();
    let vms = store.vm_records().unwrap();
    assert_eq!((vms[0].pid, vms[0].ssh_port), (Some(4242), Some(2222)));
    assert!(store.record_vm_process("nope", 1, 1).is_err());
    store.forget_vm("task-a-1-x").unwrap();
    assert!(store.vm_records().unwrap().is_empty());
}

// ---- VMs kept for debug SSH ----

fn hold(job_id: &str, repository: &str, expires_secs: u64) -> HoldRow {
    HoldRow {
        job_id: job_id.to_string(),
        forge: "codeberg".to_string(),
        repository: repository.to_string(),
        actor: "alice".to_string(),
        armed_at: UNIX_EPOCH + Duration::from_secs(expires_secs.saturating_sub(1800)),
        expires_at: UNIX_EPOCH + Duration::from_secs(expires_secs),
    }
}

/// Finishes a job with `failure`, reported to the forge (as a held job is).
fn finish_reported(store: &Store, id: &str, at_secs: u64) {
    store
        .finish_job(id, "failure", UNIX_EPOCH + Duration::from_secs(at_secs))
        .unwrap();
    store.mark_reported(id).unwrap();
}

#[test]
fn held_vms_are_recorded_listed_by_expiry_and_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    let store = Store::open(&path).unwrap();
    assert!(store.holds().unwrap().is_empty());
    let err = store
        .record_hold(&hold("task-a-1-x", "o/one", 5000))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownJob { ref id } if id == "task-a-1-x"),
        "{err:?}"
    );
    for (i, id) in ["task-a-1-x", "task-a-2-x", "task-a-3-x"]
        .iter()
        .enumerate()
    {
        store.insert_job(&new_job(id, i as i64, 1000)).unwrap();
        finish_reported(&store, id, 1100);
    }
    store
        .record_hold(&hold("task-a-1-x", "o/one", 5000))
        .unwrap();
    store
        .record_hold(&hold("task-a-2-x", "o/two", 4000))
        .unwrap();
    let holds = store.holds().unwrap();
    assert_eq!(
        holds,
        [
            hold("task-a-2-x", "o/two", 4000),
            hold("task-a-1-x", "o/one", 5000)
        ]
    );
    // Recording again replaces.
    let mut again = hold("task-a-1-x", "o/one", 3000);
    again.actor = "bob".into();
    store.record_hold(&again).unwrap();
    assert_eq!(store.holds().unwrap()[0], again);
    assert_eq!(store.holds().unwrap().len(), 2);

    // A reader (`solstice status`) sees them.
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.holds().unwrap().len(), 2);
    assert!(
        reader
            .record_hold(&hold("task-a-3-x", "o/three", 1))
            .is_err()
    );
    assert!(reader.clear_holds().is_err());

    store.forget_hold("task-a-2-x").unwrap();
    store.forget_hold("task-a-2-x").unwrap();
    store.forget_hold("nope").unwrap();
    assert_eq!(store.holds().unwrap(), [again]);
    store
        .record_hold(&hold("task-a-3-x", "o/three", 6000))
        .unwrap();
    assert_eq!(store.clear_holds().unwrap(), 2);
    assert_eq!(store.clear_holds().unwrap(), 0);
    assert!(reader.holds().unwrap().is_empty());
}

#[test]
fn pruning_keeps_the_jobs_of_held_and_recorded_vms() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
    let ids = ["task-a-1-x", "task-a-2-x", "task-a-3-x", "task-a-4-x"];
    for (i, id) in ids.iter().enumerate() {
        store.insert_job(&new_job(id, i as i64, 1000)).unwrap();
        finish_reported(&store, id, 1100 + i as u64);
    }
    // Job 1: held, its VM recorded (as while the window is open).
    store
        .record_vm("task-a-1-x", &tmp.path().join("jobs/task-a-1-x"))
        .unwrap();
    store
        .record_hold(&hold("task-a-1-x", "o/one", 5000))
        .unwrap();
    // Job 2: a hold row without a VM record (the VM is destroyed, the row
    // not yet forgotten).
    store
        .record_hold(&hold("task-a-2-x", "o/two", 5000))
        .unwrap();
    // Job 3: only a VM record.
    store
        .record_vm("task-a-3-x", &tmp.path().join("jobs/task-a-3-x"))
        .unwrap();

    // Keep none of the finished jobs: only job 4 may go.
    assert_eq!(store.prune_finished_jobs(0).unwrap(), 1);
    let mut left: Vec<String> = store
        .recent_jobs(10)
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    left.sort();
    assert_eq!(left, ["task-a-1-x", "task-a-2-x", "task-a-3-x"]);

    // Once forgotten, they are pruned like any other job.
    store.forget_hold("task-a-1-x").unwrap();
    store.forget_vm("task-a-1-x").unwrap();
    store.forget_hold("task-a-2-x").unwrap();
    store.forget_vm("task-a-3-x").unwrap();
    assert_eq!(store.prune_finished_jobs(0).unwrap(), 3);
    assert!(store.recent_jobs(10).unwrap().is_empty());
}

#[test]
fn a_version_2_database_gains_the_held_vms_table_and_keeps_its_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    {
        let store = Store::open(&path).unwrap();
        store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    }
    {
        // As a release with schema version 2 left it.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TABLE debug_holds; DROP TABLE warm_vms; PRAGMA user_version = 2;")
            .unwrap();
    }
    assert!(matches!(
        Store::open_read_only(&path).unwrap_err(),
        StoreError::TooOld { found: 2, .. }
    ));
    let store = Store::open(&path).unwrap();
    assert!(store.job("task-a-1-x").unwrap().is_some());
    assert!(store.holds().unwrap().is_empty());
    store
        .record_hold(&hold("task-a-1-x", "o/one", 5000))
        .unwrap();
    drop(store);
    assert_eq!(
        Store::open_read_only(&path).unwrap().holds().unwrap().len(),
        1
    );
}

#[test]
fn a_version_3_database_gains_the_warm_guests_table_and_keeps_its_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    {
        let store = Store::open(&path).unwrap();
        store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
        store
            .record_hold(&hold("task-a-1-x", "o/one", 5000))
            .unwrap();
    }
    {
        // As a release with schema version 3 left it.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TABLE warm_vms; PRAGMA user_version = 3;")
            .unwrap();
    }
    assert!(matches!(
        Store::open_read_only(&path).unwrap_err(),
        StoreError::TooOld { found: 3, .. }
    ));
    let store = Store::open(&path).unwrap();
    assert_eq!(store.holds().unwrap().len(), 1);
    assert!(store.warm_rows().unwrap().is_empty());
    store
        .record_warm(
            "w-tiny-00000001",
            "tiny",
            WarmKind::Booted,
            &tmp.path().join("warm/w-tiny-00000001"),
        )
        .unwrap();
    drop(store);
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.warm_rows().unwrap().len(), 1);
    assert_eq!(SCHEMA_VERSION, 4);
}

// ---- the log spool ----

#[test]
fn log_rows_spool_ack_and_survive_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    let store = Store::open(&path).unwrap();
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    store.insert_job(&new_job("task-a-2-x", 2, 1000)).unwrap();
    assert_eq!(store.log_end("task-a-1-x").unwrap(), 0);
    assert_eq!(store.log_end("unknown").unwrap(), 0);

    let rows: Vec<LogRowData> = (0..10).map(row).collect();
    assert_eq!(
        store.append_log_rows("task-a-1-x", 0, &rows[..6]).unwrap(),
        6
    );
    assert_eq!(
        store.append_log_rows("task-a-1-x", 6, &rows[6..]).unwrap(),
        10
    );
    store.append_log_rows("task-a-2-x", 0, &rows[..2]).unwrap();
    assert_eq!(store.log_end("task-a-1-x").unwrap(), 10);
    // The same index twice is a bug in the caller, not silently dropped.
    assert!(store.append_log_rows("task-a-1-x", 9, &rows[..1]).is_err());
    // Log rows belong to a known job.
    assert!(store.append_log_rows("unknown", 0, &rows[..1]).is_err());

    let got = store.log_rows("task-a-1-x", 0, 100, usize::MAX).unwrap();
    assert_eq!(got.len(), 10);
    for (i, (idx, data)) in got.iter().enumerate() {
        assert_eq!(*idx, i as i64);
        assert_eq!(data, &rows[i], "timestamps and content round-trip");
    }
    let got = store.log_rows("task-a-1-x", 3, 4, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 4, 5, 6]);
    // "line N" is 6 bytes: 13 bytes hold two rows.
    let got = store.log_rows("task-a-1-x", 0, 100, 13).unwrap();
    assert_eq!(got.len(), 2);
    // A row larger than the byte limit still comes out alone.
    let got = store.log_rows("task-a-1-x", 0, 100, 1).unwrap();
    assert_eq!(got.len(), 1);

    store.ack_log("task-a-1-x", 7).unwrap();
    let got = store.log_rows("task-a-1-x", 0, 100, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [7, 8, 9]);
    assert_eq!(store.job("task-a-1-x").unwrap().unwrap().log_ack, 7);
    // An older ack does not move it back.
    store.ack_log("task-a-1-x", 5).unwrap();
    assert_eq!(store.job("task-a-1-x").unwrap().unwrap().log_ack, 7);
    // Everything acked: the end is the ack.
    store.ack_log("task-a-1-x", 10).unwrap();
    assert!(
        store
            .log_rows("task-a-1-x", 0, 100, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.log_end("task-a-1-x").unwrap(), 10);
    assert!(matches!(
        store.ack_log("unknown", 1).unwrap_err(),
        StoreError::UnknownJob { .. }
    ));

    store.append_log_rows("task-a-1-x", 10, &rows[..3]).unwrap();
    std::mem::forget(store); // no orderly close, as in a SIGKILL
    let store = Store::open(&path).unwrap();
    assert_eq!(store.log_end("task-a-1-x").unwrap(), 13);
    let got = store.log_rows("task-a-1-x", 0, 100, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [10, 11, 12]);

    store.delete_job_logs("task-a-1-x").unwrap();
    assert!(
        store
            .log_rows("task-a-1-x", 0, 100, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.log_end("task-a-1-x").unwrap(), 10, "the ack remains");
    assert_eq!(
        store
            .log_rows("task-a-2-x", 0, 100, usize::MAX)
            .unwrap()
            .len(),
        2,
        "other jobs keep their rows"
    );
}

#[test]
fn concurrent_writers_share_one_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("solstice.db")).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let id = format!("task-a-{t}-x");
                store.insert_job(&new_job(&id, t, 1000)).unwrap();
                let rows: Vec<LogRowData> = (0..50).map(row).collect();
                let mut end = 0;
                for chunk in rows.chunks(7) {
                    end = store.append_log_rows(&id, end, chunk).unwrap();
                }
                store.finish_job(&id, "success", SystemTime::now()).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4 {
        assert_eq!(store.log_end(&format!("task-a-{t}-x")).unwrap(), 50);
    }
    assert_eq!(store.recent_finished_jobs(10).unwrap().len(), 4);
}

#[test]
fn appending_a_million_log_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    const TOTAL: usize = 1_000_000;
    const BATCH: usize = 1000;
    let pad = "x".repeat(90);
    let t0 = Instant::now();
    let mut end = 0i64;
    let mut batch = Vec::with_capacity(BATCH);
    for b in 0..TOTAL / BATCH {
        batch.clear();
        for i in 0..BATCH {
            batch.push(LogRowData {
                time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                content: format!("{:08} {pad}", b * BATCH + i),
            });
        }
        end = store.append_log_rows("task-a-1-x", end, &batch).unwrap();
    }
    let elapsed = t0.elapsed();
    println!(
        "appended {TOTAL} rows of ~100 bytes in {elapsed:.2?}: {:.0} rows/s ({} build)",
        TOTAL as f64 / elapsed.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert_eq!(end, TOTAL as i64);
    assert_eq!(store.log_end("task-a-1-x").unwrap(), TOTAL as i64);
    let tail = store
        .log_rows("task-a-1-x", TOTAL as i64 - 1, 10, usize::MAX)
        .unwrap();
    assert_eq!(tail.len(), 1);
    assert!(tail[0].1.content.starts_with("00999999 "));
    let t1 = Instant::now();
    store.ack_log("task-a-1-x", TOTAL as i64).unwrap();
    println!("acknowledged (deleted) them in {:.2?}", t1.elapsed());
    assert!(
        store
            .log_rows("task-a-1-x", 0, 1, usize::MAX)
            .unwrap()
            .is_empty()
    );
}

// ---- reconcile ----

/// A real `sleep` whose argv[0] names a file in `dir`, as QEMU's argv names its sockets.
fn sleeper(dir: &Path) -> std::process::Child {
    Command::new("sleep")
        .arg0(dir.join("qmp.sock"))
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn killed_by_sigkill(child: &mut std::process::Child) -> bool {
    use std::os::unix::process::ExitStatusExt;
    // Reap it (reconcile only waits until it is a zombie).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.signal() == Some(9);
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for_cmdline(pid: u32, needle: &str) {
    // The child may not have exec'd yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(p) = solstice::vm::process::process(pid) {
            if p.args_lossy().iter().any(|a| a.contains(needle)) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("process {pid} never showed {needle}");
}

#[test]
fn reconcile_kills_recorded_vms_removes_their_dirs_and_strays() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
    let jobs = tmp.path().join("jobs");
    std::fs::create_dir(&jobs).unwrap();
    let mkdir = |name: &str| -> PathBuf {
        let d = jobs.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("overlay.qcow2"), b"x").unwrap();
        d
    };

    // 1. Recorded with its pid: killed, removed, forgotten.
    let dir1 = mkdir("task-a-1-x");
    let mut p1 = sleeper(&dir1);
    wait_for_cmdline(p1.id(), "task-a-1-x");
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    store.record_vm("task-a-1-x", &dir1).unwrap();
    store
        .record_vm_process("task-a-1-x", p1.id(), 2222)
        .unwrap();

    // 2. Recorded, crashed before its pid was recorded: found by the /proc scan.
    let dir2 = mkdir("task-a-2-x");
    let mut p2 = sleeper(&dir2);
    wait_for_cmdline(p2.id(), "task-a-2-x");
    store.insert_job(&new_job("task-a-2-x", 2, 1000)).unwrap();
    store.record_vm("task-a-2-x", &dir2).unwrap();

    // 3. Recorded pid now belongs to another program (pid reuse): spared.
    let dir3 = mkdir("task-a-3-x");
    let mut innocent = sleeper(&tmp.path().join("elsewhere"));
    wait_for_cmdline(innocent.id(), "elsewhere");
    store.insert_job(&new_job("task-a-3-x", 3, 1000)).unwrap();
    store.record_vm("task-a-3-x", &dir3).unwrap();
    store
        .record_vm_process("task-a-3-x", innocent.id(), 2223)
        .unwrap();
    // A process of a job whose id only starts like job 3's is not job 3's.
    let dir3b = mkdir("task-a-3-xy");
    let mut p3b = sleeper(&dir3b);
    wait_for_cmdline(p3b.id(), "task-a-3-xy");
    store.insert_job(&new_job("task-a-3-xy", 33, 1000)).unwrap();
    store.record_vm("task-a-3-xy", &dir3b).unwrap();
    store
        .record_vm_process("task-a-3-xy", p3b.id(), 2224)
        .unwrap();

    // 4. Recorded, directory already gone and no process: just forgotten.
    store.insert_job(&new_job("task-a-4-x", 4, 1000)).unwrap();
    store
        .record_vm("task-a-4-x", &jobs.join("task-a-4-x"))
        .unwrap();

    // 5. A stray daemon job directory with a live process.
    let stray = mkdir("task-old-9-deadbeef");
    let mut p5 = sleeper(&stray);
    wait_for_cmdline(p5.id(), "task-old-9-deadbeef");

    // 6. Not ours to touch: exec/bench runs, other names, files, symlinks.
    let exec_dir = mkdir("exec-0123456789abcdef");
    let other_dir = mkdir("lost+found");
    std::fs::write(jobs.join("task-file-1-x"), b"a file").unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    std::os::unix::fs::symlink(&outside, jobs.join("task-link-1-x")).unwrap();

    // 7. A record whose directory is not named after its job: refused.
    store.insert_job(&new_job("task-a-7-x", 7, 1000)).unwrap();
    store.record_vm("task-a-7-x", tmp.path()).unwrap();

    let report = reconcile_vms(&store, &jobs);
    println!("{report:#?}");

    let mut killed: Vec<u32> = report.killed.iter().map(|k| k.pid).collect();
    killed.sort();
    let mut expected = vec![p1.id(), p2.id(), p3b.id(), p5.id()];
    expected.sort();
    assert_eq!(killed, expected);
    for (name, child) in [
        ("recorded", &mut p1),
        ("unrecorded pid", &mut p2),
        ("prefix-sharing", &mut p3b),
        ("stray", &mut p5),
    ] {
        assert!(killed_by_sigkill(child), "{name} was not SIGKILLed");
    }
    assert!(
        innocent.try_wait().unwrap().is_none(),
        "a reused pid was killed"
    );
    innocent.kill().unwrap();
    innocent.wait().unwrap();

    for d in [&dir1, &dir2, &dir3, &dir3b, &stray] {
        assert!(!d.exists(), "{} was left", d.display());
        assert!(report.removed_dirs.contains(d), "{}", d.display());
    }
    assert!(exec_dir.exists() && other_dir.exists());
    assert!(jobs.join("task-file-1-x").exists());
    assert!(jobs.join("task-link-1-x").exists());
    assert!(outside.join("keep").exists());
    assert!(tmp.path().join("solstice.db").exists());

    let mut forgotten = report.forgotten.clone();
    forgotten.sort();
    assert_eq!(
        forgotten,
        [
            "task-a-1-x",
            "task-a-2-x",
            "task-a-3-x",
            "task-a-3-xy",
            "task-a-4-x"
        ]
    );
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("task-a-7-x"));
    let left: Vec<String> = store
        .vm_records()
        .unwrap()
        .into_iter()
        .map(|v| v.job_id)
        .collect();
    assert_eq!(left, ["task-a-7-x"], "the refused record is kept");

    // A second run finds nothing more to do (but the same refusal).
    let again = reconcile_vms(&store, &jobs);
    assert!(again.killed.is_empty() && again.removed_dirs.is_empty());
    assert!(again.forgotten.is_empty());
    assert_eq!(again.problems.len(), 1);
    store.forget_vm("task-a-7-x").unwrap();
    assert!(reconcile_vms(&store, &jobs).is_empty());
    // A missing jobs directory is fine.
    assert!(reconcile_vms(&store, &tmp.path().join("none")).is_empty());
}

/// A VM held for debug SSH when the daemon was SIGKILLed: its job is
/// finished and reported, its VM record and its hold row remain. The next
/// start kills the QEMU and removes its directory like any leftover VM, then
/// forgets the hold; the job is pruned like any other afterwards.
#[test]
fn reconcile_kills_a_held_vm_left_by_a_crashed_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("solstice.db");
    let jobs = tmp.path().join("jobs");
    let dir = jobs.join("task-a-1-x");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("overlay.qcow2"), b"x").unwrap();
    let mut qemu = sleeper(&dir);
    wait_for_cmdline(qemu.id(), "task-a-1-x");

    let store = Store::open(&path).unwrap();
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    store.record_vm("task-a-1-x", &dir).unwrap();
    store
        .record_vm_process("task-a-1-x", qemu.id(), 2222)
        .unwrap();
    store
        .set_job_state("task-a-1-x", JobState::Running)
        .unwrap();
    // The job failed and was reported; its VM is kept.
    finish_reported(&store, "task-a-1-x", 1100);
    let expires = SystemTime::now() + Duration::from_secs(1800);
    store
        .record_hold(&HoldRow {
            expires_at: expires,
            armed_at: SystemTime::now(),
            ..hold("task-a-1-x", "o/one", 5000)
        })
        .unwrap();
    std::mem::forget(store); // SIGKILL: no orderly close

    let store = Store::open(&path).unwrap();
    assert!(store.unfinished_jobs().unwrap().is_empty());
    let report = reconcile_vms(&store, &jobs);
    println!("{report:#?}");
    assert_eq!(
        report.killed.iter().map(|k| k.pid).collect::<Vec<_>>(),
        [qemu.id()]
    );
    assert!(
        killed_by_sigkill(&mut qemu),
        "the held QEMU was not SIGKILLed"
    );
    assert!(!dir.exists());
    assert_eq!(report.forgotten, ["task-a-1-x"]);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(store.vm_records().unwrap().is_empty());
    // The hold row is dropped after the VMs are reconciled.
    assert_eq!(store.holds().unwrap().len(), 1);
    assert_eq!(store.clear_holds().unwrap(), 1);
    assert_eq!(store.prune_finished_jobs(0).unwrap(), 1);
}

/// Warm guests and templates left by a crashed daemon: every process that
/// names the warm directory (recorded or not, QEMU or pasta) is killed,
/// every entry of the directory removed (symbolic links, not their
/// targets), every warm record forgotten. Processes that only look alike
/// are spared.
#[test]
fn reconcile_warm_kills_every_warm_guest_and_empties_the_warm_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
    let warm = tmp.path().join("warm");
    std::fs::create_dir(&warm).unwrap();
    let mkdir = |name: &str| -> PathBuf {
        let d = warm.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("overlay.qcow2"), b"x").unwrap();
        d
    };

    // 1. A ready pool guest, recorded with its pid.
    let d1 = mkdir("w-tiny-00000001");
    let mut p1 = sleeper(&d1);
    wait_for_cmdline(p1.id(), "w-tiny-00000001");
    store
        .record_warm("w-tiny-00000001", "tiny", WarmKind::Booted, &d1)
        .unwrap();
    store
        .record_warm_process("w-tiny-00000001", p1.id(), 2222)
        .unwrap();
    store.set_warm_ready("w-tiny-00000001").unwrap();
    // 2. A starting one, crashed before its pid was recorded, and its
    //    network helper (pasta names the same directory).
    let d2 = mkdir("w-tiny-00000002");
    let mut p2 = sleeper(&d2);
    let mut p2_pasta = sleeper(&d2.join("pasta"));
    wait_for_cmdline(p2.id(), "w-tiny-00000002");
    wait_for_cmdline(p2_pasta.id(), "w-tiny-00000002");
    store
        .record_warm("w-tiny-00000002", "tiny", WarmKind::Restored, &d2)
        .unwrap();
    // 3. A template, not recorded, with a frozen (0400) overlay and its
    //    guest still running.
    let d3 = mkdir("t-tiny-00000003");
    std::fs::set_permissions(
        d3.join("overlay.qcow2"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let mut p3 = sleeper(&d3);
    wait_for_cmdline(p3.id(), "t-tiny-00000003");
    // 4. Recorded, directory already gone, no process: just forgotten.
    store
        .record_warm(
            "w-tiny-00000004",
            "tiny",
            WarmKind::Booted,
            &warm.join("w-tiny-00000004"),
        )
        .unwrap();
    // 5. Strays: a file, and a symbolic link to a directory outside.
    std::fs::write(warm.join("state.tmp"), b"x").unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    std::os::unix::fs::symlink(&outside, warm.join("w-link-00000005")).unwrap();
    // 6. Look-alikes that are not under the warm directory.
    let mut warmer = sleeper(&tmp.path().join("warmer/w-tiny-00000001"));
    let mut dotted = sleeper(&tmp.path().join("warm.old"));
    wait_for_cmdline(warmer.id(), "warmer");
    wait_for_cmdline(dotted.id(), "warm.old");

    let report = reconcile_warm(&store, &warm);
    println!("{report:#?}");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let mut killed: Vec<u32> = report.killed.iter().map(|k| k.pid).collect();
    killed.sort();
    let mut expected = vec![p1.id(), p2.id(), p2_pasta.id(), p3.id()];
    expected.sort();
    assert_eq!(killed, expected, "each killed once");
    // The recorded guest is reported with its own directory.
    assert!(report.killed.contains(&store::KilledProcess {
        pid: p1.id(),
        dir: d1.clone()
    }));
    for (name, child) in [
        ("recorded", &mut p1),
        ("unrecorded pid", &mut p2),
        ("pasta", &mut p2_pasta),
        ("template", &mut p3),
    ] {
        assert!(killed_by_sigkill(child), "{name} was not SIGKILLed");
    }
    for (name, child) in [("warmer", &mut warmer), ("warm.old", &mut dotted)] {
        assert!(child.try_wait().unwrap().is_none(), "{name} was killed");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // The warm directory stays, empty; what a link pointed to stays.
    assert!(warm.is_dir());
    assert_eq!(std::fs::read_dir(&warm).unwrap().count(), 0);
    assert!(outside.join("keep").exists());
    assert_eq!(report.removed_dirs.len(), 5, "{:?}", report.removed_dirs);
    let mut forgotten = report.forgotten.clone();
    forgotten.sort();
    assert_eq!(
        forgotten,
        ["w-tiny-00000001", "w-tiny-00000002", "w-tiny-00000004"]
    );
    assert!(store.warm_rows().unwrap().is_empty());

    // A second run finds nothing to do; so does one without the directory.
    assert!(reconcile_warm(&store, &warm).is_empty());
    assert!(reconcile_warm(&store, &tmp.path().join("none")).is_empty());
}

/// A job took a warm guest, then the daemon was SIGKILLed: the guest's
/// directory had become the job's (`jobs/<job id>`), but its QEMU's command
/// line still names `warm/<id>`. The job reconciliation alone would remove
/// the directory under a running QEMU; the warm sweep, which the daemon runs
/// first, kills it, and the job reconciliation then removes the directory
/// and forgets the VM.
#[test]
fn a_job_that_took_a_warm_guest_is_cleaned_up_by_the_warm_sweep_then_the_job_reconcile() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
    let warm = tmp.path().join("warm");
    let jobs = tmp.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let guest = warm.join("w-tiny-0000000a");
    std::fs::create_dir_all(&guest).unwrap();
    let mut qemu = sleeper(&guest);
    wait_for_cmdline(qemu.id(), "w-tiny-0000000a");
    // Taken: the warm record goes, the directory moves, the job's VM record
    // names the new place and QEMU's pid.
    let job_dir = jobs.join("task-a-1-x");
    std::fs::rename(&guest, &job_dir).unwrap();
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    store.record_vm("task-a-1-x", &job_dir).unwrap();
    store
        .record_vm_process("task-a-1-x", qemu.id(), 2222)
        .unwrap();
    // Another pool guest was up too.
    let other = warm.join("w-tiny-0000000b");
    std::fs::create_dir_all(&other).unwrap();
    let mut other_qemu = sleeper(&other);
    wait_for_cmdline(other_qemu.id(), "w-tiny-0000000b");
    store
        .record_warm("w-tiny-0000000b", "tiny", WarmKind::Booted, &other)
        .unwrap();

    let warm_report = reconcile_warm(&store, &warm);
    println!("{warm_report:#?}");
    assert!(
        warm_report.problems.is_empty(),
        "{:?}",
        warm_report.problems
    );
    let mut killed: Vec<u32> = warm_report.killed.iter().map(|k| k.pid).collect();
    killed.sort();
    let mut expected = vec![qemu.id(), other_qemu.id()];
    expected.sort();
    assert_eq!(killed, expected);
    assert!(killed_by_sigkill(&mut qemu), "the job's QEMU survived");
    assert!(killed_by_sigkill(&mut other_qemu));
    assert!(!other.exists());
    // The job's directory is the job reconciliation's to remove.
    assert!(job_dir.exists());

    let vm_report = reconcile_vms(&store, &jobs);
    println!("{vm_report:#?}");
    assert!(vm_report.problems.is_empty(), "{:?}", vm_report.problems);
    assert!(vm_report.killed.is_empty());
    assert!(!job_dir.exists());
    assert_eq!(vm_report.forgotten, ["task-a-1-x"]);
    assert!(store.warm_rows().unwrap().is_empty());
    assert!(store.vm_records().unwrap().is_empty());
}

/// The real daemon, started over what a SIGKILLed one left: a ready warm
/// guest (recorded) and a guest a job had taken (its directory moved to
/// the job's, its command line still naming `warm/`). Before it serves, it
/// kills both, empties `warm/`, removes the job's directory and forgets
/// the records. The forge is unreachable: clean-up comes first anyway.
#[test]
fn the_daemon_cleans_up_warm_guests_a_killed_run_left_before_it_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let config = status_config(tmp.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let token = tmp.path().join("token");
    std::fs::write(&token, "some-registration-token\n").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    // No image has `warm` any more: what a previous run left is cleaned
    // up all the same (and no pool boots a guest here).
    text.push_str("[qemu]\naccel = \"tcg\"\n");
    text.push_str(&format!(
        "[forges.local]\nurl = {url:?}\nregistration_token_file = {token:?}\nfetch_interval_secs = 1\n"
    ));
    std::fs::write(&config, text).unwrap();
    let state = tmp.path().join("state");
    let warm = state.join("warm");
    let jobs = state.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();

    let store = Store::open(&store::db_path(&state)).unwrap();
    // A ready pool guest.
    let idle = warm.join("w-tiny-0000000a");
    std::fs::create_dir_all(&idle).unwrap();
    let mut idle_qemu = sleeper(&idle);
    wait_for_cmdline(idle_qemu.id(), "w-tiny-0000000a");
    store
        .record_warm("w-tiny-0000000a", "tiny", WarmKind::Booted, &idle)
        .unwrap();
    store
        .record_warm_process("w-tiny-0000000a", idle_qemu.id(), 40022)
        .unwrap();
    store.set_warm_ready("w-tiny-0000000a").unwrap();
    // A guest a running job took.
    let taken = warm.join("w-tiny-0000000b");
    std::fs::create_dir_all(&taken).unwrap();
    let mut job_qemu = sleeper(&taken);
    wait_for_cmdline(job_qemu.id(), "w-tiny-0000000b");
    let job_id = "task-local-1-0000000b";
    let job_dir = jobs.join(job_id);
    std::fs::rename(&taken, &job_dir).unwrap();
    let mut job = new_job(job_id, 1, 1000);
    job.forge = "local".into();
    store.insert_job(&job).unwrap();
    store.record_vm(job_id, &job_dir).unwrap();
    store
        .record_vm_process(job_id, job_qemu.id(), 40023)
        .unwrap();
    store.set_job_state(job_id, JobState::Running).unwrap();
    std::mem::forget(store); // SIGKILL: no orderly close

    let log = tmp.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(["run", "-c"])
        .arg(&config)
        .env("SOLSTICE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // Clean-up is done once the daemon tries the forge.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_text().contains("cannot reach the forge") {
        assert!(
            Instant::now() < deadline && daemon.try_wait().unwrap().is_none(),
            "the daemon never tried the forge:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = log_text();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = daemon.wait().unwrap();
    println!("{text}");
    assert!(status.success(), "{status:?}\n{text}");

    assert!(
        killed_by_sigkill(&mut idle_qemu),
        "the idle warm guest survived"
    );
    assert!(killed_by_sigkill(&mut job_qemu), "the taken guest survived");
    assert_eq!(
        text.matches("killed a warm guest's process left by a previous run")
            .count(),
        2,
        "{text}"
    );
    assert!(warm.is_dir());
    assert_eq!(std::fs::read_dir(&warm).unwrap().count(), 0);
    assert!(!job_dir.exists(), "the job's directory was left");
    assert!(!text.contains("ERROR"), "{text}");
    let store = Store::open(&store::db_path(&state)).unwrap();
    assert!(store.warm_rows().unwrap().is_empty());
    assert!(store.vm_records().unwrap().is_empty());
}

/// The whole path with a real pool guest: the daemon keeps one tiny guest
/// warm, is SIGKILLed while it is up (its QEMU dies with it), and the next
/// start removes its directory and record before it is ready; after an
/// orderly stop nothing is left under the state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_warm_guest_up_then_restart_leaves_no_orphan() {
    use crate::support::world::{SECRET, World, fake, offline};
    let forge = fake().await;
    let world = World::new();
    let cred = offline(&forge, &world, "fake", SECRET);
    world.configure(2, &[("fake", forge.url(), cred)], "");
    let text = std::fs::read_to_string(&world.config).unwrap();
    assert!(text.contains("[images.tiny]\n"), "{text}");
    std::fs::write(
        &world.config,
        text.replace("[images.tiny]\n", "[images.tiny]\nwarm = 1\n"),
    )
    .unwrap();
    let db = store::db_path(&world.state_dir());
    let ready_guest = || {
        Store::open_read_only(&db)
            .ok()
            .and_then(|s| s.warm_rows().ok())
            .and_then(|rows| {
                rows.into_iter().find(|r| {
                    r.ready
                        && r.pid.is_some_and(|p| {
                            solstice::vm::process::process(p).is_some_and(|i| {
                                i.args_lossy()
                                    .iter()
                                    .any(|a| a.contains(&*r.dir.to_string_lossy()))
                            })
                        })
                })
            })
    };

    let mut d = world.start();
    let deadline = Instant::now() + Duration::from_secs(240);
    let old = loop {
        if let Some(g) = ready_guest() {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "no warm guest became ready:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        old.dir.starts_with(world.state_dir().join("warm")),
        "{old:?}"
    );
    assert_eq!(old.image, "tiny");
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    drop(d);
    // Its QEMU dies with the daemon; its directory and record stay.
    let pid = old.pid.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while solstice::vm::process::process(pid).is_some_and(|p| !p.is_zombie() && !p.args.is_empty())
    {
        assert!(Instant::now() < deadline, "QEMU {pid} outlived the daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(old.dir.exists());

    let mut d2 = world.start();
    // Clean-up comes before READY=1.
    assert!(!old.dir.exists(), "{}", d2.log_text());
    let rows = Store::open_read_only(&db).unwrap().warm_rows().unwrap();
    assert!(rows.iter().all(|r| r.id != old.id), "{rows:?}");
    assert!(
        d2.log_text()
            .contains("removed a warm guest or template left by a previous run"),
        "{}",
        d2.log_text()
    );
    d2.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d2.wait_exit(Duration::from_secs(120)).success());
    world.assert_clean();
    let warm_left: Vec<_> = std::fs::read_dir(world.state_dir().join("warm"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(warm_left.is_empty(), "left in warm/: {warm_left:?}");
    assert!(
        Store::open_read_only(&db)
            .unwrap()
            .warm_rows()
            .unwrap()
            .is_empty()
    );
}

// ---- solstice status ----

fn status_config(dir: &Path) -> PathBuf {
    // The config is checked like any other: the image must be a real one.
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.join("tiny.qcow2"))
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let file = dir.join("solstice.toml");
    std::fs::write(
        &file,
        format!(
            "[daemon]\nstate_dir = \"{}\"\n[images.tiny]\npath = \"tiny.qcow2\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    file
}

fn solstice_status(config: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_solstice"))
        .arg("status")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env_remove("SOLSTICE_LOG")
        .output()
        .unwrap()
}

#[test]
fn status_without_state_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let config = status_config(tmp.path());
    let out = solstice_status(&config, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "No state yet: the daemon has not run with daemon.state_dir = {}",
            tmp.path().join("state").display()
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert!(
        !tmp.path().join("state").exists(),
        "status must not create state"
    );
}

#[test]
fn status_lists_running_and_recent_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = status_config(tmp.path());
    let store = Store::open(&store::db_path(&tmp.path().join("state"))).unwrap();
    let now = SystemTime::now();
    let secs_ago = |s: u64| now - Duration::from_secs(s);
    let mut running = new_job("task-codeberg-5-aaaa", 5, 0);
    running.received_at = secs_ago(75);
    running.job_name = "test (linux)".into();
    store.insert_job(&running).unwrap();
    store
        .set_job_state("task-codeberg-5-aaaa", JobState::Running)
        .unwrap();
    for (i, result) in ["success", "failure", "cancelled"].iter().enumerate() {
        let id = format!("task-codeberg-{i}-bbbb");
        let mut j = new_job(&id, i as i64, 0);
        j.received_at = secs_ago(3600 - 60 * i as u64);
        store.insert_job(&j).unwrap();
        store
            .record_timings(
                &id,
                &JobTimings {
                    provision_ms: Some(400),
                    boot_ms: Some(8000),
                    ssh_ready_ms: Some(1500),
                    first_step_ms: Some(100),
                },
            )
            .unwrap();
        store
            .finish_job(&id, result, secs_ago(3000 - 60 * i as u64))
            .unwrap();
        store.mark_reported(&id).unwrap();
    }
    // The daemon keeps running (and writing) while status reads.

    let out = solstice_status(&config, &["--limit", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(text.lines().next(), Some("Daemon: not running"));
    assert_eq!(lines[0], "In flight: 1");
    assert!(lines[1].starts_with("ID "), "{text}");
    let running_line = lines[2];
    for want in [
        "task-codeberg-5-aaaa",
        "codeberg",
        " 5 ",
        "owner/repo: test (linux)",
        "debian",
        "running",
        "1m15s",
    ] {
        assert!(running_line.contains(want), "{want} in {running_line}");
    }
    // Columns line up: each header starts where its values start.
    let col = |line: &str, word: &str| line.find(word).unwrap();
    assert_eq!(col(lines[1], "STATE"), col(running_line, "running"));
    assert_eq!(lines[4], "Recently finished: 2");
    let recent: Vec<&str> = lines[6..].to_vec();
    assert_eq!(recent.len(), 2, "{text}");
    assert!(recent[0].contains("task-codeberg-2-bbbb") && recent[0].contains("cancelled"));
    assert!(recent[1].contains("task-codeberg-1-bbbb") && recent[1].contains("failure"));
    assert!(
        recent[0].contains("10.0s"),
        "time to first step: {}",
        recent[0]
    );
    assert_eq!(col(lines[5], "RESULT"), col(recent[1], "failure"));

    let out = solstice_status(&config, &["--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["in_flight"].as_array().unwrap().len(), 1);
    assert_eq!(v["in_flight"][0]["id"], "task-codeberg-5-aaaa");
    assert_eq!(v["in_flight"][0]["state"], "running");
    assert_eq!(v["in_flight"][0]["task_id"], 5);
    let recent = v["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(recent[2]["result"], "success");
    assert_eq!(recent[2]["time_to_first_step_secs"], 10.0);
    assert_eq!(recent[2]["duration_secs"], 600.0);
    assert_eq!(recent[2]["reported"], true);
    drop(store);
}

#[test]
fn status_shows_held_debug_vms_with_their_remaining_time() {
    let tmp = tempfile::tempdir().unwrap();
    let config = status_config(tmp.path());
    let state = tmp.path().join("state");
    let store = Store::open(&store::db_path(&state)).unwrap();
    let now = SystemTime::now();
    for (i, (id, repository, left)) in [
        ("task-codeberg-21-cccc", "alice/widget", 23 * 60 + 10),
        ("task-codeberg-22-dddd", "ops/infra", 5 * 60 + 10),
    ]
    .into_iter()
    .enumerate()
    {
        let mut j = new_job(id, 21 + i as i64, 0);
        j.repository = repository.into();
        j.received_at = now - Duration::from_secs(600);
        store.insert_job(&j).unwrap();
        store
            .finish_job(id, "failure", now - Duration::from_secs(300))
            .unwrap();
        store.mark_reported(id).unwrap();
        store
            .record_hold(&HoldRow {
                job_id: id.into(),
                forge: "codeberg".into(),
                repository: repository.into(),
                actor: format!("actor{i}"),
                armed_at: now - Duration::from_secs(60),
                expires_at: now + Duration::from_secs(left),
            })
            .unwrap();
    }
    // A running daemon holds the state directory's lock.
    let lock = std::fs::File::create(state.join("solstice.lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();

    let out = solstice_status(&config, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Daemon: running");
    let at = lines
        .iter()
        .position(|l| *l == "Held for debug SSH: 2")
        .unwrap_or_else(|| panic!("no held VMs in\n{text}"));
    assert!(lines[at + 1].starts_with("ID "), "{text}");
    // Soonest expiry first.
    let (first, second) = (lines[at + 2], lines[at + 3]);
    for want in [
        "task-codeberg-22-dddd",
        "ops/infra",
        "actor1",
        "expires in 5 min (",
    ] {
        assert!(first.contains(want), "{want} in {first}");
    }
    for want in [
        "task-codeberg-21-cccc",
        "alice/widget",
        "actor0",
        "expires in 23 min (",
    ] {
        assert!(second.contains(want), "{want} in {second}");
    }
    assert!(second.ends_with(" UTC)"), "{second}");
    let col = |line: &str, word: &str| line.find(word).unwrap();
    assert_eq!(col(lines[at + 1], "ACTOR"), col(first, "actor1"));
    assert_eq!(col(lines[at + 1], "WINDOW"), col(first, "expires"));

    let out = solstice_status(&config, &["--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holds = v["debug_holds"].as_array().unwrap();
    assert_eq!(holds.len(), 2);
    assert_eq!(holds[0]["id"], "task-codeberg-22-dddd");
    assert_eq!(holds[0]["repository"], "ops/infra");
    assert_eq!(holds[0]["actor"], "actor1");
    assert_eq!(holds[0]["forge"], "codeberg");
    let remaining = holds[0]["remaining_secs"].as_f64().unwrap();
    assert!((250.0..=310.0).contains(&remaining), "{remaining}");

    // Without the daemon, the rows are what its next start cleans up.
    drop(lock);
    let out = solstice_status(&config, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the daemon stopped; its next start cleans up"),
        "{text}"
    );

    // Once forgotten, nothing is shown.
    store.clear_holds().unwrap();
    let out = solstice_status(&config, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Held for debug SSH"), "{text}");
    let out = solstice_status(&config, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["debug_holds"], serde_json::json!([]));
}

#[test]
fn a_given_up_job_is_finished_never_reported_again_and_its_log_and_outputs_are_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("solstice.db")).unwrap();
    store.insert_job(&new_job("task-a-1-x", 1, 1000)).unwrap();
    store.insert_job(&new_job("task-a-2-x", 2, 1001)).unwrap();
    store
        .set_job_state("task-a-1-x", JobState::Running)
        .unwrap();
    let row = |c: &str| LogRowData {
        time: UNIX_EPOCH + Duration::from_secs(1000),
        content: c.into(),
    };
    store
        .append_log_rows("task-a-1-x", 0, &[row("one"), row("two")])
        .unwrap();
    store.save_outputs("task-a-1-x", r#"{"a":"1"}"#).unwrap();
    // Finished but unreported: it would be sent at the next start.
    store
        .finish_job(
            "task-a-2-x",
            "success",
            UNIX_EPOCH + Duration::from_secs(1002),
        )
        .unwrap();

    store.give_up_job("task-a-1-x").unwrap();
    store.give_up_job("task-a-2-x").unwrap();
    assert!(store.is_given_up("task-a-1-x").unwrap());
    assert!(!store.is_given_up("task-zzz").unwrap());
    assert!(store.give_up_job("task-zzz").is_err());
    let j = store.job("task-a-1-x").unwrap().unwrap();
    assert_eq!(j.state, JobState::Finished);
    assert_eq!(j.result.as_deref(), Some("cancelled"));
    assert!(j.reported && j.finished_at.is_some());
    // A result already recorded is kept.
    let j2 = store.job("task-a-2-x").unwrap().unwrap();
    assert_eq!(j2.result.as_deref(), Some("success"));
    assert!(store.unfinished_jobs().unwrap().is_empty());
    assert!(store.unreported_finished_jobs().unwrap().is_empty());
    assert_eq!(store.log_end("task-a-1-x").unwrap(), 0);
    assert!(
        store
            .log_rows("task-a-1-x", 0, 10, 1 << 20)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.outputs("task-a-1-x").unwrap(), None);
    // Pruned like reported jobs.
    assert_eq!(store.prune_finished_jobs(0).unwrap(), 2);
}

#[test]
fn status_shows_the_warm_pools() {
    let tmp = tempfile::tempdir().unwrap();
    let config = status_config(tmp.path());
    // The tiny image keeps two guests warm.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("warm = 2\n");
    std::fs::write(&config, text).unwrap();
    let state = tmp.path().join("state");
    let store = Store::open(&store::db_path(&state)).unwrap();
    let warm = state.join("warm");
    store
        .record_warm(
            "w-tiny-0000000a",
            "tiny",
            WarmKind::Booted,
            &warm.join("w-tiny-0000000a"),
        )
        .unwrap();
    store
        .record_warm_process("w-tiny-0000000a", 31337, 40022)
        .unwrap();
    store.set_warm_ready("w-tiny-0000000a").unwrap();
    store
        .record_warm(
            "w-tiny-0000000b",
            "tiny",
            WarmKind::Booted,
            &warm.join("w-tiny-0000000b"),
        )
        .unwrap();
    let lock = std::fs::File::create(state.join("solstice.lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();

    let out = solstice_status(&config, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "Warm pools:")
        .unwrap_or_else(|| panic!("no warm pools in\n{text}"));
    assert_eq!(
        lines[at + 1],
        "IMAGE  TARGET  READY  STARTING  SNAPSHOT",
        "{text}"
    );
    assert_eq!(
        lines[at + 2],
        "tiny   2       1      1         no",
        "{text}"
    );
    assert!(lines[at + 3].starts_with("GUEST "), "{text}");
    for (line, want) in [
        (
            lines[at + 4],
            ["w-tiny-0000000a", "booted", "ready", "31337"],
        ),
        (
            lines[at + 5],
            ["w-tiny-0000000b", "booted", "starting", " -"],
        ),
    ] {
        for w in want {
            assert!(line.contains(w), "{w} in {line}");
        }
    }

    let out = solstice_status(&config, &["--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pools = v["warm_pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{v:#}");
    assert_eq!(pools[0]["image"], "tiny");
    assert_eq!(pools[0]["target"], 2);
    assert_eq!(pools[0]["ready"], 1);
    assert_eq!(pools[0]["starting"], 1);
    assert_eq!(pools[0]["guests"][0]["id"], "w-tiny-0000000a");
    assert_eq!(pools[0]["guests"][0]["pid"], 31337);
    assert_eq!(pools[0]["guests"][1]["ready"], false);
    drop(lock);
    drop(store);
}
