//! Where a job runs: its `runs-on` labels ([`runs_on_labels`]) and the image
//! they choose ([`choose_image`]). One rule for `solstice exec`, the daemon
//! and `solstice bench`; what each does when the labels do not settle it is
//! the explicit [`Fallback`].
//!
//! The rule: an image named explicitly (`--image`) wins; otherwise the first
//! image, in name order, whose labels include **every** `runs-on` label.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::ImageConfig;
use crate::workflow::expr::{Contexts, ExprError, interpolate};
use crate::workflow::{Combination, Job};

/// Where the `runs-on` value comes from.
#[derive(Debug, Clone, Copy)]
pub enum RunsOnSource<'a> {
    /// As written in a workflow file, for this matrix combination:
    /// `${{ matrix.* }}` is evaluated here (an expression may yield a JSON
    /// list of labels), and a value that is not a label, a list or a mapping
    /// with `labels` is an error.
    Workflow(&'a Combination),
    /// As a forge sent it, already evaluated: taken as it is; a value of
    /// another shape, and labels that are only white space, are left out.
    Evaluated,
}

/// Why `runs-on` gives no labels.
#[derive(Debug, thiserror::Error)]
pub enum RunsOnError {
    #[error("`runs-on` must be a label or a list of labels")]
    NotLabels,
    #[error("runs-on: {0}")]
    Expression(ExprError),
}

/// The strings of a label or a list of labels (`None` for another shape).
fn label_list(v: &serde_norway::Value) -> Option<Vec<String>> {
    use serde_norway::Value as Y;
    match v {
        Y::String(s) => Some(vec![s.clone()]),
        Y::Sequence(items) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

/// The labels as written: a label, a list, or a mapping with `labels`
/// (`None` for another shape).
fn raw_labels(v: &serde_norway::Value) -> Option<Vec<String>> {
    match v {
        serde_norway::Value::Mapping(m) => {
            Some(m.get("labels").and_then(label_list).unwrap_or_default())
        }
        other => label_list(other),
    }
}

/// The job's `runs-on` labels (empty without `runs-on`).
pub fn runs_on_labels(
    runs_on: Option<&serde_norway::Value>,
    source: RunsOnSource<'_>,
) -> Result<Vec<String>, RunsOnError> {
    let Some(v) = runs_on else {
        return Ok(Vec::new());
    };
    match source {
        RunsOnSource::Evaluated => {
            let mut out = raw_labels(v).unwrap_or_default();
            out.retain(|l| !l.trim().is_empty());
            Ok(out)
        }
        RunsOnSource::Workflow(combo) => {
            let raw = raw_labels(v).ok_or(RunsOnError::NotLabels)?;
            let mut ctx = Contexts::default();
            ctx.values.insert(
                "matrix".into(),
                Value::Object(combo.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            );
            let mut out = Vec::new();
            for label in raw {
                let value = interpolate(&label, &ctx).map_err(RunsOnError::Expression)?;
                // An expression may yield a JSON list of labels.
                match serde_json::from_str::<Value>(&value) {
                    Ok(Value::Array(items)) => {
                        out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_string)))
                    }
                    _ => out.push(value),
                }
            }
            out.retain(|l| !l.is_empty());
            Ok(out)
        }
    }
}

/// What happens when the labels do not choose an image. Each caller has the
/// policy its users expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `solstice exec`: a local run of any workflow. Without labels, or when
    /// no image has them all, the only image runs the job (saying so when
    /// labels did not match); with several images, it is an error that asks
    /// for `--image`.
    OnlyImage,
    /// `solstice run`: the forge assigned the job because this runner
    /// declared each of its labels. Without labels, the first image runs it;
    /// when no image has them all, the job fails and says which image lacks
    /// which label.
    Assigned,
    /// `solstice bench`: a built-in job without labels. The only image, else
    /// the image named `tiny`.
    Bench,
}

/// The image chosen for a job.
#[derive(Debug, Clone)]
pub struct Placed<'a> {
    pub image: &'a ImageConfig,
    /// A remark for the user when the fallback chose the image although the
    /// labels did not ([`Fallback::OnlyImage`]).
    pub notice: Option<String>,
}

/// Why no image runs the job. The messages are shown as they are (`exec`
/// and `bench` prefix `error: `; the daemon writes them into the task log).
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// `--image NAME` names no image.
    #[error("no image named `{name}` in the configuration{}", .images.as_ref().map(|i| format!(" (images: {i})")).unwrap_or_default())]
    UnknownImage {
        name: String,
        /// The configured images, comma-separated (`None`: not listed).
        images: Option<String>,
    },
    /// No labels, several images, no `--image` (`exec`).
    #[error(
        "the job has no `runs-on` labels and there are several images; pick one with --image ({images})"
    )]
    NoLabels { images: String },
    /// No image has every label (`exec`, `bench`).
    #[error(
        "no image has all the labels of `runs-on: [{}]`; images: {offered}; use --image NAME or add labels to an image",
        .labels.join(", ")
    )]
    NoMatch {
        labels: Vec<String>,
        /// `name [label, …]` of each image, `; `-separated.
        offered: String,
    },
    /// No image has every label of a job the forge assigned (the daemon).
    #[error(
        "No image of this runner has all the labels of `runs-on: [{}]`, so the job cannot run here: {lacks}. The forge sent the job to this runner because it declares each of these labels, but they belong to different images; give one image all of them (`labels` in its [images.<name>] section) or change the job's `runs-on`.",
        .labels.join(", ")
    )]
    NotHere {
        labels: Vec<String>,
        /// `image NAME lacks L, …` for each image, `; `-separated.
        lacks: String,
    },
    /// Several images, none named `tiny`, no `--image` (`bench`).
    #[error("several images are configured: pick one with --image NAME")]
    SeveralImages,
    #[error(transparent)]
    RunsOn(#[from] RunsOnError),
}

/// The notice of [`Fallback::OnlyImage`] when the labels matched no image.
fn only_image_notice(labels: &[String], image: &ImageConfig) -> String {
    format!(
        "no image has all the labels of `runs-on: [{}]`; using the only image `{}` (--image picks one)",
        labels.join(", "),
        image.name
    )
}

fn has_all(image: &ImageConfig, labels: &[String]) -> bool {
    labels.iter().all(|l| image.labels.iter().any(|il| il == l))
}

fn only(images: &BTreeMap<String, ImageConfig>) -> Option<&ImageConfig> {
    match images.len() {
        1 => images.values().next(),
        _ => None,
    }
}

/// Chooses the image for a job with `labels` (see the module documentation):
/// `explicit` (an image name) wins, then the first image in name order with
/// every label, then `fallback`.
pub fn choose_image<'a>(
    images: &'a BTreeMap<String, ImageConfig>,
    explicit: Option<&str>,
    labels: &[String],
    fallback: Fallback,
) -> Result<Placed<'a>, PlacementError> {
    let names = || images.keys().cloned().collect::<Vec<_>>().join(", ");
    let placed = |image| {
        Ok(Placed {
            image,
            notice: None,
        })
    };
    if let Some(name) = explicit {
        return match images.get(name) {
            Some(image) => placed(image),
            None => Err(PlacementError::UnknownImage {
                name: name.to_string(),
                images: (fallback != Fallback::Bench).then(names),
            }),
        };
    }
    if labels.is_empty() {
        return match fallback {
            Fallback::OnlyImage => only(images)
                .map_or_else(|| Err(PlacementError::NoLabels { images: names() }), placed),
            Fallback::Assigned => images
                .values()
                .next()
                .map_or_else(|| Err(not_here(labels, images)), placed),
            Fallback::Bench => only(images)
                .or_else(|| images.get("tiny"))
                .map_or(Err(PlacementError::SeveralImages), placed),
        };
    }
    if let Some(image) = images.values().find(|i| has_all(i, labels)) {
        return placed(image);
    }
    match fallback {
        Fallback::OnlyImage if images.len() == 1 => match images.values().next() {
            Some(image) => Ok(Placed {
                image,
                notice: Some(only_image_notice(labels, image)),
            }),
            None => Err(no_match(labels, images)),
        },
        Fallback::OnlyImage | Fallback::Bench => Err(no_match(labels, images)),
        Fallback::Assigned => Err(not_here(labels, images)),
    }
}

/// The image for one matrix combination of a workflow's job, as
/// `solstice exec` runs it: `explicit` (`--image`), else the job's
/// `runs-on` ([`RunsOnSource::Workflow`]) with [`Fallback::OnlyImage`].
pub fn place_workflow_job<'a>(
    images: &'a BTreeMap<String, ImageConfig>,
    explicit: Option<&str>,
    job: &Job,
    combo: &Combination,
) -> Result<Placed<'a>, PlacementError> {
    let labels = match explicit {
        Some(_) => Vec::new(),
        None => runs_on_labels(job.runs_on.as_ref(), RunsOnSource::Workflow(combo))?,
    };
    choose_image(images, explicit, &labels, Fallback::OnlyImage)
}

fn no_match(labels: &[String], images: &BTreeMap<String, ImageConfig>) -> PlacementError {
    PlacementError::NoMatch {
        labels: labels.to_vec(),
        offered: images
            .values()
            .map(|i| format!("{} [{}]", i.name, i.labels.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// For each image, the labels it lacks.
fn not_here(labels: &[String], images: &BTreeMap<String, ImageConfig>) -> PlacementError {
    let lacks: Vec<String> = images
        .values()
        .map(|img| {
            let missing: Vec<&str> = labels
                .iter()
                .filter(|l| !img.labels.iter().any(|il| il == *l))
                .map(String::as_str)
                .collect();
            format!("image {} lacks {}", img.name, missing.join(", "))
        })
        .collect();
    PlacementError::NotHere {
        labels: labels.to_vec(),
        lacks: lacks.join("; "),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::GuestOs;
    use std::time::Duration;

    pub(crate) fn image(name: &str, labels: &[&str]) -> ImageConfig {
        ImageConfig {
            name: name.into(),
            path: "/img".into(),
            format: crate::config::ImageFormat::Qcow2,
            os: GuestOs::Illumos,
            firmware: crate::config::Firmware::Bios,
            vcpus: 1,
            memory_mib: 512,
            disk_size_gib: None,
            ssh_user: "u".into(),
            seed: crate::config::SeedKind::NoCloud,
            boot_timeout: Duration::from_secs(60),
            readiness_probes: 1,
            readiness_probe_interval: Duration::from_secs(1),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            max_concurrent_jobs: None,
            cpu: None,
            path_prepend: vec![],
            network: crate::config::NetworkMode::Outbound,
            network_deny: vec![],
            network_allow: vec![],
            registry_mirror: None,
            warm: 0,
            warm_max_idle: std::time::Duration::from_secs(3600),
            snapshot: false,
            node: None,
        }
    }

    fn images(list: &[(&str, &[&str])]) -> BTreeMap<String, ImageConfig> {
        list.iter()
            .map(|(n, l)| (n.to_string(), image(n, l)))
            .collect()
    }

    fn l(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn three() -> BTreeMap<String, ImageConfig> {
        images(&[
            ("b-small", &["linux"]),
            ("a-big", &["linux", "big"]),
            ("c-omni", &["illumos"]),
        ])
    }

    fn pick(
        images: &BTreeMap<String, ImageConfig>,
        explicit: Option<&str>,
        labels: &[&str],
        fallback: Fallback,
    ) -> Result<(String, Option<String>), String> {
        choose_image(images, explicit, &l(labels), fallback)
            .map(|p| (p.image.name.clone(), p.notice))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_label_must_match_for_every_caller() {
        let images = three();
        for fb in [Fallback::OnlyImage, Fallback::Assigned, Fallback::Bench] {
            let name = |labels: &[&str]| pick(&images, None, labels, fb).unwrap().0;
            assert_eq!(name(&["linux"]), "a-big", "{fb:?}");
            assert_eq!(name(&["big", "linux"]), "a-big", "{fb:?}");
            assert_eq!(name(&["illumos"]), "c-omni", "{fb:?}");
            assert_eq!(
                pick(&images, Some("b-small"), &["illumos"], fb).unwrap().0,
                "b-small"
            );
        }
    }

    #[test]
    fn the_daemon_fails_a_job_no_image_fits() {
        let images = three();
        assert_eq!(
            pick(&images, None, &["illumos", "big"], Fallback::Assigned).unwrap_err(),
            "No image of this runner has all the labels of `runs-on: [illumos, big]`, so the job cannot run here: image a-big lacks illumos; image b-small lacks illumos, big; image c-omni lacks big. The forge sent the job to this runner because it declares each of these labels, but they belong to different images; give one image all of them (`labels` in its [images.<name>] section) or change the job's `runs-on`."
        );
        // Without labels: the first image.
        assert_eq!(
            pick(&images, None, &[], Fallback::Assigned).unwrap().0,
            "a-big"
        );
        // Even with one image, labels it lacks fail the job.
        let one = images_one();
        assert!(
            pick(&one, None, &["windows"], Fallback::Assigned)
                .unwrap_err()
                .contains("image tiny lacks windows")
        );
    }

    fn images_one() -> BTreeMap<String, ImageConfig> {
        images(&[("tiny", &["tiny"])])
    }

    #[test]
    fn exec_falls_back_to_the_only_image() {
        let one = images_one();
        assert_eq!(
            pick(&one, None, &[], Fallback::OnlyImage).unwrap(),
            ("tiny".to_string(), None)
        );
        assert_eq!(
            pick(&one, None, &["self-hosted", "windows"], Fallback::OnlyImage).unwrap(),
            (
                "tiny".to_string(),
                Some(
                    "no image has all the labels of `runs-on: [self-hosted, windows]`; using the only image `tiny` (--image picks one)"
                        .to_string()
                )
            )
        );
        let images = three();
        assert_eq!(
            pick(&images, None, &[], Fallback::OnlyImage).unwrap_err(),
            "the job has no `runs-on` labels and there are several images; pick one with --image (a-big, b-small, c-omni)"
        );
        assert_eq!(
            pick(&images, None, &["windows"], Fallback::OnlyImage).unwrap_err(),
            "no image has all the labels of `runs-on: [windows]`; images: a-big [linux, big]; b-small [linux]; c-omni [illumos]; use --image NAME or add labels to an image"
        );
        assert_eq!(
            pick(&images, Some("nope"), &[], Fallback::OnlyImage).unwrap_err(),
            "no image named `nope` in the configuration (images: a-big, b-small, c-omni)"
        );
    }

    #[test]
    fn bench_takes_the_only_image_else_tiny() {
        let one = images(&[("deb", &["debian"])]);
        assert_eq!(pick(&one, None, &[], Fallback::Bench).unwrap().0, "deb");
        let two = images(&[("deb", &["debian"]), ("tiny", &["tiny"])]);
        assert_eq!(pick(&two, None, &[], Fallback::Bench).unwrap().0, "tiny");
        assert_eq!(
            pick(&three(), None, &[], Fallback::Bench).unwrap_err(),
            "several images are configured: pick one with --image NAME"
        );
        assert_eq!(
            pick(&two, Some("nope"), &[], Fallback::Bench).unwrap_err(),
            "no image named `nope` in the configuration"
        );
    }

    fn yaml(s: &str) -> serde_norway::Value {
        serde_norway::from_str(s).unwrap()
    }

    #[test]
    fn runs_on_as_written_in_a_workflow() {
        let combo: Combination = [
            ("os".to_string(), serde_json::json!("linux")),
            ("set".to_string(), serde_json::json!("[\"a\", \"b\"]")),
        ]
        .into_iter()
        .collect();
        let w = RunsOnSource::Workflow(&combo);
        let labels = |s: &str| runs_on_labels(Some(&yaml(s)), w).map_err(|e| e.to_string());
        assert_eq!(labels("tiny").unwrap(), ["tiny"]);
        assert_eq!(
            labels("[self-hosted, '${{ matrix.os }}']").unwrap(),
            ["self-hosted", "linux"]
        );
        assert_eq!(labels("labels: [a, b]").unwrap(), ["a", "b"]);
        assert_eq!(labels("labels: a").unwrap(), ["a"]);
        assert_eq!(labels("group: g").unwrap(), Vec::<String>::new());
        assert_eq!(labels("'${{ matrix.set }}'").unwrap(), ["a", "b"]);
        assert_eq!(labels("['', x]").unwrap(), ["x"]);
        assert_eq!(labels("[' ', x]").unwrap(), [" ", "x"]);
        assert_eq!(
            labels("5").unwrap_err(),
            "`runs-on` must be a label or a list of labels"
        );
        assert!(
            labels("'${{ matrix.os'")
                .unwrap_err()
                .starts_with("runs-on: ")
        );
        assert_eq!(runs_on_labels(None, w).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn runs_on_as_a_forge_evaluated_it() {
        let e = RunsOnSource::Evaluated;
        let labels = |s: &str| runs_on_labels(Some(&yaml(s)), e).unwrap();
        assert_eq!(labels("[linux, big]"), ["linux", "big"]);
        assert_eq!(labels("linux"), ["linux"]);
        assert_eq!(labels("labels: [a, b]"), ["a", "b"]);
        assert_eq!(labels("[' ', x]"), ["x"]);
        assert_eq!(labels("5"), Vec::<String>::new());
        // Taken as it is: nothing is evaluated.
        assert_eq!(labels("'${{ matrix.os }}'"), ["${{ matrix.os }}"]);
        assert_eq!(runs_on_labels(None, e).unwrap(), Vec::<String>::new());
    }
}
