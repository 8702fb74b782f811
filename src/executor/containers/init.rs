//! "Initialize containers": the job's network, its job container and its
//! services, started in the guest's engine before the first step, and the
//! services' logs at the end of the job.
//!
//! Everything runs in one script in the guest (its lines go to the job's
//! set-up part); what the script learns (container ids, ports, the image's
//! `PATH`) is written to a result file read afterwards. Values of `env:` and
//! the registry password are set by the script's shell (`export`, `printf`
//! builtins) and never appear in a process's arguments.

use std::time::{Duration, Instant};

use indexmap::IndexMap;

use super::job::{
    self, Health, JobCreate, NODE_MOUNT, Planned, create_args, health_of, next_backoff, parse_ports,
};
use super::{JobContainer, JobContainers, ServiceInfo, paths};
use crate::config::GuestOs;
use crate::events::LineKind;
use crate::executor::archive::{TarFile, build_tar};
use crate::executor::exec::Stop;
use crate::executor::runtime::Runtime;
use crate::executor::state::JobState;
use crate::executor::step::{StepRun, step_command};
use crate::guest::shell_quote;
use crate::workflow::Step;
use crate::workflow::expr::interpolate;

/// Longest wait for a service to become healthy (the job's remaining time
/// if shorter).
const HEALTH_LIMIT: Duration = Duration::from_secs(600);
/// Stands for the node mount (`"$@"`) in rendered `docker create` arguments.
const NODE_ARGS: &str = "\0node";

/// How "Initialize containers" ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::executor) enum InitEnd {
    /// Nothing to start, or everything started (and healthy).
    Ready,
    /// Failed, reported.
    Failed,
    Cancelled,
    TimedOut,
}

impl Runtime<'_> {
    /// Starts the job's containers (see the module doc) and sets
    /// `self.containers`, also when a later container fails (so that the
    /// started services' logs are printed at the end).
    pub(in crate::executor) async fn init_containers(&mut self, state: &JobState) -> InitEnd {
        let job = self.job;
        if job.container.is_none() && job.services.is_empty() {
            return InitEnd::Ready;
        }
        // Evaluate the definitions (matrix, secrets, env ...).
        let ctx = self.contexts(&self.base_env, state);
        let eval = |s: &str| interpolate(s, &ctx).map_err(|e| e.to_string());
        let mut planned: Vec<Planned> = Vec::new();
        if let Some(spec) = &job.container {
            match job::evaluate(spec, None, eval) {
                Ok(p) if p.image.is_empty() => {}
                Ok(p) => planned.push(p),
                Err(e) => {
                    self.em.error(None, format!("Invalid `container:`: {e}"));
                    return InitEnd::Failed;
                }
            }
        }
        for (id, spec) in &job.services {
            match job::evaluate(spec, Some(id), eval) {
                Ok(p) if p.image.is_empty() => self.em.runner(
                    None,
                    format!("Service `{id}` is not started: its image is empty"),
                ),
                Ok(p) => planned.push(p),
                Err(e) => {
                    self.em.error(None, format!("Invalid service `{id}`: {e}"));
                    return InitEnd::Failed;
                }
            }
        }
        if planned.is_empty() {
            return InitEnd::Ready;
        }
        if self.runner.os == GuestOs::Illumos {
            self.em.error(
                None,
                format!(
                    "This job uses `container:` or `services:`, which need a Linux image with a container engine; \
                     image `{}` is illumos. Run the job on a Linux image (runs-on), or drop `container:`/`services:`",
                    self.runner.image
                ),
            );
            return InitEnd::Failed;
        }
        for p in &planned {
            if let Some((_, password)) = &p.credentials {
                self.em.add_mask(password);
            }
        }

        self.em
            .line(None, LineKind::GroupStart, "Initialize containers");
        let end = self.start_containers(&planned, state).await;
        let end = match end {
            InitEnd::Ready => self.wait_healthy(&planned).await,
            other => other,
        };
        self.em.line(None, LineKind::GroupEnd, "");
        end
    }

    /// Runs the start script and reads its results into `self.containers`.
    async fn start_containers(&mut self, planned: &[Planned], state: &JobState) -> InitEnd {
        let dir = format!("{}/init-containers", self.layout.steps_root);
        let network = format!("solstice_network_{:012x}", rand::random::<u64>() >> 16);
        let mounts = job::job_mounts(&self.layout);
        let workdir = paths::translate(&self.layout.workspace, &mounts);
        let script = self.start_script(&dir, &network, planned, &mounts, &workdir);
        let files = [
            TarFile::dir("init-containers"),
            TarFile::file("init-containers/start.sh", script.into_bytes(), 0o700),
        ];
        let tar = match build_tar(&files) {
            Ok(t) => t,
            Err(e) => {
                self.em
                    .error(None, format!("Could not prepare the containers: {e}"));
                return InitEnd::Failed;
            }
        };
        let cmd = step_command(&self.layout.steps_root, &format!("{dir}/start.sh"));
        let step = Step::default();
        let ctx = self.contexts(&self.base_env, state);
        let step_env = IndexMap::new();
        let plan = StepRun {
            index: 0,
            log: None,
            dir: dir.clone(),
            key: "init-containers".into(),
            step: &step,
            ctx: &ctx,
            step_env: &step_env,
            deadline: Some(self.job_deadline),
            stop_kind: Stop::JobTimeout,
            watch_cancel: true,
            runner_debug: false,
        };
        let res = self.exec_step_as(&plan, &cmd, &tar, None, &dir, true).await;
        let result = self
            .quiet_exec(&format!("cat {}", shell_quote(&format!("{dir}/result"))))
            .await
            .map(|(_, out)| out)
            .unwrap_or_default();
        self.containers = Some(read_result(&result, planned, &network, mounts));
        match (res.stop, res.status) {
            (Some(Stop::Cancelled), _) => InitEnd::Cancelled,
            (Some(_), _) => {
                self.em.error(
                    None,
                    "The job's timeout was reached while its containers were starting",
                );
                InitEnd::TimedOut
            }
            (None, Ok(0)) => InitEnd::Ready,
            (None, Ok(_)) => {
                self.em.error(
                    None,
                    "The job's containers could not be started; the lines above say why",
                );
                InitEnd::Failed
            }
            (None, Err(e)) => {
                self.em
                    .error(None, format!("Could not start the containers: {e}"));
                InitEnd::Failed
            }
        }
    }

    /// The script that creates the network and starts every container.
    fn start_script(
        &self,
        dir: &str,
        network: &str,
        planned: &[Planned],
        mounts: &[(String, String)],
        workdir: &str,
    ) -> String {
        let q = |s: &str| shell_quote(s);
        let mut s = String::new();
        s.push_str(&format!(
            "rm -f \"$0\"\nd={}\necho $$ > \"$d/pid\"\n: > \"$d/result\"\n",
            q(dir)
        ));
        let missing = format!(
            "This job uses `container:` or `services:`, which need a container engine in the guest, \
             but image `{}` has no `docker` on its PATH; use an image with Docker (docs/containers.md)",
            self.runner.image
        );
        s.push_str(&format!(
            "if ! solstice_docker=$(command -v docker); then printf '%s\\n' {} >&2; exit 1; fi\n",
            q(&missing)
        ));
        let dirs: Vec<String> = mounts.iter().map(|(from, _)| q(from)).collect();
        s.push_str(&format!("mkdir -p {} || exit 1\n", dirs.join(" ")));
        // git in the container runs as another user than the workspace's owner.
        s.push_str(&format!(
            "printf '[safe]\\n\\tdirectory = *\\n' > {}\n",
            q(&format!("{}/_github_home/.gitconfig", self.layout.temp))
        ));
        let node = self.runner.node.clone().unwrap_or_else(|| "node".into());
        s.push_str(&format!(
            "solstice_node_dir=\nif n=$(command -v {} 2>/dev/null) && n=$(readlink -f \"$n\") && [ -f \"$n\" ]; then \
             solstice_node_dir=${{n%/*}}; printf 'node\\t%s\\n' \"${{n##*/}}\" >> \"$d/result\"; fi\n",
            q(&node)
        ));
        s.push_str(&format!(
            "if ! \"$solstice_docker\" network create --label solstice {n} >/dev/null; then \
             echo 'Could not create the job'\\''s container network' >&2; exit 1; fi\n\
             printf 'network\\t%s\\n' {n} >> \"$d/result\"\n",
            n = q(network)
        ));
        s.push_str(
            "dk() { if [ -n \"$solstice_cfg\" ]; then \"$solstice_docker\" --config \"$solstice_cfg\" \"$@\"; \
             else \"$solstice_docker\" \"$@\"; fi; }\n",
        );
        for (i, p) in planned.iter().enumerate() {
            s.push_str(&container_script(i, p, network, mounts, workdir));
        }
        s
    }

    /// Waits until every service with a health check is healthy (see
    /// [`Health`]); a failure prints the service's logs.
    async fn wait_healthy(&self, planned: &[Planned]) -> InitEnd {
        let Some(c) = &self.containers else {
            return InitEnd::Ready;
        };
        let deadline = (Instant::now() + HEALTH_LIMIT).min(self.job_deadline);
        for p in planned {
            let Some(id) = &p.service else { continue };
            let Some(svc) = c.services.get(id) else {
                continue;
            };
            let cmd = format!(
                "docker inspect --format '{{{{.State.Running}}}} {{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{end}}}}' {}",
                shell_quote(&svc.id)
            );
            let mut wait = None;
            let mut announced = false;
            let started = Instant::now();
            loop {
                let state = match self.quiet_exec(&cmd).await {
                    Some((0, out)) => match out.trim().split_once(' ') {
                        // A container that stopped while `starting` stays `starting`.
                        Some(("false", _)) => Health::Failed("exited".into()),
                        Some((_, health)) => health_of(health),
                        None if out.trim() == "false" => Health::Failed("exited".into()),
                        None => health_of(""),
                    },
                    Some(_) => Health::Failed("no state (the container is gone)".into()),
                    // The guest did not answer in time (a loaded TCG guest):
                    // ask again after the back-off.
                    None => Health::Starting,
                };
                match state {
                    Health::NoCheck => break,
                    Health::Healthy => {
                        self.em.runner(None, format!("Service `{id}` is healthy"));
                        break;
                    }
                    Health::Starting => {
                        if !announced {
                            self.em.runner(
                                None,
                                format!("Waiting for service `{id}` to become healthy"),
                            );
                            announced = true;
                        }
                        let w = next_backoff(wait);
                        wait = Some(w);
                        if Instant::now() + w > deadline {
                            self.service_failed(
                                id,
                                &p.image,
                                &svc.id,
                                &format!(
                                    "still `starting` after {} s",
                                    started.elapsed().as_secs()
                                ),
                            )
                            .await;
                            return if Instant::now() + w >= self.job_deadline {
                                InitEnd::TimedOut
                            } else {
                                InitEnd::Failed
                            };
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(w) => {}
                            _ = self.cancel.cancelled() => return InitEnd::Cancelled,
                        }
                    }
                    Health::Failed(state) => {
                        self.service_failed(id, &p.image, &svc.id, &format!("`{state}`"))
                            .await;
                        return InitEnd::Failed;
                    }
                }
            }
        }
        InitEnd::Ready
    }

    /// Reports a service that did not become healthy; its logs follow at the
    /// end of "Initialize containers" (every service's, once).
    async fn service_failed(&self, id: &str, image: &str, _cid: &str, why: &str) {
        self.em.error(
            None,
            format!(
                "Service `{id}` ({image}) did not become healthy: {why}. Its logs follow; \
                 check its health check (`options: --health-cmd ...`) and its `env:`"
            ),
        );
    }

    /// Prints a container's `docker logs` (masked, as every line).
    async fn print_logs(&self, cid: &str, details: bool) {
        let cmd = format!(
            "docker logs {}{} 2>&1",
            if details { "--details " } else { "" },
            shell_quote(cid)
        );
        match self.quiet_exec_long(&cmd).await {
            Some((_, out)) => {
                let out = out.trim_end_matches('\n');
                if !out.is_empty() {
                    self.em.line(None, LineKind::Stdout, out);
                }
            }
            None => self.em.runner(None, "Could not read the container's logs"),
        }
    }

    /// At the end of the job: each started service's logs, in a group.
    pub(in crate::executor) async fn print_service_logs(&self) {
        let Some(c) = &self.containers else { return };
        for (id, svc) in &c.services {
            self.em.line(
                None,
                LineKind::GroupStart,
                format!("Service container logs: {id}"),
            );
            self.print_logs(&svc.id, true).await;
            self.em.line(None, LineKind::GroupEnd, "");
        }
    }
}

/// The script part that starts container `i` (`p`): pull if missing (with
/// its credentials), create, start, check it runs, report its id, ports and
/// `PATH` to the result file.
fn container_script(
    i: usize,
    p: &Planned,
    network: &str,
    mounts: &[(String, String)],
    workdir: &str,
) -> String {
    let q = |s: &str| shell_quote(s);
    let what = p.what();
    let image = q(&p.image);
    let mut s = format!(
        "printf '%s\\n' {}\n",
        q(&format!("Starting {what}: {}", p.image))
    );
    s.push_str(&format!(
        "solstice_cfg=\nif ! \"$solstice_docker\" image inspect {image} >/dev/null 2>&1; then\n"
    ));
    if let Some((user, password)) = &p.credentials {
        let registry = job::registry_of(&p.image)
            .map(|r| format!(" {}", q(r)))
            .unwrap_or_default();
        s.push_str(&format!(
            "  solstice_cfg=$(mktemp -d) || exit 1\n  n=0\n  \
             until solstice_out=$(printf '%s' {pw} | \"$solstice_docker\" --config \"$solstice_cfg\" login{registry} -u {u} --password-stdin 2>&1); do\n    \
             printf '%s\\n' \"$solstice_out\" >&2; n=$((n+1)); if [ $n -ge 3 ]; then rm -rf \"$solstice_cfg\"; printf '%s\\n' {msg} >&2; exit 1; fi; sleep $((n*2))\n  done\n",
            pw = q(password),
            u = q(user),
            msg = q(&format!(
                "Could not log in to the registry of {} for {what} (3 tries); check `credentials:`",
                p.image
            )),
        ));
    }
    s.push_str(&format!(
        "  n=0\n  until dk pull {image} 2>&1; do\n    n=$((n+1)); if [ $n -ge 3 ]; then \
         [ -z \"$solstice_cfg\" ] || rm -rf \"$solstice_cfg\"; printf '%s\\n' {msg} >&2; exit 1; fi\n    \
         echo \"The pull failed; trying again in $((n*2)) s\"; sleep $((n*2))\n  done\n  \
         [ -z \"$solstice_cfg\" ] || rm -rf \"$solstice_cfg\"\nfi\n",
        msg = q(&format!(
            "Could not pull image {} for {what} (3 tries); check the image name and that the guest can reach its registry",
            p.image
        )),
    ));
    let job = p.service.is_none().then(|| JobCreate {
        mounts: mounts.to_vec(),
        workdir: workdir.to_string(),
    });
    let node_arg = [NODE_ARGS.to_string()];
    let args = create_args(
        p,
        network,
        job.as_ref(),
        if job.is_some() { &node_arg } else { &[] },
    );
    let argv = args
        .iter()
        .map(|a| {
            if a == NODE_ARGS {
                "\"$@\"".to_string()
            } else {
                q(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let exports: String = p
        .env
        .iter()
        .filter(|(k, _)| !job::client_var(k))
        .map(|(k, v)| format!("export {k}={}; ", q(v)))
        .collect();
    if job.is_some() {
        s.push_str(&format!(
            "set --\nif [ -n \"$solstice_node_dir\" ]; then set -- -v \"$solstice_node_dir:{NODE_MOUNT}:ro\"; fi\n"
        ));
    }
    let fail = |m: String| format!("printf '%s\\n' {} >&2; exit 1", q(&m));
    s.push_str(&format!(
        "if ! id=$({exports}exec \"$solstice_docker\" {argv}); then {}; fi\n",
        fail(format!("Could not create {what} from image {}", p.image))
    ));
    s.push_str(&format!(
        "printf 'container\\t{i}\\t%s\\n' \"$id\" >> \"$d/result\"\n\
         if ! \"$solstice_docker\" start \"$id\" >/dev/null || \
         [ \"$(\"$solstice_docker\" inspect --format '{{{{.State.Running}}}}' \"$id\" 2>/dev/null)\" != true ]; then\n  \
         printf '%s\\n' {logs}\n  \"$solstice_docker\" logs \"$id\" 2>&1\n  {}\nfi\n",
        fail(if p.service.is_none() {
            format!(
                "The job container ({}) is not running after its start: it needs `tail` and `sh` (its logs are above)",
                p.image
            )
        } else {
            format!("Service container `{}` ({}) is not running after its start (its logs are above)", p.service.as_deref().unwrap_or_default(), p.image)
        }),
        logs = q(&format!("Logs of {what}:")),
    ));
    if p.service.is_some() {
        s.push_str(&format!(
            "\"$solstice_docker\" port \"$id\" | while IFS= read -r l; do printf 'port\\t{i}\\t%s\\n' \"$l\"; done >> \"$d/result\"\n"
        ));
    } else {
        s.push_str(&format!(
            "p=$(\"$solstice_docker\" inspect --format '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' \"$id\" | sed -n 's/^PATH=//p' | head -n 1)\n\
             printf 'path\\t{i}\\t%s\\n' \"$p\" >> \"$d/result\"\n"
        ));
    }
    s
}

/// The containers the result file reports (`kind<TAB>index<TAB>value`).
fn read_result(
    out: &str,
    planned: &[Planned],
    network: &str,
    mounts: Vec<(String, String)>,
) -> JobContainers {
    let mut ids: IndexMap<usize, String> = IndexMap::new();
    let mut port_lines: IndexMap<usize, String> = IndexMap::new();
    let mut path: Option<String> = None;
    let mut node: Option<String> = None;
    for line in out.lines() {
        let mut f = line.splitn(3, '\t');
        let (kind, a, b) = (f.next(), f.next(), f.next());
        match (kind, a, b) {
            (Some("node"), Some(name), None) if !name.is_empty() => {
                node = Some(format!("{NODE_MOUNT}/{name}"));
            }
            (Some("container"), Some(i), Some(id)) => {
                if let Ok(i) = i.parse() {
                    ids.insert(i, id.trim().to_string());
                }
            }
            (Some("port"), Some(i), Some(l)) => {
                if let Ok(i) = i.parse::<usize>() {
                    let e = port_lines.entry(i).or_default();
                    e.push_str(l);
                    e.push('\n');
                }
            }
            (Some("path"), Some(_), Some(p)) => path = Some(p.trim().to_string()),
            _ => {}
        }
    }
    let mut c = JobContainers {
        network: network.to_string(),
        job: None,
        services: IndexMap::new(),
    };
    for (i, p) in planned.iter().enumerate() {
        let Some(id) = ids.get(&i).filter(|id| !id.is_empty()) else {
            continue;
        };
        match &p.service {
            Some(sid) => {
                c.services.insert(
                    sid.clone(),
                    ServiceInfo {
                        id: id.clone(),
                        ports: parse_ports(port_lines.get(&i).map_or("", String::as_str)),
                    },
                );
            }
            None => {
                c.job = Some(JobContainer {
                    id: id.clone(),
                    image: p.image.clone(),
                    image_path: path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| {
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                    }),
                    mounts: mounts.clone(),
                    node: node.clone(),
                });
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_file() {
        let planned = vec![
            Planned {
                image: "img".into(),
                ..Planned::default()
            },
            Planned {
                service: Some("db".into()),
                image: "pg".into(),
                ..Planned::default()
            },
            Planned {
                service: Some("never".into()),
                image: "x".into(),
                ..Planned::default()
            },
        ];
        let out = "node\tnode\ncontainer\t0\tabc\npath\t0\t/usr/bin:/bin\ncontainer\t1\tdef\n\
                   port\t1\t5432/tcp -> 0.0.0.0:49153\nport\t1\t5432/tcp -> [::]:49153\n";
        let c = read_result(
            out,
            &planned,
            "net",
            vec![("/h/work".into(), "/__w".into())],
        );
        assert_eq!(c.network, "net");
        let j = c.job.unwrap();
        assert_eq!(j.id, "abc");
        assert_eq!(j.image_path, "/usr/bin:/bin");
        assert_eq!(j.node.as_deref(), Some("/__e/node/bin/node"));
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services["db"].id, "def");
        assert_eq!(c.services["db"].ports["5432"], "49153");
    }

    #[test]
    fn script_keeps_values_out_of_arguments() {
        let p = Planned {
            service: Some("db".into()),
            image: "reg.example:5000/pg:1".into(),
            credentials: Some(("user".into(), "pass word".into())),
            env: vec![("POSTGRES_PASSWORD".into(), "it's $secret".into())],
            ..Planned::default()
        };
        let s = container_script(1, &p, "net", &[], "/__w/r/r");
        // Values only through shell builtins (export, printf).
        assert!(
            s.contains(
                "export POSTGRES_PASSWORD='it'\\''s $secret'; exec \"$solstice_docker\" create"
            ),
            "{s}"
        );
        assert!(s.contains("printf '%s' 'pass word' | \"$solstice_docker\" --config \"$solstice_cfg\" login reg.example:5000 -u user --password-stdin"), "{s}");
        assert!(
            s.contains(" -e POSTGRES_PASSWORD -e GITHUB_ACTIONS=true "),
            "{s}"
        );
        assert!(!s.contains("-e POSTGRES_PASSWORD="), "{s}");
    }
}
