//! Docker actions and the docker CLI in real Debian guests (the image's
//! docker.io engine, under TCG): a local Dockerfile action in the workspace,
//! a remote one with pre and post entry points (fixture `docker-stages`,
//! fetched by the host's action cache), a `docker://` step, and `docker
//! build` plus a `--privileged` container in a `run:` step, after which the
//! host is checked for anything of it.
//!
//! The Dockerfile actions are built in the guest `FROM scratch` from files
//! of the guest's own root file system (or, for the fixture, the host's);
//! `docker://solstice-test/bash:1` comes from the test registry
//! (`support::registry`) through the guest's own network.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use solstice::actions::{ActionCache, CacheSettings};
use solstice::events::Conclusion;
use solstice::testing::git_server::GitServer;

use crate::support::{self, RunOpts, TestEnv, all_text, registry, step_lines};

const S: Conclusion = Conclusion::Success;

/// The Debian guest with room for containers.
fn debian() -> TestEnv {
    let mut env = TestEnv::debian();
    env.image_mut().memory_mib = 1536;
    env
}

fn conclusions(report: &solstice::job::RunReport) -> Vec<(Conclusion, Conclusion)> {
    report
        .outcome
        .steps
        .iter()
        .map(|s| (s.outcome, s.conclusion))
        .collect()
}

/// Copies the host's `bins` and the libraries they load into `root`, as
/// plain files (a `FROM scratch` image's file system).
fn host_rootfs(root: &Path, bins: &[&str]) {
    let mut files = BTreeSet::new();
    for b in bins {
        let path = std::fs::canonicalize(format!("/bin/{b}")).unwrap();
        files.insert((format!("/bin/{b}"), path.clone()));
        let out = std::process::Command::new("ldd")
            .arg(&path)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) {
                let real = std::fs::canonicalize(lib).unwrap();
                files.insert((lib.to_string(), real));
            }
        }
    }
    for (dest, src) in files {
        let d = root.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        std::fs::copy(&src, &d).unwrap();
    }
}

/// A git server with fixture `docker-stages` (its `rootfs/` filled from
/// the host) as `fixtures/docker-stages@v1`, and an action cache for it.
async fn docker_stages() -> (GitServer, Arc<ActionCache>, tempfile::TempDir) {
    let server = GitServer::start().await;
    let tree = tempfile::tempdir().unwrap();
    support::actions::prepare("docker-stages", tree.path());
    host_rootfs(&tree.path().join("rootfs"), &["sh", "cat"]);
    server.publish(
        support::actions::OWNER,
        "docker-stages",
        tree.path(),
        &["v1"],
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ActionCache::new(CacheSettings {
        dir: dir.path().to_path_buf(),
        max_bytes: 1 << 30,
        allowed_hosts: vec!["127.0.0.1".into()],
    }));
    (server, cache, dir)
}

/// Shell (for a step) defining `rootfs DIR BIN...`: copies the guest's
/// binaries and their libraries into DIR as plain files. Its lines are
/// indented for a `run: |` block ten columns in.
fn rootfs_fn() -> String {
    ROOTFS_FN.replace('\n', "\n          ")
}

const ROOTFS_FN: &str = r#"rootfs() {
  r=$1; shift
  for b in "$@"; do
    p=$(command -v "$b")
    mkdir -p "$r/bin"; cp -L "$p" "$r/bin/$b"
    for l in $(ldd "$p" | grep -o '/[^ ]*'); do
      mkdir -p "$r$(dirname "$l")"; cp -L "$l" "$r$l"
    done
  done
}"#;

/// A local Dockerfile action (`./.github/actions/x`, written by a step)
/// whose entry point writes `GITHUB_OUTPUT`, `GITHUB_ENV` and a file in
/// `/github/workspace` that later steps read; the fixture's pre, main and
/// post entry points in order with its state; `runs.args` winning over
/// `with.args`, inputs as `INPUT_*`, `runs.env` under the step's `env`; a
/// `docker://` step with `with.args` and `with.entrypoint`, its image
/// pulled from the test registry (the image's `registry_mirror`).
#[tokio::test(flavor = "multi_thread")]
async fn dockerfile_and_docker_uses_actions_run_in_the_guest_engine() {
    let (server, cache, _dir) = docker_stages().await;
    let reg = registry::shared();
    let env = TestEnv::debian_containers(&reg);
    let rootfs = rootfs_fn();
    let yaml = format!(
        r#####"
jobs:
  build:
    runs-on: debian
    steps:
      - name: A local action with an image from the guest's own files
        run: |
          set -e
          {rootfs}
          a=.github/actions/x
          mkdir -p $a
          rootfs $a/rootfs sh cat
          cat > $a/action.yml <<'EOF'
          name: x
          inputs:
            greeting:
              default: hello
          runs:
            using: docker
            image: Dockerfile
            post-entrypoint: /post.sh
            env:
              FROM_MANIFEST: manifest-${{{{ '${{{{' }}}} inputs.greeting }}}}
              STEP_WINS: manifest
          EOF
          printf 'FROM scratch\nCOPY rootfs/ /\nCOPY entry.sh post.sh /\nENTRYPOINT ["/entry.sh"]\n' > $a/Dockerfile
          cat > $a/entry.sh <<'EOF'
          #!/bin/sh
          echo "local main args=$#:[$1][$2]"
          echo "greeting=$INPUT_GREETING home=$HOME pwd=$(pwd)"
          echo "ws=$GITHUB_WORKSPACE temp=$RUNNER_TEMP event=$GITHUB_EVENT_PATH"
          echo "files=$GITHUB_OUTPUT $GITHUB_ENV"
          echo "env=$FROM_MANIFEST/$STEP_WINS ci=$CI actions=$GITHUB_ACTIONS"
          cat "$GITHUB_EVENT_PATH" >/dev/null && echo "event readable"
          echo "said=$1" >> "$GITHUB_OUTPUT"
          echo "FROM_ACTION=set by the container" >> "$GITHUB_ENV"
          echo "written by the container" > /github/workspace/from-container.txt
          EOF
          printf '#!/bin/sh\necho "local post"\n' > $a/post.sh
          chmod +x $a/entry.sh $a/post.sh
          echo "prepared"
      - id: local
        uses: ./.github/actions/x
        with:
          greeting: hi
          args: first "second arg"
        env:
          STEP_WINS: step
      - name: Read what the container left
        run: |
          echo "output=${{{{ steps.local.outputs.said }}}}"
          echo "env-file=$FROM_ACTION"
          cat from-container.txt
      - id: remote
        uses: fixtures/docker-stages@v1
        with:
          who: world
          args: ignored because the manifest has args
        env:
          PINNED: step
      - run: echo "greeted=${{{{ steps.remote.outputs.greeted }}}}"
      - id: bash
        uses: docker://solstice-test/bash:1
        with:
          entrypoint: /bin/bash
          args: >-
            -c 'echo "bash in $PWD as $HOME: $1" && echo "x=from bash" >> "$GITHUB_OUTPUT"' zero "two words"
      - run: echo "bash-output=${{{{ steps.bash.outputs.x }}}}"
"#####
    );
    let (result, sink) = env
        .run(
            &yaml,
            RunOpts {
                actions: Some((cache, server.url().to_string())),
                ..RunOpts::default()
            },
        )
        .await;
    let report = result.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(report.outcome.conclusion, S, "{text}");
    assert_eq!(conclusions(&report), vec![(S, S); 7], "{text}");
    let local = step_lines(&sink, 1);
    for want in [
        // No `runs.args`: `with.args`, split with shell quoting.
        "local main args=2:[first][second arg]",
        "greeting=hi home=/github/home pwd=/github/workspace",
        "ws=/github/workspace temp=/github/runner_temp event=/github/workflow/event.json",
        "files=/github/file_commands/output /github/file_commands/env",
        // `runs.env` evaluated with the inputs, under the step's `env`.
        "env=manifest-hi/step ci=true actions=true",
        "event readable",
    ] {
        assert!(local.iter().any(|l| l == want), "{want}: {local:?}");
    }
    assert!(
        local
            .iter()
            .any(|l| l.contains("Building docker image") || l.contains("Dockerfile for action")),
        "{local:?}"
    );
    let read = step_lines(&sink, 2);
    for want in [
        "output=first",
        "env-file=set by the container",
        "written by the container",
    ] {
        assert!(read.iter().any(|l| l == want), "{want}: {read:?}");
    }
    // The fixture: `runs.args` (with the input) win over `with.args`; the
    // state its pre stage saved reaches main and post.
    let remote = step_lines(&sink, 3);
    for want in [
        "stage main args=2:[world][two words] who=world state=saved by pre",
        "env manifest-world step",
    ] {
        assert!(remote.iter().any(|l| l == want), "{want}: {remote:?}");
    }
    assert!(
        step_lines(&sink, 4).contains(&"greeted=world".to_string()),
        "{text}"
    );
    let bash = step_lines(&sink, 5);
    assert!(
        bash.contains(&"bash in /github/workspace as /github/home: two words".to_string()),
        "{bash:?}"
    );
    assert!(
        step_lines(&sink, 6).contains(&"bash-output=from bash".to_string()),
        "{text}"
    );
    // Pre before every step, the posts after them all.
    let lines = sink.lines();
    let at = |want: &str| {
        lines
            .iter()
            .position(|l| l == want)
            .unwrap_or_else(|| panic!("no line {want:?}: {text}"))
    };
    let pre = at("stage pre args=2:[world][two words]");
    let prepared = at("prepared");
    let post = at("stage post state=saved by pre");
    let local_post = at("local post");
    let last = at("bash-output=from bash");
    assert!(pre < prepared, "{text}");
    assert!(last < post && last < local_post, "{text}");
}

/// A `run:` step builds an image and runs it `--privileged` with the VM's
/// network and PID namespaces: it mounts, adds a network interface to the
/// VM and writes a file in the VM's root. Root in the VM, nothing on the
/// host: no such interface or file, no new engine process, nothing left
/// of the VM (the leak check).
#[tokio::test(flavor = "multi_thread")]
async fn docker_build_and_a_privileged_container_stay_in_the_vm() {
    let env = debian();
    let marker = format!("solstice-leak-{:08x}", rand::random::<u32>());
    let link = format!("sl{:08x}", rand::random::<u32>());
    let engine_before = engine_processes();
    let rootfs = rootfs_fn();
    let yaml = format!(
        r#####"
jobs:
  build:
    runs-on: debian
    steps:
      - name: docker build and docker run --privileged
        run: |
          set -e
          {rootfs}
          mkdir -p /tmp/priv && cd /tmp/priv
          rootfs rootfs sh cat mount ip mkdir
          printf 'FROM scratch\nCOPY rootfs/ /\nRUN echo "built in the guest" > /built\n' > Dockerfile
          docker build -t solstice-test/priv:1 .
          docker run --rm --privileged --network host --pid host solstice-test/priv:1 /bin/sh -c '
            cat /built
            mkdir -p /mnt && mount -t tmpfs none /mnt && echo "tmpfs mounted"
            ip link add {link} type bridge && echo "link added"
            echo x > /proc/1/root/tmp/{marker} && echo "file written in the VM"'
          ip link show {link} >/dev/null && echo "the VM has the link"
          test -f /tmp/{marker} && echo "the VM has the file"
"#####
    );
    let (result, sink) = env.run(&yaml, RunOpts::default()).await;
    let report = result.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(conclusions(&report), vec![(S, S)], "{text}");
    let lines = step_lines(&sink, 0);
    for want in [
        "built in the guest",
        "tmpfs mounted",
        "link added",
        "file written in the VM",
        "the VM has the link",
        "the VM has the file",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want}: {text}");
    }
    // The host: none of it.
    assert!(
        !Path::new("/sys/class/net").join(&link).exists(),
        "the host has interface {link}"
    );
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "the host has /tmp/{marker}"
    );
    let engine_after = engine_processes();
    let new: Vec<_> = engine_after.difference(&engine_before).collect();
    assert!(
        new.is_empty(),
        "new container engine processes on the host: {new:?}"
    );
}

/// The host's container engine processes (pid, name).
fn engine_processes() -> BTreeSet<(u32, String)> {
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if ["dockerd", "containerd", "runc", "docker-proxy"].contains(&comm)
            || comm.starts_with("containerd-shim")
        {
            out.insert((pid, comm.to_string()));
        }
    }
    out
}

/// A Linux image without a container engine (the tiny busybox guest): a
/// Docker action step fails at once, naming the image and what it needs;
/// later steps still run.
#[tokio::test(flavor = "multi_thread")]
async fn a_docker_step_on_an_image_without_docker_names_the_image() {
    let env = TestEnv::tiny();
    let yaml = r#"
jobs:
  build:
    steps:
      - uses: docker://solstice-test/bash:1
        with:
          args: -c 'echo never'
      - if: always()
        run: echo after
"#;
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let report = result.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(
        conclusions(&report),
        vec![(Conclusion::Failure, Conclusion::Failure), (S, S)],
        "{text}"
    );
    let lines = step_lines(&sink, 0).join("\n");
    assert!(
        lines.contains("`uses: docker://solstice-test/bash:1` is a Docker action")
            && lines.contains("needs a Linux image with a container engine (docker)")
            && lines.contains("image `tiny` has no `docker` on its PATH"),
        "{lines}"
    );
    assert!(!text.contains("never"), "{text}");
}

/// A Docker action stopped by its `timeout-minutes`: its kill script
/// signals the container (a signal to the `docker` client would not reach
/// it), the entry point's trap runs, and no container is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_docker_step_that_times_out_stops_its_container() {
    let reg = registry::shared();
    let env = TestEnv::debian_containers(&reg);
    let yaml = r#"
jobs:
  build:
    runs-on: debian
    steps:
      - run: docker pull -q solstice-test/bash:1
      - uses: docker://solstice-test/bash:1
        timeout-minutes: 0.5
        with:
          entrypoint: /bin/bash
          args: -c 'trap "echo got TERM; exit 3" TERM; echo started; while true; do sleep 1; done'
      - if: always()
        run: echo "left=$(docker ps -a -q --filter label=solstice-action | wc -l)"
"#;
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let report = result.expect("the job ran");
    let text = all_text(&sink);
    assert_eq!(
        conclusions(&report),
        vec![(S, S), (Conclusion::Failure, Conclusion::Failure), (S, S)],
        "{text}"
    );
    let stopped = step_lines(&sink, 1);
    for want in ["started", "got TERM"] {
        assert!(stopped.iter().any(|l| l == want), "{want}: {text}");
    }
    assert!(
        step_lines(&sink, 2).contains(&"left=0".to_string()),
        "{text}"
    );
}
