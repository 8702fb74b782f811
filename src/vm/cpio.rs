//! A cpio writer for the illumos metadata-agent's generic (QEMU) provider.
//!
//! The agent (illumos/metadata-agent, `src/provider/generic.rs`) scans
//! `/dev/rdsk/*p0`, reads the first 512 bytes of each disk and accepts it only
//! if it starts with the binary cpio magic (`0xC7 0x71`) or the ASCII magic
//! `070707`; it then extracts it with illumos `cpio -i`. It does **not**
//! recognise the SVR4 "newc" magic `070701`, so this writer emits the POSIX.1
//! portable ASCII ("odc", magic `070707`) format instead. The archive is
//! padded with zeros to a multiple of 512 bytes, so the agent's 512-byte read
//! always succeeds; [`pad_disk`] pads it further into a whole disk image.
//!
//! The agent ignores the mode of `firstboot.sh` (it copies the script's text
//! to a root-only 0700 file of its own), but the archive still marks it
//! executable, so a plain `cpio -i` of the seed gives a runnable script.

/// Magic of the portable ASCII (odc) cpio format.
pub const MAGIC: &[u8; 6] = b"070707";
const TRAILER: &str = "TRAILER!!!";
/// Largest file size an odc header can state (11 octal digits).
const MAX_SIZE: u64 = 0o77777777777;

/// One regular file in the archive, owned by root.
#[derive(Debug, Clone)]
pub struct CpioFile<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
    /// Permission bits (for example `0o644`, or `0o755` for a script).
    pub perm: u32,
}

/// Builds an odc cpio archive of regular files, padded to 512 bytes.
///
/// Seed files are tiny; sizes above the format's 8 GiB limit are clamped in
/// the header (and caught by a debug assertion).
pub fn build(files: &[CpioFile<'_>], mtime: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        debug_assert!((f.contents.len() as u64) <= MAX_SIZE);
        header(
            &mut out,
            i as u64 + 1,
            0o100000 | u64::from(f.perm & 0o7777),
            1,
            mtime,
            f.name,
            f.contents.len() as u64,
        );
        out.extend_from_slice(f.contents);
    }
    header(&mut out, 0, 0, 1, 0, TRAILER, 0);
    let padded = out.len().div_ceil(512) * 512;
    out.resize(padded, 0);
    out
}

/// Pads `archive` with zeros to a disk of at least `min_len` bytes and a
/// whole number of 512-byte sectors. The zeros come after the trailer, where
/// every cpio reader has stopped.
pub fn pad_disk(archive: &mut Vec<u8>, min_len: usize) {
    let len = archive.len().max(min_len).div_ceil(512) * 512;
    archive.resize(len, 0);
}

fn header(out: &mut Vec<u8>, ino: u64, mode: u64, nlink: u64, mtime: u64, name: &str, size: u64) {
    let h = format!(
        "070707{:06o}{:06o}{:06o}{:06o}{:06o}{:06o}{:06o}{:011o}{:06o}{:011o}",
        0,
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        mtime & MAX_SIZE,
        name.len() + 1,
        size.min(MAX_SIZE),
    );
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        build(
            &[
                CpioFile {
                    name: "authorized_keys",
                    contents: b"ssh-ed25519 AAAA test\n",
                    perm: 0o644,
                },
                CpioFile {
                    name: "nodename",
                    contents: b"job-1\n",
                    perm: 0o755,
                },
            ],
            1_700_000_000,
        )
    }

    #[test]
    fn starts_with_the_magic_the_agent_detects_and_is_padded() {
        let a = sample();
        assert_eq!(&a[..6], MAGIC);
        assert_eq!(a.len() % 512, 0);
        assert!(a.len() >= 512);
        let header_len = 76;
        assert_eq!(&a[header_len..header_len + 16], b"authorized_keys\0");
        assert!(a.windows(11).any(|w| w == b"TRAILER!!!\0"));
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .expect("cpio must be installed (apt-get install cpio)");
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(dir.path().join("authorized_keys")).unwrap(),
            b"ssh-ed25519 AAAA test\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("nodename")).unwrap(),
            b"job-1\n"
        );

        let mut child = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "authorized_keys\nnodename\n"
        );
    }

    #[test]
    fn a_padded_disk_keeps_the_archive_and_its_modes() {
        let archive = sample();
        let mut disk = archive.clone();
        pad_disk(&mut disk, 1 << 20);
        assert_eq!(disk.len(), 1 << 20);
        assert_eq!(&disk[..archive.len()], &archive[..]);
        assert!(disk[archive.len()..].iter().all(|b| *b == 0));
        // Never shorter than the archive, always whole sectors.
        let mut odd = vec![1u8; 1000];
        pad_disk(&mut odd, 700);
        assert_eq!(odd.len(), 1024);

        // Read from a file, as the agent reads the device: cpio stops at the
        // trailer and never reads the padding.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &disk).unwrap();
        let out = Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-I"])
            .arg(file.path())
            .output()
            .expect("cpio must be installed (apt-get install cpio)");
        assert!(out.status.success(), "{out:?}");
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 2, "{listing}");
        assert!(
            lines[0].starts_with("-rw-r--r--") && lines[0].ends_with(" authorized_keys"),
            "{listing}"
        );
        assert!(
            lines[1].starts_with("-rwxr-xr-x") && lines[1].ends_with(" nodename"),
            "{listing}"
        );
    }
}
