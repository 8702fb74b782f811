//! The masking emitter: the single exit for the executor's events.

use std::sync::Mutex;

use super::mask::Masker;
use crate::events::{EventSink, JobEvent, LineKind};

/// The single exit for events: masks every text before the sink sees it.
pub(super) struct Emitter<'a> {
    pub(super) sink: &'a dyn EventSink,
    pub(super) masker: Mutex<Masker>,
}

impl Emitter<'_> {
    pub(super) fn mask(&self, s: &str) -> String {
        match self.masker.lock() {
            Ok(m) => m.mask(s),
            Err(p) => p.into_inner().mask(s),
        }
    }

    /// Where a too-long line may be cut without splitting a secret.
    pub(super) fn safe_cut(&self, piece: &[u8]) -> usize {
        match self.masker.lock() {
            Ok(m) => m.safe_cut(piece),
            Err(p) => p.into_inner().safe_cut(piece),
        }
    }

    pub(super) fn add_mask(&self, value: &str) {
        match self.masker.lock() {
            Ok(mut m) => m.add(value),
            Err(p) => p.into_inner().add(value),
        }
    }

    pub(super) fn contains_secret(&self, s: &str) -> bool {
        match self.masker.lock() {
            Ok(m) => m.contains_secret(s),
            Err(p) => p.into_inner().contains_secret(s),
        }
    }

    pub(super) fn emit(&self, event: JobEvent) {
        let event = match event {
            JobEvent::Line { step, kind, text } => JobEvent::Line {
                step,
                kind,
                text: self.mask(&text),
            },
            JobEvent::StepStarted { index, name } => JobEvent::StepStarted {
                index,
                name: self.mask(&name),
            },
            JobEvent::StepSummary { index, markdown } => JobEvent::StepSummary {
                index,
                markdown: self.mask(&markdown),
            },
            JobEvent::Phase { phase, detail } => JobEvent::Phase {
                phase,
                detail: self.mask(&detail),
            },
            other => other,
        };
        self.sink.emit(event);
    }

    pub(super) fn line(&self, step: Option<usize>, kind: LineKind, text: impl Into<String>) {
        for l in text.into().split('\n') {
            self.emit(JobEvent::Line {
                step,
                kind: kind.clone(),
                text: l.to_string(),
            });
        }
    }

    pub(super) fn runner(&self, step: Option<usize>, text: impl Into<String>) {
        self.line(step, LineKind::Runner, text);
    }

    pub(super) fn error(&self, step: Option<usize>, text: impl Into<String>) {
        self.line(step, LineKind::Annotation("error".into()), text);
    }
}
