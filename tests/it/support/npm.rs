//! The real `@actions/core` from npm for the test actions, without `npm`:
//! a pinned closure of tarballs, downloaded once from the public registry
//! into `$XDG_CACHE_HOME/solstice/npm` (else `~/.cache/solstice/npm`),
//! checked against the registry's sha512 integrity, and unpacked flat into
//! an action's `node_modules/`.
//!
//! Why 1.11.1: it is the newest `@actions/core` that is CommonJS with small
//! dependencies. 2.x is CommonJS too (its dependencies are newer majors); 3.x
//! is ESM only (`"type": "module"`, `exports` has only `import`), so a
//! `require('@actions/core')` would need node ≥ 22.12 (or a flag on 20.x).
//! The closure was resolved from the registry's JSON (highest version
//! satisfying every range) and has no version conflicts, so a flat
//! `node_modules` is what npm itself would install.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha512};

/// One pinned npm package.
pub struct Tarball {
    pub name: &'static str,
    pub version: &'static str,
    /// `dist.tarball`.
    pub url: &'static str,
    /// `dist.integrity` (`sha512-<base64>`).
    pub integrity: &'static str,
}

/// `@actions/core@1.11.1` and its dependency closure.
pub const ACTIONS_CORE: &[Tarball] = &[
    Tarball {
        name: "@actions/core",
        version: "1.11.1",
        url: "https://registry.npmjs.org/@actions/core/-/core-1.11.1.tgz",
        integrity: "sha512-hXJCSrkwfA46Vd9Z3q4cpEpHB1rL5NG04+/rbqW9d3+CSvtB1tYe8UTpAlixa1vj0m/ULglfEK2UKxMGxCxv5A==",
    },
    Tarball {
        name: "@actions/exec",
        version: "1.1.1",
        url: "https://registry.npmjs.org/@actions/exec/-/exec-1.1.1.tgz",
        integrity: "sha512-+sCcHHbVdk93a0XT19ECtO/gIXoxvdsgQLzb2fE2/5sIZmWQuluYyjPQtrtTHdU1YzTZ7bAPN4sITq2xi1679w==",
    },
    Tarball {
        name: "@actions/io",
        version: "1.1.3",
        url: "https://registry.npmjs.org/@actions/io/-/io-1.1.3.tgz",
        integrity: "sha512-wi9JjgKLYS7U/z8PPbco+PvTb/nRWjeoFlJ1Qer83k/3C5PHQi28hiVdeE2kHXmIL99mQFawx8qt/JPjZilJ8Q==",
    },
    Tarball {
        name: "@actions/http-client",
        version: "2.2.3",
        url: "https://registry.npmjs.org/@actions/http-client/-/http-client-2.2.3.tgz",
        integrity: "sha512-mx8hyJi/hjFvbPokCg4uRd4ZX78t+YyRPtnKWwIl+RzNaVuFpQHfmlGVfsKEJN8LwTCvL+DfVgAM04XaHkm6bA==",
    },
    Tarball {
        name: "tunnel",
        version: "0.0.6",
        url: "https://registry.npmjs.org/tunnel/-/tunnel-0.0.6.tgz",
        integrity: "sha512-1h/Lnq9yajKY2PEbBadPXj3VxsDDu844OnaAo52UVmIzIvwwtBPIuNvkjuzBlTWpfJyUbG3ez0KSBibQkj4ojg==",
    },
    Tarball {
        name: "undici",
        version: "5.29.0",
        url: "https://registry.npmjs.org/undici/-/undici-5.29.0.tgz",
        integrity: "sha512-raqeBD6NQK4SkWhQzeYKd1KmIG6dllBOTt55Rmkt4HtI9mwdWtJljnrXjAFUBLTSN67HWrOIZ3EPF4kjUw80Bg==",
    },
    Tarball {
        name: "@fastify/busboy",
        version: "2.1.1",
        url: "https://registry.npmjs.org/@fastify/busboy/-/busboy-2.1.1.tgz",
        integrity: "sha512-vBZP4NlzfOlerQTnba4aqZoMhE/a9HY7HRqoOPaETQcSQuWEIyZMHGfVu6w9wGtGK5fED5qRs2DteVCjOH60sA==",
    },
];

/// The download cache directory.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    base.join("solstice").join("npm")
}

/// Installs `@actions/core@1.11.1` and its dependencies into
/// `dir/node_modules/` (as `npm install` would, flat). Downloads each
/// tarball once into [`cache_dir`]; safe under concurrent tests (a download
/// is written to a private file and renamed into place once verified).
pub fn install_actions_core(dir: &Path) {
    install(dir, ACTIONS_CORE);
}

/// Installs `packages` into `dir/node_modules/<name>/`.
pub fn install(dir: &Path, packages: &[Tarball]) {
    for p in packages {
        let tgz = tarball(p);
        let dest = dir.join("node_modules").join(p.name);
        std::fs::create_dir_all(&dest).unwrap();
        unpack(&tgz, &dest).unwrap_or_else(|e| panic!("unpacking {}: {e}", p.url));
    }
}

/// The bytes of `p`'s tarball, integrity checked, from the cache or the registry.
pub fn tarball(p: &Tarball) -> Vec<u8> {
    let dir = cache_dir();
    let file_name = format!("{}-{}.tgz", p.name.replace('/', "+"), p.version);
    let path = dir.join(&file_name);
    if let Ok(bytes) = std::fs::read(&path) {
        if integrity_ok(&bytes, p.integrity) {
            return bytes;
        }
        // A damaged cache entry: fetch it again below.
    }
    let bytes = download(p.url);
    assert!(
        integrity_ok(&bytes, p.integrity),
        "{} does not match its pinned integrity {} (registry changed, or a proxy altered it)",
        p.url,
        p.integrity
    );
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating the npm cache {}: {e}", dir.display()));
    let tmp = tempfile::NamedTempFile::new_in(&dir).unwrap();
    std::fs::write(tmp.path(), &bytes).unwrap();
    tmp.persist(&path)
        .unwrap_or_else(|e| panic!("saving {}: {e}", path.display()));
    bytes
}

/// Whether `bytes` has the npm `integrity` string `sha512-<base64>`.
pub fn integrity_ok(bytes: &[u8], integrity: &str) -> bool {
    let Some(b64) = integrity.strip_prefix("sha512-") else {
        panic!("only sha512 integrity strings are pinned, not {integrity}");
    };
    let digest = Sha512::digest(bytes);
    base64::engine::general_purpose::STANDARD.encode(digest) == b64
}

/// GETs `url` on a private runtime (the callers may be inside a tokio test).
fn download(url: &str) -> Vec<u8> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let resp = client().get(&url).send().await.unwrap_or_else(|e| {
                panic!(
                    "downloading {url}: {e} (the npm registry must be reachable once; \
                         the tarball is then cached in {})",
                    cache_dir().display()
                )
            });
            assert!(
                resp.status().is_success(),
                "downloading {url}: HTTP {}",
                resp.status()
            );
            resp.bytes()
                .await
                .unwrap_or_else(|e| panic!("downloading {url}: {e}"))
                .to_vec()
        })
    })
    .join()
    .expect("the download thread panicked")
}

/// A client that also trusts the certificates in `$SSL_CERT_FILE` (a
/// machine behind a TLS-inspecting proxy lists its CA there; reqwest's
/// built-in roots do not have it).
fn client() -> reqwest::Client {
    let mut b = reqwest::Client::builder();
    if let Some(file) = std::env::var_os("SSL_CERT_FILE")
        && let Ok(pem) = std::fs::read(&file)
    {
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .unwrap_or_else(|e| panic!("SSL_CERT_FILE={}: {e}", Path::new(&file).display()));
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().unwrap()
}

/// Unpacks an npm tarball into `dest`, dropping its top-level directory
/// (`package/` in nearly every tarball).
pub fn unpack(tgz: &[u8], dest: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = path.components();
        parts.next(); // package/
        let rest: PathBuf = parts.collect();
        if rest.as_os_str().is_empty() {
            continue;
        }
        if rest
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(std::io::Error::other(format!(
                "unsafe path in tarball: {}",
                path.display()
            )));
        }
        let target = dest.join(&rest);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&target)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                std::fs::write(&target, data)?;
            }
            // npm tarballs carry files only; links and the rest are skipped.
            _ => {}
        }
    }
    Ok(())
}

/// Installs the dependency closure pinned by `fixture_dir/package-lock.json`
/// with the real `npm ci --ignore-scripts` (no install scripts run), once,
/// into `<cache_dir>/locked/<first 16 hex digits of the lock's SHA-256>/`,
/// pruned of what node never loads from CommonJS ([`prune`]), and returns
/// that directory's `node_modules`. A changed lock gets a new
/// directory. Concurrent callers each install into a private directory and
/// rename it into place; the loser's copy is removed. Needs `npm` and the
/// npm registry (or npm's own cache).
pub fn install_locked(fixture_dir: &Path) -> PathBuf {
    use sha2::Sha256;
    let lock = std::fs::read(fixture_dir.join("package-lock.json"))
        .unwrap_or_else(|e| panic!("{}: no package-lock.json: {e}", fixture_dir.display()));
    let hash: String = Sha256::digest(&lock)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = cache_dir().join("locked");
    let dir = root.join(&hash);
    let modules = dir.join("node_modules");
    // npm ci writes this file last.
    if modules.join(".package-lock.json").is_file() {
        return modules;
    }
    std::fs::create_dir_all(&root).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{hash}.tmp-"))
        .tempdir_in(&root)
        .unwrap();
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(fixture_dir.join(f), tmp.path().join(f)).unwrap();
    }
    let out = std::process::Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(tmp.path())
        .output()
        .expect("run npm (node's package manager must be installed)");
    assert!(
        out.status.success(),
        "npm ci in {} failed: {}",
        tmp.path().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    prune(&tmp.path().join("node_modules"));
    let tmp = tmp.keep();
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test installed the same lock first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(modules.join(".package-lock.json").is_file());
    modules
}

/// A node `--require` preload that, when node exits, appends every module
/// file node loaded to the file named by `$SOLSTICE_NODE_TRACE`. Written
/// into `dir`; returns its path.
pub fn trace_preload(dir: &Path) -> PathBuf {
    let p = dir.join("solstice-trace-requires.js");
    std::fs::write(
        &p,
        "process.on('exit', () => {\n  const out = process.env.SOLSTICE_NODE_TRACE;\n  if (out) require('fs').appendFileSync(out, Object.keys(require.cache).join('\\n') + '\\n');\n});\n",
    )
    .unwrap();
    p
}

/// Copies into `dest/node_modules` the packages of `modules` that node
/// loaded a file from in the runs recorded in `trace` (written by
/// [`trace_preload`]), each whole (with its nested `node_modules`) but for
/// what node never loads through `require`: source maps, type declarations,
/// Markdown, and `esm`, `browser`, `react-native`, `docs` and `test`
/// directories. A locked closure holds build tools of its dependencies
/// (TypeScript, protobuf compilers); a guest gets the few megabytes the
/// action uses. Whole packages rather than single files: another node
/// version loads other files lazily (undici's HTTP parser, for one).
pub fn copy_traced(modules: &Path, trace: &Path, dest: &Path) {
    let text = std::fs::read_to_string(trace).unwrap();
    let mut packages: std::collections::BTreeSet<PathBuf> = Default::default();
    for line in text.lines() {
        let Ok(rel) = Path::new(line).strip_prefix(modules) else {
            continue;
        };
        let mut parts = rel.components();
        let Some(first) = parts.next() else { continue };
        let first = PathBuf::from(first.as_os_str());
        let package = if first.to_string_lossy().starts_with('@') {
            match parts.next() {
                Some(second) => first.join(second.as_os_str()),
                None => continue,
            }
        } else {
            first
        };
        packages.insert(package);
    }
    assert!(
        !packages.is_empty(),
        "the trace {} names no module under {}",
        trace.display(),
        modules.display()
    );
    for package in packages {
        copy_runtime_files(
            &modules.join(&package),
            &dest.join("node_modules").join(&package),
        );
    }
}

fn copy_runtime_files(src: &Path, dest: &Path) {
    const SKIP_DIRS: [&str; 7] = [
        "esm",
        "dist-esm",
        "browser",
        "react-native",
        "docs",
        "test",
        "tests",
    ];
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                copy_runtime_files(&e.path(), &dest.join(&name));
            }
        } else if ty.is_file()
            && ![".map", ".ts", ".mts", ".cts", ".md", ".markdown"]
                .iter()
                .any(|x| name.ends_with(x))
        {
            std::fs::copy(e.path(), dest.join(&name)).unwrap();
        }
    }
}

/// Removes from an installed `node_modules` what node never loads from
/// CommonJS: type declarations, source maps, docs, browser and ESM builds,
/// `.bin` links (and every other symlink, which the test copies do not keep).
fn prune(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::fs::remove_file(&p).unwrap();
        } else if ft.is_dir() {
            let in_dist = p.parent().is_some_and(|d| d.ends_with("dist"));
            if name == ".bin"
                || (in_dist && ["esm", "browser", "react-native"].contains(&name.as_str()))
            {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                prune(&p);
            }
        } else if [".map", ".d.ts", ".d.mts", ".d.cts", ".md"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            std::fs::remove_file(&p).unwrap();
        }
    }
}
