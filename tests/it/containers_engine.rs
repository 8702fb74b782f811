//! The container engine of the Debian guest (Debian's docker.io), driven by
//! a job's `run:` step as the image's user: `docker info`, pulls of the test
//! images through the image's `registry_mirror` (a real registry in a test
//! network namespace, see `support::registry`), `docker run` of an image with
//! and one without bash, `docker build`, and `docker run --privileged`
//! (root in the VM, nothing on the host). Afterwards the host has no new
//! Docker or containerd process, no new network interface, and (the leak
//! check) no QEMU and no job directory.

use crate::support;

use std::collections::BTreeSet;

use solstice::events::Conclusion;
use support::{RunOpts, TestEnv, all_text, registry};

/// Names of the host's network interfaces.
fn host_links() -> BTreeSet<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Host processes that belong to a container engine: (pid, name).
fn engine_processes() -> BTreeSet<(u32, String)> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if ["dockerd", "docker", "containerd", "docker-proxy", "runc"].contains(&comm)
            || comm.starts_with("containerd-shim")
        {
            out.insert((pid, comm.to_string()));
        }
    }
    out
}

const ENGINE_JOB: &str = r#"
on: push
jobs:
  engine:
    runs-on: debian
    steps:
      - name: engine
        run: |
          set -eu
          docker info --format 'server {{.ServerVersion}} mirrors {{.RegistryConfig.Mirrors}}'
          docker pull -q solstice-test/bash:1
          docker run --rm solstice-test/bash:1 bash -c 'echo "hi from $BASH_VERSION"' | sed 's/(.*//'
          docker run --rm solstice-test/nobash:1 sh -c 'command -v bash || echo nobash'
          mkdir -p ctx
          printf 'FROM solstice-test/bash:1\nRUN echo built-in-image > /built\n' > ctx/Dockerfile
          docker build -q -t solstice-built:1 ctx
          docker run --rm --privileged solstice-built:1 sh -c 'cat /built && mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo privileged-mount-ok'
          echo whoami=$(id -un) sudo-free
"#;

#[tokio::test(flavor = "multi_thread")]
async fn docker_pulls_runs_and_builds_in_the_guest_and_leaves_nothing_on_the_host() {
    let reg = registry::shared();
    let env = TestEnv::debian_containers(&reg);
    let links_before = host_links();
    let procs_before = engine_processes();
    let (result, sink) = env.run(ENGINE_JOB, RunOpts::default()).await;
    let text = all_text(&sink);
    let report = result.unwrap_or_else(|e| panic!("job failed to run: {e}\n{text}"));
    assert_eq!(report.outcome.conclusion, Conclusion::Success, "{text}");
    assert!(
        text.contains(&format!("mirrors [{}/]", reg.mirror_url())),
        "the engine does not use the mirror:\n{text}"
    );
    for want in [
        "hi from 5.2",
        "nobash",
        "built-in-image",
        "privileged-mount-ok",
        "whoami=debian sudo-free",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Nothing of the engine on the host: no new interface (docker0, veths),
    // no docker/containerd process.
    let new_links: Vec<_> = host_links().difference(&links_before).cloned().collect();
    assert!(new_links.is_empty(), "new host interfaces: {new_links:?}");
    let new_procs: Vec<_> = engine_processes()
        .difference(&procs_before)
        .cloned()
        .collect();
    assert!(
        new_procs.is_empty(),
        "new engine processes on the host: {new_procs:?}"
    );
}

/// The test registry serves each test image's schema 2 manifest, and its
/// layer by digest, as Docker asks for them (no VM).
#[test]
fn the_test_registry_serves_every_test_image() {
    let reg = registry::shared();
    let addr = std::net::SocketAddr::from((registry::ADDR, registry::PORT));
    assert_eq!(reg.mirror_url(), "http://198.51.100.77:5000");
    for (repo, tag, _) in registry::IMAGES {
        let m = registry::request(
            addr,
            "GET",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(m.status, 200, "{repo}:{tag}");
        assert_eq!(
            m.header("docker-content-digest"),
            Some(registry::digest(&m.body).as_str()),
            "{repo}:{tag}"
        );
        let manifest: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap();
        let head = registry::request(addr, "HEAD", &format!("/v2/{repo}/blobs/{layer}"), &[], &[])
            .unwrap();
        assert_eq!(head.status, 200, "{repo}:{tag} layer {layer}");
    }
}
