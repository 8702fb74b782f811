//! The re-key step of a restored clone: everything a clone shares with its
//! template and with every other clone is made its own before any job sees
//! it (see `../shared/spec/warm-start.md` §2–§4).
//!
//! The runner logs in with the template's key (the only key the saved
//! guest accepts) and runs one POSIX `sh` script as root (`sudo -n` for a
//! user that is not root). It must run on busybox ash with dropbear (the
//! tiny image) as well as on Debian with OpenSSH and systemd: no bash-isms,
//! no GNU-only options. The script:
//!
//! 1. steps the clock to the host's time (the clock resumed at the save);
//! 2. mixes fresh host random bytes into the kernel's pool and, where perl
//!    or python3 can issue the ioctl, forces a reseed of the kernel's CRNG
//!    (`RNDRESEEDCRNG`); reports whether the kernel's vmgenid driver exists
//!    and how often it said "crng reseeded due to virtual machine fork";
//! 3. replaces the SSH user's `authorized_keys` with the clone's new client
//!    key and removes the template key from root's file too;
//! 4. installs a new SSH host key that the runner generated in memory and
//!    restarts the SSH listener (existing sessions, this one included,
//!    survive: dropbear's sessions are its children, Debian's ssh.service
//!    kills only the listener);
//! 5. writes a new `/etc/machine-id` where there is one, and sets the host
//!    name.
//!
//! Randomness, as measured on this project's images (Debian 12 cloud
//! kernel 6.1, in both the tiny and the Debian image): the kernel has no
//! vmgenid driver (`CONFIG_VMGENID` is off in the cloud flavour; QEMU's
//! device is there, `QEMUVGID:00`, but nothing binds it), so the restore
//! itself reseeds nothing. On Debian perl issues `RNDRESEEDCRNG` after the
//! host bytes are mixed in, so the clone's `/dev/urandom` is its own from
//! then on; the tiny image carries the perl interpreter for the same
//! ioctl. A clone reseeded neither way is refused by
//! [`crate::warm::Template::restore`] (its kernel would mix the host bytes
//! in only at its next periodic reseed, up to 60 s later).
//!
//! The new private host key travels on the command's stdin, never on a
//! command line (which the guest's `ps` would show) and never in a log.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::guest::{GuestSession, OutputChunk, Stream, shell_quote};
use crate::secret::Secret;

/// How long the re-key script may take (restarting sshd under TCG on
/// Debian takes a few seconds).
pub const REKEY_LIMIT: Duration = Duration::from_secs(60);

/// Host random bytes mixed into the guest's pool.
pub const ENTROPY_BYTES: usize = 64;

/// What the script needs besides the private host key (which goes on
/// stdin). Nothing here is secret.
#[derive(Debug, Clone)]
pub struct RekeyPlan {
    /// The SSH user whose `authorized_keys` is replaced.
    pub user: String,
    /// The clone's new client public key (one OpenSSH line).
    pub authorized_key: String,
    /// The template's client public key, removed everywhere.
    pub template_key: String,
    /// The new host public key (one OpenSSH line), for `.pub` files.
    pub host_public: String,
    pub hostname: String,
    /// 32 lowercase hex digits.
    pub machine_id: String,
    /// Mixed into the guest's pool (no zero bytes: some `printf`s end a
    /// string at `\000`).
    pub entropy: Vec<u8>,
    /// The host's time to step the guest's clock to (seconds since the
    /// epoch, UTC).
    pub epoch: u64,
}

impl RekeyPlan {
    /// A plan with fresh machine id, entropy and the host's time now.
    pub fn new(
        user: &str,
        authorized_key: &str,
        template_key: &str,
        host_public: &str,
        hostname: &str,
    ) -> RekeyPlan {
        let mut entropy = vec![0u8; ENTROPY_BYTES];
        rand::fill(&mut entropy[..]);
        for b in &mut entropy {
            if *b == 0 {
                *b = rand::random_range(1..=255);
            }
        }
        let id: [u8; 16] = rand::random();
        RekeyPlan {
            user: user.to_string(),
            authorized_key: authorized_key.trim().to_string(),
            template_key: template_key.trim().to_string(),
            host_public: host_public.trim().to_string(),
            hostname: hostname.to_string(),
            machine_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            entropy,
            epoch: now_rounded(),
        }
    }
}

/// The host's time, rounded to the nearest second (`date -s @N` takes
/// whole seconds everywhere).
fn now_rounded() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + Duration::from_millis(500)).as_secs()
}

/// The base64 blob of an OpenSSH public key line (its second field).
fn key_blob(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or(line)
}

/// The re-key script (POSIX sh, run as root). It reads the new private
/// host key (OpenSSH format) from stdin first, and reports on stdout as
/// `solstice-rekey KEY VALUE` lines; a failure exits non-zero with a
/// `solstice-rekey-failed WHY` line on stderr.
pub fn script(plan: &RekeyPlan) -> String {
    let mut entropy = String::with_capacity(plan.entropy.len() * 4);
    for b in &plan.entropy {
        let _ = write!(entropy, "\\{b:03o}");
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "user={}\nnew_key={}\nold_blob={}\nhost_pub={}\nnew_host={}\nmid={}\nepoch={}",
        shell_quote(&plan.user),
        shell_quote(&plan.authorized_key),
        shell_quote(key_blob(&plan.template_key)),
        shell_quote(&plan.host_public),
        shell_quote(&plan.hostname),
        shell_quote(&plan.machine_id),
        plan.epoch,
    );
    s.push_str(SCRIPT_HEAD);
    let _ = writeln!(
        s,
        "printf '{entropy}' >/dev/urandom || fail 'could not write to /dev/urandom'"
    );
    s.push_str(SCRIPT_BODY);
    s
}

/// Before the entropy: set-up, the key from stdin, the clock.
const SCRIPT_HEAD: &str = r#"PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export PATH
umask 077
say() { printf 'solstice-rekey %s\n' "$*"; }
fail() { printf 'solstice-rekey-failed %s\n' "$*" >&2; exit 1; }
tmp=$(mktemp -d /tmp/solstice-rekey.XXXXXX) || fail 'could not make a temporary directory'
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/host" || fail 'could not read the new host key from stdin'
[ -s "$tmp/host" ] || fail 'no host key on stdin'
date -u -s "@$epoch" >/dev/null 2>&1 || fail 'could not set the clock (date -u -s @N)'
say clock "$(date -u +%s)"
"#;

/// After the entropy: reseed, vmgenid, keys, host key, machine id, name.
const SCRIPT_BODY: &str = r#"# RNDRESEEDCRNG (_IO('R', 7)): the bytes above reach /dev/urandom's output
# at once instead of at the kernel's next periodic reseed.
if command -v perl >/dev/null 2>&1 &&
  perl -e 'open(my $f, ">", "/dev/urandom") or exit 1; ioctl($f, 0x5207, 0) or exit 1' 2>/dev/null; then
  say reseed ioctl
elif command -v python3 >/dev/null 2>&1 &&
  python3 -c 'import fcntl; f = open("/dev/urandom", "wb"); fcntl.ioctl(f, 0x5207)' 2>/dev/null; then
  say reseed ioctl
else
  say reseed none
fi
driver=no
for d in /sys/bus/acpi/drivers/vmgenid /sys/bus/platform/drivers/vmgenid; do
  [ -d "$d" ] && driver=yes
done
say vmgenid-driver "$driver"
if dmesg >/dev/null 2>&1; then
  # The driver reseeds when the ACPI notification of the restore arrives,
  # which may be a moment after the guest resumed.
  i=0
  while :; do
    n=$(dmesg | grep -c 'crng reseeded due to virtual machine fork')
    [ "$n" -gt 0 ] || [ "$driver" = no ] || [ "$i" -ge 20 ] && break
    i=$((i + 1))
    sleep 0.1 2>/dev/null || sleep 1
  done
  say vmgenid-reseeds "$n"
else
  say vmgenid-reseeds unknown
fi

home=$(awk -F: -v u="$user" '$1 == u { print $6; exit }' /etc/passwd)
[ -n "$home" ] || fail "no home directory for user $user in /etc/passwd"
mkdir -p "$home/.ssh" || fail "could not create $home/.ssh"
ak="$home/.ssh/authorized_keys"
new=no
[ -e "$ak" ] || new=yes
printf '%s\n' "$new_key" >"$ak" || fail "could not write $ak"
if [ "$new" = yes ]; then
  chown "$user" "$home/.ssh" "$ak" 2>/dev/null
  chmod 700 "$home/.ssh"
  chmod 600 "$ak"
fi
for f in /root/.ssh/authorized_keys; do
  [ "$f" != "$ak" ] && [ -f "$f" ] || continue
  grep -v -F -e "$old_blob" "$f" >"$tmp/keys"
  cat "$tmp/keys" >"$f" || fail "could not rewrite $f"
done
grep -q -F -e "$old_blob" "$ak" && fail "the template key is still in $ak"
say authorized-keys "$ak"

if [ -s /run/dropbear.pid ] || { [ ! -e /etc/ssh/sshd_config ] && command -v dropbearconvert >/dev/null 2>&1; }; then
  mkdir -p /etc/dropbear
  dropbearconvert openssh dropbear "$tmp/host" "$tmp/dropbear" >/dev/null 2>&1 ||
    fail 'dropbearconvert could not convert the new host key'
  rm -f /etc/dropbear/dropbear_*_host_key
  cat "$tmp/dropbear" >/etc/dropbear/dropbear_ed25519_host_key || fail 'could not write the dropbear host key'
  chmod 600 /etc/dropbear/dropbear_ed25519_host_key
  # The listener read its key at start; init starts a new one (busybox
  # init's respawn). Its sessions are processes of their own and stay.
  pid=$(cat /run/dropbear.pid 2>/dev/null)
  [ -n "$pid" ] || fail 'no /run/dropbear.pid: cannot restart dropbear'
  kill "$pid" || fail "could not stop the dropbear listener ($pid)"
  # Until the new listener is up (it writes its pid file), so that the
  # runner's first login with the new key finds it. Measured under TCG:
  # about 1 s from the kill to the new pid file (neither SIGKILL nor
  # waking init with SIGHUP made it sooner).
  i=0
  while [ "$i" -lt 100 ]; do
    new_pid=
    { read -r new_pid </run/dropbear.pid; } 2>/dev/null
    [ -n "$new_pid" ] && [ "$new_pid" != "$pid" ] && break
    i=$((i + 1))
    sleep 0.01 2>/dev/null || sleep 1
  done
  say ssh-restart-polls "$i"
  say ssh-server dropbear
elif [ -d /etc/ssh ]; then
  rm -f /etc/ssh/ssh_host_*
  cat "$tmp/host" >/etc/ssh/ssh_host_ed25519_key || fail 'could not write the OpenSSH host key'
  chmod 600 /etc/ssh/ssh_host_ed25519_key
  printf '%s\n' "$host_pub" >/etc/ssh/ssh_host_ed25519_key.pub
  chmod 644 /etc/ssh/ssh_host_ed25519_key.pub
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet ssh.service; then
    # Debian's ssh.service stops only the listener (KillMode=process).
    systemctl restart ssh.service || fail 'systemctl restart ssh.service failed'
  elif command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet sshd.service; then
    systemctl restart sshd.service || fail 'systemctl restart sshd.service failed'
  elif [ -s /run/sshd.pid ]; then
    # sshd re-executes itself on SIGHUP and reads its host keys again.
    kill -HUP "$(cat /run/sshd.pid)" || fail 'could not signal sshd'
  elif command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet ssh.socket; then
    : # socket activation: every connection starts an sshd that reads the new key
  else
    fail 'found no way to restart sshd'
  fi
  say ssh-server openssh
else
  fail 'found neither dropbear nor OpenSSH'
fi

umask 022
if [ -s /etc/machine-id ]; then
  printf '%s\n' "$mid" >/etc/machine-id || fail 'could not write /etc/machine-id'
  if [ -f /var/lib/dbus/machine-id ] && [ ! -h /var/lib/dbus/machine-id ]; then
    printf '%s\n' "$mid" >/var/lib/dbus/machine-id
  fi
  say machine-id "$mid"
fi
hostname "$new_host" || fail "could not set the host name $new_host"
# On NixOS both files are links into the read-only store: the kernel's host
# name (set above) is what counts there.
if [ ! -L /etc/hostname ]; then
  printf '%s\n' "$new_host" >/etc/hostname || fail 'could not write /etc/hostname'
fi
if [ -f /etc/hosts ] && [ ! -L /etc/hosts ]; then
  { grep -v '^127\.0\.1\.1[[:space:]]' /etc/hosts; printf '127.0.1.1\t%s\n' "$new_host"; } >"$tmp/hosts"
  cat "$tmp/hosts" >/etc/hosts
fi
say hostname "$(hostname)"
say done
"#;

/// What the script reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// The guest's clock after the step (seconds since the epoch).
    pub clock: Option<u64>,
    /// The CRNG was reseeded by ioctl after the host bytes were mixed in.
    pub reseed_ioctl: bool,
    /// The kernel has a vmgenid driver.
    pub vmgenid_driver: bool,
    /// "crng reseeded due to virtual machine fork" lines in the kernel log
    /// (`None`: the log could not be read).
    pub vmgenid_reseeds: Option<u32>,
    /// `dropbear` or `openssh`.
    pub ssh_server: String,
    pub hostname: String,
    /// The new machine id, where the guest has one.
    pub machine_id: Option<String>,
}

/// Reads the script's `solstice-rekey KEY VALUE` lines.
pub fn parse_report(out: &str) -> Result<RekeyReport, String> {
    let mut r = RekeyReport::default();
    let mut done = false;
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("solstice-rekey ") else {
            continue;
        };
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        let value = value.trim();
        match key {
            "clock" => r.clock = value.parse().ok(),
            "reseed" => r.reseed_ioctl = value == "ioctl",
            "vmgenid-driver" => r.vmgenid_driver = value == "yes",
            "vmgenid-reseeds" => r.vmgenid_reseeds = value.parse().ok(),
            "ssh-server" => r.ssh_server = value.to_string(),
            "hostname" => r.hostname = value.to_string(),
            "machine-id" => r.machine_id = Some(value.to_string()),
            "done" => done = true,
            _ => {}
        }
    }
    if done {
        Ok(r)
    } else {
        Err("the re-key script ended without reporting `done`".into())
    }
}

/// Runs the re-key script on `session` (logged in as `plan.user`) with the
/// new private host key `host_private` on stdin. An error is one sentence
/// for the operator's log; it never contains the key.
pub async fn run(
    session: &dyn GuestSession,
    plan: &RekeyPlan,
    host_private: &Secret,
) -> Result<RekeyReport, String> {
    let text = script(plan);
    let sudo = if plan.user == "root" { "" } else { "sudo -n " };
    let cmd = format!("{sudo}sh -c {}", shell_quote(&text));
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let collect = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(c) = rx.recv().await {
            match c.stream {
                Stream::Stdout => out.extend_from_slice(&c.data),
                Stream::Stderr => err.extend_from_slice(&c.data),
            }
        }
        (out, err)
    };
    let work = async {
        tokio::join!(
            session.exec(&cmd, host_private.expose().as_bytes(), tx),
            collect
        )
    };
    let (status, (out, err)) = tokio::time::timeout(REKEY_LIMIT, work).await.map_err(|_| {
        format!(
            "the re-key script did not finish within {} s",
            REKEY_LIMIT.as_secs()
        )
    })?;
    let status = status.map_err(|e| format!("the re-key script could not run: {e}"))?;
    let out = String::from_utf8_lossy(&out);
    let err = String::from_utf8_lossy(&err);
    if status != 0 {
        let why: Vec<&str> = err
            .lines()
            .filter_map(|l| l.strip_prefix("solstice-rekey-failed "))
            .collect();
        return Err(if why.is_empty() {
            format!(
                "the re-key script exited with {status}: {}",
                err.trim().lines().last().unwrap_or("no message")
            )
        } else {
            format!("the re-key script failed: {}", why.join("; "))
        });
    }
    parse_report(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RekeyPlan {
        RekeyPlan::new(
            "debian",
            "ssh-ed25519 AAAAnew solstice-job",
            "ssh-ed25519 AAAAold solstice-job",
            "ssh-ed25519 AAAAhost solstice-guest",
            "solstice-w1234abcd",
        )
    }

    #[test]
    fn the_script_is_plain_posix_sh() {
        let s = script(&plan());
        for bashism in [
            "[[ ",
            "function ",
            "$'",
            "local ",
            "<<<",
            "source ",
            "pipefail",
            "echo -e",
            "sed -i",
            "readlink -f",
            "head -c",
            "base64",
            "${!",
            "declare",
        ] {
            assert!(!s.contains(bashism), "{bashism} in the script");
        }
        assert!(s.contains("date -u -s \"@$epoch\""));
        assert!(s.contains("dropbearconvert openssh dropbear"));
        assert!(s.contains("rm -f /etc/ssh/ssh_host_*"));
        assert!(s.contains("systemctl restart ssh.service"));
        assert!(s.contains("crng reseeded due to virtual machine fork"));
        assert!(s.contains("kill \"$pid\""));
        // Parameters are quoted where they need it (`guest::shell_quote`),
        // the template key only by its blob.
        assert!(
            s.starts_with(
                "user=debian\nnew_key='ssh-ed25519 AAAAnew solstice-job'\nold_blob=AAAAold\n"
            ),
            "{s}"
        );
        // The shells on the host that are there parse it (dash is Debian's
        // sh, busybox ash the tiny image's).
        for shell in [&["sh"][..], &["dash"], &["busybox", "sh"]] {
            if let Ok(out) = std::process::Command::new(shell[0])
                .args(&shell[1..])
                .arg("-n")
                .arg("-c")
                .arg(&s)
                .output()
            {
                assert!(
                    out.status.success(),
                    "{shell:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    #[test]
    fn entropy_is_octal_escapes_without_nul() {
        let p = plan();
        assert_eq!(p.entropy.len(), ENTROPY_BYTES);
        assert!(!p.entropy.contains(&0));
        let s = script(&RekeyPlan {
            entropy: vec![1, 8, 255, 39, 37, 92],
            ..p
        });
        assert!(
            s.contains("printf '\\001\\010\\377\\047\\045\\134' >/dev/urandom"),
            "{s}"
        );
        assert_ne!(plan().entropy, plan().entropy);
        assert_ne!(plan().machine_id, plan().machine_id);
        assert_eq!(plan().machine_id.len(), 32);
    }

    #[test]
    fn the_script_never_holds_a_private_key() {
        let s = script(&plan());
        assert!(!s.contains("PRIVATE KEY"));
        assert!(s.contains("cat >\"$tmp/host\""), "the key comes on stdin");
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("it's $x `y`")))
            .output();
        if let Ok(out) = out {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $x `y`");
        }
    }

    #[test]
    fn the_script_runs_under_sh_up_to_its_first_privileged_step() {
        // On the host, without root, the script fails at the clock (or
        // later): it must at least get there, reading the key from stdin.
        // Never as root: the script would set the host's clock.
        if nix_is_root() {
            return;
        }
        let s = script(&plan());
        let Ok(mut child) = std::process::Command::new("sh")
            .arg("-c")
            .arg(&s)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            return;
        };
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(b"KEY\n");
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("solstice-rekey-failed"), "{err}");
    }

    fn nix_is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(true)
    }

    #[test]
    fn reports_are_parsed() {
        let out = "noise\nsolstice-rekey clock 1700000000\nsolstice-rekey reseed ioctl\nsolstice-rekey vmgenid-driver yes\nsolstice-rekey vmgenid-reseeds 1\nsolstice-rekey authorized-keys /root/.ssh/authorized_keys\nsolstice-rekey ssh-server dropbear\nsolstice-rekey hostname solstice-x\nsolstice-rekey done\n";
        let r = parse_report(out).unwrap();
        assert_eq!(
            r,
            RekeyReport {
                clock: Some(1_700_000_000),
                reseed_ioctl: true,
                vmgenid_driver: true,
                vmgenid_reseeds: Some(1),
                ssh_server: "dropbear".into(),
                hostname: "solstice-x".into(),
                machine_id: None,
            }
        );
        let r =
            parse_report("solstice-rekey vmgenid-reseeds unknown\nsolstice-rekey done\n").unwrap();
        assert_eq!(r.vmgenid_reseeds, None);
        assert!(parse_report("solstice-rekey clock 1\n").is_err());
    }
}
