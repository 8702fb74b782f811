//! Per-job disks: the qcow2 overlay on a read-only base image.

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
    #[error("qemu-img could not create the overlay: {stderr}")]
    Failed { stderr: String },
    #[error(
        "disk_size_gib = {requested} is smaller than the base image ({base_bytes} bytes): raise disk_size_gib or remove it to keep the base image's size"
    )]
    TooSmall { requested: u32, base_bytes: u64 },
    #[error("qemu-img could not read the base image's size: {0}")]
    Info(String),
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
    if let Some(gib) = size_gib {
        // qemu-img would happily make the overlay smaller than its base, and the
        // guest would then see a truncated disk and fail to boot.
        let base_bytes = virtual_size(qemu_img, &base, format).await?;
        if u64::from(gib) * (1 << 30) < base_bytes {
            return Err(DiskError::TooSmall {
                requested: gib,
                base_bytes,
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
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The virtual size of an image in bytes, from `qemu-img info --output=json`.
async fn virtual_size(
    qemu_img: &Path,
    image: &Path,
    format: ImageFormat,
) -> Result<u64, DiskError> {
    let out = tokio::process::Command::new(qemu_img)
        .args(["info", "--output=json", "-f", format.as_str()])
        .arg(image)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| DiskError::Spawn {
            binary: qemu_img.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::Info(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.get("virtual-size").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| DiskError::Info("no virtual-size in its output".into()))
}

/// What `qemu-img info` says about an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `qcow2`, `raw`, …
    pub format: String,
    /// Bytes the guest sees.
    pub virtual_size: u64,
}

/// Probes an image with `qemu-img info --output=json` (`-U`: VMs may have it open).
pub fn image_info(img_binary: &Path, path: &Path) -> Result<ImageInfo, String> {
    let out = std::process::Command::new(img_binary)
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", img_binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img info failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cannot read qemu-img's answer: {e}"))?;
    Ok(ImageInfo {
        format: v["format"].as_str().unwrap_or("unknown").to_string(),
        virtual_size: v["virtual-size"].as_u64().unwrap_or(0),
    })
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

    /// A blank qcow2 base image of `size` (qemu-img syntax) in `dir`.
    fn blank_qcow2(dir: &Path, size: &str) -> PathBuf {
        let base = dir.join("base.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg(size)
            .status()
            .unwrap();
        assert!(st.success());
        base
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
        assert_eq!(
            virtual_size(q, &big, ImageFormat::Qcow2).await.unwrap(),
            3 << 30
        );
    }
}
