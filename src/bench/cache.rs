//! `solstice bench cache`: the built-in cache service's throughput from
//! inside a guest, against copying the same bytes over SSH with Solstice's
//! SSH executor, in one VM job (issue 13).
//!
//! The job (image from `--image`, with node on `PATH`, as the Debian image):
//! 1. `actions/checkout` of a host directory holding one file of `--mb`
//!    megabytes of random bytes: the executor copies it over SSH (a tar on
//!    the session's stdin). The step's duration is the SSH baseline.
//! 2. save: the file through the cache service as `@actions/cache` sends it
//!    (reserve, 32 MiB `PATCH` chunks 4 at a time, commit), with node's
//!    `fetch`.
//! 3. restore: lookup, then download of the entry with node's `fetch`.
//! 4. a check that the restored bytes equal the saved ones (not timed).
//!
//! The archive step of `@actions/cache` (tar, zstd) is left out: random
//! bytes do not compress, and what is measured is the path from the guest to
//! the host's service and back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::runner::progress;
use super::{BenchError, CacheBenchArgs, TempDir, bench_image, load_bench_config};
use crate::cache_service::{CacheService, CacheSettings};
use crate::events::{Conclusion, EventSink, JobEvent};
use crate::job::{CheckoutSource, JobSpec};
use crate::startup::resolve_accel;

/// The job: the checkout (SSH), then save and restore with node's `fetch`
/// (as `@actions/cache` does, over node's HTTP client), then the check.
const WORKFLOW: &str = r#"
jobs:
  bench:
    steps:
      - uses: actions/checkout@v4
      - name: save
        run: node save.js
      - name: restore
        run: node restore.js
      - name: check
        run: cmp blob restored && echo same
"#;

/// Saves `blob` as `@actions/cache` does: reserve, 32 MiB chunks, 4 at a
/// time, commit.
const SAVE_JS: &str = r#"
const fs = require('fs');
const base = process.env.ACTIONS_CACHE_URL + '_apis/artifactcache';
const json = { 'Content-Type': 'application/json' };
async function ok(r) { if (!r.ok) throw new Error(r.status + ' ' + await r.text()); return r; }
(async () => {
  const size = fs.statSync('blob').size;
  const r = await ok(await fetch(base + '/caches', { method: 'POST', headers: json,
    body: JSON.stringify({ key: 'bench', version: 'v1', cacheSize: size }) }));
  const id = (await r.json()).cacheId;
  const chunk = 32 * 1024 * 1024;
  const fd = fs.openSync('blob', 'r');
  let next = 0;
  async function worker() {
    while (next < size) {
      const start = next; next += chunk;
      const len = Math.min(chunk, size - start);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, start);
      await ok(await fetch(base + '/caches/' + id, { method: 'PATCH', body: buf, headers: {
        'Content-Type': 'application/octet-stream',
        'Content-Range': `bytes ${start}-${start + len - 1}/*` } }));
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()]);
  await ok(await fetch(base + '/caches/' + id, { method: 'POST', headers: json,
    body: JSON.stringify({ size }) }));
  console.log('saved ' + size + ' bytes');
})().catch((e) => { console.error(e.message); process.exit(1); });
"#;

/// Restores it: lookup, then a plain download streamed to a file.
const RESTORE_JS: &str = r#"
const fs = require('fs');
const { Readable } = require('stream');
const { pipeline } = require('stream/promises');
const base = process.env.ACTIONS_CACHE_URL + '_apis/artifactcache';
(async () => {
  const r = await fetch(base + '/cache?keys=bench&version=v1');
  if (r.status !== 200) throw new Error('lookup: ' + r.status);
  const loc = (await r.json()).archiveLocation;
  const d = await fetch(loc);
  if (!d.ok) throw new Error('download: ' + d.status);
  await pipeline(Readable.fromWeb(d.body), fs.createWriteStream('restored'));
  console.log('restored ' + fs.statSync('restored').size + ' bytes');
})().catch((e) => { console.error(e.message); process.exit(1); });
"#;

/// Keeps each step's last log line, and the job's own last lines (for the
/// error of a failed step or job).
#[derive(Default)]
struct LastLines(Mutex<Vec<(usize, String)>>, Mutex<Vec<String>>);

impl EventSink for LastLines {
    fn emit(&self, event: JobEvent) {
        match event {
            JobEvent::Line {
                step: Some(i),
                text,
                ..
            } => {
                let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
                v.retain(|(s, _)| *s != i);
                v.push((i, text));
            }
            JobEvent::Line {
                step: None, text, ..
            } => {
                let mut v = self.1.lock().unwrap_or_else(|e| e.into_inner());
                if v.len() == 5 {
                    v.remove(0);
                }
                v.push(text);
            }
            _ => {}
        }
    }
}

/// The figures.
#[derive(Debug, Clone)]
pub struct CacheReport {
    pub image: String,
    pub accel: String,
    pub bytes: u64,
    pub ssh: Duration,
    pub save: Duration,
    pub restore: Duration,
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

impl CacheReport {
    /// The table.
    pub fn render(&self) -> String {
        let ssh = mb_s(self.bytes, self.ssh);
        let row = |name: &str, d: Duration| {
            let r = mb_s(self.bytes, d);
            format!(
                "  {name:<44} {:>8.1} s {:>8.1} MB/s  {:>5.2}x SSH\n",
                d.as_secs_f64(),
                r,
                r / ssh.max(1e-9)
            )
        };
        let mut out = format!(
            "cache service: {} MB on image {} (accelerator {})\n",
            self.bytes / 1_000_000,
            self.image,
            self.accel
        );
        out.push_str(&format!(
            "  {:<44} {:>8.1} s {:>8.1} MB/s\n",
            "SSH copy into the guest (executor, checkout)",
            self.ssh.as_secs_f64(),
            ssh
        ));
        out.push_str(&row(
            "save through the cache service (guest → host)",
            self.save,
        ));
        out.push_str(&row(
            "restore from the cache service (host → guest)",
            self.restore,
        ));
        out
    }
}

/// `solstice bench cache`.
pub async fn cache_main(args: CacheBenchArgs) -> Result<(), BenchError> {
    let config = load_bench_config(&args.common)?;
    let image = bench_image(&config, &args.common)?;
    let accel = resolve_accel(&config).await?.current();
    let work = TempDir::new(&std::env::temp_dir(), "sbench-cache")?;
    let bytes = u64::from(args.mb) * 1_000_000;
    let tree = work.0.join("tree");
    std::fs::create_dir_all(&tree)
        .map_err(|e| BenchError::Infra(format!("create {}: {e}", tree.display())))?;
    write_random(&tree.join("blob"), bytes)?;
    for (name, text) in [("save.js", SAVE_JS), ("restore.js", RESTORE_JS)] {
        std::fs::write(tree.join(name), text)
            .map_err(|e| BenchError::Infra(format!("write {name}: {e}")))?;
    }
    let service = CacheService::start(CacheSettings {
        dir: work.0.join("cache"),
        max_bytes: bytes * 2,
    })
    .await
    .map_err(|e| BenchError::Infra(format!("cannot start the cache service: {e}")))?;
    let wf = crate::workflow::parse_workflow(WORKFLOW)
        .map_err(|e| BenchError::Infra(format!("built-in bench workflow: {e}")))?;
    let spec = JobSpec {
        checkout: CheckoutSource::LocalTree {
            root: tree,
            exclude: vec![],
        },
        cache: Some(Arc::new(service)),
        extra_contexts: Default::default(),
        ..JobSpec::own(wf, "bench")
    };
    progress(format_args!(
        "cache: one job on image {} ({} vCPU, {} MiB, accelerator {}): {} MB over SSH, then saved and restored through the cache service",
        image.name,
        image.vcpus,
        image.memory_mib,
        accel.as_str(),
        args.mb
    ));
    let sink = LastLines::default();
    let report = super::run_one_job(&config, image, accel, &spec, &sink).await?;
    let step = |i: usize| -> Result<Duration, BenchError> {
        let s = report
            .outcome
            .steps
            .iter()
            .find(|s| s.index == i)
            .ok_or_else(|| {
                let job = sink.1.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                BenchError::Infra(format!(
                    "step {} did not run; the job's last lines:\n{job}",
                    i + 1
                ))
            })?;
        if s.conclusion != Conclusion::Success {
            let last = sink
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(n, _)| *n == i)
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            return Err(BenchError::Infra(format!(
                "step {} ({}) ended {:?}: {last}",
                i + 1,
                s.name,
                s.conclusion
            )));
        }
        Ok(s.duration)
    };
    let figures = CacheReport {
        image: image.name.clone(),
        accel: accel.as_str().to_owned(),
        bytes,
        ssh: step(0)?,
        save: step(1)?,
        restore: step(2)?,
    };
    step(3)?;
    print!("\n{}", figures.render());
    Ok(())
}

/// `bytes` random bytes into `path`.
fn write_random(path: &std::path::Path, bytes: u64) -> Result<(), BenchError> {
    use std::io::Write;
    let err = |e: std::io::Error| BenchError::Infra(format!("write {}: {e}", path.display()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    let mut left = bytes;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        rand::fill(&mut buf[..]);
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        f.write_all(&buf[..n]).map_err(err)?;
        left -= n as u64;
    }
    f.flush().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workflow_parses_and_the_table_has_ratios() {
        assert!(crate::workflow::parse_workflow(WORKFLOW).is_ok());
        let r = CacheReport {
            image: "debian".into(),
            accel: "tcg".into(),
            bytes: 200_000_000,
            ssh: Duration::from_secs(10),
            save: Duration::from_secs(5),
            restore: Duration::from_secs(20),
        };
        let t = r.render();
        assert!(t.contains("20.0 MB/s"), "{t}");
        assert!(t.contains("2.00x SSH"), "{t}");
        assert!(t.contains("0.50x SSH"), "{t}");
    }
}
