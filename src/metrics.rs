//! Prometheus metrics of the daemon, and the `/metrics` HTTP endpoint.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `solstice_jobs_total` | counter | `forge`, `result` |
//! | `solstice_jobs_running` | gauge | |
//! | `solstice_job_capacity` | gauge | |
//! | `solstice_task_to_first_step_seconds` | histogram | |
//! | `solstice_provision_seconds` | histogram | |
//! | `solstice_boot_seconds` | histogram | |
//! | `solstice_ssh_ready_seconds` | histogram | |
//! | `solstice_first_step_seconds` | histogram | |
//! | `solstice_forge_request_errors_total` | counter | `forge`, `method` |
//! | `solstice_kvm_in_use` | gauge (1 or 0) | |
//! | `solstice_kvm_fallbacks_total` | counter | |
//! | `solstice_debug_ssh_events_total` | counter | `event` (`armed`, `not_held`, `login`, `refused`, `expired`, `released`, `shutdown`) |
//! | `solstice_debug_ssh_held` | gauge | |
//! | `solstice_warm_ready` | gauge | `image` |
//! | `solstice_warm_starting` | gauge | `image` |
//! | `solstice_warm_takes_total` | counter | `image`, `result` (`hit`, `restored`, `miss`) |
//! | `solstice_warm_refill_seconds` | histogram | `image`, `kind` (`booted`, `restored`) |
//! | `solstice_warm_replaced_total` | counter | `image`, `reason` (`idle`, `image_changed`, `dead`, `evicted`, `failed`) |
//!
//! The four split histograms are consecutive segments of
//! `task_to_first_step` (see [`LatencySplit`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency histogram buckets in seconds: 50 ms to 10 minutes.
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
    180.0, 300.0, 600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    forge: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DebugLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WarmLabels {
    image: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WarmTakeLabels {
    image: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WarmRefillLabels {
    image: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WarmReplacedLabels {
    image: String,
    reason: String,
}

/// A histogram with [`LATENCY_BUCKETS`] (for labelled families).
fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForgeErrorLabels {
    forge: String,
    method: String,
}

/// The daemon's metrics. Cheap to clone; clones share the values.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    running: Gauge,
    capacity: Gauge,
    to_first_step: Histogram,
    provision: Histogram,
    boot: Histogram,
    ssh_ready: Histogram,
    first_step: Histogram,
    forge_errors: Family<ForgeErrorLabels, Counter>,
    kvm_in_use: Gauge,
    kvm_fallbacks: Counter,
    debug_events: Family<DebugLabels, Counter>,
    debug_held: Gauge,
    warm_ready: Family<WarmLabels, Gauge>,
    warm_starting: Family<WarmLabels, Gauge>,
    warm_takes: Family<WarmTakeLabels, Counter>,
    warm_refill: Family<WarmRefillLabels, Histogram, fn() -> Histogram>,
    warm_replaced: Family<WarmReplacedLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("running", &self.inner.running.get())
            .field("capacity", &self.inner.capacity.get())
            .finish_non_exhaustive()
    }
}

/// Where the time from task receipt to the first step went. Each segment
/// follows the previous one; `None` means not reached (not observed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySplit {
    /// Task receipt to first step, measured as a whole. When `None` and every
    /// segment is known, their sum is observed instead.
    pub task_to_first_step: Option<Duration>,
    /// Task receipt to QEMU spawned.
    pub provision: Option<Duration>,
    /// QEMU spawned to the SSH port open.
    pub boot: Option<Duration>,
    /// Port open to an authenticated SSH session.
    pub ssh_ready: Option<Duration>,
    /// SSH ready to the first step's start.
    pub first_step: Option<Duration>,
}

impl LatencySplit {
    /// The whole, measured or summed from the segments.
    pub fn total(&self) -> Option<Duration> {
        self.task_to_first_step
            .or_else(|| Some(self.provision? + self.boot? + self.ssh_ready? + self.first_step?))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("solstice");
        let jobs = Family::<JobLabels, Counter>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register("jobs", "Jobs finished, by forge and result", jobs.clone());
        let running = Gauge::default();
        registry.register("jobs_running", "Jobs running now", running.clone());
        let capacity = Gauge::default();
        registry.register(
            "job_capacity",
            "Jobs that may run at once",
            capacity.clone(),
        );
        let histogram = |registry: &mut Registry, name: &str, help: &str| {
            let h = Histogram::new(LATENCY_BUCKETS);
            registry.register(name, help, h.clone());
            h
        };
        let to_first_step = histogram(
            &mut registry,
            "task_to_first_step_seconds",
            "Task receipt to the first step's start",
        );
        let provision = histogram(
            &mut registry,
            "provision_seconds",
            "Task receipt to QEMU spawned",
        );
        let boot = histogram(
            &mut registry,
            "boot_seconds",
            "QEMU spawned to the guest's SSH port open",
        );
        let ssh_ready = histogram(
            &mut registry,
            "ssh_ready_seconds",
            "SSH port open to an authenticated session",
        );
        let first_step = histogram(
            &mut registry,
            "first_step_seconds",
            "SSH session ready to the first step's start",
        );
        let forge_errors = Family::<ForgeErrorLabels, Counter>::default();
        registry.register(
            "forge_request_errors",
            "Failed requests to a forge, by forge and method",
            forge_errors.clone(),
        );
        let kvm_in_use = Gauge::default();
        registry.register(
            "kvm_in_use",
            "1 while new VMs start under KVM, 0 under TCG",
            kvm_in_use.clone(),
        );
        let kvm_fallbacks = Counter::default();
        registry.register(
            "kvm_fallbacks",
            "Times KVM was given up because a job's guest did not boot under it",
            kvm_fallbacks.clone(),
        );
        let debug_events = Family::<DebugLabels, Counter>::default();
        registry.register(
            "debug_ssh_events",
            "Debug SSH: windows armed, jobs not held, logins, refusals, expiries, releases",
            debug_events.clone(),
        );
        let debug_held = Gauge::default();
        registry.register(
            "debug_ssh_held",
            "VMs of failed jobs kept for debug SSH now",
            debug_held.clone(),
        );
        let warm_ready = Family::<WarmLabels, Gauge>::default();
        registry.register(
            "warm_ready",
            "Warm guests booted and waiting for a job, by image",
            warm_ready.clone(),
        );
        let warm_starting = Family::<WarmLabels, Gauge>::default();
        registry.register(
            "warm_starting",
            "Warm guests being booted or restored, by image",
            warm_starting.clone(),
        );
        let warm_takes = Family::<WarmTakeLabels, Counter>::default();
        registry.register(
            "warm_takes",
            "Jobs of images with a warm pool: hit (a pool guest), restored (a clone of the template), miss (booted cold)",
            warm_takes.clone(),
        );
        let warm_refill =
            Family::<WarmRefillLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "warm_refill_seconds",
            "A warm guest's start, QEMU spawned to ready, by image and kind (booted, restored)",
            warm_refill.clone(),
        );
        let warm_replaced = Family::<WarmReplacedLabels, Counter>::default();
        registry.register(
            "warm_replaced",
            "Warm guests destroyed unused, by image and reason (idle, image_changed, dead, evicted, failed)",
            warm_replaced.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                warm_ready,
                warm_starting,
                warm_takes,
                warm_refill,
                warm_replaced,
                debug_events,
                debug_held,
                registry,
                jobs,
                running,
                capacity,
                to_first_step,
                provision,
                boot,
                ssh_ready,
                first_step,
                forge_errors,
                kvm_in_use,
                kvm_fallbacks,
            }),
        }
    }

    /// A job started: `jobs_running` + 1.
    pub fn job_started(&self) {
        self.inner.running.inc();
    }

    /// A job that [`Metrics::job_started`] counted finished: `jobs_running`
    /// − 1 and `jobs_total{forge,result}` + 1.
    pub fn job_finished(&self, forge: &str, result: &str) {
        self.inner.running.dec();
        self.inner
            .jobs
            .get_or_create(&JobLabels {
                forge: forge.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Sets `job_capacity`.
    pub fn set_capacity(&self, jobs: u32) {
        self.inner.capacity.set(i64::from(jobs));
    }

    /// Observes the known parts of a job's latency split.
    pub fn observe_latency(&self, split: &LatencySplit) {
        let i = &self.inner;
        for (h, d) in [
            (&i.to_first_step, split.total()),
            (&i.provision, split.provision),
            (&i.boot, split.boot),
            (&i.ssh_ready, split.ssh_ready),
            (&i.first_step, split.first_step),
        ] {
            if let Some(d) = d {
                h.observe(d.as_secs_f64());
            }
        }
    }

    /// A request to a forge failed: `forge_request_errors_total{forge,method}` + 1.
    pub fn forge_error(&self, forge: &str, method: &str) {
        self.inner
            .forge_errors
            .get_or_create(&ForgeErrorLabels {
                forge: forge.to_owned(),
                method: method.to_owned(),
            })
            .inc();
    }

    /// Sets `kvm_in_use`.
    pub fn set_kvm_in_use(&self, on: bool) {
        self.inner.kvm_in_use.set(i64::from(on));
    }

    /// KVM was given up: `kvm_fallbacks_total` + 1 and `kvm_in_use` 0.
    pub fn kvm_fell_back(&self) {
        self.inner.kvm_fallbacks.inc();
        self.inner.kvm_in_use.set(0);
    }

    /// A debug SSH event (`armed`, `not_held`, `login`, `refused`,
    /// `expired`, `released`, `shutdown`): `debug_ssh_events_total` + 1.
    pub fn debug_event(&self, event: &str) {
        self.inner
            .debug_events
            .get_or_create(&DebugLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Sets `debug_ssh_held`.
    pub fn set_debug_held(&self, held: usize) {
        self.inner
            .debug_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Sets `warm_ready{image}` and `warm_starting{image}`.
    pub fn set_warm(&self, image: &str, ready: u32, starting: u32) {
        let l = WarmLabels {
            image: image.to_owned(),
        };
        self.inner
            .warm_ready
            .get_or_create(&l)
            .set(i64::from(ready));
        self.inner
            .warm_starting
            .get_or_create(&l)
            .set(i64::from(starting));
    }

    /// A job of an image with a pool started: `warm_takes_total{image,result}`
    /// + 1 (`hit`, `restored` or `miss`).
    pub fn warm_take(&self, image: &str, result: &str) {
        self.inner
            .warm_takes
            .get_or_create(&WarmTakeLabels {
                image: image.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// A warm guest became ready `took` after its QEMU was spawned
    /// (`kind`: `booted` or `restored`).
    pub fn warm_refilled(&self, image: &str, kind: &str, took: Duration) {
        self.inner
            .warm_refill
            .get_or_create(&WarmRefillLabels {
                image: image.to_owned(),
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A warm guest was destroyed unused: `warm_replaced_total{image,reason}` + 1.
    pub fn warm_replaced(&self, image: &str, reason: &str) {
        self.inner
            .warm_replaced
            .get_or_create(&WarmReplacedLabels {
                image: image.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// The HTTP routes: `GET /metrics`; anything else is 404.
pub fn router(metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics)
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
}

/// Serves [`router`] on `addr` until `shutdown` is cancelled. Binds before
/// returning, so that an unusable address is the caller's error; returns the
/// bound address (useful with port 0) and the server task.
pub async fn serve(
    metrics: Metrics,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("Cannot listen on {addr} for the metrics endpoint: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    let app = router(metrics);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of a sample line `name{labels} value` in `text`.
    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse().ok())?
        })
    }

    #[test]
    fn encode_shows_every_metric() {
        let m = Metrics::new();
        m.set_capacity(4);
        m.job_started();
        m.job_started();
        m.job_finished("codeberg", "success");
        m.forge_error("codeberg", "FetchTask");
        m.forge_error("codeberg", "FetchTask");
        m.observe_latency(&LatencySplit {
            task_to_first_step: None,
            provision: Some(Duration::from_millis(200)),
            boot: Some(Duration::from_secs(8)),
            ssh_ready: Some(Duration::from_millis(700)),
            first_step: Some(Duration::from_millis(100)),
        });
        let text = m.encode();
        assert_eq!(sample(&text, "solstice_job_capacity"), Some(4.0), "{text}");
        assert_eq!(sample(&text, "solstice_jobs_running"), Some(1.0), "{text}");
        assert_eq!(
            sample(
                &text,
                "solstice_jobs_total{forge=\"codeberg\",result=\"success\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "solstice_forge_request_errors_total{forge=\"codeberg\",method=\"FetchTask\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert!(text.contains("# TYPE solstice_jobs counter"), "{text}");
        assert!(
            text.contains("# TYPE solstice_task_to_first_step_seconds histogram"),
            "{text}"
        );
        for h in [
            "provision",
            "boot",
            "ssh_ready",
            "first_step",
            "task_to_first_step",
        ] {
            assert_eq!(
                sample(&text, &format!("solstice_{h}_seconds_count")),
                Some(1.0),
                "{h}: {text}"
            );
        }
        // The sum of the segments, 9 s, lands in the 10 s bucket but not the 7.5 s one.
        let sum = sample(&text, "solstice_task_to_first_step_seconds_sum").unwrap();
        assert!((sum - 9.0).abs() < 1e-9, "{sum}");
        assert_eq!(
            sample(
                &text,
                "solstice_task_to_first_step_seconds_bucket{le=\"10.0\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "solstice_task_to_first_step_seconds_bucket{le=\"7.5\"}"
            ),
            Some(0.0),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn warm_metrics_are_labelled_by_image() {
        let m = Metrics::new();
        m.set_warm("tiny", 2, 1);
        m.warm_take("tiny", "hit");
        m.warm_take("tiny", "hit");
        m.warm_take("tiny", "miss");
        m.warm_refilled("tiny", "booted", Duration::from_secs(4));
        m.warm_replaced("tiny", "image_changed");
        let text = m.encode();
        assert_eq!(
            sample(&text, "solstice_warm_ready{image=\"tiny\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "solstice_warm_starting{image=\"tiny\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "solstice_warm_takes_total{image=\"tiny\",result=\"hit\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "solstice_warm_takes_total{image=\"tiny\",result=\"miss\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "solstice_warm_refill_seconds_bucket{le=\"5.0\",image=\"tiny\",kind=\"booted\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "solstice_warm_replaced_total{image=\"tiny\",reason=\"image_changed\"}"
            ),
            Some(1.0),
            "{text}"
        );
        m.set_warm("tiny", 0, 0);
        let text = m.encode();
        assert_eq!(
            sample(&text, "solstice_warm_ready{image=\"tiny\"}"),
            Some(0.0),
            "{text}"
        );
    }

    #[test]
    fn latency_total_prefers_the_measured_whole() {
        let mut s = LatencySplit {
            provision: Some(Duration::from_secs(1)),
            boot: Some(Duration::from_secs(2)),
            ssh_ready: Some(Duration::from_secs(3)),
            first_step: None,
            task_to_first_step: None,
        };
        assert_eq!(s.total(), None);
        s.first_step = Some(Duration::from_secs(4));
        assert_eq!(s.total(), Some(Duration::from_secs(10)));
        s.task_to_first_step = Some(Duration::from_secs(11));
        assert_eq!(s.total(), Some(Duration::from_secs(11)));
        // A partial split observes only its known segments.
        let m = Metrics::new();
        m.observe_latency(&LatencySplit {
            provision: Some(Duration::from_secs(1)),
            ..Default::default()
        });
        let text = m.encode();
        assert_eq!(sample(&text, "solstice_provision_seconds_count"), Some(1.0));
        assert_eq!(sample(&text, "solstice_boot_seconds_count"), Some(0.0));
        assert_eq!(
            sample(&text, "solstice_task_to_first_step_seconds_count"),
            Some(0.0)
        );
    }

    #[tokio::test]
    async fn serves_metrics_over_http_until_shutdown() {
        let m = Metrics::new();
        m.job_started();
        let stop = CancellationToken::new();
        let (addr, task) = serve(m.clone(), "127.0.0.1:0".parse().unwrap(), stop.clone())
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);
        let client = reqwest::Client::new();
        let resp = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], CONTENT_TYPE);
        let body = resp.text().await.unwrap();
        assert_eq!(sample(&body, "solstice_jobs_running"), Some(1.0), "{body}");

        // Values are live.
        m.job_started();
        let body = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(sample(&body, "solstice_jobs_running"), Some(2.0), "{body}");

        let resp = client
            .get(format!("http://{addr}/other"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);

        // The address is taken now: binding it again fails at the caller.
        let err = serve(m.clone(), addr, CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");

        // Shutdown ends the task even with the client's keep-alive connection open.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the server stops on shutdown")
            .unwrap();
        assert!(
            client
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .is_err()
        );
    }
}
