//! The `actions/checkout` step: plan it from the job's checkout source and
//! its `with:` inputs, then copy a local tree in, clone in the guest, or
//! fetch on the host for a guest without git.

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::mpsc;

use super::checkout;
use super::error::StepError;
use super::exec::Stop;
use super::runtime::Runtime;
use super::state::is_true;
use super::step::{StepEnd, StepRun};
use crate::guest::{OutputChunk, Stream, shell_quote};
use crate::job::spec::CheckoutSource;
use crate::secret::Secret;

impl Runtime<'_> {
    pub(super) fn checkout_plan(
        &self,
        index: usize,
        with: &IndexMap<String, String>,
        step_dir: &str,
    ) -> Result<CheckoutPlan, StepError> {
        let get = |k: &str| with.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let dest = self.layout.resolve(get("path"));
        let clean = get("clean").is_none_or(is_true);
        let submodules = checkout::Submodules::parse(get("submodules"));
        let lfs = get("lfs").is_some_and(is_true);
        let server = match &self.spec.checkout {
            CheckoutSource::Remote { server_url, .. } => Some(server_url.as_str()),
            _ => None,
        };
        if !matches!(self.spec.checkout, CheckoutSource::None) {
            for w in checkout::input_warnings(with, server) {
                self.warn(index, w);
            }
        }
        match &self.spec.checkout {
            CheckoutSource::None => Ok(CheckoutPlan::Skip(
                "Nothing to check out: no source was given for this job; the workspace stays empty"
                    .into(),
            )),
            CheckoutSource::LocalTree { root, exclude } => {
                if let Some(r) = get("repository") {
                    return Err(StepError::CheckoutNeedsRemote(r.to_string()));
                }
                let tree = checkout::local_tree_tar(root, exclude).map_err(|error| {
                    StepError::LocalTree {
                        root: root.clone(),
                        error,
                    }
                })?;
                for d in &tree.excluded {
                    self.em.runner(
                        Some(index),
                        format!(
                            "Left out {d}: it is Solstice's state directory (daemon.state_dir)"
                        ),
                    );
                }
                if !tree.skipped.is_empty() {
                    const SHOWN: usize = 20;
                    let mut names: Vec<String> = tree
                        .skipped
                        .iter()
                        .take(SHOWN)
                        .map(|(p, kind)| format!("{p} ({kind})"))
                        .collect();
                    if tree.skipped.len() > SHOWN {
                        names.push(format!("and {} more", tree.skipped.len() - SHOWN));
                    }
                    self.warn(
                        index,
                        format!(
                            "Left out {} file(s) that tar cannot copy: {}",
                            tree.skipped.len(),
                            names.join(", ")
                        ),
                    );
                }
                if submodules != checkout::Submodules::None {
                    self.em.runner(
                        Some(index),
                        "Submodules: the local tree is copied as it is, with the submodules checked out in it; nothing is fetched",
                    );
                    if !tree.empty_submodules.is_empty() {
                        self.warn(
                            index,
                            format!(
                                "Submodule(s) not checked out in the local tree: {}; run `git submodule update --init{}` first",
                                tree.empty_submodules.join(", "),
                                if submodules == checkout::Submodules::Recursive {
                                    " --recursive"
                                } else {
                                    ""
                                }
                            ),
                        );
                    }
                }
                if lfs {
                    self.em.runner(
                        Some(index),
                        "LFS: the local tree is copied as it is, with the LFS files as they are checked out on this host; nothing is fetched",
                    );
                }
                Ok(CheckoutPlan::Local {
                    tar: tree.data,
                    dest,
                    clean,
                })
            }
            CheckoutSource::Remote {
                server_url,
                repository,
                git_ref,
                sha,
                token,
                host_dir,
            } => {
                let repo = get("repository").unwrap_or(repository);
                let same = repo.eq_ignore_ascii_case(repository);
                let token = match get("token") {
                    Some(t) => {
                        self.em.add_mask(t);
                        Some(t.to_string())
                    }
                    None => token.as_ref().map(|t| t.expose().to_string()),
                };
                let fetch_depth = match get("fetch-depth") {
                    Some(d) => d
                        .parse()
                        .map_err(|_| StepError::FetchDepth(d.to_string()))?,
                    None => 1,
                };
                let (r, s) = match get("ref") {
                    Some(r) => (r.to_string(), None),
                    None if same => (git_ref.clone(), Some(sha.clone()).filter(|s| !s.is_empty())),
                    None => (String::new(), None),
                };
                let fetch_tags = get("fetch-tags").is_some_and(is_true);
                let host = Box::new(HostCheckout {
                    server_url: server_url.clone(),
                    repository: repo.to_string(),
                    sha: s.clone(),
                    git_ref: r.clone(),
                    fetch_depth,
                    fetch_tags,
                    token: token.clone().map(Secret::new),
                    dest: dest.clone(),
                    clean,
                    submodules,
                    lfs,
                    host_dir: host_dir.clone(),
                });
                let mut extra = Vec::new();
                let auth_config = token.map(|t| {
                    self.em.add_mask(&checkout::auth_header_value(&t));
                    extra.push((
                        "auth.gitconfig".to_string(),
                        checkout::auth_config(server_url, &t).into_bytes(),
                    ));
                    format!("{step_dir}/auth.gitconfig")
                });
                let script = checkout::remote_script(&checkout::RemoteCheckout {
                    url: checkout::clone_url(server_url, repo),
                    sha: s,
                    git_ref: r,
                    dest,
                    fetch_depth,
                    fetch_tags,
                    clean,
                    submodules,
                    lfs,
                    auth_config,
                });
                Ok(CheckoutPlan::Remote {
                    script,
                    extra,
                    host,
                })
            }
        }
    }

    /// Whether the guest has git (the checkout's probe). When the probe
    /// itself fails, the clone in the guest runs and reports what is wrong.
    pub(super) async fn guest_has_git(&self) -> bool {
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let collect = async {
            let mut out = Vec::new();
            while let Some(c) = rx.recv().await {
                if c.stream == Stream::Stdout {
                    out.extend_from_slice(&c.data);
                }
            }
            out
        };
        let probe =
            async { tokio::join!(self.session.exec(checkout::GIT_PROBE, b"", tx), collect) };
        match tokio::time::timeout(Duration::from_secs(60), probe).await {
            Ok((_, out)) => !String::from_utf8_lossy(&out).contains("solstice-git=no"),
            Err(_) => true,
        }
    }

    /// The checkout for a guest without git: fetched on the host into a
    /// scratch directory, then copied in with its `.git` like a local tree.
    pub(super) async fn host_checkout(
        &self,
        plan: &StepRun<'_>,
        h: &HostCheckout,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        let at = h.at();
        self.em.runner(
            plan.log,
            format!(
                "git is not installed in the guest; fetching {}@{at} on the runner host and copying it in",
                h.repository
            ),
        );
        if !checkout::plain_repository(&h.repository) {
            return Err(StepError::NotOwnerName {
                repository: h.repository.clone(),
                server_url: h.server_url.clone(),
            });
        }
        if h.submodules != checkout::Submodules::None {
            self.warn(
                plan.index,
                "Submodules are not fetched: the guest has no git; install git in the image to check them out",
            );
        }
        if h.lfs {
            self.warn(
                plan.index,
                "LFS files are not downloaded (they stay pointer files): the guest has no git; install git and git-lfs in the image",
            );
        }
        let base = h.host_dir.clone().unwrap_or_else(std::env::temp_dir);
        let scratch = checkout::ScratchDir::create(&base, plan.index).map_err(|error| {
            StepError::ScratchDir {
                base: base.clone(),
                error,
            }
        })?;
        let fetch = checkout::HostFetch {
            server_url: &h.server_url,
            repository: &h.repository,
            sha: h.sha.as_deref(),
            git_ref: &h.git_ref,
            fetch_depth: h.fetch_depth,
            fetch_tags: h.fetch_tags,
            token: h.token.as_ref().map(Secret::expose),
        };
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let deadline = plan
            .deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or(far);
        let fetched = tokio::select! {
            r = checkout::host_fetch(&fetch, scratch.path()) => r,
            _ = tokio::time::sleep_until(deadline) => {
                return Ok((StepEnd::Stopped(plan.stop_kind), IndexMap::new()));
            }
            _ = self.cancel.cancelled(), if plan.watch_cancel => {
                return Ok((StepEnd::Stopped(Stop::Cancelled), IndexMap::new()));
            }
        };
        let head = match fetched {
            Ok(head) => head,
            Err(e) => {
                self.em.error(
                    plan.log,
                    format!("Fetching {} on the runner host failed: {e}", h.repository),
                );
                return Ok((StepEnd::Failure, IndexMap::new()));
            }
        };
        let tree =
            checkout::local_tree_tar(scratch.path(), &[]).map_err(StepError::CheckoutArchive)?;
        drop(scratch);
        let end = self
            .local_checkout(plan, tree.data, &h.dest, h.clean, "the checkout")
            .await?;
        if matches!(end.0, StepEnd::Success) {
            self.em.runner(plan.log, head);
        }
        Ok(end)
    }

    pub(super) async fn local_checkout(
        &self,
        plan: &StepRun<'_>,
        tar: Vec<u8>,
        dest: &str,
        clean: bool,
        what: &str,
    ) -> Result<(StepEnd, IndexMap<String, String>), StepError> {
        let count = tar.len();
        let step_dir = plan.dir.clone();
        let cmd = local_unpack_command(&step_dir, dest, clean);
        let res = self
            .exec_step_as(plan, &cmd, &tar, None, &step_dir, true)
            .await;
        if let Some(stop) = res.stop {
            return Ok((StepEnd::Stopped(stop), IndexMap::new()));
        }
        match res.status {
            Ok(0) => {
                self.em.runner(
                    plan.log,
                    format!("Copied {what} ({count} bytes of tar) to {dest}"),
                );
                Ok((StepEnd::Success, IndexMap::new()))
            }
            // The guest said what failed, in one `Solstice:` line.
            Ok(_) => Ok((StepEnd::Failure, IndexMap::new())),
            Err(error) => Err(StepError::Copy {
                what: what.to_string(),
                error,
            }),
        }
    }
}

/// The guest command that unpacks the local tree (on stdin) into `dest`.
/// `-m`: times are not restored, so a guest clock behind the host's never
/// sees files from the future; `o`: files belong to the job's user, not to
/// the host's uids (GNU, busybox and illumos tar agree). GNU tar is preferred
/// where it exists as `gtar` (illumos). Whatever the plumbing writes to stderr
/// is kept out of the log; on failure one `Solstice:` line says what failed.
/// The pid file lets a timeout or cancellation stop the copy like any step.
pub(super) fn local_unpack_command(step_dir: &str, dest: &str, clean: bool) -> String {
    let d = shell_quote(dest);
    let sd = shell_quote(step_dir);
    // Prints `Solstice: WHAT: <captured stderr on one line>` and fails.
    let fail = |what: &str| {
        format!(
            "{{ e=$(printf '%s' \"$e\" | tr '\\n' ' '); printf 'Solstice: %s%s\\n' {} \"${{e:+: $e}}\" >&2; exit 1; }}",
            shell_quote(what)
        )
    };
    let prep = if clean {
        format!(
            "e=$(rm -rf {d} 2>&1) || {}\n",
            fail(&format!("could not empty {dest}"))
        )
    } else {
        String::new()
    };
    format!(
        "e=$(mkdir -p {sd} 2>&1) || {f_sd}\n\
         if kill -0 -$$ 2>/dev/null; then echo \"-$$\" > {sd}/pid; else echo \"$$\" > {sd}/pid; fi\n\
         {prep}e=$(mkdir -p {d} 2>&1) || {f_mk}\n\
         cd {d} 2>/dev/null || {{ e=; {f_cd}; }}\n\
         if command -v gtar >/dev/null 2>&1; then t=gtar; else t=tar; fi\n\
         e=$($t xmof - 2>&1 >/dev/null) || {f_tar}\n",
        f_sd = fail(&format!("could not create {step_dir}")),
        f_mk = fail(&format!("could not create {dest}")),
        f_cd = fail(&format!("could not enter {dest}")),
        f_tar = fail(&format!("could not unpack the archive into {dest}")),
    )
}

pub(super) enum CheckoutPlan {
    Skip(String),
    Local {
        tar: Vec<u8>,
        dest: String,
        clean: bool,
    },
    Remote {
        script: String,
        extra: Vec<(String, Vec<u8>)>,
        /// For a guest without git.
        host: Box<HostCheckout>,
    },
}

/// The same checkout, fetched on the host for a guest without git.
pub(super) struct HostCheckout {
    pub(super) server_url: String,
    pub(super) repository: String,
    pub(super) sha: Option<String>,
    pub(super) git_ref: String,
    pub(super) fetch_depth: u32,
    pub(super) fetch_tags: bool,
    pub(super) token: Option<Secret>,
    pub(super) dest: String,
    pub(super) clean: bool,
    pub(super) submodules: checkout::Submodules,
    pub(super) lfs: bool,
    pub(super) host_dir: Option<PathBuf>,
}

impl HostCheckout {
    /// What is checked out, for the step log: the sha, else the ref, else `HEAD`.
    pub(super) fn at(&self) -> String {
        match (&self.sha, self.git_ref.is_empty()) {
            (Some(sha), _) => sha.clone(),
            (None, true) => "HEAD".into(),
            (None, false) => self.git_ref.clone(),
        }
    }
}
