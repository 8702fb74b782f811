//! `solstice run` as an operator starts it, up to the point where it would
//! serve: forges that cannot be reached, URLs that are not a forge, a
//! config without forges. No guest boots; the image is a blank qcow2.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn solstice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_solstice"))
}

/// A blank qcow2 image made with the real `qemu-img`.
fn blank_image(dir: &Path) -> PathBuf {
    let p = dir.join("blank.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    p
}

/// A config with one image and, if `forge` is given, one forge section
/// (`[forges.local]` plus the given lines).
fn config(dir: &Path, forge: Option<&str>) -> PathBuf {
    let image = blank_image(dir);
    let mut text = format!(
        "[daemon]\nstate_dir = {:?}\n[qemu]\naccel = \"tcg\"\n[images.tiny]\npath = {image:?}\n",
        dir.join("state")
    );
    if let Some(f) = forge {
        text.push_str("[forges.local]\n");
        text.push_str(f);
    }
    let p = dir.join("solstice.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Kills the child if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn registration_token(dir: &Path) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, "some-registration-token\n").unwrap();
    p
}

/// Runs `solstice run -c config` to its end (at most 60 s).
fn run_to_end(config: &Path) -> (Option<i32>, String) {
    let mut child = solstice()
        .args(["run", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "solstice run did not stop:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Serves every request with what `python3 -m http.server` answers to a
/// POST, on a thread of its own; returns the URL.
fn plain_web_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(|| async {
                axum::response::Response::builder()
                    .status(501)
                    .header("content-type", "text/html;charset=utf-8")
                    .body(axum::body::Body::from(
                        "<html><body><h1>Error response</h1><p>Error code: 501</p><p>Message: Unsupported method ('POST').</p></body></html>",
                    ))
                    .unwrap()
            });
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}")
}

#[test]
fn a_url_that_is_not_a_forge_stops_the_daemon_with_the_fix() {
    let url = plain_web_server();
    let dir = tempfile::tempdir().unwrap();
    let token = registration_token(dir.path());
    let config = config(
        dir.path(),
        Some(&format!(
            "url = {url:?}\nregistration_token_file = {token:?}\n"
        )),
    );
    let (code, text) = run_to_end(&config);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "error: Forge local: {url} is not a Forgejo/Gitea instance with Actions enabled (Ping got HTTP 501 (text/html): \"Error response Error code: 501 Message: Unsupported method ('POST').\"): check forges.local.url"
        )),
        "{text}"
    );
    assert!(!text.contains("retrying"), "{text}");
}

#[test]
fn an_unreachable_forge_is_logged_with_its_cause_and_retried() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let token = registration_token(dir.path());
    let config = config(
        dir.path(),
        Some(&format!(
            "url = {url:?}\nregistration_token_file = {token:?}\nfetch_interval_secs = 1\n"
        )),
    );
    let mut child = KillOnDrop(
        solstice()
            .args(["run", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("cannot reach the forge to register") {
            break;
        }
    }
    let line = seen.last().cloned().unwrap_or_default();
    assert!(
        line.contains("cannot reach the forge to register"),
        "{seen:#?}"
    );
    // The cause, not only "Ping failed".
    assert!(
        line.contains("Ping failed: Ping: error sending request"),
        "{line}"
    );
    assert!(line.contains("Connection refused"), "{line}");
    // Still retrying: a real outage is not fatal. SIGTERM stops it cleanly.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.0.try_wait().unwrap().is_none(), "{seen:#?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

#[test]
fn config_warnings_are_logged_at_start_up_once_per_forge() {
    let url = plain_web_server();
    let dir = tempfile::tempdir().unwrap();
    let token = registration_token(dir.path());
    let config = config(
        dir.path(),
        Some(&format!(
            "url = {url:?}\nregistration_token_file = {token:?}\nfetch_interval_secs = 90\n"
        )),
    );
    // Two more images sharing the label `big`: `big` and `tiny` are both
    // declared to the forge, and no image has both.
    let image = dir.path().join("blank.qcow2");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[images.gpu]\npath = {image:?}\nlabels = [\"gpu\", \"big\"]\n[images.big]\npath = {image:?}\nlabels = [\"big\"]\n"
    ));
    std::fs::write(&config, text).unwrap();
    let (code, text) = run_to_end(&config);
    // The forge is not one, so the daemon stops; the warnings come first.
    assert_eq!(code, Some(1), "{text}");
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(
        warnings[0].contains("forges.local: labels \"big\" (images big, gpu) and \"tiny\" (image tiny) are both declared to this forge, but no single image has both")
            && warnings[0].contains("assigns a job with `runs-on: [big, tiny]` to this runner, which then fails it"),
        "{text}"
    );
    assert!(
        warnings[1]
            .contains("forges.local.fetch_interval_secs: the forge shows a runner as offline"),
        "{text}"
    );
}
