//! Workflow commands in step output (`::add-mask::`, `::group::`, `::error ...::`)
//! and the line splitter that turns raw output chunks into lines. Pure logic.

use crate::events::LineKind;
use crate::guest::Stream;

/// What to do with one line of step output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineAction {
    /// Emit a line of this kind.
    Emit(LineKind, String),
    /// Register a value to mask; print nothing.
    AddMask(String),
    /// Print nothing (`::stop-commands::`, a resume token, a hidden debug line).
    Drop,
}

/// Per-step state of the command parser (`::stop-commands::`).
#[derive(Debug, Default)]
pub struct CommandState {
    stop_token: Option<String>,
    /// Whether `::debug::` lines are shown (`ACTIONS_STEP_DEBUG` is `true`).
    pub debug: bool,
}

/// Reverses GitHub's escaping of command data (`%25`, `%0D`, `%0A`).
pub fn unescape_data(s: &str) -> String {
    s.replace("%0D", "\r")
        .replace("%0d", "\r")
        .replace("%0A", "\n")
        .replace("%0a", "\n")
        .replace("%25", "%")
}

/// Reverses GitHub's escaping of command properties (data escapes plus `%3A`, `%2C`).
pub fn unescape_property(s: &str) -> String {
    unescape_data(
        &s.replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2C", ",")
            .replace("%2c", ","),
    )
}

/// Command properties (`key=value` pairs), unescaped.
type Props = Vec<(String, String)>;

/// Splits `::name key=v,key2=v2::message` into its parts.
fn parse_command(line: &str) -> Option<(&str, Props, &str)> {
    let rest = line.strip_prefix("::")?;
    let end = rest.find("::")?;
    let head = &rest[..end];
    let message = &rest[end + 2..];
    let (name, props) = match head.find(' ') {
        Some(sp) => (&head[..sp], &head[sp + 1..]),
        None => (head, ""),
    };
    if name.is_empty() {
        return None;
    }
    let props = props
        .split(',')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_string(), unescape_property(v)))
        })
        .collect();
    Some((name, props, message))
}

impl CommandState {
    pub fn new(debug: bool) -> Self {
        CommandState {
            stop_token: None,
            debug,
        }
    }

    /// Interprets one line (stdout or stderr; GitHub's runner reads commands on both).
    pub fn process(&mut self, line: &str, stream: Stream) -> LineAction {
        let plain = match stream {
            Stream::Stdout => LineKind::Stdout,
            Stream::Stderr => LineKind::Stderr,
        };
        if let Some(token) = &self.stop_token {
            if line.strip_prefix("::").and_then(|r| r.strip_suffix("::")) == Some(token.as_str()) {
                self.stop_token = None;
                return LineAction::Drop;
            }
            return LineAction::Emit(plain, line.to_string());
        }
        let Some((name, props, message)) = parse_command(line) else {
            return LineAction::Emit(plain, line.to_string());
        };
        match name {
            "add-mask" => LineAction::AddMask(unescape_data(message)),
            "debug" => {
                if self.debug {
                    LineAction::Emit(LineKind::Debug, unescape_data(message))
                } else {
                    LineAction::Drop
                }
            }
            "notice" | "warning" | "error" => LineAction::Emit(
                LineKind::Annotation(name.to_string()),
                annotation_text(&props, &unescape_data(message)),
            ),
            "group" => LineAction::Emit(LineKind::GroupStart, unescape_data(message)),
            "endgroup" => LineAction::Emit(LineKind::GroupEnd, String::new()),
            "stop-commands" => {
                if message.is_empty() {
                    LineAction::Emit(plain, line.to_string())
                } else {
                    self.stop_token = Some(message.to_string());
                    LineAction::Drop
                }
            }
            "set-output" | "set-env" | "add-path" | "save-state" => {
                let file = match name {
                    "set-output" => "GITHUB_OUTPUT",
                    "set-env" => "GITHUB_ENV",
                    "add-path" => "GITHUB_PATH",
                    _ => "GITHUB_STATE",
                };
                LineAction::Emit(
                    LineKind::Annotation("warning".into()),
                    format!("The `{name}` command is disabled. Write to the {file} file instead."),
                )
            }
            // `echo`, `add-matcher`, `remove-matcher`: accepted and ignored.
            "echo" | "add-matcher" | "remove-matcher" => LineAction::Drop,
            _ => LineAction::Emit(plain, line.to_string()),
        }
    }
}

/// `file:line:col: title: message`, with the parts that are present.
fn annotation_text(props: &[(String, String)], message: &str) -> String {
    let get = |k: &str| props.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut loc = String::new();
    if let Some(f) = get("file") {
        loc.push_str(f);
        if let Some(l) = get("line") {
            loc.push(':');
            loc.push_str(l);
            if let Some(c) = get("col") {
                loc.push(':');
                loc.push_str(c);
            }
        }
        loc.push_str(": ");
    }
    match get("title") {
        Some(t) => format!("{loc}{t}: {message}"),
        None => format!("{loc}{message}"),
    }
}

/// Longest line kept whole; a longer run without `\n` is split into pieces of
/// this size, so one endless line cannot take unbounded memory or time.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Splits a byte stream into lines on `\n`, dropping a trailing `\r`.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Adds bytes and returns the complete lines they finish. Each byte is
    /// scanned once; lines longer than [`MAX_LINE_BYTES`] are cut.
    pub fn feed(&mut self, data: &[u8]) -> Vec<String> {
        self.feed_with(data, &|piece: &[u8]| piece.len())
    }

    /// Like [`LineSplitter::feed`]; where a line longer than
    /// [`MAX_LINE_BYTES`] is cut, `cut(piece)` may move the cut back (to
    /// keep a secret whole for the masker, see
    /// [`crate::executor::mask::Masker::safe_cut`]). The bytes after it
    /// start the next piece. A cut moved back by more than half a piece is
    /// not followed, so every piece is at least half [`MAX_LINE_BYTES`].
    pub fn feed_with(&mut self, data: &[u8], cut: &dyn Fn(&[u8]) -> usize) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.push_capped(&rest[..pos], &mut lines, cut);
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(String::from_utf8_lossy(&line).into_owned());
            rest = &rest[pos + 1..];
        }
        self.push_capped(rest, &mut lines, cut);
        lines
    }

    /// Appends bytes that contain no newline, emitting pieces of at most
    /// [`MAX_LINE_BYTES`] as lines, each cut where `cut` allows, between
    /// UTF-8 characters.
    fn push_capped(
        &mut self,
        mut bytes: &[u8],
        lines: &mut Vec<String>,
        cut: &dyn Fn(&[u8]) -> usize,
    ) {
        while self.buf.len() + bytes.len() > MAX_LINE_BYTES {
            let take = MAX_LINE_BYTES - self.buf.len();
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let full = self.buf.len();
            let mut at = cut(&self.buf).min(full);
            if at < full / 2 {
                at = full;
            }
            // Not inside a multi-byte character: a UTF-8 continuation byte
            // (the next input byte when cutting at the end) moves the cut
            // back, at most 3 bytes.
            let continues = |i: usize| {
                let b = if i < full {
                    self.buf.get(i)
                } else {
                    bytes.get(i - full)
                };
                b.is_some_and(|b| b & 0xC0 == 0x80)
            };
            let mut back = at;
            while back + 3 > at && back > 1 && continues(back) {
                back -= 1;
            }
            if !continues(back) {
                at = back;
            }
            let rest = self.buf.split_off(at);
            let piece = std::mem::replace(&mut self.buf, rest);
            lines.push(String::from_utf8_lossy(&piece).into_owned());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The partial last line, if any.
    pub fn flush(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(String::from_utf8_lossy(&line).into_owned())
    }

    /// Takes the unsplit remainder (used once the file-command marker is seen).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_endless_line_is_cut_and_scanned_once() {
        let mut sp = LineSplitter::default();
        let chunk = vec![b'x'; 64 * 1024];
        let mut pieces = Vec::new();
        // 40 MiB without a newline, fed in 64 KiB chunks: linear time, bounded buffer.
        for _ in 0..640 {
            pieces.extend(sp.feed(&chunk));
            assert!(sp.buf.len() <= MAX_LINE_BYTES);
        }
        // The 40th MiB waits in the buffer for a newline or more bytes.
        assert_eq!(pieces.len(), 39);
        assert!(pieces.iter().all(|p| p.len() == MAX_LINE_BYTES));
        let last = sp.feed(b"tail\r\nnext");
        assert_eq!(last.len(), 2);
        assert_eq!(last[0].len(), MAX_LINE_BYTES);
        assert_eq!(last[1], "tail");
        assert_eq!(sp.flush().as_deref(), Some("next"));
    }

    use super::*;

    fn p(st: &mut CommandState, l: &str) -> LineAction {
        st.process(l, Stream::Stdout)
    }

    #[test]
    fn plain_and_unknown_lines_pass_through() {
        let mut st = CommandState::default();
        assert_eq!(
            p(&mut st, "hello"),
            LineAction::Emit(LineKind::Stdout, "hello".into())
        );
        assert_eq!(
            st.process("::nope::x", Stream::Stderr),
            LineAction::Emit(LineKind::Stderr, "::nope::x".into())
        );
        assert_eq!(
            p(&mut st, ":: ::"),
            LineAction::Emit(LineKind::Stdout, ":: ::".into())
        );
    }

    #[test]
    fn mask_group_debug() {
        let mut st = CommandState::default();
        assert_eq!(
            p(&mut st, "::add-mask::s3cr%25t"),
            LineAction::AddMask("s3cr%t".into())
        );
        assert_eq!(
            p(&mut st, "::group::Build it"),
            LineAction::Emit(LineKind::GroupStart, "Build it".into())
        );
        assert_eq!(
            p(&mut st, "::endgroup::"),
            LineAction::Emit(LineKind::GroupEnd, "".into())
        );
        assert_eq!(p(&mut st, "::debug::hidden"), LineAction::Drop);
        st.debug = true;
        assert_eq!(
            p(&mut st, "::debug::a%0Ab"),
            LineAction::Emit(LineKind::Debug, "a\nb".into())
        );
    }

    #[test]
    fn annotations() {
        let mut st = CommandState::default();
        assert_eq!(
            p(
                &mut st,
                "::error file=src/a.rs,line=3,col=7,title=Bad%2C bad::it broke"
            ),
            LineAction::Emit(
                LineKind::Annotation("error".into()),
                "src/a.rs:3:7: Bad, bad: it broke".into()
            )
        );
        assert_eq!(
            p(&mut st, "::notice::fyi"),
            LineAction::Emit(LineKind::Annotation("notice".into()), "fyi".into())
        );
    }

    #[test]
    fn stop_commands() {
        let mut st = CommandState::default();
        assert_eq!(p(&mut st, "::stop-commands::tok123"), LineAction::Drop);
        assert_eq!(
            p(&mut st, "::add-mask::x"),
            LineAction::Emit(LineKind::Stdout, "::add-mask::x".into())
        );
        assert_eq!(p(&mut st, "::tok123::"), LineAction::Drop);
        assert_eq!(
            p(&mut st, "::add-mask::xy"),
            LineAction::AddMask("xy".into())
        );
    }

    #[test]
    fn deprecated_commands_warn() {
        let mut st = CommandState::default();
        match p(&mut st, "::set-output name=a::b") {
            LineAction::Emit(LineKind::Annotation(k), t) => {
                assert_eq!(k, "warning");
                assert!(t.contains("GITHUB_OUTPUT"), "{t}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_long_line_is_cut_between_characters_and_where_the_cut_function_says() {
        // A 4-byte character straddling the 1 MiB mark stays whole.
        let mut sp = LineSplitter::default();
        let mut line = vec![b'a'; MAX_LINE_BYTES - 2];
        line.extend_from_slice("😀".as_bytes());
        line.extend_from_slice(b"tail\n");
        let pieces = sp.feed(&line);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len(), MAX_LINE_BYTES - 2);
        assert_eq!(pieces[1], "😀tail");
        assert!(!pieces.concat().contains('\u{FFFD}'));
        // The cut function moves the cut back; the rest starts the next piece.
        let mut sp = LineSplitter::default();
        let mut line = vec![b'b'; MAX_LINE_BYTES + 10];
        line.push(b'\n');
        let pieces = sp.feed_with(&line, &|p: &[u8]| p.len() - 5);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len(), MAX_LINE_BYTES - 5);
        assert_eq!(pieces[1].len(), 15);
        // A cut moved back by more than half a piece is not followed.
        let pieces = sp.feed_with(&line, &|_: &[u8]| 3);
        assert_eq!(pieces[0].len(), MAX_LINE_BYTES);
    }

    #[test]
    fn splitter() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"a\r\nb"), vec!["a"]);
        assert_eq!(s.feed(b"c\n\nd"), vec!["bc", ""]);
        assert_eq!(s.flush(), Some("d".into()));
        assert_eq!(s.flush(), None);
    }
}
