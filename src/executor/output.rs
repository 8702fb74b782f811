//! The output parser: a step's output chunks become masked lines (workflow
//! commands applied), and the wrapper's file dump is found behind its marker.

use super::commands::{CommandState, LineAction, LineSplitter};
use super::emit::Emitter;
use super::shell::{self, FileDump};
use crate::events::{JobEvent, LineKind};
use crate::guest::{OutputChunk, Stream};

/// Turns a step's output chunks into masked events and finds the file dump.
pub(super) struct StepOutput<'e, 'a> {
    pub(super) em: &'e Emitter<'a>,
    /// The step lines are reported under (`None`: outside steps).
    pub(super) index: Option<usize>,
    pub(super) marker: Option<String>,
    pub(super) stdout: LineSplitter,
    pub(super) stderr: LineSplitter,
    pub(super) cmds: CommandState,
    pub(super) pending_empty: bool,
    pub(super) dump: Option<Vec<u8>>,
    /// The exec runs only Solstice's own plumbing (no user code): its stdout
    /// lines are runner lines and its stderr lines errors, with no workflow
    /// commands.
    pub(super) own: bool,
}

impl<'e, 'a> StepOutput<'e, 'a> {
    pub(super) fn new(
        em: &'e Emitter<'a>,
        index: Option<usize>,
        marker: Option<String>,
        debug: bool,
    ) -> Self {
        StepOutput {
            em,
            index,
            marker,
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
            cmds: CommandState::new(debug),
            pending_empty: false,
            dump: None,
            own: false,
        }
    }

    pub(super) fn handle(&mut self, line: &str, stream: Stream) {
        if self.own {
            let kind = match stream {
                Stream::Stdout => LineKind::Runner,
                Stream::Stderr => LineKind::Annotation("error".into()),
            };
            self.em.emit(JobEvent::Line {
                step: self.index,
                kind,
                text: line.to_string(),
            });
            return;
        }
        match self.cmds.process(line, stream) {
            LineAction::Emit(kind, text) => self.em.emit(JobEvent::Line {
                step: self.index,
                kind,
                text,
            }),
            LineAction::AddMask(v) => self.em.add_mask(&v),
            LineAction::Drop => {}
        }
    }

    pub(super) fn stdout_line(&mut self, line: String) {
        if self.marker.as_deref() == Some(line.as_str()) {
            self.pending_empty = false;
            self.dump = Some(self.stdout.take_rest());
            return;
        }
        if self.pending_empty {
            self.pending_empty = false;
            self.handle("", Stream::Stdout);
        }
        if line.is_empty() && self.marker.is_some() {
            // Held back: the wrapper prints an empty line before its marker.
            self.pending_empty = true;
        } else {
            self.handle(&line, Stream::Stdout);
        }
    }

    /// The step's exit status once the wrapper's final `MARKER end N` line has
    /// arrived: the step is over even if a background process it started still
    /// holds the output channel open.
    pub(super) fn end_status(&self) -> Option<u32> {
        let (dump, marker) = (self.dump.as_ref()?, self.marker.as_ref()?);
        let body = dump.strip_suffix(b"\n")?;
        let last = match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => &body[i + 1..],
            None => body,
        };
        std::str::from_utf8(last)
            .ok()?
            .strip_prefix(marker.as_str())?
            .strip_prefix(" end ")?
            .trim()
            .parse()
            .ok()
    }

    pub(super) fn feed(&mut self, chunk: OutputChunk) {
        match chunk.stream {
            Stream::Stdout => {
                if let Some(d) = self.dump.as_mut() {
                    // Four files of at most FILE_COMMAND_LIMIT each, plus headers;
                    // anything beyond that is not the wrapper's and is dropped.
                    if d.len() < 4 * shell::FILE_COMMAND_LIMIT + 4096 {
                        d.extend_from_slice(&chunk.data);
                    }
                    return;
                }
                let em = self.em;
                let lines = self
                    .stdout
                    .feed_with(&chunk.data, &|piece: &[u8]| em.safe_cut(piece));
                let mut iter = lines.into_iter();
                for line in iter.by_ref() {
                    self.stdout_line(line);
                    if self.dump.is_some() {
                        break;
                    }
                }
                // Lines already split after the marker belong to the dump.
                if let Some(d) = self.dump.as_mut() {
                    let mut rest = Vec::new();
                    for l in iter {
                        rest.extend_from_slice(l.as_bytes());
                        rest.push(b'\n');
                    }
                    rest.extend_from_slice(d);
                    *d = rest;
                }
            }
            Stream::Stderr => {
                let em = self.em;
                for line in self
                    .stderr
                    .feed_with(&chunk.data, &|piece: &[u8]| em.safe_cut(piece))
                {
                    self.handle(&line, Stream::Stderr);
                }
            }
        }
    }

    pub(super) fn finish(mut self) -> Option<FileDump> {
        if self.dump.is_none() {
            if self.pending_empty {
                self.handle("", Stream::Stdout);
            }
            if let Some(l) = self.stdout.flush() {
                self.handle(&l, Stream::Stdout);
            }
        }
        if let Some(l) = self.stderr.flush() {
            self.handle(&l, Stream::Stderr);
        }
        let marker = self.marker.take()?;
        self.dump.map(|d| shell::parse_dump(&d, &marker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::executor::mask::Masker;
    use crate::testing::VecSink;

    fn chunk(stream: Stream, s: &str) -> OutputChunk {
        OutputChunk {
            stream,
            data: s.as_bytes().to_vec(),
        }
    }
    #[test]
    fn step_output_finds_the_marker_across_chunks() {
        let sink = VecSink::default();
        let em = Emitter {
            sink: &sink,
            masker: Mutex::new(Masker::new()),
        };
        let mut out = StepOutput::new(&em, 0, Some("__m__".into()), false);
        out.feed(chunk(
            Stream::Stdout,
            "one

three
",
        ));
        out.feed(chunk(Stream::Stderr, "err"));
        out.feed(chunk(
            Stream::Stdout,
            "
__",
        ));
        out.feed(chunk(
            Stream::Stdout,
            "m__
__m__ output
k=v

__m__ end 0
",
        ));
        let dump = out.finish().unwrap();
        assert_eq!(sink.lines(), vec!["one", "", "three", "err"]);
        assert_eq!(dump.output, "k=v\n");
        assert_eq!(dump.status, Some(0));
    }

    #[test]
    fn step_output_without_marker_flushes_partial_lines() {
        let sink = VecSink::default();
        let em = Emitter {
            sink: &sink,
            masker: Mutex::new(Masker::new()),
        };
        let mut out = StepOutput::new(&em, 0, Some("__m__".into()), false);
        out.feed(chunk(Stream::Stdout, "a\n\npartial"));
        assert!(out.finish().is_none());
        assert_eq!(sink.lines(), vec!["a", "", "partial"]);
    }
}
