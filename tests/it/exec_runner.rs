//! The runner image (`images/runner`) keeps the conventions of GitHub's
//! hosted Ubuntu images that real workflows assume: one job checks each of
//! them in a booted guest. It fails if the recipe loses one: passwordless
//! sudo for `runner`, apt that never prompts (lz4's `sudo apt-get install
//! gcc-multilib` aborted at `Do you want to continue? [Y/n]` on the Debian
//! test image), package lists in the image, `~/.cargo/bin` on `PATH`, `pip
//! install --user` outside a venv, and the tools: a C compiler, cmake,
//! pkg-config, python3 with venv, node with npm, Rust through rustup, jq,
//! zstd, rsync, zip/unzip, xz.
//!
//! The guest downloads from deb.debian.org (a package registry, reachable
//! from these machines over plain HTTP; the VM's user-mode network goes
//! through the host). Everything else runs offline.

use crate::support;

use solstice::events::Conclusion;
use support::{RunOpts, TestEnv, all_text};

#[tokio::test(flavor = "multi_thread")]
async fn runner_image_keeps_githubs_conventions_sudo_apt_assume_yes_and_the_toolchains() {
    let env = TestEnv::runner();
    let yaml = r####"
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - name: User, sudo and the environment of an SSH session
        run: |
          echo "user=$(id -un) uid=$(id -u)"
          sudo -n true && echo "sudo ok"
          echo "frontend=$DEBIAN_FRONTEND"
          sudo sh -c 'echo "sudo frontend=$DEBIAN_FRONTEND"'
          case ":$PATH:" in *":$HOME/.cargo/bin:"*) echo "cargo bin on PATH" ;; esac
          case ":$PATH:" in *":$HOME/.local/bin:"*) echo "local bin on PATH" ;; esac
      - name: apt resolves from the lists in the image, then installs without asking
        run: |
          apt-get install -s gcc-multilib | grep -q '^Inst gcc-multilib ' && echo "lists in the image resolve gcc-multilib"
          sudo apt-get update -q >/dev/null
          # Two packages (lib32z1 pulls libc6-i386): apt would ask, and with no
          # terminal abort, unless it assumes yes.
          sudo apt-get install --no-install-recommends lib32z1 </dev/null
          dpkg-query -W -f '${Status}\n' lib32z1 libc6-i386
      - name: Compilers and build tools
        run: |
          cc --version | head -n1
          printf '#include <stdio.h>\nint main(void){puts("c program ran");return 0;}\n' >t.c
          cc -O2 t.c -o t && ./t
          c++ --version | head -n1
          cmake --version | head -n1
          echo "pkg-config $(pkg-config --version)"
          make --version | head -n1
          ninja --version
      - name: Python with venv and pip install --user
        run: |
          python --version
          python3 -m venv "$RUNNER_TEMP/venv"
          "$RUNNER_TEMP/venv/bin/python" -c 'import sys; print("venv", sys.prefix != sys.base_prefix)'
          # A local project (no index): Debian 12 refuses this without /etc/pip.conf.
          mkdir probe && cd probe
          printf 'VALUE = 42\n' >solstice_probe.py
          printf '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n[project]\nname = "solstice-probe"\nversion = "1"\n[tool.setuptools]\npy-modules = ["solstice_probe"]\n' >pyproject.toml
          pip install --user --no-index --no-build-isolation --quiet .
          cd / && python3 -c 'import solstice_probe, site; print("user site", solstice_probe.__file__.startswith(site.getusersitepackages()), solstice_probe.VALUE)'
      - name: Node and npm
        run: |
          node --version
          node -e 'console.log("node ran " + [1, 2].map((x) => x * 2).join(","))'
          echo "npm $(npm --version)"
      - name: Rust through rustup
        run: |
          command -v cargo
          rustup --version 2>/dev/null
          cargo --version
          cargo new -q --vcs none hello
          cd hello && cargo run -q --offline
      - name: Archives and data tools
        run: |
          jq --version
          echo '{"a":[1,2]}' | jq -c '.a'
          echo data >f && zstd -q f && zstd -dc f.zst
          zip -q f.zip f && unzip -p f.zip
          xz --version | head -n1
          xz -k f && xz -dc f.xz
          rsync -a f g && cat g
          git --version
          curl --version | head -n1
          wget --version | head -n1
"####;
    let started = std::time::Instant::now();
    let (result, sink) = env.run(yaml, RunOpts::default()).await;
    let report = result.expect("the runner guest came up and ran the job");
    let text = all_text(&sink);
    eprintln!("runner job took {:?}", started.elapsed());
    for (i, s) in report.outcome.steps.iter().enumerate() {
        assert_eq!(s.conclusion, Conclusion::Success, "step {i}:\n{text}");
    }
    for want in [
        "user=runner uid=1001",
        "sudo ok",
        "frontend=noninteractive",
        "sudo frontend=noninteractive",
        "cargo bin on PATH",
        "local bin on PATH",
        "lists in the image resolve gcc-multilib",
        "install ok installed",
        "c program ran",
        "cmake version 3.",
        "pkg-config 1.",
        "GNU Make",
        "venv True",
        "user site True 42",
        "node ran 2,4",
        "Hello, world!",
        "[1,2]",
        "data",
        "xz (XZ Utils) 5.",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("Do you want to continue"), "{text}");
    // node is the pinned version (>= 20, as JavaScript actions need).
    let pins: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::repo_root().join("images/pins.json")).unwrap(),
    )
    .unwrap();
    let node = pins["node"]["version"].as_str().unwrap();
    assert!(text.contains(&format!("v{node}")), "node {node}:\n{text}");
    let rust = pins["rustup"]["toolchain"].as_str().unwrap();
    assert!(
        text.contains(&format!("cargo {rust}")),
        "cargo {rust}:\n{text}"
    );
    assert!(text.contains("/home/runner/.cargo/bin/cargo"), "{text}");
}
