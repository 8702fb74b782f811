//! Unit tests: one per error class, checking place, key and fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const ORIGIN: &str = "/etc/solstice/solstice.toml";
const NO_PATHS: ParseOptions = ParseOptions { check_paths: false };

fn ok(text: &str) -> Config {
    match parse_str_with(text, Path::new(ORIGIN), &NO_PATHS) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errs(text: &str) -> Vec<ConfigError> {
    match parse_str_with(text, Path::new(ORIGIN), &NO_PATHS) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e.errors,
    }
}

/// The single error of `text`.
fn one(text: &str) -> ConfigError {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one error, got: {e:#?}");
    e.into_iter().next().unwrap()
}

fn at(e: &ConfigError) -> (usize, usize) {
    let p = e.position.expect("error has a position");
    (p.line, p.column)
}

const TINY: &str = "[images.tiny]\npath = \"/x/tiny.qcow2\"\n";

#[test]
fn minimal_file_gets_every_default() {
    let c = ok(TINY);
    assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/solstice"));
    assert_eq!(c.daemon.max_concurrent_jobs, 2);
    assert_eq!(c.qemu.system_binary, PathBuf::from("qemu-system-x86_64"));
    assert_eq!(c.qemu.img_binary, PathBuf::from("qemu-img"));
    assert_eq!(c.qemu.accel, AccelChoice::Auto);
    assert_eq!(c.qemu.uefi_code, None);
    assert_eq!(c.qemu.uefi_vars, None);
    let i = &c.images["tiny"];
    assert_eq!(i.name, "tiny");
    assert_eq!(i.path, PathBuf::from("/x/tiny.qcow2"));
    assert_eq!(i.format, ImageFormat::Qcow2);
    assert_eq!(i.os, GuestOs::Linux);
    assert_eq!(i.firmware, Firmware::Bios);
    assert_eq!(i.vcpus, 2);
    assert_eq!(i.memory_mib, 1024);
    assert_eq!(i.disk_size_gib, None);
    assert_eq!(i.ssh_user, "root");
    assert_eq!(i.seed, SeedKind::NoCloud);
    assert_eq!(i.boot_timeout, Duration::from_secs(300));
    assert_eq!(i.readiness_probes, 1);
    assert_eq!(i.readiness_probe_interval, Duration::from_secs(3));
    assert_eq!(i.labels, vec!["tiny".to_owned()]);
}

#[test]
fn every_key_is_read() {
    let c = ok(r#"
[daemon]
state_dir = "/srv/solstice"
max_concurrent_jobs = 8
[qemu]
system_binary = "/opt/qemu/bin/qemu-system-x86_64"
img_binary = "/opt/qemu/bin/qemu-img"
accel = "tcg"
uefi_code = "/fw/code.fd"
uefi_vars = "/fw/vars.fd"
[images.omnios]
path = "/img/omnios.raw"
format = "raw"
os = "illumos"
firmware = "uefi"
vcpus = 4
memory_mib = 4096
disk_size_gib = 40
ssh_user = "admin"
seed = "metadata-cpio"
boot_timeout_secs = 900
readiness_probes = 2
readiness_probe_interval_secs = 5
labels = ["omnios", "illumos"]
"#);
    assert_eq!(c.daemon.state_dir, PathBuf::from("/srv/solstice"));
    assert_eq!(c.daemon.max_concurrent_jobs, 8);
    assert_eq!(c.qemu.accel, AccelChoice::Tcg);
    assert_eq!(c.qemu.uefi_code, Some(PathBuf::from("/fw/code.fd")));
    assert_eq!(c.qemu.uefi_vars, Some(PathBuf::from("/fw/vars.fd")));
    let i = &c.images["omnios"];
    assert_eq!(i.format, ImageFormat::Raw);
    assert_eq!(i.os, GuestOs::Illumos);
    assert_eq!(i.firmware, Firmware::Uefi);
    assert_eq!(
        (i.vcpus, i.memory_mib, i.disk_size_gib),
        (4, 4096, Some(40))
    );
    assert_eq!(i.ssh_user, "admin");
    assert_eq!(i.seed, SeedKind::MetadataCpio);
    assert_eq!(i.boot_timeout, Duration::from_secs(900));
    assert_eq!(i.readiness_probes, 2);
    assert_eq!(i.readiness_probe_interval, Duration::from_secs(5));
    assert_eq!(i.labels, vec!["omnios", "illumos"]);
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = one("[images.tiny]\npath = \"/x\"\nvcpus = = 2\n");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert_eq!(at(&e).0, 3);
    assert!(
        e.to_string().starts_with("/etc/solstice/solstice.toml:3:"),
        "{e}"
    );
    assert!(e.message.starts_with("invalid TOML"), "{e}");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let e = one("[images.tiny]\npath = \"/x\"\npath = \"/y\"\n");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert_eq!(at(&e), (3, 1));
    assert!(e.message.contains("duplicate key"), "{e}");
}

#[test]
fn unknown_key_in_an_image_suggests_the_closest() {
    let e = one("[images.tiny]\npath = \"/x\"\nmemry_mib = 4\n");
    assert_eq!(e.kind, ErrorKind::UnknownKey);
    assert_eq!(at(&e), (3, 1));
    assert_eq!(e.key.as_deref(), Some("images.tiny.memry_mib"));
    assert_eq!(e.fix.as_deref(), Some("did you mean \"memory_mib\"?"));
    assert_eq!(
        e.to_string(),
        "/etc/solstice/solstice.toml:3:1: images.tiny.memry_mib: unknown key; did you mean \"memory_mib\"?"
    );
}

#[test]
fn unknown_key_in_every_section_suggests_the_closest() {
    let cases = [
        ("imagse = 1\n", "imagse", "images"),
        (
            "[daemon]\nstate_dri = \"/x\"\n",
            "daemon.state_dri",
            "state_dir",
        ),
        (
            "[daemon]\nmax_concurent_jobs = 1\n",
            "daemon.max_concurent_jobs",
            "max_concurrent_jobs",
        ),
        ("[qemu]\nacel = \"tcg\"\n", "qemu.acel", "accel"),
        ("[qemu]\nuefi_cod = \"/x\"\n", "qemu.uefi_cod", "uefi_code"),
        (
            "[images.a]\npath = \"/x\"\nvpcus = 2\n",
            "images.a.vpcus",
            "vcpus",
        ),
        (
            "[images.a]\npath = \"/x\"\nlabel = []\n",
            "images.a.label",
            "labels",
        ),
        (
            "[images.a]\npath = \"/x\"\nboot_timeout = 3\n",
            "images.a.boot_timeout",
            "boot_timeout_secs",
        ),
    ];
    for (body, key, suggestion) in cases {
        let text = format!("{body}{TINY}");
        let e = one(&text);
        assert_eq!(e.kind, ErrorKind::UnknownKey, "{text}");
        assert_eq!(e.key.as_deref(), Some(key), "{text}");
        assert_eq!(
            e.fix.as_deref(),
            Some(format!("did you mean \"{suggestion}\"?").as_str()),
            "{text}"
        );
    }
}

#[test]
fn key_in_the_wrong_section_names_the_right_one() {
    let e = one("[images.tiny]\npath = \"/x\"\nstate_dir = \"/y\"\n");
    assert_eq!(e.key.as_deref(), Some("images.tiny.state_dir"));
    assert_eq!(
        e.fix.as_deref(),
        Some("\"state_dir\" belongs in [daemon]; move it there")
    );
    let e = one(&format!("[daemon]\naccel = \"tcg\"\n{TINY}"));
    assert_eq!(
        e.fix.as_deref(),
        Some("\"accel\" belongs in [qemu]; move it there")
    );
}

#[test]
fn unrelated_unknown_key_lists_the_known_keys() {
    let e = one(&format!("[daemon]\nzzz = 1\n{TINY}"));
    assert_eq!(e.key.as_deref(), Some("daemon.zzz"));
    assert_eq!(
        e.fix.as_deref(),
        Some(
            "known keys here are \"state_dir\", \"max_concurrent_jobs\", \"drain_timeout_secs\", \"max_job_timeout_mins\", \"metrics_listen\", \"runner_name\""
        )
    );
}

#[test]
fn wrong_type_names_expected_and_found() {
    let e = one("[images.tiny]\npath = \"/x\"\nvcpus = \"two\"\n");
    assert_eq!(e.kind, ErrorKind::InvalidValue);
    assert_eq!(at(&e), (3, 9));
    assert_eq!(e.key.as_deref(), Some("images.tiny.vcpus"));
    assert_eq!(e.message, "expected an integer, found \"two\" (a string)");
    assert_eq!(e.fix.as_deref(), Some("write an integer"));

    let e = one(&format!("[daemon]\nstate_dir = 5\n{TINY}"));
    assert_eq!(e.key.as_deref(), Some("daemon.state_dir"));
    assert_eq!(e.message, "expected a string, found 5 (an integer)");

    let e = one("[images.tiny]\npath = \"/x\"\nlabels = [\"a\", 3]\n");
    assert_eq!(e.key.as_deref(), Some("images.tiny.labels"));
    assert_eq!(at(&e), (3, 16));
    assert_eq!(e.message, "expected a string, found 3 (an integer)");

    let e = one(&format!("daemon = 'x'\n{TINY}"));
    assert_eq!(e.key.as_deref(), Some("daemon"));
    assert_eq!(e.message, "expected a table, found 'x' (a string)");
}

#[test]
fn invalid_enum_value_lists_the_allowed_values() {
    let cases = [
        (
            "[qemu]\naccel = \"kvmm\"\n",
            "qemu.accel",
            "\"auto\", \"kvm\", \"tcg\"",
        ),
        (
            "[images.a]\npath = \"/x\"\nformat = \"vmdk\"\n",
            "images.a.format",
            "\"qcow2\", \"raw\"",
        ),
        (
            "[images.a]\npath = \"/x\"\nos = \"windows\"\n",
            "images.a.os",
            "\"linux\", \"illumos\"",
        ),
        (
            "[images.a]\npath = \"/x\"\nfirmware = \"efi\"\n",
            "images.a.firmware",
            "\"bios\", \"uefi\"",
        ),
        (
            "[images.a]\npath = \"/x\"\nseed = \"cloud-init\"\n",
            "images.a.seed",
            "\"nocloud\", \"metadata-cpio\"",
        ),
    ];
    for (body, key, allowed) in cases {
        let text = format!("{body}{TINY}");
        let e = one(&text);
        assert_eq!(e.kind, ErrorKind::InvalidValue, "{text}");
        assert_eq!(e.key.as_deref(), Some(key), "{text}");
        assert!(e.message.ends_with("is not allowed"), "{e}");
        assert!(
            e.fix
                .as_deref()
                .unwrap()
                .ends_with(&format!("use one of {allowed}")),
            "{e}"
        );
    }
    let e = one("[images.a]\npath = \"/x\"\nseed = \"no-cloud\"\n");
    assert_eq!(at(&e), (3, 8));
    assert_eq!(
        e.fix.as_deref(),
        Some("did you mean \"nocloud\"? use one of \"nocloud\", \"metadata-cpio\"")
    );
}

#[test]
fn enum_key_with_a_number_lists_the_allowed_values() {
    let e = one("[images.a]\npath = \"/x\"\nformat = 3\n");
    assert_eq!(e.key.as_deref(), Some("images.a.format"));
    assert_eq!(e.message, "expected a string, found 3 (an integer)");
    assert_eq!(e.fix.as_deref(), Some("use one of \"qcow2\", \"raw\""));
}

#[test]
fn every_limit_is_checked_at_both_ends() {
    let image = |key: &str, v: i64| format!("[images.a]\npath = \"/x\"\n{key} = {v}\n");
    let daemon = |v: i64| format!("[daemon]\nmax_concurrent_jobs = {v}\n{TINY}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            daemon(0),
            "daemon.max_concurrent_jobs",
            "from 1 to 1024 (jobs)",
        ),
        (
            daemon(1025),
            "daemon.max_concurrent_jobs",
            "from 1 to 1024 (jobs)",
        ),
        (image("vcpus", 0), "images.a.vcpus", "from 1 to 64 (vCPUs)"),
        (image("vcpus", 65), "images.a.vcpus", "from 1 to 64 (vCPUs)"),
        (image("vcpus", -1), "images.a.vcpus", "from 1 to 64 (vCPUs)"),
        (
            image("memory_mib", 63),
            "images.a.memory_mib",
            "from 64 to 1048576 (MiB)",
        ),
        (
            image("memory_mib", 1048577),
            "images.a.memory_mib",
            "from 64 to 1048576 (MiB)",
        ),
        (
            image("disk_size_gib", 0),
            "images.a.disk_size_gib",
            "from 1 to 16384 (GiB)",
        ),
        (
            image("disk_size_gib", 16385),
            "images.a.disk_size_gib",
            "from 1 to 16384 (GiB)",
        ),
        (
            image("boot_timeout_secs", 0),
            "images.a.boot_timeout_secs",
            "from 1 to 86400 (seconds)",
        ),
        (
            image("boot_timeout_secs", 86401),
            "images.a.boot_timeout_secs",
            "from 1 to 86400 (seconds)",
        ),
        (
            image("readiness_probes", 0),
            "images.a.readiness_probes",
            "from 1 to 20 (probes)",
        ),
        (
            image("readiness_probes", 21),
            "images.a.readiness_probes",
            "from 1 to 20 (probes)",
        ),
        (
            image("readiness_probe_interval_secs", 0),
            "images.a.readiness_probe_interval_secs",
            "from 1 to 600 (seconds)",
        ),
        (
            image("readiness_probe_interval_secs", 601),
            "images.a.readiness_probe_interval_secs",
            "from 1 to 600 (seconds)",
        ),
    ];
    for (text, key, range) in cases {
        let e = one(&text);
        assert_eq!(e.kind, ErrorKind::OutOfRange, "{text}");
        assert_eq!(e.key.as_deref(), Some(key), "{text}");
        assert_eq!(
            e.fix,
            Some(format!(
                "use a value from {}",
                range.trim_start_matches("from ")
            )),
            "{text}"
        );
    }
    // The limits themselves are allowed.
    ok(
        "[daemon]\nmax_concurrent_jobs = 1024\n[images.a]\npath = \"/x\"\nvcpus = 64\nmemory_mib = 64\ndisk_size_gib = 16384\nboot_timeout_secs = 86400\nreadiness_probes = 20\nreadiness_probe_interval_secs = 600\n",
    );
}

#[test]
fn range_error_reads_like_the_house_format() {
    let e = one("[images.tiny]\npath = \"/x\"\nmemory_mib = 0\n");
    assert_eq!(
        e.to_string(),
        "/etc/solstice/solstice.toml:3:14: images.tiny.memory_mib: 0 is too small; use a value from 64 to 1048576 (MiB)"
    );
    let e = one("[images.tiny]\npath = \"/x\"\nvcpus = 65\n");
    assert_eq!(e.message, "65 is too large");
}

#[test]
fn missing_image_file_names_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("solstice.toml");
    let text = "[images.tiny]\npath = \"images/tiny.qcow2\"\n";
    let e = parse_str(text, &origin).unwrap_err().errors;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].kind, ErrorKind::MissingFile);
    assert_eq!(e[0].key.as_deref(), Some("images.tiny.path"));
    assert_eq!(at(&e[0]), (2, 8));
    let expected = dir.path().join("images/tiny.qcow2");
    assert_eq!(
        e[0].message,
        format!("image \"tiny\": {} does not exist", expected.display())
    );
    // Once the file exists, the relative path resolves against the config's directory.
    std::fs::create_dir(dir.path().join("images")).unwrap();
    make_image(&expected, "qcow2", "16M");
    let c = parse_str(text, &origin).unwrap();
    assert_eq!(c.images["tiny"].path, expected);
    assert!(c.images["tiny"].path.is_absolute());
}

#[test]
fn image_path_that_is_a_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[images.tiny]\npath = \"{}\"\n", dir.path().display());
    let e = parse_str(&text, Path::new(ORIGIN)).unwrap_err().errors;
    assert_eq!(e[0].kind, ErrorKind::MissingFile);
    assert!(e[0].message.ends_with("is not a regular file"), "{}", e[0]);
}

#[test]
fn relative_paths_are_resolved_without_checking_too() {
    let c = ok(
        "[daemon]\nstate_dir = \"state\"\n[qemu]\nsystem_binary = \"bin/qemu\"\nimg_binary = \"qemu-img\"\n[images.a]\npath = \"a.qcow2\"\n",
    );
    assert_eq!(c.daemon.state_dir, PathBuf::from("/etc/solstice/state"));
    assert_eq!(
        c.qemu.system_binary,
        PathBuf::from("/etc/solstice/bin/qemu")
    );
    // A bare name stays a name, for a PATH lookup.
    assert_eq!(c.qemu.img_binary, PathBuf::from("qemu-img"));
    assert_eq!(c.images["a"].path, PathBuf::from("/etc/solstice/a.qcow2"));
}

#[test]
fn missing_path_key_is_an_error() {
    let e = one("[images.tiny]\nvcpus = 2\n");
    assert_eq!(e.kind, ErrorKind::MissingKey);
    assert_eq!(e.key.as_deref(), Some("images.tiny.path"));
    assert_eq!(at(&e), (1, 9));
    assert!(e.fix.as_deref().unwrap().contains("path = "), "{e}");
}

#[test]
fn uefi_without_uefi_code_is_an_error() {
    let e = one("[images.tiny]\npath = \"/x\"\nfirmware = \"uefi\"\n");
    assert_eq!(e.kind, ErrorKind::MissingKey);
    assert_eq!(e.key.as_deref(), Some("images.tiny.firmware"));
    assert_eq!(at(&e), (3, 12));
    assert!(
        e.message
            .contains("qemu.uefi_code and qemu.uefi_vars are not set"),
        "{e}"
    );
    assert!(e.fix.as_deref().unwrap().contains("uefi_code"), "{e}");
    // The vars template is needed too: every job copies it.
    let e = one(
        "[qemu]\nuefi_code = \"/fw/code.fd\"\n[images.tiny]\npath = \"/x\"\nfirmware = \"uefi\"\n",
    );
    assert!(e.message.contains("qemu.uefi_vars is not set"), "{e}");
    ok(
        "[qemu]\nuefi_code = \"/fw/code.fd\"\nuefi_vars = \"/fw/vars.fd\"\n[images.tiny]\npath = \"/x\"\nfirmware = \"uefi\"\n",
    );
}

#[test]
fn uefi_files_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("tiny.qcow2");
    make_image(&image, "qcow2", "16M");
    let text = format!(
        "[qemu]\nuefi_code = \"/nonexistent/CODE.fd\"\nuefi_vars = \"/nonexistent/VARS.fd\"\n[images.tiny]\npath = \"{}\"\nfirmware = \"uefi\"\n",
        image.display()
    );
    let e = parse_str(&text, Path::new(ORIGIN)).unwrap_err().errors;
    let keys: Vec<_> = e.iter().map(|e| e.key.as_deref().unwrap()).collect();
    assert_eq!(keys, ["qemu.uefi_code", "qemu.uefi_vars"]);
    assert!(e.iter().all(|e| e.kind == ErrorKind::MissingFile));
    assert_eq!(at(&e[0]), (2, 13));
    assert!(
        e[0].message.contains("/nonexistent/CODE.fd does not exist"),
        "{}",
        e[0]
    );
}

#[test]
fn labels_default_to_the_name_and_may_repeat_across_images() {
    let c = ok(
        "[images.a]\npath = \"/a\"\nlabels = [\"linux\"]\n[images.b]\npath = \"/b\"\nlabels = [\"linux\", \"b\"]\n[images.c]\npath = \"/c\"\n",
    );
    assert_eq!(c.images["a"].labels, ["linux"]);
    assert_eq!(c.images["b"].labels, ["linux", "b"]);
    assert_eq!(c.images["c"].labels, ["c"]);
}

#[test]
fn empty_labels_are_errors() {
    let e = errs("[images.a]\npath = \"/a\"\nlabels = [\"ok\", \"\", \" \"]\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(at(&e[0]), (3, 17));
    assert_eq!(e[0].message, "label 2 is empty");
    assert_eq!(at(&e[1]), (3, 21));
    assert_eq!(e[1].key.as_deref(), Some("images.a.labels"));
    let e = one("[images.a]\npath = \"/a\"\nlabels = []\n");
    assert_eq!(e.kind, ErrorKind::InvalidValue);
    assert!(e.fix.as_deref().unwrap().contains("remove the key"), "{e}");
}

#[test]
fn image_names_are_restricted() {
    for good in ["tiny", "0", "debian-12.amd64_v2"] {
        assert!(validate::valid_image_name(good), "{good}");
    }
    for bad in ["", "Tiny", "-x", ".x", "_x", "a b", "ümlaut"] {
        assert!(!validate::valid_image_name(bad), "{bad}");
    }
    let e = one("[images.\"Debian 12\"]\npath = \"/x\"\n");
    assert_eq!(e.key.as_deref(), Some("images.Debian 12"));
    assert_eq!(at(&e), (1, 9));
    assert!(
        e.fix.as_deref().unwrap().ends_with("e.g. \"debian-12\""),
        "{e}"
    );
}

#[test]
fn no_images_is_a_clear_error() {
    let e = one("[daemon]\nmax_concurrent_jobs = 1\n");
    assert_eq!(e.kind, ErrorKind::NoImages);
    assert_eq!(e.position, None);
    assert!(e.message.contains("solstice exec"), "{e}");
    assert!(e.fix.as_deref().unwrap().contains("[images.<name>]"), "{e}");
    assert_eq!(one("").kind, ErrorKind::NoImages);
}

#[test]
fn all_problems_are_reported_in_file_order() {
    let e = errs(
        "[daemon]\nmax_concurrent_jobs = 0\nbogus = 1\n[images.tiny]\nvcpus = \"x\"\nmemory_mib = 1\nos = \"bsd\"\n",
    );
    let got: Vec<_> = e
        .iter()
        .map(|e| (at(e).0, e.key.clone().unwrap(), e.kind))
        .collect();
    assert_eq!(
        got,
        [
            (
                2,
                "daemon.max_concurrent_jobs".to_owned(),
                ErrorKind::OutOfRange
            ),
            (3, "daemon.bogus".to_owned(), ErrorKind::UnknownKey),
            (4, "images.tiny.path".to_owned(), ErrorKind::MissingKey),
            (5, "images.tiny.vcpus".to_owned(), ErrorKind::InvalidValue),
            (
                6,
                "images.tiny.memory_mib".to_owned(),
                ErrorKind::OutOfRange
            ),
            (7, "images.tiny.os".to_owned(), ErrorKind::InvalidValue),
        ]
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    assert_eq!(
        Position::of_offset("ab\ncd", 4),
        Position { line: 2, column: 2 }
    );
    assert_eq!(
        Position::of_offset("é = 1", 3),
        Position { line: 1, column: 3 }
    );
    assert_eq!(
        Position::of_offset("x", 99),
        Position { line: 1, column: 2 }
    );
}

#[test]
fn closest_needs_a_near_match() {
    let keys = ["memory_mib", "vcpus", "labels"];
    assert_eq!(parse::closest("memory", &keys), Some("memory_mib"));
    assert_eq!(parse::closest("VCPUS", &keys), Some("vcpus"));
    assert_eq!(parse::closest("zzz", &keys), None);
}

#[test]
fn summary_names_the_images() {
    let c = ok("[images.tiny]\npath = \"/t\"\n[images.debian]\npath = \"/d\"\n");
    assert_eq!(
        c.summary(Path::new("solstice.toml")),
        "solstice.toml: OK (2 images: debian, tiny)"
    );
    assert_eq!(
        ok(TINY).summary(Path::new("s.toml")),
        "s.toml: OK (1 image: tiny)"
    );
}

#[test]
fn known_keys_come_from_the_raw_structs() {
    let keys = known_keys();
    assert!(keys.contains(&"daemon.state_dir".to_owned()));
    assert!(keys.contains(&"qemu.uefi_vars".to_owned()));
    assert!(keys.contains(&"images.<name>.readiness_probe_interval_secs".to_owned()));
    assert!(keys.contains(&"forges.<name>.debug_ssh.repositories".to_owned()));
    assert!(keys.contains(&"debug_ssh.listen".to_owned()));
    // The sub-table is a section, not a key.
    assert!(!keys.contains(&"forges.<name>.debug_ssh".to_owned()));
    assert_eq!(keys.len(), 6 + 5 + 24 + 16 + 6 + 3 + 3 + 6);
    assert!(keys.contains(&"images.<name>.warm_max_idle_secs".to_owned()));
}

#[test]
fn errors_inside_inline_and_dotted_tables_are_located() {
    let e = errs("images = { tiny = { path = \"/x\", vcpus = \"a\", vcpu = 1 } }\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(
        (at(&e[0]), e[0].key.as_deref()),
        ((1, 42), Some("images.tiny.vcpus"))
    );
    assert_eq!(
        (at(&e[1]), e[1].key.as_deref()),
        ((1, 47), Some("images.tiny.vcpu"))
    );
    let e = errs("images.tiny.path = \"/x\"\nimages.tiny.os = 4\nimages.tiny.oss = 4\n");
    assert_eq!(
        (at(&e[0]), e[0].key.as_deref()),
        ((2, 18), Some("images.tiny.os"))
    );
    assert_eq!(e[1].fix.as_deref(), Some("did you mean \"os\"?"));
}

#[test]
fn array_of_tables_and_huge_numbers_get_plain_messages() {
    let e = one("[[images]]\npath = \"/x\"\n");
    assert_eq!(e.key.as_deref(), Some("images"));
    assert!(e.message.starts_with("expected a table, found"), "{e}");
    assert!(e.message.ends_with("(an array)"), "{e}");
    let e = one("[images.tiny]\npath = \"/x\"\nlabels = \"a\"\n");
    assert_eq!(
        e.message,
        "expected an array of strings, found \"a\" (a string)"
    );
    assert_eq!(
        e.fix.as_deref(),
        Some("write an array of strings, e.g. [\"a\", \"b\"]")
    );
    let e = one("[images.tiny]\npath = \"/x\"\nvcpus = 99999999999999999999\n");
    assert_eq!(e.message, "99999999999999999999 is too large");
}

const FORGE_IMAGES: &str = "[images.tiny]\npath = \"/x/tiny.qcow2\"\nlabels = [\"tiny\", \"linux\"]\n[images.deb]\npath = \"/x/d.qcow2\"\nmax_concurrent_jobs = 1\n";

#[test]
fn forges_get_defaults_from_the_daemon_and_the_images() {
    let c = ok(&format!(
        "[daemon]\nrunner_name = \"r1\"\nmetrics_listen = \"9464\"\n{FORGE_IMAGES}[forges.cb]\nurl = \"https://codeberg.org/\"\nregistration_token_file = \"tok\"\n"
    ));
    let f = &c.forges["cb"];
    assert_eq!(f.url, "https://codeberg.org");
    assert_eq!(f.runner_name, "r1");
    assert_eq!(f.labels, ["deb", "linux", "tiny"]);
    assert_eq!(f.fetch_interval, Duration::from_secs(2));
    assert_eq!(f.fetch_timeout, Duration::from_secs(30));
    assert_eq!(
        f.credentials,
        CredentialSource::RegistrationTokenFile(PathBuf::from("/etc/solstice/tok"))
    );
    assert_eq!(
        c.daemon.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(c.images["deb"].max_concurrent_jobs, Some(1));
    assert_eq!(c.images["tiny"].max_concurrent_jobs, None);
    assert_eq!(c.daemon.drain_timeout, Duration::from_secs(600));
    // 3 h: the forges' own limit on a task (ENDLESS_TASK_TIMEOUT).
    assert_eq!(c.daemon.max_job_timeout, Duration::from_secs(180 * 60));
    // One forge, images whose labels each name one image: nothing to warn about.
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    assert!(ok(TINY).daemon.runner_name.starts_with("solstice-"));
}

#[test]
fn forge_mistakes_are_reported_with_their_fix() {
    let e = one(&format!("{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\n"));
    assert_eq!(e.key.as_deref(), Some("forges.a"));
    assert!(e.message.contains("no credentials"), "{e}");
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\nsecret_file = \"/s\"\nrunner_file = \"/r\"\n"
    ));
    assert!(e.message.contains("only one credential source"), "{e}");
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"ftp://a\"\nsecret_file = \"/s\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("forges.a.url"));
    let e = one(&format!("{FORGE_IMAGES}[forges.a]\nsecret_file = \"/s\"\n"));
    assert_eq!(e.key.as_deref(), Some("forges.a.url"));
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\nsecret_file = \"/s\"\nlabels = [\"tiny\", \"ubuntu-latest\"]\n"
    ));
    assert_eq!(e.key.as_deref(), Some("forges.a.labels"));
    assert!(
        e.message.contains("\"ubuntu-latest\" belongs to no image"),
        "{e}"
    );
    assert!(
        e.fix.as_deref().unwrap().contains("deb, linux, tiny"),
        "{e}"
    );
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\nsecret_file = \"/s\"\nfetch_interval_secs = 0\n"
    ));
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\nsecret_file = \"/s\"\ntoken = \"x\"\n"
    ));
    assert_eq!(e.kind, ErrorKind::UnknownKey);
    let e = one(&format!("[daemon]\nmetrics_listen = \"localhost\"\n{TINY}"));
    assert_eq!(e.key.as_deref(), Some("daemon.metrics_listen"));
    let e = one(&format!(
        "[forges.A]\nurl = \"https://a\"\nsecret_file = \"/s\"\n{TINY}"
    ));
    assert!(e.message.contains("forge name \"A\""), "{e}");
}

// ------------------------------------------------- image files (qemu-img)

/// An image file made with the real `qemu-img`.
fn make_image(path: &Path, format: &str, size: &str) {
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg(size)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Checks `text` with path checks, from a config file in `dir`.
fn checked(dir: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    parse_str(text, &dir.join("solstice.toml")).map_err(|e| e.errors)
}

#[test]
fn a_raw_image_under_the_default_format_says_what_format_to_write() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("a.img"), "raw", "16M");
    let text = "[images.tiny]\npath = \"a.img\"\n";
    let e = checked(dir.path(), text).unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].kind, ErrorKind::Image);
    assert_eq!(e[0].key.as_deref(), Some("images.tiny.format"));
    assert_eq!(at(&e[0]), (2, 8));
    assert_eq!(
        e[0].message,
        format!(
            "{} is a raw image, not qcow2 (the default)",
            dir.path().join("a.img").display()
        )
    );
    assert_eq!(
        e[0].fix.as_deref(),
        Some("images.tiny.format should be \"raw\" (add `format = \"raw\"` to [images.tiny])")
    );
    let c = checked(dir.path(), &format!("{text}format = \"raw\"\n")).unwrap();
    assert_eq!(c.images["tiny"].format, ImageFormat::Raw);
    // Without path checks nothing is probed.
    parse_str_with(text, &dir.path().join("solstice.toml"), &NO_PATHS).unwrap();
}

#[test]
fn a_qcow2_image_declared_raw_is_blamed_on_the_format_key() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("a.qcow2"), "qcow2", "16M");
    let e = checked(
        dir.path(),
        "[images.tiny]\npath = \"a.qcow2\"\nformat = \"raw\"\n",
    )
    .unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].key.as_deref(), Some("images.tiny.format"));
    assert_eq!(at(&e[0]), (3, 10));
    assert!(
        e[0].message.ends_with("a.qcow2 is a qcow2 image, not raw"),
        "{}",
        e[0]
    );
    assert_eq!(
        e[0].fix.as_deref(),
        Some("images.tiny.format should be \"qcow2\"")
    );
}

#[test]
fn an_image_format_solstice_cannot_boot_says_how_to_convert() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("a.vmdk"), "vmdk", "16M");
    let e = checked(dir.path(), "[images.tiny]\npath = \"a.vmdk\"\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].message
            .ends_with("is a vmdk image, which Solstice cannot boot"),
        "{}",
        e[0]
    );
    assert!(
        e[0].fix
            .as_deref()
            .unwrap()
            .contains("qemu-img convert -O qcow2"),
        "{}",
        e[0]
    );
}

#[test]
fn disk_size_below_the_image_size_is_an_error_with_the_size() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("a.qcow2"), "qcow2", "2G");
    let text = "[images.tiny]\npath = \"a.qcow2\"\ndisk_size_gib = 1\n";
    let e = checked(dir.path(), text).unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].kind, ErrorKind::Image);
    assert_eq!(e[0].key.as_deref(), Some("images.tiny.disk_size_gib"));
    assert_eq!(at(&e[0]), (3, 17));
    assert_eq!(
        e[0].message,
        format!(
            "1 GiB is smaller than the image {} (2147483648 bytes, 2.0 GiB)",
            dir.path().join("a.qcow2").display()
        )
    );
    assert_eq!(
        e[0].fix.as_deref(),
        Some("use at least 2, or remove the key to keep the image's size")
    );
    checked(dir.path(), &text.replace("= 1", "= 2")).unwrap();
}

#[test]
fn an_image_qemu_img_cannot_read_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A qcow2 header cut short, as an interrupted copy leaves it.
    std::fs::write(dir.path().join("a.qcow2"), b"QFI\xfb\x00\x00\x00\x03").unwrap();
    let e = checked(dir.path(), "[images.tiny]\npath = \"a.qcow2\"\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].kind, ErrorKind::Image);
    assert_eq!(e[0].key.as_deref(), Some("images.tiny.path"));
    assert_eq!(at(&e[0]), (2, 8));
    assert!(
        e[0].message
            .starts_with("image \"tiny\": qemu-img cannot read "),
        "{}",
        e[0]
    );
}

#[test]
fn a_missing_backing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    make_image(&base, "qcow2", "16M");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(dir.path().join("child.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    let text = "[images.tiny]\npath = \"child.qcow2\"\n";
    checked(dir.path(), text).unwrap();
    std::fs::remove_file(&base).unwrap();
    let e = checked(dir.path(), text).unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].message.contains(&format!(
            "needs its backing file {}, which does not exist",
            base.display()
        )),
        "{}",
        e[0]
    );
}

#[test]
fn an_unusable_qemu_img_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("a.qcow2"), "qcow2", "16M");
    make_image(&dir.path().join("b.qcow2"), "qcow2", "16M");
    let e = checked(
        dir.path(),
        "[qemu]\nimg_binary = \"/nonexistent/qemu-img\"\n[images.a]\npath = \"a.qcow2\"\n[images.b]\npath = \"b.qcow2\"\n",
    )
    .unwrap_err();
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].key.as_deref(), Some("qemu.img_binary"));
    assert!(
        e[0].message.starts_with("cannot run /nonexistent/qemu-img"),
        "{}",
        e[0]
    );
    assert!(
        e[0].fix.as_deref().unwrap().contains("--no-path-checks"),
        "{}",
        e[0]
    );
}

#[test]
fn labels_are_names_only() {
    // forgejo-runner's `name:docker://image` form, in an image.
    let e = one(
        "[images.a]\npath = \"/a\"\nlabels = [\"linux\", \"ubuntu-latest:docker://node:20\"]\n",
    );
    assert_eq!(at(&e), (3, 20));
    assert_eq!(e.key.as_deref(), Some("images.a.labels"));
    assert_eq!(e.kind, ErrorKind::InvalidValue);
    assert!(
        e.message.starts_with("label \"ubuntu-latest:docker://node:20\" has a `:`; Solstice labels are names only: each image is a VM image, so there is no `docker://` or other schema"),
        "{e}"
    );
    assert_eq!(
        e.fix.as_deref(),
        Some("write the name alone: \"ubuntu-latest\"")
    );
    // Spaces around a label.
    let e = one("[images.a]\npath = \"/a\"\nlabels = [\" linux\"]\n");
    assert_eq!(at(&e), (3, 11));
    assert_eq!(
        e.to_string(),
        "/etc/solstice/solstice.toml:3:11: images.a.labels: label \" linux\" has spaces around it, so no `runs-on` would ever match it; write \"linux\""
    );
    // In a forge's labels: one error (not also "belongs to no image").
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\nsecret_file = \"/s\"\nlabels = [\"tiny\", \"linux:host\", \"tiny \"]\n"
    ).replace("\"tiny \"]", "\"tiny\"]"));
    assert_eq!(e.key.as_deref(), Some("forges.a.labels"));
    assert!(e.message.contains("\"linux:host\" has a `:`"), "{e}");
    assert_eq!(e.fix.as_deref(), Some("write the name alone: \"linux\""));
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\nsecret_file = \"/s\"\nlabels = [\"tiny \"]\n"
    ));
    assert!(e.message.contains("has spaces around it"), "{e}");
}

const FORGE: &str = "url = \"https://f.example\"\nrunner_file = \"/r\"\n";

#[test]
fn labels_no_image_has_together_are_a_warning_per_forge() {
    // tiny [tiny, linux], deb [deb, linux]: linux is shared, so labels
    // describe properties; deb+tiny never meet on one image.
    let shared = FORGE_IMAGES.replace(
        "max_concurrent_jobs = 1\n",
        "max_concurrent_jobs = 1\nlabels = [\"deb\", \"linux\"]\n",
    );
    let c = ok(&format!("{shared}[forges.f]\n{FORGE}[forges.g]\n{FORGE}"));
    assert_eq!(c.warnings.len(), 2, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.key.as_deref(), Some("forges.f"));
    let p = w.position.unwrap();
    assert_eq!((p.line, p.column), (8, 9));
    assert_eq!(
        w.to_string(),
        "/etc/solstice/solstice.toml:8:9: warning: forges.f: labels \"deb\" (image deb) and \"tiny\" (image tiny) are both declared to this forge, but no single image has both; the forge assigns a job with `runs-on: [deb, tiny]` to this runner, which then fails it because no image fits; give one image all the labels that jobs combine, or declare fewer with `forges.f.labels`; nothing to change if no workflow combines these labels"
    );
    assert_eq!(c.warnings[1].key.as_deref(), Some("forges.g"));
    // Labels one image has together: no warning.
    let c = ok(&format!(
        "{shared}[forges.f]\n{FORGE}labels = [\"linux\", \"tiny\"]\n"
    ));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    // No label shared by two images (tiny [tiny, linux], deb [deb]): each
    // label names one image, and combining two is the job's own
    // contradiction, so no warning for the ordinary multi-image setup.
    let c = ok(&format!("{FORGE_IMAGES}[forges.f]\n{FORGE}"));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    // A label several images share, named with all of them.
    let c = ok(&format!(
        "[images.a]\npath = \"/a\"\nlabels = [\"linux\", \"gpu\"]\n[images.b]\npath = \"/b\"\nlabels = [\"linux\", \"big\"]\n[images.c]\npath = \"/c\"\nlabels = [\"illumos\"]\n[forges.f]\n{FORGE}labels = [\"linux\", \"gpu\", \"big\", \"illumos\"]\n"
    ));
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.key.as_deref(), Some("forges.f.labels"));
    assert!(
        w.message.starts_with("labels \"linux\" (images a, b) and \"illumos\" (image c) are both declared to this forge, but no single image has both (4 such label pairs in all);"),
        "{w}"
    );
    // Without forges nothing is declared, so nothing to warn about.
    assert!(ok(&shared).warnings.is_empty());
}

#[test]
fn longer_job_timeouts_than_the_forge_allows_are_a_warning() {
    let text = |mins: u32, forge: bool| {
        format!(
            "[daemon]\nmax_job_timeout_mins = {mins}\n{TINY}{}",
            if forge {
                format!("[forges.f]\n{FORGE}")
            } else {
                String::new()
            }
        )
    };
    let c = ok(&text(240, true));
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(
        c.warnings[0].to_string(),
        "/etc/solstice/solstice.toml:2:24: warning: daemon.max_job_timeout_mins: 240 minutes is longer than the forges allow: Forgejo and Gitea fail any task 180 minutes after it started (their ENDLESS_TASK_TIMEOUT, checked every 30 minutes), so a longer job is cut by the forge after 3 to 3.5 hours, without this runner's timeout message; use 180 or less, or raise ENDLESS_TASK_TIMEOUT in the forge's [actions] settings as well"
    );
    assert!(ok(&text(180, true)).warnings.is_empty());
    // `solstice exec` alone: no forge limit.
    assert!(ok(&text(240, false)).warnings.is_empty());
}

#[test]
fn polls_slower_than_the_forges_offline_limit_are_a_warning() {
    let text = |secs: u32| format!("{TINY}[forges.f]\n{FORGE}fetch_interval_secs = {secs}\n");
    let c = ok(&text(61));
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.key.as_deref(), Some("forges.f.fetch_interval_secs"));
    let p = w.position.unwrap();
    assert_eq!((p.line, p.column), (6, 23));
    assert!(
        w.message.starts_with("the forge shows a runner as offline when it has not called for 60 seconds, so with 61 seconds between polls"),
        "{w}"
    );
    assert_eq!(
        w.fix.as_deref(),
        Some("use 60 or less (Codeberg asks for at least 30)")
    );
    assert!(ok(&text(60)).warnings.is_empty());
    // The summary counts the warnings.
    assert_eq!(
        c.summary(Path::new("/s.toml")),
        "/s.toml: OK (1 image: tiny; 1 forge: f), 1 warning"
    );
    assert_eq!(
        ok(&text(60)).summary(Path::new("/s.toml")),
        "/s.toml: OK (1 image: tiny; 1 forge: f)"
    );
}

#[test]
fn actions_section_defaults_and_values() {
    let c = ok(TINY);
    assert_eq!(c.actions.default_url, "https://github.com");
    assert!(c.actions.allowed_hosts.is_empty());
    assert_eq!(c.actions.cache_max_bytes, 2048 << 20);
    let c = ok(&format!(
        "{TINY}[actions]\ndefault_url = \"https://data.forgejo.org/\"\n\
         allowed_hosts = [\"mirror.example\", \"10.0.0.5:3000\", \"[::1]:8080\"]\n\
         cache_max_mib = 16\n"
    ));
    assert_eq!(c.actions.default_url, "https://data.forgejo.org");
    assert_eq!(
        c.actions.allowed_hosts,
        ["mirror.example", "10.0.0.5:3000", "[::1]:8080"]
    );
    assert_eq!(c.actions.cache_max_bytes, 16 << 20);
}

#[test]
fn actions_section_errors_name_the_key() {
    let e = errs(&format!(
        "{TINY}[actions]\ndefault_url = \"github.com\"\n\
         allowed_hosts = [\"ok.example\", \"https://x.example/\", \"h:0\"]\n\
         cache_max_mib = 0\ndefault_ur = 1\n"
    ));
    let keys: Vec<&str> = e.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(
        keys,
        [
            "actions.default_url",
            "actions.allowed_hosts",
            "actions.allowed_hosts",
            "actions.cache_max_mib",
            "actions.default_ur",
        ],
        "{e:#?}"
    );
    assert!(
        e[0].message.contains("not an http:// or https:// URL"),
        "{}",
        e[0]
    );
    assert!(e[1].message.contains("https://x.example/"), "{}", e[1]);
    assert_eq!(e[4].fix.as_deref(), Some("did you mean \"default_url\"?"));
    let e = one(&format!(
        "{TINY}[actions]\ndefault_url = \"ftp://x.example\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("actions.default_url"));
}

#[test]
fn actions_default_is_the_absent_section() {
    assert_eq!(ok(TINY).actions, ActionsConfig::default());
}

#[test]
fn cache_settings_list_the_operators_hosts() {
    let c = ok(&format!(
        "{TINY}[actions]\nallowed_hosts = [\"mirror.example\"]\ncache_max_mib = 3\n"
    ));
    let s = c.actions.cache_settings(
        Path::new("/var/lib/solstice"),
        [
            "http://127.0.0.1:3000/",
            "https://codeberg.org",
            "not a url",
        ],
    );
    assert_eq!(s.dir, Path::new("/var/lib/solstice/actions"));
    assert_eq!(s.max_bytes, 3 << 20);
    assert_eq!(
        s.allowed_hosts,
        ["mirror.example", "127.0.0.1:3000", "codeberg.org:443"]
    );
}

#[test]
fn network_keys_default_to_outbound_and_parse_ranges() {
    let c = ok("[images.a]\npath = \"/x\"\n");
    let i = &c.images["a"];
    assert_eq!(i.network, NetworkMode::Outbound);
    assert!(i.network_deny.is_empty() && i.network_allow.is_empty());
    let c = ok(
        "[images.a]\npath = \"/x\"\nnetwork = \"none\"\nnetwork_deny = [\"10.0.0.0/8\", \"fd00::/8\"]\nnetwork_allow = [\"198.51.100.1\"]\n",
    );
    let i = &c.images["a"];
    assert_eq!(i.network, NetworkMode::None);
    assert_eq!(
        i.network_deny
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        ["10.0.0.0/8", "fd00::/8"]
    );
    assert_eq!(i.network_allow[0].to_string(), "198.51.100.1/32");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn a_bad_range_is_an_error_at_its_place() {
    let e = one("[images.a]\npath = \"/x\"\nnetwork_deny = [\"10.0.0.0/8\", \"10.1.0.0/33\"]\n");
    assert_eq!(e.key.as_deref(), Some("images.a.network_deny"));
    assert_eq!(at(&e), (3, 31));
    assert!(e.message.contains("from 0 to 32"), "{}", e.message);
    let e = one("[images.a]\npath = \"/x\"\nnetwork_allow = [\"10.0.0.1/8\"]\n");
    assert!(e.message.contains("10.0.0.0/8"), "{}", e.message);
    let e = one("[images.a]\npath = \"/x\"\nnetwork = \"open\"\n");
    assert_eq!(e.key.as_deref(), Some("images.a.network"));
}

#[test]
fn unrestricted_network_is_a_warning() {
    let c = ok("[images.a]\npath = \"/x\"\nnetwork = \"unrestricted\"\n");
    assert_eq!(c.images["a"].network, NetworkMode::Unrestricted);
    let w = &c.warnings[0];
    assert_eq!(w.key.as_deref(), Some("images.a.network"));
    assert!(w.message.contains("loopback"), "{}", w.message);
}

#[test]
fn cache_section_defaults_and_errors() {
    let c = ok(TINY);
    assert!(c.cache.enabled);
    assert_eq!(c.cache.dir, c.daemon.state_dir.join("cache"));
    assert_eq!(c.cache.max_bytes, 10240 << 20);
    let c = ok(&format!(
        "{TINY}[cache]\nenabled = false\ndir = \"c\"\nmax_mib = 5\n"
    ));
    assert!(!c.cache.enabled);
    assert_eq!(c.cache.dir, Path::new("/etc/solstice/c"));
    assert_eq!(c.cache.max_bytes, 5 << 20);
    let e = errs(&format!(
        "{TINY}[cache]\nmax_mib = 0\ndir = \"\"\nenable = true\n"
    ));
    let keys: Vec<(Option<&str>, (usize, usize))> =
        e.iter().map(|e| (e.key.as_deref(), at(e))).collect();
    assert_eq!(
        keys,
        [
            (Some("cache.max_mib"), (4, 11)),
            (Some("cache.dir"), (5, 7)),
            (Some("cache.enable"), (6, 1)),
        ],
        "{e:#?}"
    );
    assert_eq!(e[2].fix.as_deref(), Some("did you mean \"enabled\"?"));
    let e = one(&format!("{TINY}[cache]\nenabled = \"yes\"\n"));
    assert_eq!(at(&e), (4, 11));
}

// ------------------------------------------------------------- GitHub forges

/// A GitHub section's start: `kind`, then the lines given.
fn github(lines: &str) -> String {
    format!("{FORGE_IMAGES}[forges.gh]\nkind = \"github\"\n{lines}")
}

const GH_APP: &str =
    "app_id = 12345\ninstallation_id = 678901234\nprivate_key_file = \"keys/app.pem\"\n";

#[test]
fn github_forge_gets_its_defaults() {
    let c = ok(&format!(
        "[daemon]\nrunner_name = \"r1\"\n{}",
        github(&format!(
            "url = \"https://github.com/octo/hello/\"\n{GH_APP}"
        ))
    ));
    let f = &c.forges["gh"];
    assert_eq!(f.kind(), ForgeKind::Github);
    assert_eq!(f.url, "https://github.com/octo/hello");
    assert_eq!(f.runner_name, "r1");
    assert_eq!(f.labels, ["deb", "linux", "tiny"]);
    assert_eq!(f.fetch_interval, Duration::from_secs(1));
    assert_eq!(
        f.credentials,
        CredentialSource::GithubApp {
            app_id: 12345,
            installation_id: 678901234,
            private_key_file: PathBuf::from("/etc/solstice/keys/app.pem"),
        }
    );
    let g = f.github.as_ref().unwrap();
    assert_eq!(
        g.scope,
        GithubScope::Repository {
            owner: "octo".into(),
            repo: "hello".into()
        }
    );
    assert_eq!(g.scope.rest_path(), "repos/octo/hello");
    assert_eq!(g.api_url, "https://api.github.com");
    assert_eq!(g.runner_group_id, 1);
    assert_eq!(g.runner_version, "2.336.0");
    // GitHub runners carry one image's labels each: no split-label warning,
    // and no warning about Forgejo's 3 h limit.
    let c = ok(&format!(
        "[daemon]\nmax_job_timeout_mins = 600\n{}",
        github(&format!("url = \"https://github.com/octo\"\n{GH_APP}"))
    ));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    // A Forgejo forge keeps `github: None`.
    let c = ok(&format!(
        "{FORGE_IMAGES}[forges.cb]\nkind = \"forgejo\"\nurl = \"https://codeberg.org\"\nsecret_file = \"/s\"\n"
    ));
    assert!(c.forges["cb"].github.is_none());
    assert_eq!(c.forges["cb"].kind(), ForgeKind::Forgejo);
}

#[test]
fn github_every_key_is_read() {
    let c = ok(&github(
        "url = \"https://ghes.example.org/enterprises/acme\"\ntoken_file = \"/run/credentials/solstice.service/gh-token\"\nrunner_group_id = 7\napi_url = \"https://ghes.example.org/api/v3/\"\nrunner_version = \"2.340.1\"\nrunner_name = \"lab\"\nlabels = [\"tiny\"]\nfetch_interval_secs = 5\n",
    ));
    let f = &c.forges["gh"];
    assert_eq!(
        f.credentials,
        CredentialSource::GithubToken(PathBuf::from("/run/credentials/solstice.service/gh-token"))
    );
    assert_eq!(f.runner_name, "lab");
    assert_eq!(f.labels, ["tiny"]);
    assert_eq!(f.fetch_interval, Duration::from_secs(5));
    let g = f.github.as_ref().unwrap();
    assert_eq!(g.scope, GithubScope::Enterprise("acme".into()));
    assert_eq!(g.scope.rest_path(), "enterprises/acme");
    assert_eq!(g.api_url, "https://ghes.example.org/api/v3");
    assert_eq!(g.runner_group_id, 7);
    assert_eq!(g.runner_version, "2.340.1");
}

#[test]
fn github_scope_and_api_url_come_from_the_url() {
    let case = |url: &str| {
        let c = ok(&github(&format!("url = \"{url}\"\ntoken_file = \"/t\"\n")));
        let g = c.forges["gh"].github.clone().unwrap();
        (g.scope, g.api_url)
    };
    assert_eq!(
        case("https://github.com/octo-org"),
        (
            GithubScope::Organization("octo-org".into()),
            "https://api.github.com".into()
        )
    );
    assert_eq!(
        case("https://octo.ghe.com/team/repo.rs"),
        (
            GithubScope::Repository {
                owner: "team".into(),
                repo: "repo.rs".into()
            },
            "https://api.octo.ghe.com".into()
        )
    );
    assert_eq!(
        case("https://ghes.example.org/org"),
        (
            GithubScope::Organization("org".into()),
            "https://ghes.example.org/api/v3".into()
        )
    );
    // Plain http only on loopback: tests and labs.
    assert_eq!(
        case("http://127.0.0.1:8080/o/r").1,
        "http://127.0.0.1:8080/api/v3"
    );
    assert_eq!(case("http://[::1]:9/o").1, "http://[::1]:9/api/v3");
    assert_eq!(case("http://localhost/o").1, "http://localhost/api/v3");
}

#[test]
fn github_url_mistakes_say_what_to_write() {
    let url_error = |url: &str| {
        let e = one(&github(&format!("url = \"{url}\"\ntoken_file = \"/t\"\n")));
        assert_eq!(e.key.as_deref(), Some("forges.gh.url"), "{e}");
        assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
        assert_eq!(at(&e), (9, 7), "{e}");
        e
    };
    let e = url_error("http://github.com/o/r");
    assert!(e.message.contains("plain http"), "{e}");
    assert!(e.fix.as_deref().unwrap().contains("https://"), "{e}");
    let e = url_error("https://github.com");
    assert!(e.message.contains("names no repository"), "{e}");
    let e = url_error("https://github.com/o/r/tree/main");
    assert_eq!(
        e.fix.as_deref(),
        Some("write the repository alone: \"https://github.com/o/r\"")
    );
    let e = url_error("https://github.com/o/r.git");
    assert_eq!(
        e.fix.as_deref(),
        Some("write the repository's page: \"https://github.com/o/r\"")
    );
    let e = url_error("https://github.com/orgs/acme");
    assert_eq!(
        e.fix.as_deref(),
        Some("write \"https://github.com/acme\" for the organisation's runners")
    );
    url_error("https://github.com/enterprises");
    url_error("https://github.com/o/r?tab=x");
    url_error("https://user@github.com/o/r");
    url_error("https://github.com/o w/r");
    url_error("ftp://github.com/o/r");
    url_error("https://github.com/o%20x/r");
    // Missing url: the fix shows a GitHub URL.
    let e = one(&github("token_file = \"/t\"\n"));
    assert_eq!(e.key.as_deref(), Some("forges.gh.url"));
    assert!(
        e.fix.as_deref().unwrap().contains("github.com/owner/repo"),
        "{e}"
    );
}

#[test]
fn github_credentials_are_an_app_or_a_token() {
    let url = "url = \"https://github.com/o/r\"\n";
    // None.
    let e = one(&github(url));
    assert_eq!(e.key.as_deref(), Some("forges.gh"));
    assert_eq!(e.kind, ErrorKind::MissingKey);
    assert!(e.fix.as_deref().unwrap().contains("token_file"), "{e}");
    // Both.
    let e = one(&github(&format!("{url}{GH_APP}token_file = \"/t\"\n")));
    assert_eq!(e.key.as_deref(), Some("forges.gh.token_file"));
    assert!(e.message.contains("only one credential source"), "{e}");
    // An App without all its keys.
    let e = one(&github(&format!(
        "{url}app_id = 1\nprivate_key_file = \"/k\"\n"
    )));
    assert_eq!(e.kind, ErrorKind::MissingKey);
    assert!(e.message.contains("`installation_id` is missing"), "{e}");
    // Ids are positive.
    let e = one(&github(&format!(
        "{url}app_id = 0\ninstallation_id = 2\nprivate_key_file = \"/k\"\n"
    )));
    assert_eq!(e.key.as_deref(), Some("forges.gh.app_id"));
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    assert_eq!(at(&e), (10, 10));
    let e = one(&github(&format!(
        "{url}app_id = 1\ninstallation_id = -2\nprivate_key_file = \"/k\"\n"
    )));
    assert_eq!(e.key.as_deref(), Some("forges.gh.installation_id"));
    let e = one(&github(&format!(
        "{url}app_id = \"1\"\ninstallation_id = 2\nprivate_key_file = \"/k\"\n"
    )));
    assert_eq!(e.key.as_deref(), Some("forges.gh.app_id"));
    assert!(e.message.contains("expected an integer"), "{e}");
    let e = one(&github(&format!("{url}token_file = \"\"\n")));
    assert_eq!(e.message, "the path is empty");
}

#[test]
fn github_numbers_and_versions_are_checked() {
    let base = "url = \"https://github.com/o\"\ntoken_file = \"/t\"\n";
    let e = one(&github(&format!("{base}runner_group_id = 0\n")));
    assert_eq!(e.key.as_deref(), Some("forges.gh.runner_group_id"));
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    for bad in ["2.336", "v2.336.0", "2.336.0-beta", "latest", "2..0", ""] {
        let e = one(&github(&format!("{base}runner_version = \"{bad}\"\n")));
        assert_eq!(e.key.as_deref(), Some("forges.gh.runner_version"), "{bad}");
        assert!(e.fix.as_deref().unwrap().contains("2.336.0"), "{e}");
    }
    let e = one(&github(&format!(
        "{base}api_url = \"http://api.example.org\"\n"
    )));
    assert_eq!(e.key.as_deref(), Some("forges.gh.api_url"));
    assert!(e.message.contains("plain http"), "{e}");
    let e = one(&github(&format!("{base}api_url = \"api.github.com\"\n")));
    assert_eq!(e.key.as_deref(), Some("forges.gh.api_url"));
    let c = ok(&github(&format!(
        "{base}api_url = \"http://127.0.0.1:4000/\"\n"
    )));
    assert_eq!(
        c.forges["gh"].github.as_ref().unwrap().api_url,
        "http://127.0.0.1:4000"
    );
    let e = one(&github(&format!("{base}fetch_interval_secs = 0\n")));
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.gh]\nkind = \"GitHub\"\nurl = \"https://github.com/o\"\ntoken_file = \"/t\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("forges.gh.kind"));
    assert_eq!(e.message, "\"GitHub\" is not allowed");
    assert_eq!(
        e.fix.as_deref(),
        Some("did you mean \"github\"? use one of \"forgejo\", \"github\"")
    );
}

#[test]
fn keys_of_the_other_kind_are_refused_with_what_to_use() {
    let base = "url = \"https://github.com/o\"\ntoken_file = \"/t\"\n";
    for k in ["registration_token_file", "secret_file", "runner_file"] {
        let e = one(&github(&format!("{base}{k} = \"/x\"\n")));
        assert_eq!(e.key.as_deref(), Some(format!("forges.gh.{k}").as_str()));
        assert_eq!(at(&e), (11, k.len() + 4), "{e}");
        assert!(e.message.contains("is for Forgejo and Gitea"), "{e}");
        assert!(e.fix.as_deref().unwrap().contains("app_id"), "{e}");
    }
    let e = one(&github(&format!("{base}fetch_timeout_secs = 5\n")));
    assert!(
        e.fix.as_deref().unwrap().contains("fetch_interval_secs"),
        "{e}"
    );
    // Under Forgejo (the default kind) the GitHub keys are refused, and the
    // fix says how to make the section GitHub.
    let forgejo = format!("{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\nsecret_file = \"/s\"\n");
    for (k, v) in [
        ("app_id", "1"),
        ("installation_id", "1"),
        ("private_key_file", "\"/k\""),
        ("token_file", "\"/t\""),
        ("runner_group_id", "2"),
        ("api_url", "\"https://api.github.com\""),
        ("runner_version", "\"2.336.0\""),
    ] {
        let e = one(&format!("{forgejo}{k} = {v}\n"));
        assert_eq!(e.key.as_deref(), Some(format!("forges.a.{k}").as_str()));
        assert_eq!(e.message, format!("`{k}` is for GitHub forges only"));
        assert!(
            e.fix
                .as_deref()
                .unwrap()
                .contains("add `kind = \"github\"`"),
            "{e}"
        );
    }
    // Only GitHub credentials under Forgejo: one error, not two.
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"https://a\"\ntoken_file = \"/t\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("forges.a.token_file"));
    // github.com without kind: say it is GitHub.
    let e = one(&format!(
        "{FORGE_IMAGES}[forges.a]\nurl = \"https://github.com/o/r\"\nsecret_file = \"/s\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("forges.a.url"));
    assert!(
        e.fix.as_deref().unwrap().contains("kind = \"github\""),
        "{e}"
    );
}

#[test]
fn github_sections_at_one_place_need_runner_names_apart() {
    let section = |name: &str, url: &str, runner: &str| {
        format!(
            "[forges.{name}]\nkind = \"github\"\nurl = \"{url}\"\ntoken_file = \"/t\"\n{runner}"
        )
    };
    // Same repository, both with the daemon's runner name.
    let e = one(&format!(
        "{FORGE_IMAGES}{}{}",
        section("a", "https://github.com/o/r", ""),
        section("b", "https://github.com/o/r/", "")
    ));
    assert_eq!(e.key.as_deref(), Some("forges.b"));
    assert!(e.message.contains("remove each other's runners"), "{e}");
    // One name is the start of the other, followed by "-".
    let e = one(&format!(
        "{FORGE_IMAGES}{}{}",
        section("a", "https://github.com/o", "runner_name = \"ci\"\n"),
        section("b", "https://github.com/o", "runner_name = \"ci-x\"\n")
    ));
    assert_eq!(e.key.as_deref(), Some("forges.b.runner_name"));
    // Names apart, or different places: fine.
    ok(&format!(
        "{FORGE_IMAGES}{}{}",
        section("a", "https://github.com/o", "runner_name = \"ci-a\"\n"),
        section("b", "https://github.com/o", "runner_name = \"ci-b\"\n")
    ));
    ok(&format!(
        "{FORGE_IMAGES}{}{}",
        section("a", "https://github.com/o", "runner_name = \"cix\"\n"),
        section("b", "https://github.com/o", "runner_name = \"ci\"\n")
    ));
    ok(&format!(
        "{FORGE_IMAGES}{}{}",
        section("a", "https://github.com/o/r", ""),
        section("b", "https://github.com/o", "")
    ));
}

#[test]
fn github_runner_names_longer_than_github_allows_are_refused_with_the_room_left() {
    let long = "r".repeat(60);
    let e = one(&github(&format!(
        "url = \"https://github.com/octo/hello\"\n{GH_APP}runner_name = \"{long}\"\n"
    )));
    assert!(
        e.message.contains("GitHub refuses names longer than 64"),
        "{e:#?}"
    );
    assert_eq!(e.key.as_deref(), Some("forges.gh.runner_name"));
    assert!(e.fix.as_deref().unwrap_or("").contains("at most"), "{e:#?}");
    ok(&github(&format!(
        "url = \"https://github.com/octo/hello\"\n{GH_APP}runner_name = \"ci1\"\n"
    )));
}

#[test]
fn registry_mirror_is_normalised_to_scheme_host_and_port() {
    let c = ok("[images.a]\npath = \"/x\"\n");
    assert_eq!(c.images["a"].registry_mirror, None);
    for (written, kept) in [
        ("http://198.51.100.77:5000", "http://198.51.100.77:5000"),
        ("http://198.51.100.77:5000/", "http://198.51.100.77:5000"),
        ("https://Mirror.Example.com", "https://mirror.example.com"),
        (
            "https://mirror.example.com:443",
            "https://mirror.example.com",
        ),
        ("http://[fd00::5]:5000", "http://[fd00::5]:5000"),
        (" http://10.0.0.5 ", "http://10.0.0.5"),
    ] {
        let c = ok(&format!(
            "[images.a]\npath = \"/x\"\nregistry_mirror = \"{written}\"\n"
        ));
        assert_eq!(
            c.images["a"].registry_mirror.as_deref(),
            Some(kept),
            "{written}"
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}

#[test]
fn a_bad_registry_mirror_is_an_error_at_its_place() {
    for (written, why) in [
        ("mirror.example.com:5000", "scheme"),
        ("ftp://mirror.example.com", "scheme is \"ftp\""),
        ("http://mirror.example.com/v2/", "path (\"/v2/\")"),
        (
            "https://user:pw@mirror.example.com",
            "user name or password",
        ),
        ("http://mirror.example.com?x=1", "query"),
        ("http://", "not a URL"),
        ("", "not a URL"),
    ] {
        let e = one(&format!(
            "[images.a]\npath = \"/x\"\nregistry_mirror = \"{written}\"\n"
        ));
        assert_eq!(
            e.key.as_deref(),
            Some("images.a.registry_mirror"),
            "{written}"
        );
        assert_eq!(at(&e), (3, 19), "{written}");
        assert!(e.message.contains(why), "{written}: {}", e.message);
        assert!(
            e.fix
                .as_deref()
                .is_some_and(|h| h.contains("http://10.0.0.5:5000")),
            "{written}: {:?}",
            e.fix
        );
    }
}

#[test]
fn a_registry_mirror_on_a_metadata_seed_image_is_a_warning() {
    let c = ok(
        "[images.a]\npath = \"/x\"\nos = \"illumos\"\nseed = \"metadata-cpio\"\nregistry_mirror = \"http://10.0.0.5:5000\"\n",
    );
    let w = &c.warnings[0];
    assert_eq!(w.key.as_deref(), Some("images.a.registry_mirror"));
    assert!(w.message.contains("NoCloud"), "{}", w.message);
}

// ------------------------------------------------------------- debug SSH

const DEBUG_FORGE: &str = "[forges.f]\nurl = \"https://f.example\"\nrunner_file = \"/r\"\n";

/// `TINY`, a forge `f` with `[forges.f.debug_ssh]` = `forge_debug`, and
/// `[debug_ssh]` = `host` (no section when `None`).
fn debug_text(host: Option<&str>, forge_debug: &str) -> String {
    let host = host.map_or(String::new(), |h| format!("[debug_ssh]\n{h}"));
    format!("{TINY}{DEBUG_FORGE}[forges.f.debug_ssh]\n{forge_debug}{host}")
}

#[test]
fn debug_ssh_is_off_without_the_sections() {
    let c = ok(&format!("{TINY}{DEBUG_FORGE}"));
    assert_eq!(c.debug_ssh, None);
    assert_eq!(c.forges["f"].debug_ssh, ForgeDebugSsh::default());
    assert!(!c.forges["f"].debug_ssh.enabled);
}

#[test]
fn debug_ssh_defaults() {
    let c = ok(&debug_text(
        Some("listen = \"0.0.0.0:2222\"\n"),
        "enabled = true\n",
    ));
    let d = c.debug_ssh.unwrap();
    assert_eq!(d.listen, "0.0.0.0:2222".parse().unwrap());
    assert_eq!(Some(d.public_host), validate::host_name());
    assert_eq!(d.public_port, 2222);
    assert_eq!(d.ttl, DEBUG_SSH_MAX_TTL);
    assert_eq!(d.ttl, Duration::from_secs(1800));
    assert_eq!(d.max_held, 1);
    assert_eq!(d.idle_timeout, Duration::from_secs(600));
    assert_eq!(
        c.forges["f"].debug_ssh,
        ForgeDebugSsh {
            enabled: true,
            events: vec![
                "push".into(),
                "pull_request".into(),
                "workflow_dispatch".into()
            ],
            ..ForgeDebugSsh::default()
        }
    );
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
}

#[test]
fn every_debug_ssh_key_is_read() {
    let c = ok(&debug_text(
        Some(
            "listen = \"[::]:2222\"\npublic_host = \"ci.example.org\"\npublic_port = 22\nttl_secs = 900\nmax_held = 1\nidle_timeout_secs = 120\n",
        ),
        "enabled = true\nrepositories = [\"acme/widgets\", \"tools/*\"]\nevents = [\"push\", \"workflow_dispatch\"]\nfork_pull_requests = true\nwith_secrets = true\nttl_secs = 300\n",
    ));
    assert_eq!(
        c.debug_ssh,
        Some(DebugSshConfig {
            listen: "[::]:2222".parse().unwrap(),
            public_host: "ci.example.org".to_owned(),
            public_port: 22,
            ttl: Duration::from_secs(900),
            max_held: 1,
            idle_timeout: Duration::from_secs(120),
        })
    );
    assert_eq!(
        c.forges["f"].debug_ssh,
        ForgeDebugSsh {
            enabled: true,
            repositories: vec!["acme/widgets".to_owned(), "tools/*".to_owned()],
            events: vec!["push".to_owned(), "workflow_dispatch".to_owned()],
            fork_pull_requests: true,
            with_secrets: true,
            ttl: Some(Duration::from_secs(300)),
        }
    );
}

#[test]
fn enabling_debug_ssh_needs_the_host_section() {
    let e = one(&debug_text(None, "enabled = true\n"));
    assert_eq!(e.key.as_deref(), Some("forges.f.debug_ssh.enabled"));
    assert_eq!(e.kind, ErrorKind::MissingKey);
    assert_eq!(at(&e), (7, 11));
    assert_eq!(
        e.to_string(),
        "/etc/solstice/solstice.toml:7:11: forges.f.debug_ssh.enabled: debug SSH is enabled for this forge, but the host has no [debug_ssh] section, so no gateway would let anyone in; add a [debug_ssh] section with at least `listen = \"0.0.0.0:2222\"` (docs/debug-ssh.md), or set `enabled = false`"
    );
    // Settings without `enabled = true` need no gateway.
    let c = ok(&debug_text(
        None,
        "enabled = false\nrepositories = [\"a/b\"]\n",
    ));
    assert!(!c.forges["f"].debug_ssh.enabled);
    assert_eq!(c.forges["f"].debug_ssh.repositories, ["a/b"]);
}

#[test]
fn the_gateway_needs_a_fixed_listen_address() {
    let e = one(&debug_text(
        Some("public_host = \"h\"\n"),
        "enabled = true\n",
    ));
    assert_eq!(e.key.as_deref(), Some("debug_ssh.listen"));
    assert_eq!(e.kind, ErrorKind::MissingKey);
    assert!(
        e.fix
            .as_deref()
            .unwrap()
            .starts_with("add `listen = \"0.0.0.0:2222\""),
        "{e}"
    );
    for (listen, message) in [
        ("2222", "\"2222\" is a port without an address"),
        ("0.0.0.0:0", "\"0.0.0.0:0\" has port 0"),
        (
            "ci.example.org:2222",
            "\"ci.example.org:2222\" is not an IP address with a port",
        ),
        ("0.0.0.0", "\"0.0.0.0\" is not an IP address with a port"),
    ] {
        let e = one(&debug_text(
            Some(&format!("listen = \"{listen}\"\n")),
            "enabled = true\n",
        ));
        assert_eq!(e.key.as_deref(), Some("debug_ssh.listen"), "{listen}");
        assert!(e.message.starts_with(message), "{e}");
    }
    let e = one(&debug_text(Some("listen = \"2222\"\n"), ""));
    assert_eq!(
        e.fix.as_deref(),
        Some(
            "write the address to listen on as well, e.g. \"0.0.0.0:2222\" (every IPv4 address) or \"[::]:2222\""
        )
    );
}

#[test]
fn the_public_host_is_a_name_or_an_address() {
    let host = |h: &str| {
        debug_text(
            Some(&format!("listen = \"0.0.0.0:2222\"\npublic_host = {h:?}\n")),
            "enabled = true\n",
        )
    };
    for good in [
        "ci.example.org",
        "ci",
        "ci.example.org.",
        "192.0.2.7",
        "2001:db8::7",
        "build_1.lan",
    ] {
        assert_eq!(ok(&host(good)).debug_ssh.unwrap().public_host, good);
    }
    for (bad, message, fix) in [
        (
            "",
            "the public host is empty",
            "write the name users reach this host by",
        ),
        (
            " ci.example.org",
            "\" ci.example.org\" has spaces around it",
            "write \"ci.example.org\"",
        ),
        (
            "[2001:db8::7]",
            "\"[2001:db8::7]\" has brackets",
            "write \"2001:db8::7\"",
        ),
        (
            "debug@ci.example.org",
            "\"debug@ci.example.org\" is not a host name or an IP address",
            "write a name",
        ),
        (
            "ci.example.org:2222",
            "\"ci.example.org:2222\" is not a host name",
            "write a name",
        ),
        (
            "https://ci.example.org",
            "\"https://ci.example.org\" is not a host name",
            "write a name",
        ),
    ] {
        let e = one(&host(bad));
        assert_eq!(e.key.as_deref(), Some("debug_ssh.public_host"), "{bad}");
        assert!(e.message.starts_with(message), "{e}");
        assert!(e.fix.as_deref().unwrap().starts_with(fix), "{e}");
    }
}

#[test]
fn debug_ssh_numbers_have_ranges() {
    let host = |k: &str| {
        debug_text(
            Some(&format!(
                "listen = \"0.0.0.0:2222\"\npublic_host = \"h\"\n{k}\n"
            )),
            "enabled = true\n",
        )
    };
    for (k, key, fix) in [
        (
            "ttl_secs = 0",
            "debug_ssh.ttl_secs",
            "use a value from 1 to 1800 (seconds)",
        ),
        (
            "max_held = 0",
            "debug_ssh.max_held",
            "use a value from 1 to 1024 (VMs)",
        ),
        (
            "idle_timeout_secs = 0",
            "debug_ssh.idle_timeout_secs",
            "use a value from 1 to 86400 (seconds)",
        ),
        (
            "public_port = 0",
            "debug_ssh.public_port",
            "use a value from 1 to 65535 (a TCP port)",
        ),
        (
            "public_port = 65536",
            "debug_ssh.public_port",
            "use a value from 1 to 65535 (a TCP port)",
        ),
    ] {
        let e = one(&host(k));
        assert_eq!(e.kind, ErrorKind::OutOfRange, "{k}");
        assert_eq!(
            (e.key.as_deref(), e.fix.as_deref()),
            (Some(key), Some(fix)),
            "{k}"
        );
    }
    // Above 30 minutes: ADR-003's maximum, said so.
    let e = one(&host("ttl_secs = 3600"));
    assert_eq!(e.key.as_deref(), Some("debug_ssh.ttl_secs"));
    assert_eq!(
        e.message,
        "3600 is too large: a failed job's VM is kept at most 1800 seconds (30 minutes), counted from when the window opens and never renewed"
    );
    assert_eq!(
        e.fix.as_deref(),
        Some("use a value from 1 to 1800 (seconds), or remove the key for the maximum")
    );
    assert_eq!(
        ok(&host("ttl_secs = 1")).debug_ssh.unwrap().ttl,
        Duration::from_secs(1)
    );
}

#[test]
fn a_forge_window_is_not_longer_than_the_hosts() {
    let text = |host_ttl: &str, forge_ttl: u32| {
        debug_text(
            Some(&format!(
                "listen = \"0.0.0.0:2222\"\npublic_host = \"h\"\n{host_ttl}"
            )),
            &format!("enabled = true\nttl_secs = {forge_ttl}\n"),
        )
    };
    let e = one(&text("ttl_secs = 600\n", 900));
    assert_eq!(e.key.as_deref(), Some("forges.f.debug_ssh.ttl_secs"));
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    assert_eq!(
        e.message,
        "900 is longer than the host's window (`debug_ssh.ttl_secs` = 600), which bounds every forge's"
    );
    assert_eq!(
        e.fix.as_deref(),
        Some("use a value from 1 to 600 (seconds), or raise `debug_ssh.ttl_secs`")
    );
    assert_eq!(
        ok(&text("ttl_secs = 600\n", 600)).forges["f"].debug_ssh.ttl,
        Some(Duration::from_secs(600))
    );
    // Against the default host window, and the absolute maximum.
    assert_eq!(
        ok(&text("", 1800)).forges["f"].debug_ssh.ttl,
        Some(Duration::from_secs(1800))
    );
    let e = one(&text("", 1801));
    assert!(
        e.message
            .starts_with("1801 is too large: a failed job's VM is kept at most 1800 seconds"),
        "{e}"
    );
    let e = one(&text("", 0));
    assert_eq!(e.message, "0 is too small");
    // A bad host window is one error, not one per forge too.
    let e = one(&text("ttl_secs = 7200\n", 900));
    assert_eq!(e.key.as_deref(), Some("debug_ssh.ttl_secs"));
}

#[test]
fn repository_patterns_are_owner_slash_name_or_owner_slash_star() {
    let text = |r: &str| {
        debug_text(
            Some("listen = \"0.0.0.0:2222\"\npublic_host = \"h\"\n"),
            &format!("enabled = true\nrepositories = [{r}]\n"),
        )
    };
    let c = ok(&text(
        "\"acme/widgets\", \"acme/*\", \"Some.User/repo_1.rs\"",
    ));
    assert_eq!(
        c.forges["f"].debug_ssh.repositories,
        ["acme/widgets", "acme/*", "Some.User/repo_1.rs"]
    );
    for (bad, fix) in [
        (
            "acme",
            "write \"acme/*\" for every repository of acme, or \"acme/<name>\" for one",
        ),
        (
            "*/*",
            "write \"owner/name\" for one repository or \"owner/*\"",
        ),
        ("acme/wid*", "write \"owner/name\""),
        ("acme/a/b", "write \"owner/name\""),
        ("/widgets", "write \"owner/name\""),
        ("acme/", "write \"owner/name\""),
        ("acme/ widgets", "write \"owner/name\""),
        ("", "write \"owner/name\""),
    ] {
        let e = one(&text(&format!("{bad:?}")));
        assert_eq!(
            e.key.as_deref(),
            Some("forges.f.debug_ssh.repositories"),
            "{bad}"
        );
        assert_eq!(e.message, format!("\"{bad}\" is not a repository pattern"));
        assert!(e.fix.as_deref().unwrap().starts_with(fix), "{bad}: {e}");
    }
    let e = one(&text(""));
    assert_eq!(
        e.message,
        "the repository list is empty; an absent key means every repository, so an empty list is ambiguous"
    );
}

#[test]
fn event_names_schedule_is_refused_unknown_ones_are_a_warning() {
    let text = |ev: &str| {
        debug_text(
            Some("listen = \"0.0.0.0:2222\"\npublic_host = \"h\"\n"),
            &format!("enabled = true\nevents = [{ev}]\n"),
        )
    };
    let c = ok(&text("\"push\", \"pull_request\", \"workflow_dispatch\""));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let e = one(&text("\"push\", \"schedule\""));
    assert_eq!(e.key.as_deref(), Some("forges.f.debug_ssh.events"));
    assert!(
        e.message
            .starts_with("jobs of `schedule` events are never kept"),
        "{e}"
    );
    let c = ok(&text("\"push\", \"pul_request\", \"nightly\""));
    assert_eq!(
        c.forges["f"].debug_ssh.events,
        ["push", "pul_request", "nightly"]
    );
    assert_eq!(c.warnings.len(), 2, "{:#?}", c.warnings);
    assert_eq!(
        c.warnings[0].to_string(),
        "/etc/solstice/solstice.toml:8:19: warning: forges.f.debug_ssh.events: \"pul_request\" is not an event GitHub, Forgejo or Gitea send, so no job matches this entry; did you mean \"pull_request\"?"
    );
    assert_eq!(
        c.warnings[1].fix.as_deref(),
        Some(
            "write event names as `on:` does, e.g. \"push\", \"pull_request\", \"workflow_dispatch\""
        )
    );
    assert!(
        one(&text(""))
            .message
            .starts_with("the event list is empty")
    );
}

#[test]
fn a_loopback_gateway_that_users_are_sent_to_from_elsewhere_is_a_warning() {
    let text = |listen: &str, public: &str| {
        debug_text(
            Some(&format!(
                "listen = \"{listen}\"\npublic_host = \"{public}\"\n"
            )),
            "enabled = true\n",
        )
    };
    let c = ok(&text("127.0.0.1:2222", "ci.example.org"));
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.key.as_deref(), Some("debug_ssh.listen"));
    assert_eq!(w.position.map(|p| (p.line, p.column)), Some((9, 10)));
    assert_eq!(
        w.message,
        "the gateway listens on a loopback address, but the job log tells users to connect to ci.example.org: only this machine can reach it, unless something forwards the port"
    );
    assert_eq!(
        w.fix.as_deref(),
        Some(
            "listen on an address users reach, e.g. \"0.0.0.0:2222\", or set `public_host = \"127.0.0.1\"` if only users of this machine debug"
        )
    );
    for (listen, public) in [
        ("127.0.0.1:2222", "127.0.0.1"),
        ("[::1]:2222", "::1"),
        ("127.0.0.1:2222", "localhost"),
        ("0.0.0.0:2222", "ci.example.org"),
    ] {
        let c = ok(&text(listen, public));
        assert!(
            c.warnings.is_empty(),
            "{listen} {public}: {:#?}",
            c.warnings
        );
    }
}

#[test]
fn a_gateway_no_forge_uses_and_held_vms_that_fill_every_slot_are_warnings() {
    let c = ok(&debug_text(
        Some("listen = \"0.0.0.0:2222\"\npublic_host = \"h\"\n"),
        "",
    ));
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(c.warnings[0].key.as_deref(), Some("debug_ssh"));
    assert_eq!(
        c.warnings[0].message,
        "no forge has `debug_ssh.enabled = true`, so no failed job's VM is ever kept"
    );
    let c = ok(&format!(
        "[daemon]\nmax_concurrent_jobs = 2\n{}",
        debug_text(
            Some("listen = \"0.0.0.0:2222\"\npublic_host = \"h\"\nmax_held = 2\n"),
            "enabled = true\n",
        )
    ));
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.key.as_deref(), Some("debug_ssh.max_held"));
    assert_eq!(
        w.message,
        "a VM kept for debugging still takes a job slot, and up to 2 can be kept while `daemon.max_concurrent_jobs` is 2: failed jobs can then take every slot for up to 1800 seconds, and no other job runs meanwhile"
    );
    assert_eq!(
        w.fix.as_deref(),
        Some("use a `max_held` below 2, or raise `daemon.max_concurrent_jobs`")
    );
}

#[test]
fn unknown_debug_ssh_keys_point_to_the_right_section() {
    // `enabled` is also a [cache] key; in [debug_ssh] it belongs to the forge's table.
    let e = one(&debug_text(
        Some("listen = \"0.0.0.0:2222\"\npublic_host = \"h\"\nenabled = true\n"),
        "enabled = true\n",
    ));
    assert_eq!(e.kind, ErrorKind::UnknownKey);
    assert_eq!(e.key.as_deref(), Some("debug_ssh.enabled"));
    assert_eq!(
        e.fix.as_deref(),
        Some("\"enabled\" belongs in [forges.<name>.debug_ssh]; move it there")
    );
    let e = one(&debug_text(
        Some("listen = \"0.0.0.0:2222\"\npublic_host = \"h\"\n"),
        "enabled = true\nlisten = \"0.0.0.0:2222\"\n",
    ));
    assert_eq!(e.key.as_deref(), Some("forges.f.debug_ssh.listen"));
    assert_eq!(
        e.fix.as_deref(),
        Some("\"listen\" belongs in [debug_ssh]; move it there")
    );
    let e = one(&format!("{TINY}{DEBUG_FORGE}with_secrets = true\n"));
    assert_eq!(e.key.as_deref(), Some("forges.f.with_secrets"));
    assert_eq!(
        e.fix.as_deref(),
        Some("\"with_secrets\" belongs in [forges.<name>.debug_ssh]; move it there")
    );
    let e = one(&debug_text(None, "enabld = true\n"));
    assert_eq!(e.key.as_deref(), Some("forges.f.debug_ssh.enabld"));
    assert_eq!(e.fix.as_deref(), Some("did you mean \"enabled\"?"));
    // [cache] keeps its own `enabled`.
    assert!(
        ok(&format!("{TINY}[cache]\nenabled = false\n"))
            .warnings
            .is_empty()
    );
}

#[test]
fn warm_keys_default_and_snapshot_is_refused_where_clones_cannot_be_re_keyed() {
    let c = ok(TINY);
    let i = &c.images["tiny"];
    assert_eq!(
        (i.warm, i.warm_max_idle.as_secs(), i.snapshot),
        (0, 3600, false)
    );
    let c =
        ok("[images.tiny]\npath = \"/t\"\nwarm = 2\nwarm_max_idle_secs = 120\nsnapshot = true\n");
    let i = &c.images["tiny"];
    assert_eq!(
        (i.warm, i.warm_max_idle.as_secs(), i.snapshot),
        (2, 120, true)
    );
    for (extra, why) in [
        ("os = \"illumos\"", "vmgenid"),
        ("seed = \"metadata-cpio\"", "NoCloud"),
    ] {
        let e = errs(&format!(
            "[images.tiny]\npath = \"/t\"\nsnapshot = true\n{extra}\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key.as_deref(), Some("images.tiny.snapshot"));
        assert!(e[0].message.contains(why), "{}", e[0].message);
    }
    let e = errs("[images.tiny]\npath = \"/t\"\nwarm = 257\n");
    assert_eq!(e[0].key.as_deref(), Some("images.tiny.warm"));
}
