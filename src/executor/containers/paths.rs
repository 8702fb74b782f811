//! Guest paths as a container sees them: a prefix rewrite, as actions/runner's
//! `TranslateToContainerPath`. Pure functions.

/// `value` with its leading guest path rewritten by the first entry of
/// `table` (guest prefix → container prefix) that matches it exactly or
/// followed by `/`. `table` must be ordered longest prefix first. Other values
/// are returned unchanged.
pub(crate) fn translate(value: &str, table: &[(String, String)]) -> String {
    for (from, to) in table {
        let from = from.trim_end_matches('/');
        if from.is_empty() {
            continue;
        }
        if value == from {
            return to.clone();
        }
        if let Some(rest) = value.strip_prefix(from)
            && rest.starts_with('/')
        {
            return format!("{}{rest}", to.trim_end_matches('/'));
        }
    }
    value.to_string()
}

/// Sorts a translation table longest guest prefix first, so that a mount
/// inside another mount wins.
pub(crate) fn longest_first(table: &mut [(String, String)]) {
    table.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrite() {
        let mut t = vec![
            ("/home/d/work".to_string(), "/__w".to_string()),
            ("/home/d/_temp".to_string(), "/__w/_temp".to_string()),
            (
                "/home/d/_temp/_github_home".to_string(),
                "/github/home".to_string(),
            ),
        ];
        longest_first(&mut t);
        assert_eq!(translate("/home/d/work/r/r", &t), "/__w/r/r");
        assert_eq!(translate("/home/d/work", &t), "/__w");
        assert_eq!(
            translate("/home/d/_temp/_solstice/step-1/env", &t),
            "/__w/_temp/_solstice/step-1/env"
        );
        assert_eq!(translate("/home/d/_temp/_github_home", &t), "/github/home");
        assert_eq!(translate("/home/d/workspace", &t), "/home/d/workspace");
        assert_eq!(translate("x:/home/d/work", &t), "x:/home/d/work");
        assert_eq!(translate("", &t), "");
    }
}
