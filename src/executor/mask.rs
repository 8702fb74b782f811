//! Secret masking. Every line that leaves the executor goes through [`Masker::mask`].
//!
//! Rules:
//! - each secret value is registered whole and, if it spans several lines, line by
//!   line (each line trimmed of surrounding whitespace), because output is masked
//!   line by line;
//! - values that are empty, whitespace only, or shorter than [`MIN_MASK_LEN`]
//!   characters are ignored: masking every single character of a log would
//!   destroy it and protects nothing;
//! - every occurrence of every value is found (overlapping ones too) and the
//!   ranges are merged, so a secret that contains or overlaps another one is
//!   masked as a whole.

/// Shortest value that is masked.
pub const MIN_MASK_LEN: usize = 2;

/// The replacement for a masked value.
pub const MASK: &str = "***";

/// A set of values to hide.
#[derive(Default, Clone)]
pub struct Masker {
    values: Vec<String>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.values.len())
    }
}

impl Masker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a secret value (and each of its lines).
    pub fn add(&mut self, value: &str) {
        self.add_one(value);
        if value.contains('\n') || value.contains('\r') {
            for line in value.split(['\n', '\r']) {
                self.add_one(line.trim());
            }
        }
    }

    fn add_one(&mut self, value: &str) {
        if value.trim().is_empty() || value.chars().count() < MIN_MASK_LEN {
            return;
        }
        if self.values.iter().any(|v| v == value) {
            return;
        }
        self.values.push(value.to_string());
        self.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// Whether `text` contains any registered value.
    pub fn contains_secret(&self, text: &str) -> bool {
        self.values.iter().any(|v| text.contains(v.as_str()))
    }

    /// Where to cut `piece`, the start of a line too long to keep whole, so
    /// that no registered value is split between two pieces (each piece is
    /// masked on its own): the largest position at or before the end such
    /// that no value occurs across it, counting a value whose start is at
    /// the end of `piece` and may go on in the next bytes.
    pub fn safe_cut(&self, piece: &[u8]) -> usize {
        let end = piece.len();
        let mut at = end;
        loop {
            let before = at;
            for v in &self.values {
                let v = v.as_bytes();
                // Occurrences that start before `at` and end after it.
                let first = (at + 1).saturating_sub(v.len());
                for start in first..at {
                    let seen = &piece[start..end.min(start + v.len())];
                    if start + v.len() > at && v.starts_with(seen) {
                        at = start;
                        break;
                    }
                }
            }
            if at == before || at == 0 {
                return at;
            }
        }
    }

    /// `text` with every registered value replaced by `***`. All occurrences of
    /// all values are found first (overlapping ones too) and their ranges merged,
    /// so overlapping secrets are hidden completely.
    pub fn mask(&self, text: &str) -> String {
        if self.values.is_empty() || !self.contains_secret(text) {
            return text.to_string();
        }
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for v in &self.values {
            let mut from = 0;
            while let Some(i) = text[from..].find(v.as_str()) {
                let start = from + i;
                ranges.push((start, start + v.len()));
                // Next search starts one character later: overlapping matches count.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        ranges.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        let mut iter = ranges.into_iter().peekable();
        while let Some((start, mut end)) = iter.next() {
            while let Some(&(s2, e2)) = iter.peek() {
                if s2 > end {
                    break;
                }
                end = end.max(e2);
                iter.next();
            }
            out.push_str(&text[pos..start]);
            out.push_str(MASK);
            pos = end;
        }
        out.push_str(&text[pos..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_never_splits_a_value() {
        let mut m = Masker::new();
        m.add("s3cret");
        m.add("token-xyz");
        // Nothing across the end: cut at the end.
        assert_eq!(m.safe_cut(b"aaaa s3cret."), 12);
        // The last `t` may begin `token-xyz`; cutting before it would split
        // `s3cret`, so the cut goes before both.
        assert_eq!(m.safe_cut(b"aaaa s3cret"), 5);
        // A value that begins at the end and may go on: cut before it.
        assert_eq!(m.safe_cut(b"aaaa s3c"), 5);
        assert_eq!(m.safe_cut(b"aaaa token-"), 5);
        // Something that is no value's beginning stays.
        assert_eq!(m.safe_cut(b"aaaa s3x"), 8);
        // No values: the end.
        assert_eq!(Masker::new().safe_cut(b"abc"), 3);
    }

    #[test]
    fn overlapping_values_are_hidden_completely() {
        let mut m = Masker::new();
        m.add("xyz123");
        m.add("123secret");
        assert_eq!(m.mask("a xyz123secret b"), "a *** b");
        let mut m = Masker::new();
        m.add("abab");
        assert_eq!(m.mask("ababab."), "***.");
        assert_eq!(m.mask("ab abab ab"), "ab *** ab");
    }

    #[test]
    fn masks_whole_and_inside_lines() {
        let mut m = Masker::new();
        m.add("hunter2");
        assert_eq!(m.mask("pw=hunter2; again hunter2"), "pw=***; again ***");
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn longest_first() {
        let mut m = Masker::new();
        m.add("abc");
        m.add("abcdef");
        assert_eq!(m.mask("xabcdefx abc"), "x***x ***");
    }

    #[test]
    fn multi_line_secret_masks_each_line() {
        let mut m = Masker::new();
        m.add("-----BEGIN-----\n  line-two  \nline3\n");
        assert_eq!(m.mask("got line-two here"), "got *** here");
        assert_eq!(m.mask("-----BEGIN-----"), "***");
        assert_eq!(m.mask("line3"), "***");
    }

    #[test]
    fn ignores_empty_and_tiny_values() {
        let mut m = Masker::new();
        m.add("");
        m.add("   ");
        m.add("x");
        assert_eq!(m.mask("x marks the spot"), "x marks the spot");
    }

    #[test]
    fn unicode_safe() {
        let mut m = Masker::new();
        m.add("géheim");
        assert_eq!(m.mask("ä géheim ö"), "ä *** ö");
    }
}
