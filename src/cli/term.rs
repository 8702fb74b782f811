//! The terminal sink of `solstice exec`: step headers, live output, per-step
//! result and duration, and a final summary. Lines arrive already masked.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use crate::events::{Conclusion, EventSink, JobEvent, LineKind};
use crate::human::fmt_duration;

/// Prints job events to stdout as they happen.
pub struct TerminalSink {
    color: bool,
    state: Mutex<TermState>,
}

/// (outcome, conclusion, duration) of a finished step.
type StepResult = (Conclusion, Conclusion, Duration);

#[derive(Default)]
struct TermState {
    /// Step display names by index, for the summary.
    steps: Vec<(String, Option<StepResult>)>,
    group_depth: usize,
    /// The job's conclusion and step time, from `JobFinished`; the summary
    /// waits for [`TerminalSink::finish_job`], which knows the wall time.
    finished: Option<(Conclusion, Duration)>,
}

impl TerminalSink {
    pub fn new() -> Self {
        Self::with_color(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }

    pub fn with_color(color: bool) -> Self {
        Self {
            color,
            state: Mutex::new(TermState::default()),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Renders one event to the text that is printed (without the final newline).
    /// Returns `None` when the event prints nothing.
    pub fn render(&self, event: &JobEvent) -> Option<String> {
        let mut st = self.state.lock().ok()?;
        match event {
            JobEvent::Phase { phase, detail } => {
                let what = phase.name();
                Some(self.paint("2", &format!("[solstice] {what}: {detail}")))
            }
            JobEvent::StepStarted { index, name } => {
                if st.steps.len() <= *index {
                    st.steps.resize(*index + 1, (String::new(), None));
                }
                st.steps[*index].0 = name.clone();
                st.group_depth = 0;
                Some(self.paint("1;36", &format!("==> Step {}: {name}", index + 1)))
            }
            JobEvent::Line { kind, text, .. } => {
                let indent = "  ".repeat(st.group_depth);
                let line = match kind {
                    LineKind::Stdout => format!("{indent}{text}"),
                    LineKind::Stderr => format!("{indent}{text}"),
                    LineKind::Debug => self.paint("2", &format!("{indent}debug: {text}")),
                    LineKind::Annotation(level) => {
                        let code = match level.as_str() {
                            "error" => "31",
                            "warning" => "33",
                            _ => "34",
                        };
                        self.paint(code, &format!("{indent}{level}: {text}"))
                    }
                    LineKind::GroupStart => {
                        st.group_depth += 1;
                        self.paint("1", &format!("{indent}▸ {text}"))
                    }
                    LineKind::GroupEnd => {
                        st.group_depth = st.group_depth.saturating_sub(1);
                        return None;
                    }
                    LineKind::Runner => self.paint("2", &format!("[solstice] {text}")),
                };
                Some(line)
            }
            JobEvent::StepFinished {
                index,
                outcome,
                conclusion,
                duration,
            } => {
                if st.steps.len() <= *index {
                    st.steps.resize(*index + 1, (String::new(), None));
                }
                st.steps[*index].1 = Some((*outcome, *conclusion, *duration));
                st.group_depth = 0;
                let name = st.steps[*index].0.clone();
                Some(self.step_line(*index, &name, *outcome, *conclusion, *duration))
            }
            JobEvent::StepSummary { index, markdown } => {
                let mut out = self.paint("1", &format!("--- Step {} summary ---", index + 1));
                for l in markdown.lines() {
                    out.push('\n');
                    out.push_str(l);
                }
                Some(out)
            }
            JobEvent::JobFinished {
                conclusion,
                duration,
            } => {
                st.finished = Some((*conclusion, *duration));
                None
            }
        }
    }

    /// The summary of the job whose `JobFinished` was seen, ending with the
    /// verdict, its step time and `wall`, the time the whole run took (VM
    /// start, boot, steps and teardown): `Job failed in 6.34s (25.1s with
    /// the VM's boot and teardown)`. Forgets the job, so that the next
    /// matrix combination starts afresh. `None` if no job finished.
    pub fn finish_job(&self, wall: Duration) -> Option<String> {
        let mut st = self.state.lock().ok()?;
        let state = std::mem::take(&mut *st);
        let (conclusion, duration) = state.finished?;
        Some(self.summary(&state.steps, conclusion, duration, wall))
    }

    /// Prints [`TerminalSink::finish_job`]'s summary to stdout.
    pub fn print_finish(&self, wall: Duration) {
        if let Some(text) = self.finish_job(wall) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }

    fn summary(
        &self,
        steps: &[(String, Option<StepResult>)],
        conclusion: Conclusion,
        duration: Duration,
        wall: Duration,
    ) -> String {
        let mut out = String::from("\nSummary:");
        for (i, (name, res)) in steps.iter().enumerate() {
            out.push('\n');
            match res {
                Some((o, c, d)) => {
                    out.push_str(&format!("  {}", self.step_line(i, name, *o, *c, *d)))
                }
                None => out.push_str(&format!("  - Step {}: {name} (not finished)", i + 1)),
            }
        }
        let verdict = match conclusion {
            Conclusion::Success => self.paint("1;32", "Job succeeded"),
            Conclusion::Failure => self.paint("1;31", "Job failed"),
            Conclusion::Cancelled => self.paint("1;33", "Job cancelled"),
            Conclusion::Skipped => self.paint("1", "Job skipped"),
        };
        out.push_str(&format!(
            "\n{verdict} in {} ({} with the VM's boot and teardown)",
            fmt_duration(duration),
            super::status::human(Some(wall))
        ));
        out
    }

    fn step_line(
        &self,
        index: usize,
        name: &str,
        outcome: Conclusion,
        conclusion: Conclusion,
        duration: Duration,
    ) -> String {
        let (mark, code) = match conclusion {
            Conclusion::Success if outcome == Conclusion::Failure => ("✓", "33"),
            Conclusion::Success => ("✓", "32"),
            Conclusion::Failure => ("✗", "31"),
            Conclusion::Cancelled => ("⊘", "33"),
            Conclusion::Skipped => ("-", "2"),
        };
        let mut text = format!("{mark} Step {}: {name}: {}", index + 1, conclusion.as_str());
        if outcome != conclusion {
            text.push_str(&format!(
                " (outcome {}, continue-on-error)",
                outcome.as_str()
            ));
        }
        if conclusion != Conclusion::Skipped {
            text.push_str(&format!(" [{}]", fmt_duration(duration)));
        }
        self.paint(code, &text)
    }
}

impl Default for TerminalSink {
    fn default() -> Self {
        Self::new()
    }
}

impl EventSink for TerminalSink {
    fn emit(&self, event: JobEvent) {
        if let Some(text) = self.render(&event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_steps_and_summary() {
        let t = TerminalSink::with_color(false);
        let start = t.render(&JobEvent::StepStarted {
            index: 0,
            name: "Run echo hi".into(),
        });
        assert_eq!(start.as_deref(), Some("==> Step 1: Run echo hi"));
        let line = t.render(&JobEvent::Line {
            step: Some(0),
            kind: LineKind::Stdout,
            text: "hi".into(),
        });
        assert_eq!(line.as_deref(), Some("hi"));
        let fin = t
            .render(&JobEvent::StepFinished {
                index: 0,
                outcome: Conclusion::Failure,
                conclusion: Conclusion::Success,
                duration: Duration::from_millis(1500),
            })
            .unwrap();
        assert_eq!(
            fin,
            "✓ Step 1: Run echo hi: success (outcome failure, continue-on-error) [1.50s]"
        );
        // The summary waits for the VM's teardown, to give the wall time too.
        let fin = t.render(&JobEvent::JobFinished {
            conclusion: Conclusion::Failure,
            duration: Duration::from_millis(6340),
        });
        assert_eq!(fin, None);
        let sum = t.finish_job(Duration::from_millis(25_140)).unwrap();
        assert_eq!(
            sum,
            "\nSummary:\n  ✓ Step 1: Run echo hi: success (outcome failure, continue-on-error) [1.50s]\nJob failed in 6.34s (25.1s with the VM's boot and teardown)"
        );
        // The next job (matrix combination) starts afresh.
        assert_eq!(t.finish_job(Duration::from_secs(1)), None);
        t.render(&JobEvent::JobFinished {
            conclusion: Conclusion::Success,
            duration: Duration::from_secs(75),
        });
        let sum = t.finish_job(Duration::from_secs(100)).unwrap();
        assert_eq!(
            sum,
            "\nSummary:\nJob succeeded in 1m15s (1m40s with the VM's boot and teardown)"
        );
    }

    #[test]
    fn groups_indent_output() {
        let t = TerminalSink::with_color(false);
        let g = t.render(&JobEvent::Line {
            step: Some(0),
            kind: LineKind::GroupStart,
            text: "Build".into(),
        });
        assert_eq!(g.as_deref(), Some("▸ Build"));
        let l = t.render(&JobEvent::Line {
            step: Some(0),
            kind: LineKind::Stdout,
            text: "x".into(),
        });
        assert_eq!(l.as_deref(), Some("  x"));
        assert!(
            t.render(&JobEvent::Line {
                step: Some(0),
                kind: LineKind::GroupEnd,
                text: String::new(),
            })
            .is_none()
        );
    }
}
