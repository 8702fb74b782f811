//! What a user may ask the gateway (the SSH command line after
//! `debug@host`), and the texts it answers with. Pure.

use std::time::SystemTime;

use crate::job::id as job_id;

/// A command the gateway runs for an authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `connect <id>`: a shell in the held VM.
    Connect(String),
    /// `done <id>`: destroy the held VM now.
    Done(String),
    /// No command (`ssh debug@host`), `help`, or something the gateway
    /// does not know: print the usage; `Some` names what was not understood.
    Usage(Option<String>),
}

/// The longest command line looked at (longer ones are not understood).
const MAX_COMMAND_LEN: usize = 200;

/// Parses an exec request's command line. Words are separated by
/// whitespace; `connect` and `done` take exactly one job id.
pub fn parse(line: &[u8]) -> Command {
    let shown = || {
        let mut s = String::from_utf8_lossy(&line[..line.len().min(MAX_COMMAND_LEN)]).to_string();
        s.retain(|c| !c.is_control());
        if line.len() > MAX_COMMAND_LEN {
            s.push('…');
        }
        Some(s)
    };
    let Ok(text) = std::str::from_utf8(line) else {
        return Command::Usage(shown());
    };
    if text.len() > MAX_COMMAND_LEN {
        return Command::Usage(shown());
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [] | ["help"] | ["--help"] | ["-h"] => Command::Usage(None),
        ["connect", id] if job_id::is_valid(id) => Command::Connect((*id).to_owned()),
        ["done", id] if job_id::is_valid(id) => Command::Done((*id).to_owned()),
        _ => Command::Usage(shown()),
    }
}

/// The command a user runs on their own machine: `ssh [-t] -p <port>
/// debug@<host> <what>` (`-t` for `connect`, which gives a shell).
pub fn ssh_command(host: &str, port: u16, what: &str) -> String {
    let tty = if what.starts_with("connect ") {
        "-t "
    } else {
        ""
    };
    format!("ssh {tty}-p {port} debug@{host} {what}")
}

/// The usage text; `host` and `port` are what job logs print.
pub fn usage(not_understood: Option<&str>, host: &str, port: u16) -> String {
    let mut s = String::new();
    if let Some(what) = not_understood {
        s.push_str(&format!("Not a command of this gateway: `{what}`.\n"));
    }
    s.push_str(&format!(
        "This is Solstice's debug SSH gateway: it lets you into the VM of a failed job that asked for it.\n\
         Commands:\n  \
           connect <job id>   a shell in the job's VM\n  \
           done <job id>      destroy the job's VM now (ends the debug window early)\n\
         For example: {}\n\
         The failed job's log prints the exact command, the job id and until when the VM is kept.\n",
        ssh_command(host, port, "connect <job id>")
    ));
    s
}

/// The line shown when a `connect` succeeds; `host` and `port` are what
/// job logs print.
pub fn banner(
    id: &str,
    repository: &str,
    guest_user: &str,
    expires_at: SystemTime,
    (host, port): (&str, u16),
) -> String {
    format!(
        "Connected to job {id} ({repository}) as {guest_user}; this VM is destroyed at {}.\n\
         Leave with `exit` (the VM stays); `{}` on your machine destroys it earlier.\n",
        crate::civil::utc_seconds(expires_at),
        ssh_command(host, port, &format!("done {id}"))
    )
}

/// `text` for the user's terminal: with a pty the terminal is in raw mode,
/// so each line ends in `\r\n`.
pub fn for_terminal(text: &str, pty: bool) -> String {
    if pty {
        text.replace("\r\n", "\n").replace('\n', "\r\n")
    } else {
        text.to_owned()
    }
}

/// Environment variables passed on to the guest's shell (what OpenSSH
/// clients send by default); others are ignored.
pub fn env_passed(name: &str) -> bool {
    name == "TERM" || name == "LANG" || name == "COLORTERM" || name.starts_with("LC_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn commands() {
        assert_eq!(
            parse(b"connect task-fj-12-abcdef01"),
            Command::Connect("task-fj-12-abcdef01".into())
        );
        assert_eq!(parse(b"  done   x1 \n"), Command::Done("x1".into()));
        assert_eq!(parse(b""), Command::Usage(None));
        assert_eq!(parse(b"help"), Command::Usage(None));
        assert_eq!(parse(b"connect"), Command::Usage(Some("connect".into())));
        assert_eq!(
            parse(b"connect a b"),
            Command::Usage(Some("connect a b".into()))
        );
        assert_eq!(
            parse(b"connect ../etc"),
            Command::Usage(Some("connect ../etc".into()))
        );
        assert_eq!(
            parse(b"bash -c id"),
            Command::Usage(Some("bash -c id".into()))
        );
        assert_eq!(
            parse(b"connect \xff"),
            Command::Usage(Some("connect \u{fffd}".into()))
        );
        assert_eq!(parse(b"rm\x1b[2J"), Command::Usage(Some("rm[2J".into())));
        let long = vec![b'a'; 300];
        match parse(&long) {
            Command::Usage(Some(s)) => assert!(s.ends_with('…') && s.len() < 210, "{s}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn texts() {
        let u = usage(Some("foo"), "ci.example.org", 2222);
        assert!(
            u.starts_with("Not a command of this gateway: `foo`.\n"),
            "{u}"
        );
        assert!(
            u.contains("ssh -t -p 2222 debug@ci.example.org connect <job id>"),
            "{u}"
        );
        assert!(!usage(None, "h", 22).contains("Not a command"));
        let b = banner(
            "j1",
            "octo/hello",
            "root",
            SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            ("ci.example.org", 2222),
        );
        assert!(
            b.contains("`ssh -p 2222 debug@ci.example.org done j1` on your machine"),
            "{b}"
        );
        assert!(
            b.starts_with(
                "Connected to job j1 (octo/hello) as root; this VM is destroyed at 1970-01-02 00:00:00 UTC.\n"
            ),
            "{b}"
        );
        assert_eq!(for_terminal("a\nb\r\n", true), "a\r\nb\r\n");
        assert_eq!(for_terminal("a\nb\n", false), "a\nb\n");
        assert!(env_passed("TERM") && env_passed("LC_ALL") && !env_passed("LD_PRELOAD"));
    }
}
