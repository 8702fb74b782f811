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
