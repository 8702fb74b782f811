//! Where a job runs: the image whose labels cover its `runs-on`.

use std::collections::BTreeMap;

use crate::config::ImageConfig;

/// The image a job runs on: the first image, in name order, whose labels
/// include **every** `runs-on` label. An empty `runs-on` matches the first
/// image. `None` when no image has all the labels.
pub fn pick_image<'a>(
    runs_on: &[String],
    images: &'a BTreeMap<String, ImageConfig>,
) -> Option<&'a ImageConfig> {
    images
        .values()
        .find(|img| runs_on.iter().all(|l| img.labels.iter().any(|il| il == l)))
}

/// Why no image fits `runs-on` (when [`pick_image`] found none), in one
/// paragraph for the task log: the labels, and for each image the labels it
/// lacks. The forge matches a job against the union of the labels this
/// runner declared, so such a job is assigned here all the same.
pub fn no_image_message(runs_on: &[String], images: &BTreeMap<String, ImageConfig>) -> String {
    let lacks: Vec<String> = images
        .values()
        .map(|img| {
            let missing: Vec<&str> = runs_on
                .iter()
                .filter(|l| !img.labels.iter().any(|il| il == *l))
                .map(String::as_str)
                .collect();
            format!("image {} lacks {}", img.name, missing.join(", "))
        })
        .collect();
    format!(
        "No image of this runner has all the labels of `runs-on: [{}]`, so the job cannot run here: {}. The forge sent the job to this runner because it declares each of these labels, but they belong to different images; give one image all of them (`labels` in its [images.<name>] section) or change the job's `runs-on`.",
        runs_on.join(", "),
        lacks.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuestOs;
    use std::time::Duration;

    fn image(name: &str, labels: &[&str]) -> ImageConfig {
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
            node: None,
        }
    }

    #[test]
    fn pick_image_needs_every_label() {
        let images = BTreeMap::from([
            ("b-small".to_string(), image("b-small", &["linux"])),
            ("a-big".to_string(), image("a-big", &["linux", "big"])),
            ("c-omni".to_string(), image("c-omni", &["illumos"])),
        ]);
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(pick_image(&l(&["linux"]), &images).unwrap().name, "a-big");
        assert_eq!(
            pick_image(&l(&["big", "linux"]), &images).unwrap().name,
            "a-big"
        );
        assert_eq!(
            pick_image(&l(&["illumos"]), &images).unwrap().name,
            "c-omni"
        );
        assert!(pick_image(&l(&["illumos", "big"]), &images).is_none());
        assert_eq!(
            no_image_message(&l(&["illumos", "big"]), &images),
            "No image of this runner has all the labels of `runs-on: [illumos, big]`, so the job cannot run here: image a-big lacks illumos; image b-small lacks illumos, big; image c-omni lacks big. The forge sent the job to this runner because it declares each of these labels, but they belong to different images; give one image all of them (`labels` in its [images.<name>] section) or change the job's `runs-on`."
        );
        assert_eq!(pick_image(&[], &images).unwrap().name, "a-big");
    }
}
