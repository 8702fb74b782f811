//! `solstice status`: the daemon's jobs, the VMs it keeps for debug SSH and
//! its warm pools, read from its state database (the pools' targets come
//! from the config).
//!
//! Opens `<state_dir>/solstice.db` read-only, so it works while the daemon runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::error::{CliError, Exit};
use crate::config::Config;
use crate::store::{self, HoldRow, JobRow, Store, StoreError, WarmKind, WarmRow};

/// Arguments of `solstice status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Configuration file (same search order as `exec`).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// How many recently finished jobs to show.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub limit: usize,
}

/// Exit status of `solstice status`, from the one mapping [`Exit::code`].
pub mod exit {
    use super::Exit;
    /// No state database, or it cannot be read.
    pub const NO_STATE: u8 = Exit::NoState.code();
    /// The configuration could not be found or is invalid.
    pub const USAGE: u8 = Exit::Usage.code();
}

/// The in-flight and recently finished jobs, the held VMs and the warm pools.
#[derive(Debug, Clone)]
pub struct Status {
    pub db: PathBuf,
    /// A `solstice run` holds the state directory's lock now.
    pub daemon_running: bool,
    /// Every job not finished, oldest first.
    pub in_flight: Vec<JobRow>,
    /// The most recently finished jobs, newest first.
    pub recent: Vec<JobRow>,
    /// Failed jobs' VMs kept for debug SSH, soonest expiry first.
    pub holds: Vec<HoldRow>,
    /// Every image with `warm > 0` or `snapshot`, and every image the
    /// daemon has warm guests of, by image name.
    pub warm: Vec<WarmPool>,
}

/// One image's warm pool: what the config asks for and what the daemon
/// recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPool {
    pub image: String,
    /// `images.<name>.warm` (0 for an image no longer in the config).
    pub target: u32,
    /// `images.<name>.snapshot`.
    pub snapshot: bool,
    /// Its recorded guests, templates included, oldest first.
    pub guests: Vec<WarmRow>,
}

impl WarmPool {
    /// Pool guests waiting for a job.
    pub fn ready(&self) -> usize {
        self.members().filter(|g| g.ready).count()
    }

    /// Pool guests booting or being restored.
    pub fn starting(&self) -> usize {
        self.members().filter(|g| !g.ready).count()
    }

    /// The guests that take jobs (not the template's).
    fn members(&self) -> impl Iterator<Item = &WarmRow> {
        self.guests.iter().filter(|g| g.kind != WarmKind::Template)
    }

    /// `no`, `yes`, `yes, template building`, `yes, template ready`.
    fn snapshot_label(&self) -> &'static str {
        let template = self.guests.iter().find(|g| g.kind == WarmKind::Template);
        match (self.snapshot, template) {
            (false, _) => "no",
            (true, None) => "yes",
            (true, Some(t)) if t.ready => "yes, template ready",
            (true, Some(_)) => "yes, template building",
        }
    }
}

/// The pools `solstice status` shows: every image of `config` with
/// `warm > 0` or `snapshot`, then any other image the records name (the
/// config changed since the daemon started), each with its guests.
pub fn warm_pools(config: &Config, rows: Vec<WarmRow>) -> Vec<WarmPool> {
    let mut pools: Vec<WarmPool> = config
        .images
        .iter()
        .filter(|(_, img)| img.warm > 0 || img.snapshot)
        .map(|(name, img)| WarmPool {
            image: name.clone(),
            target: img.warm,
            snapshot: img.snapshot,
            guests: Vec::new(),
        })
        .collect();
    for row in rows {
        match pools.iter_mut().find(|p| p.image == row.image) {
            Some(pool) => pool.guests.push(row),
            None => {
                let (target, snapshot) = config
                    .images
                    .get(&row.image)
                    .map_or((0, false), |img| (img.warm, img.snapshot));
                pools.push(WarmPool {
                    image: row.image.clone(),
                    target,
                    snapshot,
                    guests: vec![row],
                });
            }
        }
    }
    pools.sort_by(|a, b| a.image.cmp(&b.image));
    pools
}

/// Reads the status from the state database in `config`'s state directory.
pub fn read_status(config: &Config, limit: usize) -> Result<Status, StoreError> {
    let state_dir = &config.daemon.state_dir;
    let db = store::db_path(state_dir);
    let store = Store::open_read_only(&db)?;
    Ok(Status {
        in_flight: store.unfinished_jobs()?,
        recent: store.recent_finished_jobs(limit)?,
        holds: store.holds()?,
        warm: warm_pools(config, store.warm_rows()?),
        db,
        daemon_running: crate::daemon::is_running(state_dir),
    })
}

/// `solstice status`.
pub fn status_main(args: StatusArgs) -> Result<(), CliError> {
    let (_, config) = crate::startup::load_config(args.config.as_deref())?;
    let state_dir = &config.daemon.state_dir;
    let status = match read_status(&config, args.limit) {
        Ok(s) => s,
        Err(StoreError::Missing { path }) => {
            if args.json {
                println!("{:#}", no_state_json(state_dir));
            }
            eprintln!(
                "No state yet: the daemon has not run with daemon.state_dir = {} (no {}); `solstice run` creates it",
                state_dir.display(),
                path.display()
            );
            return Err(CliError::reported(Exit::NoState));
        }
        Err(e) => return Err(CliError::new(Exit::NoState, e)),
    };
    let now = SystemTime::now();
    if args.json {
        println!("{:#}", status_json(&status, now));
    } else {
        print!("{}", render_text(&status, now));
    }
    Ok(())
}

/// The status as JSON: `{ "database", "daemon_running", "in_flight": [job…],
/// "recent": [job…], "debug_holds": [hold…], "warm_pools": [pool…] }`.
pub fn status_json(status: &Status, now: SystemTime) -> Value {
    json!({
        "database": status.db.display().to_string(),
        "daemon_running": status.daemon_running,
        "in_flight": status.in_flight.iter().map(|j| job_json(j, now)).collect::<Vec<_>>(),
        "recent": status.recent.iter().map(|j| job_json(j, now)).collect::<Vec<_>>(),
        "debug_holds": status.holds.iter().map(|h| hold_json(h, now)).collect::<Vec<_>>(),
        "warm_pools": status.warm.iter().map(|p| pool_json(p, now)).collect::<Vec<_>>(),
    })
}

/// The JSON of `status --json` when the daemon has never run with this
/// state directory: the same object, with `"database": null` and no jobs.
pub fn no_state_json(state_dir: &Path) -> Value {
    json!({
        "database": null,
        "daemon_running": crate::daemon::is_running(state_dir),
        "in_flight": [],
        "recent": [],
        "debug_holds": [],
        "warm_pools": [],
    })
}

fn pool_json(p: &WarmPool, now: SystemTime) -> Value {
    json!({
        "image": p.image,
        "target": p.target,
        "snapshot": p.snapshot,
        "ready": p.ready(),
        "starting": p.starting(),
        "guests": p.guests.iter().map(|g| json!({
            "id": g.id,
            "kind": g.kind.as_str(),
            "ready": g.ready,
            "pid": g.pid,
            "ssh_port": g.ssh_port,
            "recorded_at_unix": unix(g.recorded_at),
            "age_secs": now.duration_since(g.recorded_at).unwrap_or_default().as_secs_f64(),
        })).collect::<Vec<_>>(),
    })
}

fn hold_json(h: &HoldRow, now: SystemTime) -> Value {
    json!({
        "id": h.job_id,
        "forge": h.forge,
        "repository": h.repository,
        "actor": h.actor,
        "armed_at_unix": unix(h.armed_at),
        "expires_at_unix": unix(h.expires_at),
        "remaining_secs": h.expires_at.duration_since(now).unwrap_or_default().as_secs_f64(),
    })
}

fn job_json(j: &JobRow, now: SystemTime) -> Value {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let ms_secs = |ms: Option<u64>| ms.map(|ms| ms as f64 / 1000.0);
    json!({
        "id": j.id,
        "forge": j.forge,
        "task_id": j.task_id,
        "repository": j.repository,
        "job_name": j.job_name,
        "image": j.image,
        "state": j.state.as_str(),
        "result": j.result,
        "reported": j.reported,
        "steps": j.n_steps,
        "received_at_unix": unix(j.received_at),
        "finished_at_unix": j.finished_at.map(unix),
        "age_secs": secs(now.duration_since(j.received_at).ok()),
        "duration_secs": secs(j.duration()),
        "time_to_first_step_secs": ms_secs(j.timings.to_first_step_ms()),
        "provision_secs": ms_secs(j.timings.provision_ms),
        "boot_secs": ms_secs(j.timings.boot_ms),
        "ssh_ready_secs": ms_secs(j.timings.ssh_ready_ms),
        "first_step_secs": ms_secs(j.timings.first_step_ms),
    })
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The status as aligned tables.
pub fn render_text(status: &Status, now: SystemTime) -> String {
    let mut out = String::new();
    out.push_str(if status.daemon_running {
        "Daemon: running\n"
    } else {
        "Daemon: not running\n"
    });
    out.push_str(&format!("In flight: {}\n", status.in_flight.len()));
    if !status.in_flight.is_empty() {
        let mut rows = vec![strings(&[
            "ID", "FORGE", "TASK", "JOB", "IMAGE", "STATE", "AGE",
        ])];
        for j in &status.in_flight {
            rows.push(vec![
                j.id.clone(),
                j.forge.clone(),
                j.task_id.to_string(),
                job_label(j),
                j.image.clone().unwrap_or_else(|| "-".into()),
                j.state.to_string(),
                human(now.duration_since(j.received_at).ok()),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if !status.holds.is_empty() {
        out.push_str(&format!("\nHeld for debug SSH: {}\n", status.holds.len()));
        let mut rows = vec![strings(&["ID", "FORGE", "REPOSITORY", "ACTOR", "WINDOW"])];
        for h in &status.holds {
            rows.push(vec![
                h.job_id.clone(),
                h.forge.clone(),
                h.repository.clone(),
                h.actor.clone(),
                hold_window(h, now, status.daemon_running),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if !status.warm.is_empty() {
        out.push_str(&warm_text(status, now));
    }
    out.push_str(&format!("\nRecently finished: {}\n", status.recent.len()));
    if !status.recent.is_empty() {
        let mut rows = vec![strings(&[
            "ID",
            "FORGE",
            "TASK",
            "JOB",
            "IMAGE",
            "RESULT",
            "DURATION",
            "FIRST STEP",
            "FINISHED",
        ])];
        for j in &status.recent {
            let mut result = j.result.clone().unwrap_or_else(|| "-".into());
            if !j.reported {
                result.push_str(" (unreported)");
            }
            rows.push(vec![
                j.id.clone(),
                j.forge.clone(),
                j.task_id.to_string(),
                job_label(j),
                j.image.clone().unwrap_or_else(|| "-".into()),
                result,
                human(j.duration()),
                human(j.timings.to_first_step_ms().map(Duration::from_millis)),
                j.finished_at
                    .and_then(|f| now.duration_since(f).ok())
                    .map_or_else(|| "-".into(), |d| format!("{} ago", human(Some(d)))),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// The "Warm pools" section: one line per pool, then one per guest.
fn warm_text(status: &Status, now: SystemTime) -> String {
    let mut out = String::from("\nWarm pools:\n");
    let mut rows = vec![strings(&[
        "IMAGE", "TARGET", "READY", "STARTING", "SNAPSHOT",
    ])];
    for p in &status.warm {
        rows.push(vec![
            p.image.clone(),
            p.target.to_string(),
            p.ready().to_string(),
            p.starting().to_string(),
            p.snapshot_label().to_owned(),
        ]);
    }
    out.push_str(&table(&rows));
    let guests: Vec<&WarmRow> = status.warm.iter().flat_map(|p| &p.guests).collect();
    if guests.is_empty() {
        return out;
    }
    if !status.daemon_running {
        out.push_str("The daemon stopped; its next start destroys these guests:\n");
    }
    let mut rows = vec![strings(&["GUEST", "IMAGE", "KIND", "STATE", "AGE", "PID"])];
    for g in guests {
        let state = match (g.kind, g.ready) {
            (WarmKind::Template, true) => "saved",
            (WarmKind::Template, false) => "building",
            (_, true) => "ready",
            (_, false) => "starting",
        };
        rows.push(vec![
            g.id.clone(),
            g.image.clone(),
            g.kind.to_string(),
            state.to_owned(),
            human(now.duration_since(g.recorded_at).ok()),
            g.pid.map_or_else(|| "-".into(), |p| p.to_string()),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// `expires in 23 min (21:30:00 UTC)`; once past, or when the daemon that
/// held the VM is gone, what happens to it.
fn hold_window(h: &HoldRow, now: SystemTime, daemon_running: bool) -> String {
    if !daemon_running {
        return "the daemon stopped; its next start cleans up".into();
    }
    let Ok(left) = h.expires_at.duration_since(now) else {
        return "expired, being destroyed".into();
    };
    let s = left.as_secs();
    let left = if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min", (s + 30) / 60)
    };
    // The time of day alone when the expiry is today (a window lasts 30
    // minutes at most), with the date otherwise.
    let at = crate::civil::utc_seconds(h.expires_at);
    let today = crate::civil::utc_seconds(now);
    let at = match (at.split_once(' '), today.split_once(' ')) {
        (Some((day, time)), Some((today, _))) if day == today => time.to_owned(),
        _ => at,
    };
    format!("expires in {left} ({at})")
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn job_label(j: &JobRow) -> String {
    format!("{}: {}", j.repository, j.job_name)
}

/// Left-aligned columns separated by two spaces; no trailing spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[c].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `850ms`, `12.3s`, `4m05s`, `2h10m`, `3d04h`; `-` when unknown.
pub fn human(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "-".into();
    };
    let s = d.as_secs();
    if s < 1 {
        format!("{}ms", d.as_millis())
    } else if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobState, JobTimings};

    fn job(id: &str, state: JobState) -> JobRow {
        JobRow {
            id: id.into(),
            forge: "cb".into(),
            task_id: 7,
            job_name: "build".into(),
            repository: "o/r".into(),
            image: Some("debian".into()),
            state,
            n_steps: None,
            result: None,
            received_at: UNIX_EPOCH + Duration::from_secs(1000),
            updated_at: UNIX_EPOCH + Duration::from_secs(1000),
            finished_at: None,
            reported: false,
            log_ack: 0,
            timings: JobTimings::default(),
        }
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human(None), "-");
        assert_eq!(human(Some(Duration::from_millis(850))), "850ms");
        assert_eq!(human(Some(Duration::from_millis(12_340))), "12.3s");
        assert_eq!(human(Some(Duration::from_secs(245))), "4m05s");
        assert_eq!(human(Some(Duration::from_secs(7800))), "2h10m");
        assert_eq!(
            human(Some(Duration::from_secs(3 * 86_400 + 4 * 3600))),
            "3d04h"
        );
    }

    #[test]
    fn tables_are_aligned() {
        let mut done = job("task-cb-7-b", JobState::Finished);
        done.result = Some("success".into());
        done.finished_at = Some(UNIX_EPOCH + Duration::from_secs(1065));
        done.timings = JobTimings {
            provision_ms: Some(500),
            boot_ms: Some(9000),
            ssh_ready_ms: Some(400),
            first_step_ms: Some(100),
        };
        let status = Status {
            db: PathBuf::from("/s/solstice.db"),
            daemon_running: true,
            in_flight: vec![job("task-cb-7-a", JobState::Booting)],
            recent: vec![done],
            holds: Vec::new(),
            warm: Vec::new(),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1090);
        let text = render_text(&status, now);
        let expected = "\
Daemon: running
In flight: 1
ID           FORGE  TASK  JOB         IMAGE   STATE    AGE
task-cb-7-a  cb     7     o/r: build  debian  booting  1m30s

Recently finished: 1
ID           FORGE  TASK  JOB         IMAGE   RESULT                DURATION  FIRST STEP  FINISHED
task-cb-7-b  cb     7     o/r: build  debian  success (unreported)  1m05s     10.0s       25.0s ago
";
        assert_eq!(text, expected);
        let v = status_json(&status, now);
        assert_eq!(v["in_flight"][0]["state"], "booting");
        assert_eq!(v["in_flight"][0]["age_secs"], 90.0);
        assert_eq!(v["recent"][0]["time_to_first_step_secs"], 10.0);
        assert_eq!(v["recent"][0]["duration_secs"], 65.0);
        assert_eq!(v["recent"][0]["reported"], false);
        assert_eq!(v["daemon_running"], true);
    }

    #[test]
    fn without_a_database_the_json_has_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let none = no_state_json(dir.path());
        let some = status_json(
            &Status {
                db: PathBuf::from("/s/solstice.db"),
                daemon_running: false,
                in_flight: Vec::new(),
                recent: Vec::new(),
                holds: Vec::new(),
                warm: Vec::new(),
            },
            UNIX_EPOCH,
        );
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&none), keys(&some));
        assert_eq!(none["database"], Value::Null);
        assert_eq!(none["daemon_running"], false);
        assert_eq!(none["in_flight"], json!([]));
        assert_eq!(none["debug_holds"], json!([]));
        assert_eq!(none["warm_pools"], json!([]));
    }

    fn hold(id: &str, repository: &str, expires_secs: u64) -> HoldRow {
        HoldRow {
            job_id: id.into(),
            forge: "cb".into(),
            repository: repository.into(),
            actor: "alice".into(),
            armed_at: UNIX_EPOCH + Duration::from_secs(expires_secs - 1800),
            expires_at: UNIX_EPOCH + Duration::from_secs(expires_secs),
        }
    }

    #[test]
    fn held_vms_show_their_remaining_time() {
        // 2026-12-05 21:06:30 UTC.
        let now = UNIX_EPOCH + Duration::from_secs(1_796_504_790);
        let at = |secs_from_now: i64| (1_796_504_790 + secs_from_now) as u64;
        let mut status = Status {
            db: PathBuf::from("/s/solstice.db"),
            daemon_running: true,
            in_flight: Vec::new(),
            recent: Vec::new(),
            holds: vec![
                hold("task-cb-8-a", "o/r", at(-5)),
                hold("task-cb-9-b", "other/repo", at(40)),
                hold("task-cb-7-c", "o/x", at(1410)),
                hold("task-cb-6-d", "o/y", at(3 * 3600)),
            ],
            warm: Vec::new(),
        };
        let text = render_text(&status, now);
        let expected = "\
Daemon: running
In flight: 0

Held for debug SSH: 4
ID           FORGE  REPOSITORY  ACTOR  WINDOW
task-cb-8-a  cb     o/r         alice  expired, being destroyed
task-cb-9-b  cb     other/repo  alice  expires in 40 s (21:07:10 UTC)
task-cb-7-c  cb     o/x         alice  expires in 24 min (21:30:00 UTC)
task-cb-6-d  cb     o/y         alice  expires in 180 min (2026-12-06 00:06:30 UTC)

Recently finished: 0
";
        assert_eq!(text, expected);
        let v = status_json(&status, now);
        let h = &v["debug_holds"];
        assert_eq!(h.as_array().unwrap().len(), 4);
        assert_eq!(h[0]["remaining_secs"], 0.0);
        assert_eq!(h[2]["id"], "task-cb-7-c");
        assert_eq!(h[2]["repository"], "o/x");
        assert_eq!(h[2]["actor"], "alice");
        assert_eq!(h[2]["forge"], "cb");
        assert_eq!(h[2]["remaining_secs"], 1410.0);
        assert_eq!(h[2]["expires_at_unix"], 1_796_506_200.0);
        assert_eq!(h[2]["armed_at_unix"], 1_796_504_400.0);

        status.daemon_running = false;
        let text = render_text(&status, now);
        assert!(
            text.contains("task-cb-7-c  cb     o/x         alice  the daemon stopped; its next start cleans up\n"),
            "{text}"
        );
        // Nothing held: no section at all.
        status.holds.clear();
        assert!(!render_text(&status, now).contains("debug"));
    }

    fn guest(id: &str, image: &str, kind: WarmKind, ready: bool, secs: u64) -> WarmRow {
        WarmRow {
            id: id.into(),
            image: image.into(),
            kind,
            dir: PathBuf::from(format!("/s/warm/{id}")),
            pid: ready.then_some(4000 + secs as u32),
            ssh_port: ready.then_some(2222),
            ready,
            recorded_at: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    #[test]
    fn warm_pools_come_from_the_config_and_the_records() {
        let config = crate::config::parse_str_with(
            "[images.tiny]\npath = \"/i/tiny.qcow2\"\nwarm = 2\n\
             [images.debian]\npath = \"/i/debian.qcow2\"\nsnapshot = true\n\
             [images.cold]\npath = \"/i/cold.qcow2\"\n",
            Path::new("/etc/solstice/solstice.toml"),
            &crate::config::ParseOptions { check_paths: false },
        )
        .unwrap();
        let rows = vec![
            guest("w-tiny-1", "tiny", WarmKind::Booted, true, 1000),
            guest("t-debian-2", "debian", WarmKind::Template, false, 1010),
            guest("w-gone-3", "gone", WarmKind::Booted, true, 1020),
            guest("w-cold-4", "cold", WarmKind::Booted, false, 1030),
            guest("w-tiny-5", "tiny", WarmKind::Restored, false, 1040),
        ];
        let pools = warm_pools(&config, rows);
        let summary: Vec<(&str, u32, bool, usize, usize, usize)> = pools
            .iter()
            .map(|p| {
                (
                    p.image.as_str(),
                    p.target,
                    p.snapshot,
                    p.ready(),
                    p.starting(),
                    p.guests.len(),
                )
            })
            .collect();
        // An image without warm or snapshot shows only while the daemon
        // still has guests of it (its config changed).
        assert_eq!(
            summary,
            [
                ("cold", 0, false, 0, 1, 1),
                ("debian", 0, true, 0, 0, 1),
                ("gone", 0, false, 1, 0, 1),
                ("tiny", 2, false, 1, 1, 2),
            ]
        );
        assert_eq!(pools[3].guests[0].id, "w-tiny-1");
        let none = warm_pools(&config, Vec::new());
        assert_eq!(
            none.iter().map(|p| p.image.as_str()).collect::<Vec<_>>(),
            ["debian", "tiny"]
        );
    }

    #[test]
    fn warm_pools_show_targets_counts_and_guests() {
        let now = UNIX_EPOCH + Duration::from_secs(1100);
        let mut status = Status {
            db: PathBuf::from("/s/solstice.db"),
            daemon_running: true,
            in_flight: Vec::new(),
            recent: Vec::new(),
            holds: Vec::new(),
            warm: vec![
                WarmPool {
                    image: "debian".into(),
                    target: 1,
                    snapshot: true,
                    guests: vec![
                        guest("t-debian-0000000a", "debian", WarmKind::Template, true, 900),
                        guest(
                            "w-debian-0000000b",
                            "debian",
                            WarmKind::Restored,
                            false,
                            1095,
                        ),
                    ],
                },
                WarmPool {
                    image: "tiny".into(),
                    target: 2,
                    snapshot: false,
                    guests: vec![guest(
                        "w-tiny-0000000c",
                        "tiny",
                        WarmKind::Booted,
                        true,
                        1000,
                    )],
                },
            ],
        };
        let text = render_text(&status, now);
        let expected = "\
Daemon: running
In flight: 0

Warm pools:
IMAGE   TARGET  READY  STARTING  SNAPSHOT
debian  1       0      1         yes, template ready
tiny    2       1      0         no
GUEST              IMAGE   KIND      STATE     AGE    PID
t-debian-0000000a  debian  template  saved     3m20s  4900
w-debian-0000000b  debian  restored  starting  5.0s   -
w-tiny-0000000c    tiny    booted    ready     1m40s  5000

Recently finished: 0
";
        assert_eq!(text, expected);
        let v = status_json(&status, now);
        let pools = v["warm_pools"].as_array().unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0]["image"], "debian");
        assert_eq!(pools[0]["target"], 1);
        assert_eq!(pools[0]["snapshot"], true);
        assert_eq!(pools[0]["ready"], 0);
        assert_eq!(pools[0]["starting"], 1);
        let g = &pools[1]["guests"][0];
        assert_eq!(g["id"], "w-tiny-0000000c");
        assert_eq!(g["kind"], "booted");
        assert_eq!(g["ready"], true);
        assert_eq!(g["pid"], 5000);
        assert_eq!(g["ssh_port"], 2222);
        assert_eq!(g["age_secs"], 100.0);
        assert_eq!(g["recorded_at_unix"], 1000.0);
        assert_eq!(pools[0]["guests"][1]["pid"], Value::Null);

        // Left by a daemon that is gone: said so.
        status.daemon_running = false;
        assert!(
            render_text(&status, now)
                .contains("The daemon stopped; its next start destroys these guests:\nGUEST "),
            "{}",
            render_text(&status, now)
        );
        // No pool configured and no guest: no section at all.
        status.warm.clear();
        assert!(!render_text(&status, now).contains("Warm"));
    }
}
