//! The job container and the service containers: their evaluated
//! definitions, the `docker create` arguments, the parsing of what the engine
//! reports (`docker port`, health states). Pure functions; the commands are
//! run by [`super::init`].

use indexmap::IndexMap;

use super::paths;
use crate::executor::env::GuestLayout;
use crate::workflow::ContainerSpec;

/// Where the job container sees the guest's well-known directories.
pub(crate) const WORK_MOUNT: &str = "/__w";
/// The job container's `HOME`.
pub(crate) const HOME_MOUNT: &str = "/github/home";
/// The directory holding the guest's node, inside the job container.
pub(crate) const NODE_MOUNT: &str = "/__e/node/bin";
/// The engine's socket, the same path in the guest and in the job container.
pub(crate) const DOCKER_SOCK: &str = "/var/run/docker.sock";

/// One container to start, its values evaluated.
#[derive(Clone, Default, PartialEq)]
pub(crate) struct Planned {
    /// The service id; `None` for the job container.
    pub(crate) service: Option<String>,
    pub(crate) image: String,
    /// Registry user and password.
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) ports: Vec<String>,
    pub(crate) volumes: Vec<String>,
    /// `options:`, split.
    pub(crate) options: Vec<String>,
    pub(crate) entrypoint: Option<String>,
    /// The service's command (`command:` split, or `cmd:`).
    pub(crate) cmd: Vec<String>,
}

impl std::fmt::Debug for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planned")
            .field("service", &self.service)
            .field("image", &self.image)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| (u, "***")),
            )
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("ports", &self.ports)
            .field("volumes", &self.volumes)
            .field("options", &self.options)
            .field("entrypoint", &self.entrypoint)
            .field("cmd", &self.cmd)
            .finish()
    }
}

impl Planned {
    /// `job container` or `service db`, for messages.
    pub(crate) fn what(&self) -> String {
        match &self.service {
            Some(id) => format!("service `{id}`"),
            None => "the job container".into(),
        }
    }

    /// The container's name in the engine.
    pub(crate) fn name(&self) -> String {
        match &self.service {
            Some(id) => format!(
                "solstice_svc_{}",
                id.chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    })
                    .collect::<String>()
            ),
            None => "solstice_job".into(),
        }
    }
}

/// Evaluates a `container:` or service definition with `eval` (the
/// expression interpolation of the job's contexts). `service`: the service
/// id. Errors name the field.
pub(crate) fn evaluate(
    spec: &ContainerSpec,
    service: Option<&str>,
    eval: impl Fn(&str) -> Result<String, String>,
) -> Result<Planned, String> {
    let field = |name: &str, v: &str| eval(v).map_err(|e| format!("`{name}`: {e}"));
    let image = field("image", &spec.image)?.trim().to_string();
    let credentials = match &spec.credentials {
        Some(c) => {
            let user = field("credentials.username", &c.username.0)?;
            let password = field("credentials.password", &c.password.0)?;
            if user.is_empty() || password.is_empty() {
                None
            } else {
                Some((user, password))
            }
        }
        None => None,
    };
    let mut env = Vec::new();
    for (k, v) in &spec.env {
        if !crate::executor::shell::valid_env_name(k) {
            return Err(format!(
                "`env.{k}`: not a valid variable name (letters, digits and `_`, not starting with a digit)"
            ));
        }
        env.push((k.clone(), field(&format!("env.{k}"), &v.0)?));
    }
    let mut ports = Vec::new();
    for p in &spec.ports {
        let p = field("ports", &p.0)?;
        if !p.trim().is_empty() {
            ports.push(p.trim().to_string());
        }
    }
    let mut volumes = Vec::new();
    for v in &spec.volumes {
        let v = field("volumes", v)?;
        if !v.trim().is_empty() {
            volumes.push(v.trim().to_string());
        }
    }
    let options = match &spec.options {
        Some(o) => split_words(&field("options", o)?).map_err(|e| format!("`options`: {e}"))?,
        None => Vec::new(),
    };
    let entrypoint = match &spec.entrypoint {
        Some(e) => Some(field("entrypoint", e)?).filter(|e| !e.trim().is_empty()),
        None => None,
    };
    let cmd = match &spec.command {
        Some(c) => split_words(&field("command", c)?).map_err(|e| format!("`command`: {e}"))?,
        None => spec
            .cmd
            .iter()
            .map(|c| field("cmd", &c.0))
            .collect::<Result<_, _>>()?,
    };
    Ok(Planned {
        service: service.map(str::to_string),
        image,
        credentials,
        env,
        ports,
        volumes,
        options,
        entrypoint,
        cmd,
    })
}

/// Splits `options:` or `command:` like a POSIX shell would, quotes and
/// backslashes included, with no expansion (`$HOME` stays as written).
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, String> {
    shlex::split(s).ok_or_else(|| {
        "unbalanced quotes or a trailing backslash; quote values with spaces as in a shell".into()
    })
}

/// The registry host of `image` for `docker login`, or `None` for Docker
/// Hub: the first path element when it holds a `.` or `:` or is `localhost`.
pub(crate) fn registry_of(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// The job container's mounts, guest path → container path, longest first
/// (also its path translation table).
pub(crate) fn job_mounts(layout: &GuestLayout) -> Vec<(String, String)> {
    let mut m = vec![
        (layout.work_root.clone(), WORK_MOUNT.to_string()),
        (layout.temp.clone(), format!("{WORK_MOUNT}/_temp")),
        (layout.tool_cache.clone(), "/__t".to_string()),
        (
            format!("{}/_github_home", layout.temp),
            HOME_MOUNT.to_string(),
        ),
        (
            format!("{}/_github_workflow", layout.temp),
            "/github/workflow".to_string(),
        ),
    ];
    paths::longest_first(&mut m);
    m
}

/// What only the job container gets in `docker create`.
#[derive(Debug, Clone)]
pub(crate) struct JobCreate {
    /// [`job_mounts`].
    pub(crate) mounts: Vec<(String, String)>,
    /// The workspace, in the container.
    pub(crate) workdir: String,
}

/// The arguments of `docker create` (after `docker`) for `p` on `network`.
/// Variables are passed as `-e NAME` (their values must be in the
/// environment of the `docker` process); the job container (`job`) gets
/// the well-known mounts, the engine's socket, `HOME` and the `tail`
/// entrypoint. A mount of the guest's node is added by the caller, before
/// the image (`extra_before_image`).
/// Whether the `docker` client itself reads variable `name`
/// ([`crate::executor::step::DOCKER_CLIENT_VARS`]).
pub(crate) fn client_var(name: &str) -> bool {
    crate::executor::step::DOCKER_CLIENT_VARS.contains(&name)
}

pub(crate) fn create_args(
    p: &Planned,
    network: &str,
    job: Option<&JobCreate>,
    extra_before_image: &[String],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "create".into(),
        "--name".into(),
        p.name(),
        "--label".into(),
        "solstice".into(),
        "--network".into(),
        network.into(),
    ];
    if let Some(id) = &p.service {
        a.extend(["--network-alias".into(), id.clone()]);
    }
    if let Some(job) = job {
        a.extend(["--workdir".into(), job.workdir.clone()]);
    }
    for port in &p.ports {
        a.extend(["-p".into(), port.clone()]);
    }
    if let Some(job) = job {
        // Shortest guest path first: a mount inside another one comes after it.
        let mut mounts = job.mounts.clone();
        mounts.reverse();
        for (from, to) in mounts {
            a.extend(["-v".into(), format!("{from}:{to}")]);
        }
        a.extend(["-v".into(), format!("{DOCKER_SOCK}:{DOCKER_SOCK}")]);
    }
    for v in &p.volumes {
        a.extend(["-v".into(), v.clone()]);
    }
    a.extend(p.options.iter().cloned());
    for (k, v) in &p.env {
        // What the `docker` client reads itself goes by value (no secrets):
        // exported, it would redirect the client that creates the container.
        if client_var(k) {
            a.extend(["-e".into(), format!("{k}={v}")]);
        } else {
            a.extend(["-e".into(), k.clone()]);
        }
    }
    a.extend(["-e".into(), "GITHUB_ACTIONS=true".into()]);
    if !p.env.iter().any(|(k, _)| k == "CI") {
        a.extend(["-e".into(), "CI=true".into()]);
    }
    if job.is_some() {
        if !p.env.iter().any(|(k, _)| k == "HOME") {
            a.extend(["-e".into(), format!("HOME={HOME_MOUNT}")]);
        }
        a.extend(["--entrypoint".into(), "tail".into()]);
    } else if let Some(e) = &p.entrypoint {
        a.extend(["--entrypoint".into(), e.clone()]);
    }
    a.extend(extra_before_image.iter().cloned());
    a.push(p.image.clone());
    if job.is_some() {
        a.extend(["-f".into(), "/dev/null".into()]);
    } else {
        a.extend(p.cmd.iter().cloned());
    }
    a
}

/// Parses `docker port <id>`: `5432/tcp -> 0.0.0.0:49153` lines become
/// container port → VM port (`"5432"` → `"49153"`); a later line for the
/// same port (the IPv6 binding) replaces the earlier, as on GitHub.
pub(crate) fn parse_ports(out: &str) -> IndexMap<String, String> {
    let mut ports = IndexMap::new();
    for line in out.lines() {
        let Some((ctr, host)) = line.split_once("->") else {
            continue;
        };
        let ctr = ctr.trim();
        let ctr = ctr.split_once('/').map_or(ctr, |(p, _)| p);
        let Some((_, host_port)) = host.trim().rsplit_once(':') else {
            continue;
        };
        if ctr.is_empty() || host_port.is_empty() {
            continue;
        }
        ports.insert(ctr.to_string(), host_port.to_string());
    }
    ports
}

/// A service's health, from `docker inspect` of
/// `{{if .State.Health}}{{.State.Health.Status}}{{end}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// No health check: ready once running.
    NoCheck,
    Healthy,
    /// Still `starting`: wait and look again.
    Starting,
    /// `unhealthy`, or a state that will not become healthy.
    Failed(String),
}

/// Reads one health state.
pub(crate) fn health_of(state: &str) -> Health {
    match state.trim() {
        "" => Health::NoCheck,
        "healthy" => Health::Healthy,
        "starting" => Health::Starting,
        other => Health::Failed(other.to_string()),
    }
}

/// The wait before the next health look: 1 s, doubling up to 8 s.
pub(crate) fn next_backoff(previous: Option<std::time::Duration>) -> std::time::Duration {
    let max = std::time::Duration::from_secs(8);
    match previous {
        None => std::time::Duration::from_secs(1),
        Some(d) => (d * 2).min(max),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn docker_client_variables_of_container_env_go_by_value() {
        let mut spec = crate::workflow::ContainerSpec {
            image: "img".into(),
            ..Default::default()
        };
        spec.env
            .insert("DOCKER_HOST".into(), Scalar("tcp://dind:2375".into()));
        spec.env.insert("SECRET".into(), Scalar("v".into()));
        let p = evaluate(&spec, Some("svc"), |s: &str| Ok(s.to_string())).unwrap();
        let a = create_args(&p, "net", None, &[]);
        assert!(
            a.windows(2)
                .any(|w| w == ["-e", "DOCKER_HOST=tcp://dind:2375"]),
            "{a:?}"
        );
        assert!(a.windows(2).any(|w| w == ["-e", "SECRET"]), "{a:?}");
    }

    use super::*;
    use crate::workflow::{Credentials, Scalar};

    fn eval_ok(s: &str) -> Result<String, String> {
        Ok(s.replace("${{ matrix.v }}", "15"))
    }

    #[test]
    fn evaluates_every_field() {
        let mut spec = ContainerSpec {
            image: "solstice-test/postgres:${{ matrix.v }}".into(),
            options: Some("--health-cmd 'pg_isready -U postgres' --health-interval=1s".into()),
            ports: vec![Scalar("5432".into()), Scalar("".into())],
            credentials: Some(Credentials {
                username: Scalar("u".into()),
                password: Scalar("p w".into()),
            }),
            command: Some("postgres -c 'fsync=off'".into()),
            ..ContainerSpec::default()
        };
        spec.env
            .insert("POSTGRES_PASSWORD".into(), Scalar("a'b $x".into()));
        let p = evaluate(&spec, Some("db"), eval_ok).unwrap();
        assert_eq!(p.image, "solstice-test/postgres:15");
        assert_eq!(
            p.options,
            [
                "--health-cmd",
                "pg_isready -U postgres",
                "--health-interval=1s"
            ]
        );
        assert_eq!(p.ports, ["5432"]);
        assert_eq!(p.cmd, ["postgres", "-c", "fsync=off"]);
        assert_eq!(p.credentials, Some(("u".into(), "p w".into())));
        assert_eq!(p.env, [("POSTGRES_PASSWORD".into(), "a'b $x".into())]);
        assert!(!format!("{p:?}").contains("p w"));
        assert!(!format!("{p:?}").contains("a'b"));

        spec.options = Some("--name 'unclosed".into());
        let e = evaluate(&spec, Some("db"), eval_ok).unwrap_err();
        assert!(e.starts_with("`options`: unbalanced quotes"), "{e}");

        spec.options = None;
        spec.env.insert("BAD-NAME".into(), Scalar("x".into()));
        let e = evaluate(&spec, Some("db"), eval_ok).unwrap_err();
        assert!(e.contains("`env.BAD-NAME`"), "{e}");

        let e = evaluate(&spec, None, |_| Err("boom".into())).unwrap_err();
        assert_eq!(e, "`image`: boom");
    }

    #[test]
    fn options_split_without_expansion() {
        assert_eq!(
            split_words(r#"--user 0 -e "A=$HOME x" --label a\ b --tmpfs /t:rw"#).unwrap(),
            [
                "--user",
                "0",
                "-e",
                "A=$HOME x",
                "--label",
                "a b",
                "--tmpfs",
                "/t:rw"
            ]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert!(split_words("'a").is_err());
    }

    #[test]
    fn registry_is_the_first_element_with_a_dot_or_port() {
        assert_eq!(registry_of("postgres:15"), None);
        assert_eq!(registry_of("library/postgres"), None);
        assert_eq!(registry_of("ghcr.io/o/i:1"), Some("ghcr.io"));
        assert_eq!(registry_of("10.0.2.2:5000/i"), Some("10.0.2.2:5000"));
        assert_eq!(registry_of("localhost/i"), Some("localhost"));
    }

    #[test]
    fn port_lines() {
        let out =
            "5432/tcp -> 0.0.0.0:49153\n5432/tcp -> [::]:49153\n80/tcp -> 127.0.0.1:8080\nnoise\n";
        let p = parse_ports(out);
        assert_eq!(p.get("5432").map(String::as_str), Some("49153"));
        assert_eq!(p.get("80").map(String::as_str), Some("8080"));
        assert_eq!(p.len(), 2);
        let p = parse_ports("53/udp -> 0.0.0.0:1053\n53/udp -> [::]:1054\n");
        assert_eq!(p.get("53").map(String::as_str), Some("1054"));
        assert!(parse_ports("").is_empty());
    }

    #[test]
    fn health_states() {
        assert_eq!(health_of(""), Health::NoCheck);
        assert_eq!(health_of("\n"), Health::NoCheck);
        assert_eq!(health_of("healthy\n"), Health::Healthy);
        assert_eq!(health_of("starting"), Health::Starting);
        assert_eq!(health_of("unhealthy"), Health::Failed("unhealthy".into()));
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let n = next_backoff(d);
            seen.push(n.as_secs());
            d = Some(n);
        }
        assert_eq!(seen, [1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn create_arguments() {
        let layout = GuestLayout::new("/home/d", "r");
        let job = JobCreate {
            mounts: job_mounts(&layout),
            workdir: "/__w/r/r".into(),
        };
        let p = Planned {
            image: "solstice-test/bash:1".into(),
            env: vec![("SECRET".into(), "hidden value".into())],
            ports: vec!["8080:80".into()],
            volumes: vec!["/data:/data".into()],
            options: vec!["--user".into(), "0".into()],
            ..Planned::default()
        };
        let node = vec![
            "-v".to_string(),
            "/usr/local/lib/node/bin:/__e/node/bin:ro".to_string(),
        ];
        let a = create_args(&p, "net1", Some(&job), &node).join(" ");
        assert_eq!(
            a,
            "create --name solstice_job --label solstice --network net1 --workdir /__w/r/r -p 8080:80 \
             -v /home/d/work:/__w -v /home/d/_tool:/__t -v /home/d/_temp:/__w/_temp \
             -v /home/d/_temp/_github_home:/github/home -v /home/d/_temp/_github_workflow:/github/workflow \
             -v /var/run/docker.sock:/var/run/docker.sock -v /data:/data --user 0 -e SECRET \
             -e GITHUB_ACTIONS=true -e CI=true -e HOME=/github/home --entrypoint tail \
             -v /usr/local/lib/node/bin:/__e/node/bin:ro solstice-test/bash:1 -f /dev/null"
        );
        assert!(!a.contains("hidden"));

        let s = Planned {
            service: Some("my.db".into()),
            image: "solstice-test/postgres:1".into(),
            env: vec![("CI".into(), "0".into())],
            entrypoint: Some("/bin/sh".into()),
            cmd: vec!["-c".into(), "exec postgres".into()],
            ..Planned::default()
        };
        assert_eq!(
            create_args(&s, "net1", None, &[]),
            [
                "create",
                "--name",
                "solstice_svc_my_db",
                "--label",
                "solstice",
                "--network",
                "net1",
                "--network-alias",
                "my.db",
                "-e",
                "CI",
                "-e",
                "GITHUB_ACTIONS=true",
                "--entrypoint",
                "/bin/sh",
                "solstice-test/postgres:1",
                "-c",
                "exec postgres"
            ]
        );
    }
}
