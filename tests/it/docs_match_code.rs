//! The reference docs against the code they describe: every command and
//! flag of the CLI in docs/reference/cli.md, the exit codes there, and the
//! log lines docs/operations.md quotes.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use solstice::cli::Cli;
use solstice::cli::exec::exit;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// `(heading, body)` of every `## ` section.
fn sections(doc: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            out.push((h.to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The section of `solstice <command>` (its heading starts with it).
fn section<'a>(all: &'a [(String, String)], command: &str) -> &'a str {
    let want = format!("`solstice {command}");
    all.iter()
        .find(|(h, _)| {
            h.strip_prefix(&want)
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '-'))
        })
        .map(|(_, b)| b.as_str())
        .unwrap_or_else(|| panic!("docs/reference/cli.md has no section for `solstice {command}`"))
}

/// Every leaf command as its words (`["bench", "engine"]`) with its clap definition.
fn leaves(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut path = prefix.clone();
        path.push(sub.get_name().to_owned());
        if sub.has_subcommands() {
            leaves(sub, path, out);
        } else {
            out.push((path, sub.clone()));
        }
    }
}

#[test]
fn every_command_and_flag_is_in_the_cli_reference() {
    let doc = read("docs/reference/cli.md");
    let all = sections(&doc);
    let mut cli = Cli::command();
    cli.build();
    let mut commands = Vec::new();
    leaves(&cli, Vec::new(), &mut commands);
    assert!(commands.len() >= 6, "{commands:?}");
    let intro = doc.split("\n## ").next().unwrap();
    for arg in cli.get_arguments() {
        if let Some(long) = arg.get_long().filter(|l| !["help", "version"].contains(l)) {
            assert!(
                intro.contains(&format!("`--{long}")),
                "global --{long} is not documented"
            );
        }
    }
    for (path, cmd) in commands {
        let name = path.join(" ");
        let heading = all
            .iter()
            .find(|(h, _)| h.starts_with(&format!("`solstice {name}")))
            .map(|(h, _)| h.clone())
            .unwrap_or_default();
        let text = format!("{heading}\n{}", section(&all, &name));
        for arg in cmd.get_arguments() {
            if arg.is_global_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                continue;
            }
            if let Some(long) = arg.get_long() {
                assert!(
                    text.contains(&format!("--{long}")),
                    "`solstice {name} --{long}` is not in docs/reference/cli.md"
                );
            } else {
                // A positional argument: its value name.
                let value = arg
                    .get_value_names()
                    .and_then(|v| v.first().map(|s| s.to_string()))
                    .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
                assert!(
                    text.contains(&value),
                    "`solstice {name}`'s argument {value} is not in docs/reference/cli.md"
                );
            }
            if let Some(short) = arg.get_short() {
                assert!(
                    text.contains(&format!("-{short}")),
                    "`solstice {name} -{short}` is not in docs/reference/cli.md"
                );
            }
        }
    }
}

/// The codes of the first exit status table in `text`.
fn exit_codes(text: &str) -> BTreeSet<u8> {
    text.lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" | ").next()?.trim().parse().ok())
        .collect()
}

fn row(text: &str, code: u8) -> String {
    text.lines()
        .find(|l| l.starts_with(&format!("| {code} |")))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn exit_codes_in_the_docs_are_the_codes_of_the_code() {
    let doc = read("docs/reference/cli.md");
    let all = sections(&doc);
    let exec = section(&all, "exec");
    assert_eq!(
        exit_codes(exec),
        BTreeSet::from([
            0,
            exit::JOB_FAILED,
            exit::USAGE,
            exit::INFRA,
            exit::NO_RUNTIME,
            exit::INTERRUPTED
        ]),
        "docs/reference/cli.md: exec's exit codes"
    );
    // exec cancels on SIGTERM as on Ctrl-C (spawn_interrupt_handler).
    let interrupted = row(exec, exit::INTERRUPTED);
    assert!(
        interrupted.contains("SIGTERM") && interrupted.contains("SIGINT"),
        "{interrupted}"
    );

    use solstice::cli::status::exit as status;
    assert_eq!(
        exit_codes(section(&all, "status")),
        BTreeSet::from([0, status::NO_STATE, status::USAGE])
    );

    // run: 0 after a signal, 1 for a DaemonError, 2 from config loading.
    let run = BTreeSet::from([0, 1, exit::USAGE, exit::NO_RUNTIME]);
    assert_eq!(exit_codes(section(&all, "run")), run);
    let ops = read("docs/operations.md");
    let ops_run = ops
        .split("### Exit status of `solstice run`")
        .nth(1)
        .expect("operations.md has the exit status of run");
    assert_eq!(exit_codes(ops_run.split("\n## ").next().unwrap()), run);

    let bench = BTreeSet::from([0, exit::USAGE, exit::INFRA, exit::NO_RUNTIME]);
    assert_eq!(exit_codes(section(&all, "bench runner")), bench);
}

/// Every Rust source file's text, for looking up quoted messages.
fn sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = String::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

#[test]
fn log_lines_quoted_in_operations_md_are_real() {
    let ops = read("docs/operations.md");
    let logs = ops
        .split("\n## Logs\n")
        .nth(1)
        .expect("operations.md has a Logs section")
        .split("\n## ")
        .next()
        .unwrap();
    let src = sources();
    let mut checked = 0;
    for (i, quoted) in logs.split('`').enumerate() {
        // Odd pieces are inside backticks; messages have spaces, options
        // and names do not.
        if i % 2 == 0
            || !quoted.contains(' ')
            || quoted.starts_with(['-', '$'])
            || quoted.contains('=')
            || quoted.starts_with("journalctl")
        {
            continue;
        }
        let text = quoted.trim_end_matches('…').trim();
        assert!(
            src.contains(text),
            "docs/operations.md quotes the log line `{quoted}`, which no source file has"
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} quoted log lines found");
}

/// Every example workflow parses, and each of its jobs passes the checks
/// `solstice exec` makes before it boots a VM (the getting-started guide
/// runs them as written).
#[test]
fn example_workflows_are_runnable() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let wf = solstice::workflow::parse_workflow(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (id, job) in &wf.jobs {
            let problems = solstice::executor::preflight::preflight(&wf, id, job);
            assert!(problems.is_empty(), "{}: {problems:?}", path.display());
            solstice::workflow::expand_matrix(job)
                .unwrap_or_else(|e| panic!("{} job {id}: {e}", path.display()));
        }
        seen += 1;
    }
    assert!(seen >= 2, "examples/*.yml: {seen}");
    // The commands getting-started.md gives name jobs that exist.
    let guide = read("docs/getting-started.md");
    for (file, job) in [("examples/ci.yml", "test"), ("examples/ci.yml", "deploy")] {
        assert!(
            guide.contains(&format!("solstice exec {file} --job {job}")),
            "{job}"
        );
        let wf = solstice::workflow::parse_workflow(&read(file)).unwrap();
        assert!(wf.jobs.contains_key(job), "{file} has no job {job}");
    }
}

/// The job timeout default the docs give is the executor's, and it is not
/// longer than the 3 hours after which Forgejo and Gitea fail any task
/// (`ENDLESS_TASK_TIMEOUT`), so that the runner ends a long job itself.
#[test]
fn the_documented_job_timeout_default_is_the_real_one() {
    let mins = solstice::executor::DEFAULT_JOB_TIMEOUT.as_secs() / 60;
    assert!(mins <= 180, "{mins}");
    let flat = |path: &str| read(path).split_whitespace().collect::<Vec<_>>().join(" ");
    for (doc, phrase) in [
        (
            "docs/reference/workflows.md",
            format!("`timeout-minutes` (default {mins},"),
        ),
        (
            "docs/forges.md",
            format!("`timeout-minutes` (default {mins})"),
        ),
        (
            "docs/operations.md",
            format!("`timeout-minutes`, by default {mins},"),
        ),
    ] {
        assert!(flat(doc).contains(&phrase), "{doc} does not say {phrase}");
    }
}

/// The vmactions how-to lists the inputs the built-in step ignores, and
/// quotes its mismatch error as the code words it.
#[test]
fn the_vmactions_how_to_matches_the_built_in_step() {
    use solstice::executor::vmactions;
    let doc = read("docs/how-to/migrate-from-vmactions.md");
    let flat = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    for input in vmactions::VMACTIONS_IGNORED
        .iter()
        .chain(&vmactions::CPA_IGNORED)
        .chain(&vmactions::VMACTIONS_USED)
        .chain(&vmactions::CPA_USED)
    {
        assert!(
            flat.contains(&format!("`{input}`")) || flat.contains(&format!("`{input}:")),
            "the how-to does not name the input `{input}`"
        );
    }
    let with = [("run".to_string(), "make".to_string())]
        .into_iter()
        .collect();
    let err = vmactions::plan(
        "vmactions/omnios-vm@v1",
        &with,
        solstice::config::GuestOs::Linux,
        true,
        &["debian".to_string(), "linux".to_string()],
    )
    .unwrap_err();
    assert!(
        flat.contains(&err),
        "the how-to does not quote the mismatch error:\n{err}"
    );
}
