//! Seeds: how a guest learns its hostname and SSH keys. Pure renderers plus
//! [`write_seed`], which writes the seed file into the job directory.

use std::path::{Path, PathBuf};

use crate::config::SeedKind;
use crate::secret::Secret;

use super::cpio::{self, CpioFile};
use super::iso9660::{self, IsoError, IsoFile};

/// File name of a NoCloud seed inside the job directory.
pub const NOCLOUD_FILE: &str = "seed.iso";
/// File name of a metadata-agent cpio seed inside the job directory.
pub const CPIO_FILE: &str = "seed.cpio";

/// Why a seed could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("Could not build the seed ISO")]
    Iso(#[from] IsoError),
    #[error("Could not write the seed file {path}: check the jobs directory")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What goes into a seed.
#[derive(Debug, Clone, Copy)]
pub struct SeedData<'a> {
    /// Unique per VM (cloud-init runs once per instance id).
    pub instance_id: &'a str,
    pub hostname: &'a str,
    /// Login user for the job's SSH session.
    pub user: &'a str,
    /// One OpenSSH public key line.
    pub authorized_key: &'a str,
    /// Guest SSH host key: (private key in OpenSSH format, public key line).
    pub host_key: Option<(&'a Secret, &'a str)>,
    /// The image's `registry_mirror` (`http(s)://host[:port]`, validated by
    /// the config): written into the guest's Docker configuration. Only the
    /// NoCloud seed carries it.
    pub registry_mirror: Option<&'a str>,
}

/// NoCloud `meta-data`.
pub fn render_meta_data(instance_id: &str, hostname: &str) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        yaml_scalar(instance_id),
        yaml_scalar(hostname)
    )
}

/// Where the guest's Docker engine reads its configuration.
pub const DOCKER_DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// NoCloud `user-data` (`#cloud-config`): one user with the key and
/// passwordless sudo (omitted for root), optionally a pinned ed25519 host
/// key, and optionally a registry mirror for the guest's Docker engine
/// (`write_files` of [`DOCKER_DAEMON_JSON`]; cloud-init writes it in
/// `cloud-init.service`, before `docker.service` starts).
pub fn render_user_data(
    user: &str,
    authorized_key: &str,
    host_key: Option<(&Secret, &str)>,
    registry_mirror: Option<&str>,
) -> String {
    let mut s = String::from("#cloud-config\nusers:\n");
    s.push_str(&format!("  - name: {}\n", yaml_scalar(user)));
    s.push_str("    lock_passwd: true\n");
    if user != "root" {
        s.push_str("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n");
    }
    s.push_str("    ssh_authorized_keys:\n");
    s.push_str(&format!("      - {}\n", yaml_scalar(authorized_key.trim())));
    s.push_str("disable_root: false\nssh_pwauth: false\n");
    if let Some((private, public)) = host_key {
        s.push_str("ssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n");
        s.push_str("  ed25519_private: |\n");
        for line in private.expose().trim_end().lines() {
            s.push_str("    ");
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!(
            "  ed25519_public: {}\n",
            yaml_scalar(public.trim())
        ));
    }
    if let Some(mirror) = registry_mirror {
        s.push_str("write_files:\n");
        s.push_str(&format!("  - path: {DOCKER_DAEMON_JSON}\n"));
        s.push_str("    owner: \"root:root\"\n    permissions: \"0644\"\n    content: |\n      ");
        s.push_str(&docker_daemon_json(mirror));
        s.push('\n');
    }
    s
}

/// The guest's `/etc/docker/daemon.json` for a registry mirror: the mirror
/// in `registry-mirrors` and, for an `http://` mirror, its `host:port` in
/// `insecure-registries` (so images can also be named by the mirror's
/// address). One line of JSON.
pub fn docker_daemon_json(mirror: &str) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert("registry-mirrors".into(), serde_json::json!([mirror]));
    if let Some(rest) = mirror.strip_prefix("http://") {
        let host_port = rest.trim_end_matches('/');
        // No explicit port: Docker's default for http is 80.
        let has_port = match host_port.rsplit_once(':') {
            Some((h, p)) => {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && !h.is_empty()
                    && (!h.starts_with('[') || h.ends_with(']'))
            }
            None => false,
        };
        let entry = if has_port {
            host_port.to_string()
        } else {
            format!("{host_port}:80")
        };
        doc.insert("insecure-registries".into(), serde_json::json!([entry]));
    }
    serde_json::Value::Object(doc).to_string()
}

/// A YAML scalar: plain when that is unambiguous, double-quoted otherwise.
pub fn yaml_scalar(v: &str) -> String {
    let reserved = [
        "true", "false", "yes", "no", "on", "off", "null", "~", "y", "n",
    ];
    let plain_char = |c: char| c.is_ascii_alphanumeric() || " -_.@/+=:,".contains(c);
    let plain = !v.is_empty()
        && v.chars().all(plain_char)
        && v.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '_')
        && !v.ends_with([' ', ':'])
        && !v.contains(": ")
        && !reserved.contains(&v.to_ascii_lowercase().as_str())
        && v.parse::<f64>().is_err();
    if plain {
        return v.to_string();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The NoCloud ISO image (label `cidata`, Rock Ridge + Joliet).
pub fn nocloud_iso(d: &SeedData<'_>, unix_time: i64) -> Result<Vec<u8>, IsoError> {
    let meta = render_meta_data(d.instance_id, d.hostname);
    let user = render_user_data(d.user, d.authorized_key, d.host_key, d.registry_mirror);
    iso9660::build(
        "cidata",
        &[
            IsoFile {
                name: "meta-data",
                contents: meta.as_bytes(),
            },
            IsoFile {
                name: "user-data",
                contents: user.as_bytes(),
            },
        ],
        unix_time,
    )
}

/// Smallest size of the metadata cpio disk: a disk of one or a few sectors is
/// an untested edge case for illumos disk drivers, and 1 MiB costs nothing.
pub const CPIO_DISK_MIN: usize = 1 << 20;

/// `firstboot.sh` of every metadata cpio seed. The illumos metadata-agent
/// never enables sshd; it hands this script to
/// `svc:/system/illumos/userscript`, which runs it once (root, 0700) after
/// the keys are installed. Enabling an online service is harmless. Without
/// `svcadm` (a Linux stand-in) it only says so. Portable: illumos runs it
/// with ksh93 as `/bin/sh`; its output goes to the service's SMF log.
pub const FIRSTBOOT_SH: &str = "#!/bin/sh
# Written by Solstice: the metadata-agent installs SSH keys but never turns sshd on.
if [ -x /usr/sbin/svcadm ]; then
	echo 'solstice firstboot: enabling svc:/network/ssh:default'
	exec /usr/sbin/svcadm enable -s svc:/network/ssh:default
fi
echo 'solstice firstboot: no /usr/sbin/svcadm (no SMF here): nothing to enable'
exit 0
";

/// The metadata-agent seed disk: a cpio archive with `authorized_keys`,
/// `nodename` and `firstboot.sh` at LBA 0, zero-padded to [`CPIO_DISK_MIN`].
pub fn metadata_cpio(d: &SeedData<'_>, unix_time: u64) -> Vec<u8> {
    let keys = format!("{}\n", d.authorized_key.trim());
    let node = format!("{}\n", d.hostname);
    let mut disk = cpio::build(
        &[
            CpioFile {
                name: "authorized_keys",
                contents: keys.as_bytes(),
                perm: 0o644,
            },
            CpioFile {
                name: "nodename",
                contents: node.as_bytes(),
                perm: 0o644,
            },
            CpioFile {
                name: "firstboot.sh",
                contents: FIRSTBOOT_SH.as_bytes(),
                perm: 0o755,
            },
        ],
        unix_time,
    );
    cpio::pad_disk(&mut disk, CPIO_DISK_MIN);
    disk
}

/// Writes the seed of `kind` into `dir` (mode 0600, since it may hold the
/// guest's private host key) and returns its path.
pub fn write_seed(kind: SeedKind, dir: &Path, data: &SeedData<'_>) -> Result<PathBuf, SeedError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (name, bytes) = match kind {
        SeedKind::NoCloud => (NOCLOUD_FILE, nocloud_iso(data, now as i64)?),
        SeedKind::MetadataCpio => (CPIO_FILE, metadata_cpio(data, now)),
    };
    let path = dir.join(name);
    write_private(&path, &bytes).map_err(|source| SeedError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE test@solstice";

    #[test]
    fn user_data_for_a_sudo_user_without_host_key() {
        let got = render_user_data("debian", KEY, None, None);
        assert_eq!(
            got,
            format!(
                "#cloud-config\nusers:\n  - name: debian\n    lock_passwd: true\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    ssh_authorized_keys:\n      - {KEY}\ndisable_root: false\nssh_pwauth: false\n"
            )
        );
    }

    #[test]
    fn user_data_for_root_with_host_key() {
        let private = Secret::new(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        );
        let got = render_user_data("root", KEY, Some((&private, "ssh-ed25519 AAAAhost")), None);
        assert_eq!(
            got,
            format!(
                "#cloud-config\nusers:\n  - name: root\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {KEY}\ndisable_root: false\nssh_pwauth: false\nssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    b3BlbnNzaC1rZXk\n    AAAA\n    -----END OPENSSH PRIVATE KEY-----\n  ed25519_public: ssh-ed25519 AAAAhost\n"
            )
        );
    }

    #[test]
    fn user_data_with_an_http_registry_mirror() {
        let got = render_user_data("debian", KEY, None, Some("http://198.51.100.77:5000"));
        let tail = "disable_root: false\nssh_pwauth: false\nwrite_files:\n  - path: /etc/docker/daemon.json\n    owner: \"root:root\"\n    permissions: \"0644\"\n    content: |\n      {\"registry-mirrors\":[\"http://198.51.100.77:5000\"],\"insecure-registries\":[\"198.51.100.77:5000\"]}\n";
        assert!(got.ends_with(tail), "{got}");
        // Still one YAML document that cloud-init reads as meant.
        let doc: serde_norway::Value = serde_norway::from_str(&got).unwrap();
        let content = doc["write_files"][0]["content"].as_str().unwrap();
        let json: serde_json::Value = serde_json::from_str(content).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "registry-mirrors": ["http://198.51.100.77:5000"],
                "insecure-registries": ["198.51.100.77:5000"],
            })
        );
    }

    #[test]
    fn docker_daemon_json_for_each_kind_of_mirror() {
        assert_eq!(
            docker_daemon_json("https://mirror.example.com"),
            r#"{"registry-mirrors":["https://mirror.example.com"]}"#
        );
        assert_eq!(
            docker_daemon_json("https://mirror.example.com:8443"),
            r#"{"registry-mirrors":["https://mirror.example.com:8443"]}"#
        );
        assert_eq!(
            docker_daemon_json("http://mirror"),
            r#"{"registry-mirrors":["http://mirror"],"insecure-registries":["mirror:80"]}"#
        );
        assert_eq!(
            docker_daemon_json("http://[fd00::5]:5000"),
            r#"{"registry-mirrors":["http://[fd00::5]:5000"],"insecure-registries":["[fd00::5]:5000"]}"#
        );
        assert_eq!(
            docker_daemon_json("http://[fd00::5]"),
            r#"{"registry-mirrors":["http://[fd00::5]"],"insecure-registries":["[fd00::5]:80"]}"#
        );
    }

    #[test]
    fn only_the_nocloud_seed_carries_the_mirror() {
        let d = SeedData {
            registry_mirror: Some("http://10.0.0.5:5000"),
            ..data()
        };
        let iso = nocloud_iso(&d, 0).unwrap();
        let needle = b"\"registry-mirrors\":[\"http://10.0.0.5:5000\"]";
        assert!(iso.windows(needle.len()).any(|w| w == needle));
        let without = nocloud_iso(&data(), 0).unwrap();
        assert!(!without.windows(16).any(|w| w == b"registry-mirrors"));
    }

    #[test]
    fn meta_data_quotes_what_needs_it() {
        assert_eq!(
            render_meta_data("job-1", "runner"),
            "instance-id: job-1\nlocal-hostname: runner\n"
        );
        assert_eq!(yaml_scalar("yes"), "\"yes\"");
        assert_eq!(yaml_scalar("123"), "\"123\"");
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
        assert_eq!(yaml_scalar("x #y"), "\"x #y\"");
        assert_eq!(yaml_scalar("q\"\n"), "\"q\\\"\\n\"");
        assert_eq!(yaml_scalar(""), "\"\"");
        assert_eq!(yaml_scalar(KEY), KEY);
    }

    fn data() -> SeedData<'static> {
        SeedData {
            instance_id: "i-42",
            hostname: "job-42",
            user: "root",
            authorized_key: KEY,
            host_key: None,
            registry_mirror: None,
        }
    }

    fn isoinfo(args: &[&str], iso: &Path) -> String {
        let out = Command::new("isoinfo")
            .args(args)
            .arg("-i")
            .arg(iso)
            .output()
            .expect("isoinfo must be installed (apt-get install genisoimage)");
        assert!(
            out.status.success(),
            "isoinfo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn isoinfo_reads_names_and_contents_through_rock_ridge_and_joliet() {
        let dir = tempfile::tempdir().unwrap();
        let iso = write_seed(SeedKind::NoCloud, dir.path(), &data()).unwrap();
        assert_eq!(iso, dir.path().join("seed.iso"));
        let d = isoinfo(&["-d"], &iso);
        assert!(d.contains("Volume id: cidata"), "{d}");
        assert!(d.contains("Rock Ridge signatures version 1 found"), "{d}");
        assert!(d.contains("Joliet with UCS level 3 found"), "{d}");
        let r = isoinfo(&["-R", "-l"], &iso);
        assert!(r.contains(" meta-data") && r.contains(" user-data"), "{r}");
        assert!(r.contains("-r--r--r--"), "{r}");
        let j = isoinfo(&["-J", "-l"], &iso);
        assert!(j.contains(" meta-data") && j.contains(" user-data"), "{j}");
        let p = isoinfo(&["-l"], &iso);
        assert!(
            p.contains("META_DAT.;1") && p.contains("USER_DAT.;1"),
            "{p}"
        );
        assert_eq!(
            isoinfo(&["-R", "-x", "/meta-data"], &iso),
            render_meta_data("i-42", "job-42")
        );
        assert_eq!(
            isoinfo(&["-J", "-x", "/user-data;1"], &iso),
            render_user_data("root", KEY, None, None)
        );
    }

    #[test]
    fn cpio_seed_is_written_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = write_seed(SeedKind::MetadataCpio, dir.path(), &data()).unwrap();
        assert_eq!(p, dir.path().join("seed.cpio"));
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..6], b"070707");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// GNU cpio reading `disk` from a file, as the agent reads the device
    /// (`cpio -i -I DEV`): it stops at the trailer, before the padding.
    fn gnu_cpio(args: &[&str], dir: &Path, disk: &[u8]) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), disk).unwrap();
        let out = Command::new("cpio")
            .args(args)
            .arg("-I")
            .arg(file.path())
            .current_dir(dir)
            .output()
            .expect("cpio must be installed (apt-get install cpio)");
        assert!(out.status.success(), "cpio {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn cpio_seed_carries_an_executable_firstboot_script_on_a_padded_disk() {
        use std::os::unix::fs::PermissionsExt;
        let disk = metadata_cpio(&data(), 1_700_000_000);
        // Whole sectors, at least 1 MiB, the agent's magic at LBA 0.
        assert!(disk.len() >= CPIO_DISK_MIN, "{}", disk.len());
        assert_eq!(disk.len() % 512, 0);
        assert_eq!(&disk[..6], b"070707");
        // The trailer is whole and only zeros follow it.
        let t = disk
            .windows(11)
            .position(|w| w == b"TRAILER!!!\0")
            .expect("no cpio trailer");
        assert!(disk[t + 11..].iter().all(|b| *b == 0));

        let dir = tempfile::tempdir().unwrap();
        let listing = gnu_cpio(&["-t", "-v", "--quiet"], dir.path(), &disk);
        let script_line = listing
            .lines()
            .find(|l| l.ends_with(" firstboot.sh"))
            .unwrap_or_else(|| panic!("no firstboot.sh in:\n{listing}"));
        assert!(script_line.starts_with("-rwxr-xr-x"), "{listing}");
        assert_eq!(listing.lines().count(), 3, "{listing}");

        gnu_cpio(&["-i", "--quiet"], dir.path(), &disk);
        let script = dir.path().join("firstboot.sh");
        assert_eq!(std::fs::read_to_string(&script).unwrap(), FIRSTBOOT_SH);
        assert_ne!(
            std::fs::metadata(&script).unwrap().permissions().mode() & 0o111,
            0
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("authorized_keys")).unwrap(),
            format!("{KEY}\n")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("nodename")).unwrap(),
            "job-42\n"
        );
    }

    #[test]
    fn firstboot_script_enables_ssh_through_smf_and_is_harmless_without_it() {
        // What the agent insists on, and the one command that matters on illumos.
        assert!(FIRSTBOOT_SH.starts_with("#!/bin/sh\n"));
        assert!(FIRSTBOOT_SH.ends_with('\n'));
        assert!(
            FIRSTBOOT_SH.contains("\texec /usr/sbin/svcadm enable -s svc:/network/ssh:default\n")
        );
        // This host has no svcadm, like the Linux stand-in: every shell the
        // script may meet (ksh93 is illumos's /bin/sh) runs it to success.
        assert!(!Path::new("/usr/sbin/svcadm").exists());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("firstboot.sh");
        std::fs::write(&script, FIRSTBOOT_SH).unwrap();
        for shell in ["ksh93", "dash", "busybox"] {
            let mut cmd = Command::new(shell);
            if shell == "busybox" {
                cmd.arg("sh");
            }
            let out = cmd
                .arg(&script)
                .output()
                .unwrap_or_else(|e| panic!("{shell} must be installed (.ci/setup-host.sh): {e}"));
            assert!(out.status.success(), "{shell}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "solstice firstboot: no /usr/sbin/svcadm (no SMF here): nothing to enable\n",
                "{shell}"
            );
        }
    }
}
