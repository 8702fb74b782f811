//! The one writer of every archive Solstice sends into a guest (step bundles,
//! the job's event file, local-tree copies, host-side checkouts).
//!
//! Every header is POSIX ustar (magic `ustar\0`, version `00`). A name, link
//! target or size that does not fit its ustar field is carried by a pax
//! extended header (`x`) in front of the entry, with the ustar field holding
//! a truncated value for readers that ignore pax. No GNU extension is ever
//! written: no `././@LongLink` entries (types `L`/`K`), no sparse (`S`), no
//! multi-volume (`M`), no volume (`V`), and no base-256 numbers. illumos
//! `tar` reads ustar and pax but not GNU long names; busybox and GNU tar read
//! all of these. (The `tar` crate's `Builder::append_data` writes GNU long-name
//! entries for paths over 100 bytes, which is why headers are written here.)
//!
//! The guest unpacks with `tar xmf -` (or `xmof -`): `x`, `m`, `o` and `f -`
//! are understood alike by illumos, busybox and GNU tar in the old bundled
//! form without a dash, and illumos tar re-blocks by itself when it reads `f -`.

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    fn typeflag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::Dir => b'5',
            Kind::Symlink => b'2',
        }
    }
}

/// Largest value of an 11-digit octal field (size, mtime): 8 GiB - 1.
pub const USTAR_MAX_OCTAL: u64 = 0o77777777777;
/// A tar record: archives are padded to a whole one, which every tar reads
/// cleanly from a pipe.
pub const RECORD: usize = 10240;
const BLOCK: usize = 512;

/// An archive being written, in memory.
#[derive(Default)]
pub struct ArchiveWriter {
    out: Vec<u8>,
}

impl ArchiveWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one entry. `path` is relative, with `/` separators (a
    /// directory's trailing `/` is added here); `link` is a symlink's target;
    /// `data` a file's content. Owner and group are 0 (the guest unpacks as
    /// its own user).
    pub fn add(
        &mut self,
        path: &[u8],
        kind: Kind,
        mode: u32,
        mtime: u64,
        link: Option<&[u8]>,
        data: &[u8],
    ) {
        let mut path = path.to_vec();
        if kind == Kind::Dir && !path.ends_with(b"/") {
            path.push(b'/');
        }
        let size = if kind == Kind::File {
            data.len() as u64
        } else {
            0
        };
        let mtime = mtime.min(USTAR_MAX_OCTAL);
        let mut pax = Vec::new();
        let mut h = [0u8; BLOCK];
        match split_ustar_name(&path) {
            Some((prefix, name)) => {
                h[345..345 + prefix.len()].copy_from_slice(prefix);
                h[..name.len()].copy_from_slice(name);
            }
            None => {
                pax.extend(pax_record("path", &path));
                let n = path.len().min(100);
                h[..n].copy_from_slice(&path[..n]);
            }
        }
        if let Some(link) = link {
            if link.len() > 100 {
                pax.extend(pax_record("linkpath", link));
            }
            let n = link.len().min(100);
            h[157..157 + n].copy_from_slice(&link[..n]);
        }
        let size_field = if size > USTAR_MAX_OCTAL {
            pax.extend(pax_record("size", size.to_string().as_bytes()));
            0
        } else {
            size
        };
        if !pax.is_empty() {
            let mut x = [0u8; BLOCK];
            x[..9].copy_from_slice(b"PaxHeader");
            fill_header(&mut x, b'x', 0o644, pax.len() as u64, mtime);
            self.out.extend_from_slice(&x);
            self.push_data(&pax);
        }
        fill_header(&mut h, kind.typeflag(), mode, size_field, mtime);
        self.out.extend_from_slice(&h);
        if kind == Kind::File {
            self.push_data(data);
        }
    }

    fn push_data(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        let rem = data.len() % BLOCK;
        if rem != 0 {
            self.out.resize(self.out.len() + BLOCK - rem, 0);
        }
    }

    /// The archive: the two zero blocks that end it, padded to a whole record.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 2 * BLOCK, 0);
        pad_record(self.out)
    }
}

/// Pads an archive to a whole [`RECORD`].
pub fn pad_record(mut archive: Vec<u8>) -> Vec<u8> {
    let rem = archive.len() % RECORD;
    if rem != 0 {
        archive.resize(archive.len() + RECORD - rem, 0);
    }
    archive
}

/// `(prefix, name)` for ustar's 155-byte prefix and 100-byte name fields,
/// split at a `/`, or `None` when the path needs a pax `path` record.
fn split_ustar_name(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    // The name part must not be empty; a directory's trailing `/` stays in it.
    let search = &path[..path.len() - 1];
    search
        .iter()
        .enumerate()
        .rev()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(prefix, name)| prefix.len() <= 155 && name.len() <= 100 && !name.is_empty())
}

/// Mode, owner, size, time, type, magic and checksum of a ustar header whose
/// name, prefix and link fields are already set.
fn fill_header(h: &mut [u8; BLOCK], typeflag: u8, mode: u32, size: u64, mtime: u64) {
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let digits = format!("{sum:06o}");
    h[148..154].copy_from_slice(digits.as_bytes());
    h[154] = 0;
    h[155] = b' ';
}

/// Zero-padded octal digits filling `field` but its last byte, a NUL. Values
/// are kept in range by the callers.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    let digits = &digits.as_bytes()[digits.len().saturating_sub(width)..];
    field[..width].copy_from_slice(digits);
    field[width] = 0;
}

/// One pax extended-header record: `"<len> <key>=<value>\n"`, where `<len>`
/// counts the whole record, its own digits included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// One entry of a generated tar.
pub(super) struct TarFile {
    pub(super) path: String,
    pub(super) data: Vec<u8>,
    pub(super) mode: u32,
    pub(super) dir: bool,
}

impl TarFile {
    pub(super) fn file(path: &str, data: Vec<u8>, mode: u32) -> Self {
        TarFile {
            path: path.to_string(),
            data,
            mode,
            dir: false,
        }
    }

    pub(super) fn dir(path: &str) -> Self {
        TarFile {
            path: path.to_string(),
            data: Vec::new(),
            mode: 0o700,
            dir: true,
        }
    }
}

/// A small tar (padded to a whole record) for `tar xf -` in the guest:
/// ustar, with pax headers where a name is too long ([`ArchiveWriter`]).
pub(super) fn build_tar(files: &[TarFile]) -> std::io::Result<Vec<u8>> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut w = ArchiveWriter::new();
    for f in files {
        let kind = if f.dir { Kind::Dir } else { Kind::File };
        w.add(f.path.as_bytes(), kind, f.mode, mtime, None, &f.data);
    }
    Ok(w.finish())
}

/// Test helpers: the GNU-only type flags, and a check of a whole archive.
#[cfg(test)]
pub(crate) mod inspect {
    /// Type flags that only GNU tar writes: dumpdir, long link, long name,
    /// multi-volume, old long names, sparse, volume header.
    pub const GNU_TYPES: &[u8] = b"DKLMNSV";

    /// One raw header: (typeflag, name field, prefix field, link field, pax
    /// records when it is an `x` header).
    #[derive(Debug)]
    pub struct Raw {
        pub typeflag: u8,
        pub name: Vec<u8>,
        pub prefix: Vec<u8>,
        pub link: Vec<u8>,
        pub pax: Vec<(String, Vec<u8>)>,
    }

    fn field(b: &[u8]) -> Vec<u8> {
        b.iter().copied().take_while(|&c| c != 0).collect()
    }

    fn octal(b: &[u8]) -> u64 {
        let s = String::from_utf8(field(b)).expect("octal field is ASCII");
        let s = s.trim();
        assert!(
            s.bytes().all(|c| (b'0'..=b'7').contains(&c)),
            "not plain octal (base-256?): {b:?}"
        );
        u64::from_str_radix(s, 8).unwrap_or(0)
    }

    /// Walks every header block and checks that it is plain ustar: magic,
    /// version, checksum, octal numbers, no GNU type flag; returns them.
    pub fn headers(data: &[u8]) -> Vec<Raw> {
        assert_eq!(data.len() % super::RECORD, 0, "not padded to a record");
        let mut out = Vec::new();
        let mut off = 0;
        while off + 512 <= data.len() {
            let h = &data[off..off + 512];
            if h.iter().all(|&b| b == 0) {
                break;
            }
            assert_eq!(&h[257..263], b"ustar\0", "magic at {off}");
            assert_eq!(&h[263..265], b"00", "version at {off}");
            let mut sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
            sum -= h[148..156].iter().map(|&b| u64::from(b)).sum::<u64>();
            sum += 8 * u64::from(b' ');
            assert_eq!(octal(&h[148..156]), sum, "checksum at {off}");
            let typeflag = h[156];
            assert!(
                !GNU_TYPES.contains(&typeflag),
                "GNU type flag {:?} at {off}",
                typeflag as char
            );
            let size = octal(&h[124..136]);
            octal(&h[100..108]);
            octal(&h[136..148]);
            let body = &data[off + 512..off + 512 + size as usize];
            let mut pax = Vec::new();
            if typeflag == b'x' {
                let mut rest = body;
                while !rest.is_empty() {
                    let sp = rest.iter().position(|&b| b == b' ').expect("record length");
                    let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
                    let rec = &rest[sp + 1..len];
                    assert_eq!(rest[len - 1], b'\n', "record ends with a newline");
                    let eq = rec.iter().position(|&b| b == b'=').unwrap();
                    pax.push((
                        String::from_utf8(rec[..eq].to_vec()).unwrap(),
                        rec[eq + 1..rec.len() - 1].to_vec(),
                    ));
                    rest = &rest[len..];
                }
            }
            out.push(Raw {
                typeflag,
                name: field(&h[..100]),
                prefix: field(&h[345..500]),
                link: field(&h[157..257]),
                pax,
            });
            off += 512 + (size as usize).div_ceil(512) * 512;
        }
        // Two zero blocks end it.
        assert!(data[off..].len() >= 1024 && data[off..].iter().all(|&b| b == 0));
        out
    }

    /// Every entry's full path, link target and pax records resolved, and
    /// checks that no header needs more than ustar plus pax: an entry whose
    /// name does not fit its fields is preceded by a pax `path`, and so on.
    pub fn entries(data: &[u8]) -> Vec<(u8, Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
        for h in headers(data) {
            if h.typeflag == b'x' {
                pending = h.pax;
                continue;
            }
            let ustar_path = if h.prefix.is_empty() {
                h.name.clone()
            } else {
                [h.prefix.as_slice(), b"/", h.name.as_slice()].concat()
            };
            let path = match pending.iter().find(|(k, _)| k == "path") {
                Some((_, v)) => v.clone(),
                None => ustar_path,
            };
            let link = match pending.iter().find(|(k, _)| k == "linkpath") {
                Some((_, v)) => Some(v.clone()),
                None => (!h.link.is_empty()).then(|| h.link.clone()),
            };
            pending.clear();
            out.push((h.typeflag, path, link));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::inspect::{entries, headers};
    use super::*;

    #[test]
    fn short_names_are_plain_ustar_without_pax() {
        let mut w = ArchiveWriter::new();
        w.add(b"step-1", Kind::Dir, 0o700, 1, None, &[]);
        w.add(
            b"step-1/script.sh",
            Kind::File,
            0o700,
            1,
            None,
            b"echo hi\n",
        );
        let data = w.finish();
        let hs = headers(&data);
        assert_eq!(hs.len(), 2);
        assert!(hs.iter().all(|h| h.typeflag != b'x'));
        assert_eq!(hs[0].name, b"step-1/");
        // The tar crate reads it back the same.
        let mut a = tar::Archive::new(data.as_slice());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["step-1/", "step-1/script.sh"]);
    }

    #[test]
    fn long_names_use_the_prefix_field_or_a_pax_path() {
        let mut w = ArchiveWriter::new();
        // 150 bytes in two parts: prefix + name, no pax needed.
        let split = format!("{}/{}", "a".repeat(80), "b".repeat(69));
        // One 150-byte component: only pax can hold it.
        let single = "c".repeat(150);
        let link = format!("{}/target", "l".repeat(120));
        w.add(split.as_bytes(), Kind::File, 0o644, 1, None, b"x");
        w.add(single.as_bytes(), Kind::File, 0o644, 1, None, b"y");
        w.add(b"ln", Kind::Symlink, 0o777, 1, Some(link.as_bytes()), &[]);
        let data = w.finish();
        let hs = headers(&data);
        assert_eq!(hs[0].prefix, "a".repeat(80).as_bytes());
        assert_eq!(hs[0].name, "b".repeat(69).as_bytes());
        assert_eq!(hs[1].typeflag, b'x');
        assert_eq!(
            hs[1].pax,
            vec![("path".to_string(), single.as_bytes().to_vec())]
        );
        assert_eq!(hs[2].name.len(), 100);
        assert_eq!(hs[3].typeflag, b'x');
        assert_eq!(hs[3].pax[0].0, "linkpath");
        let e = entries(&data);
        assert_eq!(e[1].1, single.as_bytes());
        assert_eq!(e[2].2.as_deref(), Some(link.as_bytes()));
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        assert_eq!(pax_record("path", b"abc"), b"12 path=abc\n");
        // 9 + 1 bytes of digits crossing from one to two digits.
        let r = pax_record("k", b"");
        assert_eq!(r, b"5 k=\n");
        let v = vec![b'v'; 93];
        let r = pax_record("path", &v);
        assert_eq!(r.len(), 103);
        assert!(r.starts_with(b"103 path="));
    }

    /// The archives Solstice sends: a step bundle (through the executor's
    /// own builder) and a local tree, both with names and a link target over
    /// 100 bytes.
    fn sample_archives() -> (Vec<u8>, Vec<u8>, tempfile::TempDir) {
        let long = format!("step-1/{}", "s".repeat(120));
        let bundle = build_tar(&[
            TarFile::dir("step-1"),
            TarFile::file("step-1/wrapper.sh", b"exit 0\n".to_vec(), 0o700),
            TarFile::file(&long, b"long\n".to_vec(), 0o600),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let deep = format!("{}/{}", "d".repeat(70), "e".repeat(70));
        std::fs::create_dir_all(root.join(&deep)).unwrap();
        std::fs::write(root.join(&deep).join("f.txt"), "deep\n").unwrap();
        let name = "n".repeat(130);
        std::fs::write(root.join(&name), "one component\n").unwrap();
        std::os::unix::fs::symlink(format!("{deep}/f.txt"), root.join("link")).unwrap();
        let tree = crate::executor::checkout::local_tree_tar(&root, &[])
            .unwrap()
            .data;
        (bundle, tree, dir)
    }

    #[test]
    fn every_archive_sent_to_a_guest_is_ustar_and_pax_only() {
        let (bundle, tree, _dir) = sample_archives();
        let e = entries(&bundle);
        assert_eq!(
            e.iter().map(|x| x.1.clone()).collect::<Vec<_>>(),
            vec![
                b"step-1/".to_vec(),
                b"step-1/wrapper.sh".to_vec(),
                format!("step-1/{}", "s".repeat(120)).into_bytes()
            ]
        );
        // The long name is a pax record, not a GNU entry (headers() checks every type flag).
        assert!(
            headers(&bundle)
                .iter()
                .any(|h| h.pax.iter().any(|(k, _)| k == "path"))
        );
        let e = entries(&tree);
        let deep = format!("{}/{}/f.txt", "d".repeat(70), "e".repeat(70));
        assert!(
            e.iter().any(|x| x.1 == deep.as_bytes() && x.0 == b'0'),
            "{e:?}"
        );
        assert!(e.iter().any(|x| x.1 == "n".repeat(130).as_bytes()), "{e:?}");
        let link = e.iter().find(|x| x.1 == b"link").unwrap();
        assert_eq!(link.0, b'2');
        assert_eq!(link.2.as_deref(), Some(deep.as_bytes()));
        let hs = headers(&tree);
        assert!(
            hs.iter()
                .any(|h| h.pax.iter().any(|(k, _)| k == "linkpath"))
        );
        // A header with neither a pax record before it nor a fitting name is impossible:
        // every non-pax header's name field is at most 100 bytes by construction,
        // and each long entry above resolved to its full name through pax or prefix.
    }

    /// Runs `cmd` with `data` on stdin in `dir`; returns stdout.
    fn run(cmd: &mut std::process::Command, data: &[u8]) -> String {
        use std::io::Write;
        let mut c = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(data).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{cmd:?} warned: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn has(tool: &str) -> bool {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn gnu_tar_and_busybox_tar_unpack_them_as_the_guest_does() {
        let (bundle, tree, dir) = sample_archives();
        let deep = format!("{}/{}/f.txt", "d".repeat(70), "e".repeat(70));
        let mut tools: Vec<Vec<&str>> = vec![vec!["tar"]];
        if has("busybox") {
            tools.push(vec!["busybox", "tar"]);
        }
        if has("bsdtar") {
            tools.push(vec!["bsdtar"]);
        }
        for tool in tools {
            let listing = run(
                std::process::Command::new(tool[0])
                    .args(&tool[1..])
                    .arg("-tvf")
                    .arg("-"),
                &tree,
            );
            assert!(listing.contains(&deep), "{tool:?}: {listing}");
            // The guest's own command lines: `tar xmf -` and `tar xmof -`.
            let out = dir.path().join(format!("out-{}", tool.join("-")));
            std::fs::create_dir_all(&out).unwrap();
            for (data, flags) in [(&bundle, "xmf"), (&tree, "xmof")] {
                run(
                    std::process::Command::new(tool[0])
                        .args(&tool[1..])
                        .arg(flags)
                        .arg("-")
                        .current_dir(&out),
                    data,
                );
            }
            let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap_or_default();
            assert_eq!(read(&deep), "deep\n", "{tool:?}");
            assert_eq!(read(&"n".repeat(130)), "one component\n", "{tool:?}");
            assert_eq!(read("link"), "deep\n", "{tool:?}");
            assert_eq!(
                read(&format!("step-1/{}", "s".repeat(120))),
                "long\n",
                "{tool:?}"
            );
            assert!(!out.join("PaxHeader").exists(), "{tool:?}");
        }
    }

    #[test]
    fn huge_mtimes_are_clamped_not_base_256() {
        let mut w = ArchiveWriter::new();
        w.add(b"f", Kind::File, 0o644, u64::MAX, None, b"");
        headers(&w.finish());
    }
}
