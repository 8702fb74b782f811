//! An event sink that keeps every event in memory, for tests and benchmarks.

use crate::events::{EventSink, JobEvent};

/// Collects events in memory (tests, benchmarks).
#[derive(Default)]
pub struct VecSink(pub std::sync::Mutex<Vec<JobEvent>>);

impl EventSink for VecSink {
    fn emit(&self, event: JobEvent) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}

impl VecSink {
    pub fn events(&self) -> Vec<JobEvent> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Line texts of step `index` (0-based), in order.
    pub fn step_lines(&self, index: usize) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                JobEvent::Line {
                    step: Some(i),
                    text,
                    ..
                } if i == index => Some(text),
                _ => None,
            })
            .collect()
    }

    /// Every text the job produced (lines, step names, summaries, progress),
    /// one per line, for `contains` checks.
    pub fn all_text(&self) -> String {
        let mut out = String::new();
        for e in self.events() {
            match e {
                JobEvent::Line { text, .. } => out.push_str(&text),
                JobEvent::StepStarted { name, .. } => out.push_str(&name),
                JobEvent::StepSummary { markdown, .. } => out.push_str(&markdown),
                JobEvent::Phase { detail, .. } => out.push_str(&detail),
                _ => continue,
            }
            out.push('\n');
        }
        out
    }

    /// All line texts, in order.
    pub fn lines(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                JobEvent::Line { text, .. } => Some(text),
                _ => None,
            })
            .collect()
    }
}
