//! Large output streams with bounded memory, and timing figures.
//!
//! The measuring test runs in a process of its own (see
//! [`crate::support::run_alone`]) so that the process's peak memory belongs
//! to it. Figures are printed; run with `--nocapture` (and `--release` for
//! real numbers).

use crate::ssh_common;

use std::time::{Duration, Instant};

use solstice::guest::{GuestSession, OutputChunk};
use solstice::ssh::{ClientKey, HostKey, connect};
use ssh_common::{Kind, Server};
use tokio::sync::mpsc;

const BYTES: u64 = 200_000_000;

/// The process's current and peak resident memory, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn measure(kind: Kind) {
    let client = ClientKey::generate();
    let server = Server::start(kind, &client, &HostKey::generate());
    let target = server.pinned(&client);
    let s = connect(&target, Duration::from_secs(10)).await.unwrap();

    // A fresh connection and login, as each readiness probe makes.
    let n = 5;
    let start = Instant::now();
    for _ in 0..n {
        let c = connect(&target, Duration::from_secs(10)).await.unwrap();
        c.close().await.unwrap();
    }
    let per_login = start.elapsed() / n;

    // Round trip of `true`.
    let n = 20;
    let start = Instant::now();
    for _ in 0..n {
        let (tx, _rx) = mpsc::channel(1);
        assert_eq!(s.exec("true", b"", tx).await.unwrap(), 0);
    }
    let per_exec = start.elapsed() / n;

    // 200 MB of stdout to a consumer that first stalls for 2 s, so that
    // without backpressure the whole stream would pile up in memory.
    let (rss_before, _) = rss_kib();
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let consumer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut total = 0u64;
        while let Some(c) = rx.recv().await {
            total += c.data.len() as u64;
        }
        total
    });
    let start = Instant::now();
    let cmd = format!("head -c {BYTES} /dev/zero");
    let status = s.exec(&cmd, b"", tx).await.unwrap();
    let total = consumer.await.unwrap();
    let stalled = start.elapsed();
    assert_eq!((status, total), (0, BYTES));
    let (_, peak) = rss_kib();
    let growth_mib = peak.saturating_sub(rss_before) / 1024;

    // The same stream to a consumer that keeps up.
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let consumer = tokio::spawn(async move {
        let mut total = 0u64;
        while let Some(c) = rx.recv().await {
            total += c.data.len() as u64;
        }
        total
    });
    let start = Instant::now();
    let status = s.exec(&cmd, b"", tx).await.unwrap();
    let total = consumer.await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!((status, total), (0, BYTES));

    eprintln!(
        "{kind:?}: connect+login {per_login:.2?}; exec `true` round trip {per_exec:.2?}; 200 MB stdout in {elapsed:.2?} \
         ({:.0} MB/s); with a 2 s stalled consumer {stalled:.2?}; peak memory growth {growth_mib} MiB",
        BYTES as f64 / 1e6 / elapsed.as_secs_f64()
    );
    assert!(
        growth_mib < 64,
        "memory grew by {growth_mib} MiB while the consumer stalled: no backpressure"
    );
    s.close().await.unwrap();
}

#[test]
fn large_output_streams_with_bounded_memory() {
    crate::support::run_alone("ssh_throughput::measured_alone");
}

/// The measurement itself: only in a process of its own, where no other
/// test's allocations count towards the peak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs in a process of its own, through large_output_streams_with_bounded_memory"]
async fn measured_alone() {
    measure(Kind::Dropbear).await;
    measure(Kind::OpenSsh).await;
}
