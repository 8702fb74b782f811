//! A real container registry for the container tests, offline: Debian's
//! `docker-registry` (the CNCF distribution registry) in a network namespace
//! the test creates at `198.51.100.77:5000`, holding the test images that
//! `tests/container-images/build.sh` builds from Debian packages:
//!
//! | name                       | what                                                     |
//! |----------------------------|----------------------------------------------------------|
//! | `solstice-test/nobash:1`   | glibc, libstdc++, libgcc_s, busybox (`sh`, `tail`, …); no bash |
//! | `solstice-test/bash:1`     | the same and bash                                        |
//! | `solstice-test/postgres:15`| PostgreSQL 15, trust auth, user/database `postgres`, port 5432 |
//!
//! Guests reach it as a pull-through mirror: an image whose
//! `registry_mirror` is [`Registry::mirror_url`] gets it in its
//! `/etc/docker/daemon.json`, and Docker asks the mirror first for every
//! Docker Hub name, so `image: solstice-test/bash:1` pulls from here without
//! any public registry.
//!
//! ```ignore
//! let reg = registry::shared();          // started once, shared while held
//! let mut env = registry::container_env(&reg); // Debian guest, 1536 MiB, the mirror set
//! ```
//!
//! The registry, once started, lives until the test process exits; it is
//! then stopped and its namespace and storage removed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::netns::{self, Netns};

/// The registry's address (a TEST-NET-2 documentation address, inside the
/// test's namespace).
pub const ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
/// The registry's port.
pub const PORT: u16 = 5000;

/// The test images: (repository, tag, `build.sh` argument).
pub const IMAGES: &[(&str, &str, &str)] = &[
    ("solstice-test/nobash", "1", "nobash"),
    ("solstice-test/bash", "1", "bash"),
    ("solstice-test/postgres", "15", "postgres"),
];

/// A running registry holding the test images. Stopped on drop.
pub struct Registry {
    child: Child,
    // Dropped after the child is killed (field order): the namespace, then
    // the storage directory.
    ns: Netns,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// `http://198.51.100.77:5000`: what an image's `registry_mirror` is set to.
    pub fn mirror_url(&self) -> String {
        format!("http://{}:{}", self.ns.addr, PORT)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry of this test process, started (and filled) by the first
/// caller; later callers share it while any holder is alive. Panics (fails
/// the test) if `docker-registry` is missing or an image cannot be built
/// (`.ci/setup-host.sh` installs what it needs; the postgres image needs
/// root for debootstrap).
pub fn shared() -> Arc<Registry> {
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = slot.as_ref() {
        return r.clone();
    }
    let r = Arc::new(start());
    *slot = Some(r.clone());
    // Once started, the registry stays for the rest of the test process:
    // guests of later tests pulled nothing from a registry started again at
    // the same address (CI, two test threads). It is stopped, and its
    // namespace removed, when the process exits.
    extern "C" fn stop_at_exit() {
        if let Ok(mut slot) = SHARED.lock() {
            slot.take();
        }
    }
    // SAFETY: registers a plain function with no arguments, once (the slot
    // was empty).
    unsafe {
        nix::libc::atexit(stop_at_exit);
    }
    r
}

/// The process's registry (see [`shared`]).
static SHARED: Mutex<Option<Arc<Registry>>> = Mutex::new(None);

/// Starts a registry in a fresh namespace and pushes every test image.
pub fn start() -> Registry {
    // Build first: nothing to clean up if that fails.
    let built: Vec<(&str, &str, PathBuf)> = IMAGES
        .iter()
        .map(|(repo, tag, arg)| (*repo, *tag, build_image(arg)))
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("solstice-test-registry-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("config.yml");
    // No `auth:` (anyone may pull and push), storage in the temp dir, no
    // storage health check (it would log every ten seconds).
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ADDR}:{PORT}\n",
            dir.path().join("storage").display()
        ),
    )
    .unwrap();
    let ns = netns::create("registry", ADDR);
    let mut cmd = ns.command("docker-registry");
    cmd.arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("registry.log")).unwrap(),
        ));
    // The registry dies with the test process, even if it is killed. The
    // parent-death signal follows the *thread* that spawned the child, and a
    // test's thread ends with the test: spawn from a thread that stays (parked)
    // until the process exits, or the registry would be killed under the
    // feet of the tests still using it.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    let child = rx
        .recv()
        .expect("the registry's spawning thread")
        .expect("start docker-registry (apt-get install docker-registry; .ci/setup-host.sh)");
    let reg = Registry {
        child,
        ns,
        _dir: dir,
    };
    let addr = SocketAddr::from((ADDR, PORT));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = request(addr, "GET", "/v2/", &[], &[]) {
            assert_eq!(resp.status, 200, "GET /v2/ of the test registry");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the test registry did not answer on {addr} within 30 s; its log: {}",
            std::fs::read_to_string(reg._dir.path().join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (repo, tag, dir) in &built {
        push(addr, repo, tag, dir);
    }
    reg
}

/// Runs `tests/container-images/build.sh arg` (cached) and returns the
/// directory holding `layer.tar.gz` and `config.json`.
pub fn build_image(arg: &str) -> PathBuf {
    let script = super::repo_root().join("tests/container-images/build.sh");
    let out = Command::new(&script)
        .arg(arg)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/container-images/build.sh");
    assert!(
        out.status.success(),
        "tests/container-images/build.sh {arg} failed ({})",
        out.status
    );
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        dir.join("layer.tar.gz").is_file() && dir.join("config.json").is_file(),
        "build.sh {arg} printed {}",
        dir.display()
    );
    dir
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Pushes the one-layer image in `dir` as `repo:tag` through the registry
/// HTTP API v2: each blob by a monolithic upload (POST, then PUT with the
/// digest), then a schema 2 manifest.
pub fn push(addr: SocketAddr, repo: &str, tag: &str, dir: &Path) {
    let layer = std::fs::read(dir.join("layer.tar.gz")).unwrap();
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let layer_digest = push_blob(addr, repo, &layer);
    let config_digest = push_blob(addr, repo, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(),
            "digest": config_digest,
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": layer.len(),
            "digest": layer_digest,
        }],
    });
    let body = serde_json::to_vec(&manifest).unwrap();
    let resp = request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
        &body,
    )
    .unwrap();
    assert_eq!(
        resp.status,
        201,
        "PUT manifest {repo}:{tag}: {}",
        String::from_utf8_lossy(&resp.body)
    );
}

/// Uploads one blob (skipped when the registry has it) and returns its digest.
fn push_blob(addr: SocketAddr, repo: &str, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let head = request(addr, "HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], &[]).unwrap();
    if head.status == 200 {
        return d;
    }
    let start = request(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(start.status, 202, "POST blob upload for {repo}");
    let location = start
        .header("location")
        .expect("a Location for the upload")
        .to_string();
    // The Location may be absolute (http://host:port/v2/...?_state=...).
    let path = match location.find("/v2/") {
        Some(i) => location[i..].to_string(),
        None => panic!("upload Location without /v2/: {location}"),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let put = request(
        addr,
        "PUT",
        &format!("{path}{sep}digest={d}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    )
    .unwrap();
    assert_eq!(
        put.status,
        201,
        "PUT blob {d} for {repo}: {}",
        String::from_utf8_lossy(&put.body)
    );
    d
}

/// One HTTP/1.1 response.
pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 request on a fresh connection (`Connection: close`;
/// the body is read to the end of the stream).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of the response head"))?;
    let text = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}
