//! An error and its causes on one line, for log lines and messages that
//! must not lose the `#[source]` chain.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes, `: `-separated. A
/// cause whose text the line already holds (a wrapper that repeats its
/// source) is left out. Use it as `tracing::warn!(error = %Chain(&e), …)`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = s.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Forge local: Ping failed")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("Ping: tcp connect error")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = Outer(Inner(io));
        assert_eq!(
            Chain(&e).to_string(),
            "Forge local: Ping failed: Ping: tcp connect error: Connection refused"
        );
        let plain = std::io::Error::other("alone");
        assert_eq!(Chain(&plain).to_string(), "alone");
    }
}
