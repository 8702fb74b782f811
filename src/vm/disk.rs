//! Per-job disks: the qcow2 overlay on a read-only base image, and what
//! `qemu-img info` says about an image file.

use std::path::{Path, PathBuf};

use crate::config::ImageFormat;

/// Why the overlay could not be created.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("Base image {path} is not readable: check the image's `path`")]
    Base {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Could not run {binary}: check `qemu.img_binary`")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img could not create the job's overlay on the base image {base}: {stderr}")]
    Failed { base: PathBuf, stderr: String },
    #[error(
        "disk_size_gib = {requested} is smaller than the base image ({base_bytes} bytes): raise disk_size_gib or remove it to keep the base image's size"
    )]
    TooSmall { requested: u32, base_bytes: u64 },
    #[error(
        "Base image {path} is {}, not {declared}: {}",
        article(actual),
        format_fix(actual)
    )]
    WrongFormat {
        path: PathBuf,
        declared: &'static str,
        actual: String,
    },
    #[error("Cannot inspect the base image")]
    Probe(#[source] ProbeError),
}

/// `a raw image`, `an illumos image`…
fn article(format: &str) -> String {
    let a = if format.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{a} {format} image")
}

/// How to fix an image declared with the wrong format.
fn format_fix(actual: &str) -> String {
    match ImageFormat::from_name(actual) {
        Some(f) => format!(
            "set `format = \"{}\"` in its [images.<name>] section",
            f.as_str()
        ),
        None => "convert it with `qemu-img convert -O qcow2 IMAGE NEW.qcow2` and use the new file"
            .to_owned(),
    }
}

/// What `qemu-img info` says about an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format qemu-img detects: `qcow2`, `raw`, `vmdk`, …
    pub format: String,
    /// The size of the disk the guest sees, in bytes.
    pub virtual_size: u64,
    /// A qcow2 image's backing file, as QEMU resolves it (relative names
    /// against the image's directory).
    pub backing_file: Option<PathBuf>,
}

impl ImageInfo {
    /// The format as a value of `images.<name>.format`, if Solstice can
    /// boot it.
    pub fn known_format(&self) -> Option<ImageFormat> {
        ImageFormat::from_name(&self.format)
    }
}

/// Why an image file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("Cannot open {path}: check that it exists and that this user may read it")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Could not run {binary}: install qemu-img or set `qemu.img_binary`")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img cannot read {path} as a disk image: {stderr}")]
    Unreadable { path: PathBuf, stderr: String },
    #[error("qemu-img info gave no format and size for {path}")]
    Output { path: PathBuf },
}

/// Inspects an image file with `qemu-img info --output=json` (format
/// probed, backing chain not opened, shared locks, so an image in use by
/// running VMs can be inspected). Blocks for the few milliseconds
/// qemu-img takes.
pub fn probe_image(qemu_img: &Path, image: &Path) -> Result<ImageInfo, ProbeError> {
    std::fs::File::open(image).map_err(|source| ProbeError::Open {
        path: image.to_path_buf(),
        source,
    })?;
    let out = std::process::Command::new(qemu_img)
        .args(["info", "--output=json", "-U"])
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ProbeError::Spawn {
            binary: qemu_img.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        return Err(ProbeError::Unreadable {
            path: image.to_path_buf(),
            stderr: stderr
                .strip_prefix("qemu-img: ")
                .unwrap_or(stderr)
                .to_owned(),
        });
    }
    parse_info(&out.stdout).ok_or_else(|| ProbeError::Output {
        path: image.to_path_buf(),
    })
}

/// The parts of `qemu-img info --output=json` that matter here.
fn parse_info(json: &[u8]) -> Option<ImageInfo> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    Some(ImageInfo {
        format: text("format")?.to_owned(),
        virtual_size: v.get("virtual-size")?.as_u64()?,
        backing_file: text("full-backing-filename")
            .or_else(|| text("backing-filename"))
            .map(PathBuf::from),
    })
}

/// The `qemu-img` arguments that create `overlay` on top of `base` (which must
/// be absolute: a relative backing path resolves against the overlay's directory).
pub fn overlay_args(
    base: &Path,
    format: ImageFormat,
    overlay: &Path,
    size_gib: Option<u32>,
) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![
        "create".into(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-F".into(),
        format.as_str().into(),
        "-b".into(),
        base.into(),
        overlay.into(),
    ];
    if let Some(g) = size_gib {
        a.push(format!("{g}G").into());
    }
    a
}

/// Creates the overlay. The base path is made absolute (and checked) first;
/// the base is only ever opened read-only, by qemu-img and by QEMU.
pub async fn create_overlay(
    qemu_img: &Path,
    base: &Path,
    format: ImageFormat,
    overlay: &Path,
    size_gib: Option<u32>,
) -> Result<(), DiskError> {
    let base = std::fs::canonicalize(base)
        .and_then(|p| std::fs::File::open(&p).map(|_| p))
        .map_err(|source| DiskError::Base {
            path: base.to_path_buf(),
            source,
        })?;
    // What the file really is: a raw image declared qcow2 would fail with an
    // error about the overlay, and a qcow2 image declared raw would boot a
    // guest that finds no file system and never answers.
    let info = {
        let (q, b) = (qemu_img.to_path_buf(), base.clone());
        tokio::task::spawn_blocking(move || probe_image(&q, &b))
            .await
            .map_err(|e| DiskError::Spawn {
                binary: qemu_img.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(DiskError::Probe)?
    };
    if info.format != format.as_str() {
        return Err(DiskError::WrongFormat {
            path: base,
            declared: format.as_str(),
            actual: info.format,
        });
    }
    if let Some(gib) = size_gib {
        // qemu-img would happily make the overlay smaller than its base, and the
        // guest would then see a truncated disk and fail to boot.
        if u64::from(gib) * (1 << 30) < info.virtual_size {
            return Err(DiskError::TooSmall {
                requested: gib,
                base_bytes: info.virtual_size,
            });
        }
    }
    let out = tokio::process::Command::new(qemu_img)
        .args(overlay_args(&base, format, overlay, size_gib))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| DiskError::Spawn {
            binary: qemu_img.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::Failed {
            base,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_name_the_backing_format_and_size_only_when_asked() {
        let a = overlay_args(
            Path::new("/img/base.raw"),
            ImageFormat::Raw,
            Path::new("/j/o.qcow2"),
            None,
        );
        assert_eq!(
            a,
            [
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                "/img/base.raw",
                "/j/o.qcow2"
            ]
            .map(std::ffi::OsString::from)
        );
        let a = overlay_args(
            Path::new("/b"),
            ImageFormat::Qcow2,
            Path::new("/o"),
            Some(20),
        );
        assert_eq!(a.last().unwrap(), "20G");
    }

    /// A blank base image in `format` (`qcow2`: `base.qcow2`, `raw`:
    /// `base.img`) of `size` (qemu-img syntax) in `dir`.
    fn blank(dir: &Path, format: &str, size: &str) -> PathBuf {
        let base = dir.join(if format == "raw" {
            "base.img"
        } else {
            "base.qcow2"
        });
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", format])
            .arg(&base)
            .arg(size)
            .status()
            .unwrap();
        assert!(st.success());
        base
    }

    fn blank_qcow2(dir: &Path, size: &str) -> PathBuf {
        blank(dir, "qcow2", size)
    }

    fn blank_raw(dir: &Path, size: &str) -> PathBuf {
        blank(dir, "raw", size)
    }

    #[tokio::test]
    async fn relative_base_becomes_absolute_and_missing_base_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let base = blank_qcow2(dir.path(), "16M");
        let overlay = dir.path().join("o.qcow2");
        create_overlay(
            Path::new("qemu-img"),
            &base,
            ImageFormat::Qcow2,
            &overlay,
            None,
        )
        .await
        .unwrap();
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&overlay)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["backing-filename"], base.to_str().unwrap());
        assert_eq!(v["backing-filename-format"], "qcow2");

        let err = create_overlay(
            Path::new("qemu-img"),
            &dir.path().join("nope.qcow2"),
            ImageFormat::Qcow2,
            &dir.path().join("o2.qcow2"),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DiskError::Base { .. }), "{err:?}");
        assert!(!dir.path().join("o2.qcow2").exists());
    }

    #[tokio::test]
    async fn an_overlay_smaller_than_its_base_is_refused_and_a_bigger_one_grows() {
        let dir = tempfile::tempdir().unwrap();
        let base = blank_qcow2(dir.path(), "2G");
        let q = Path::new("qemu-img");
        let small = dir.path().join("small.qcow2");
        let err = create_overlay(q, &base, ImageFormat::Qcow2, &small, Some(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, DiskError::TooSmall { requested: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("raise disk_size_gib"), "{err}");
        assert!(!small.exists());
        let big = dir.path().join("big.qcow2");
        create_overlay(q, &base, ImageFormat::Qcow2, &big, Some(3))
            .await
            .unwrap();
        assert_eq!(probe_image(q, &big).unwrap().virtual_size, 3 << 30);
    }

    #[test]
    fn the_probe_reports_format_size_and_backing_file() {
        let dir = tempfile::tempdir().unwrap();
        let q = Path::new("qemu-img");
        let raw = blank_raw(dir.path(), "3M");
        assert_eq!(
            probe_image(q, &raw).unwrap(),
            ImageInfo {
                format: "raw".into(),
                virtual_size: 3 << 20,
                backing_file: None,
            }
        );
        let qcow2 = blank_qcow2(dir.path(), "1G");
        let info = probe_image(q, &qcow2).unwrap();
        assert_eq!(
            (info.format.as_str(), info.virtual_size),
            ("qcow2", 1 << 30)
        );
        assert_eq!(info.known_format(), Some(ImageFormat::Qcow2));
        // A relative backing file is resolved against the image's directory.
        let child = dir.path().join("child.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                "base.qcow2",
            ])
            .arg(&child)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(probe_image(q, &child).unwrap().backing_file, Some(qcow2));

        // Not a disk image qemu-img can read: a truncated qcow2 header.
        let broken = dir.path().join("broken.qcow2");
        std::fs::write(&broken, b"QFI\xfb\x00\x00\x00\x03garbage").unwrap();
        let e = probe_image(q, &broken).unwrap_err();
        assert!(matches!(e, ProbeError::Unreadable { .. }), "{e:?}");
        assert!(e.to_string().contains(&broken.display().to_string()), "{e}");
        let e = probe_image(q, &dir.path().join("nope")).unwrap_err();
        assert!(matches!(e, ProbeError::Open { .. }), "{e:?}");
        let e = probe_image(Path::new("/nonexistent/qemu-img"), &raw).unwrap_err();
        assert!(matches!(e, ProbeError::Spawn { .. }), "{e:?}");
        // The one-line form (doctor's) keeps the cause.
        let line = crate::errors::Chain(&e).to_string();
        assert!(line.contains("No such file or directory"), "{line}");
        assert_eq!(probe_image(q, &raw).unwrap().format, "raw");
    }

    #[tokio::test]
    async fn a_wrongly_declared_format_names_the_base_image_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let q = Path::new("qemu-img");
        let raw = blank_raw(dir.path(), "16M");
        let overlay = dir.path().join("o.qcow2");
        // Declared qcow2 (the default), really raw: qemu-img's own error
        // would be about the temporary overlay.
        let e = create_overlay(q, &raw, ImageFormat::Qcow2, &overlay, None)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Base image {} is a raw image, not qcow2: set `format = \"raw\"` in its [images.<name>] section",
                raw.display()
            )
        );
        assert!(!overlay.exists());
        // Declared raw, really qcow2: qemu-img would accept it, and the guest
        // would find no file system.
        let qcow2 = blank_qcow2(dir.path(), "16M");
        let e = create_overlay(q, &qcow2, ImageFormat::Raw, &overlay, None)
            .await
            .unwrap_err();
        assert!(
            e.to_string().ends_with(
                "is a qcow2 image, not raw: set `format = \"qcow2\"` in its [images.<name>] section"
            ),
            "{e}"
        );
        assert!(!overlay.exists());
        create_overlay(q, &raw, ImageFormat::Raw, &overlay, None)
            .await
            .unwrap();
    }
}
