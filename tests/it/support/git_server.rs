//! A git server on 127.0.0.1 for checkout tests: `git http-backend` behind a
//! small Python HTTP server that requires the job token (Basic auth as
//! actions/checkout sends it), logs every request, and serves Git LFS
//! objects from a directory through the batch API.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running server; killed on drop.
pub struct Served {
    pub child: Child,
    pub port: u16,
    /// One line per request: `ok|refused METHOD PATH`.
    pub log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves the bare repositories under `root` (`<root>/<owner>/<name>.git`)
/// and the LFS objects in `lfs` (files named by their sha256), requiring
/// `token`. The request log is written next to `root`.
pub fn serve(root: &Path, lfs: &Path, token: &str) -> Served {
    serve_in(root, lfs, token, None)
}

/// [`serve`], inside a test network namespace (at its address) instead of
/// on the host's 127.0.0.1: guests cannot reach the host's loopback.
pub fn serve_in(root: &Path, lfs: &Path, token: &str, ns: Option<&super::netns::Netns>) -> Served {
    let log = root.with_file_name("requests.log");
    let expected = solstice::executor::checkout::auth_header_value(token);
    let script = format!(
        r#"
import http.server, json, os, subprocess
ROOT = {root:?}
LFS = {lfs:?}
LOG = {log:?}
EXPECTED = {expected:?}.lower()
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if n == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""
    def any(self):
        ok = self.headers.get("Authorization", "").lower() == EXPECTED
        with open(LOG, "a") as f:
            f.write(("ok " if ok else "refused ") + self.command + " " + self.path + "\n")
        body = self.body()
        if not ok:
            return self.reply(401, headers=[("WWW-Authenticate", 'Basic realm="git"')])
        path, _, query = self.path.partition("?")
        if path.startswith("/lfs-objects/"):
            p = os.path.join(LFS, os.path.basename(path))
            if not os.path.isfile(p):
                return self.reply(404)
            with open(p, "rb") as f:
                return self.reply(200, f.read(), [("Content-Type", "application/octet-stream")])
        if path.endswith("/info/lfs/objects/batch"):
            req = json.loads(body or b"{{}}")
            objs = []
            for o in req.get("objects", []):
                if os.path.isfile(os.path.join(LFS, o["oid"])):
                    href = "http://%s/lfs-objects/%s" % (self.headers.get("Host"), o["oid"])
                    objs.append({{"oid": o["oid"], "size": o["size"], "authenticated": True,
                                 "actions": {{"download": {{"href": href}}}}}})
                else:
                    objs.append({{"oid": o["oid"], "size": o["size"], "error": {{"code": 404, "message": "no such object"}}}})
            out = json.dumps({{"transfer": "basic", "objects": objs}}).encode()
            return self.reply(200, out, [("Content-Type", "application/vnd.git-lfs+json")])
        env = dict(os.environ, GIT_PROJECT_ROOT=ROOT, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
                   QUERY_STRING=query, REQUEST_METHOD=self.command, REMOTE_ADDR="127.0.0.1",
                   CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(body)),
                   HTTP_GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, sep, rest = out.partition(b"\r\n\r\n")
        if not sep:
            head, sep, rest = out.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.reply(status, rest, headers)
    do_GET = any
    do_POST = any
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(({bind:?}, 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#,
        root = root.to_str().unwrap(),
        lfs = lfs.to_str().unwrap(),
        log = log.to_str().unwrap(),
        bind = ns.map_or("127.0.0.1".to_string(), |n| n.addr.to_string()),
    );
    let mut cmd = match ns {
        Some(n) => n.command("python3"),
        None => Command::new("python3"),
    };
    let mut child = cmd
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the test git server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("server printed its port");
    Served { child, port, log }
}

/// Runs `git ARGS` in `dir` as a throw-away committer; panics with git's
/// stderr on failure. Returns stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
