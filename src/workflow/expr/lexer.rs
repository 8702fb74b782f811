//! Splits expression text into tokens. Positions are 0-based character offsets.

use super::ExprError;

/// One token kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    Ident(String),
    Dot,
    Star,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Comma,
    Not,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
    End,
}

impl Tok {
    /// How the token is written, for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Null => "null".into(),
            Tok::Bool(b) => b.to_string(),
            Tok::Number(n) => super::value::format_number(*n),
            Tok::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Tok::Ident(s) => s.clone(),
            Tok::Dot => ".".into(),
            Tok::Star => "*".into(),
            Tok::LBracket => "[".into(),
            Tok::RBracket => "]".into(),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Comma => ",".into(),
            Tok::Not => "!".into(),
            Tok::Lt => "<".into(),
            Tok::Le => "<=".into(),
            Tok::Gt => ">".into(),
            Tok::Ge => ">=".into(),
            Tok::Eq => "==".into(),
            Tok::Ne => "!=".into(),
            Tok::And => "&&".into(),
            Tok::Or => "||".into(),
            Tok::End => "end of expression".into(),
        }
    }
}

/// A token and the character offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Tokenizes `source`; the last token is always [`Tok::End`].
pub(crate) fn lex(source: &str) -> Result<Vec<Token>, ExprError> {
    let chars: Vec<char> = source.chars().collect();
    let err = |message: String, offset: usize| ExprError {
        message,
        source_text: source.to_string(),
        offset,
    };
    let mut out = Vec::new();
    // Whether the previous token can be followed by `.` as a property
    // de-reference (so `.5` after it is not a number).
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let peek = chars.get(i + 1).copied();
        let simple = match c {
            '.' if !peek.is_some_and(|p| p.is_ascii_digit()) || follows_value(&out) => {
                Some((Tok::Dot, 1))
            }
            '*' => Some((Tok::Star, 1)),
            '[' => Some((Tok::LBracket, 1)),
            ']' => Some((Tok::RBracket, 1)),
            '(' => Some((Tok::LParen, 1)),
            ')' => Some((Tok::RParen, 1)),
            ',' => Some((Tok::Comma, 1)),
            '!' if peek == Some('=') => Some((Tok::Ne, 2)),
            '!' => Some((Tok::Not, 1)),
            '<' if peek == Some('=') => Some((Tok::Le, 2)),
            '<' => Some((Tok::Lt, 1)),
            '>' if peek == Some('=') => Some((Tok::Ge, 2)),
            '>' => Some((Tok::Gt, 1)),
            '=' if peek == Some('=') => Some((Tok::Eq, 2)),
            '&' if peek == Some('&') => Some((Tok::And, 2)),
            '|' if peek == Some('|') => Some((Tok::Or, 2)),
            '=' => return Err(err("Unexpected symbol '=' (use '==' to compare)".into(), i)),
            '&' => return Err(err("Unexpected symbol '&' (use '&&')".into(), i)),
            '|' => return Err(err("Unexpected symbol '|' (use '||')".into(), i)),
            '"' => {
                return Err(err(
                    "Unexpected symbol '\"': strings use single quotes".into(),
                    i,
                ));
            }
            _ => None,
        };
        if let Some((tok, len)) = simple {
            out.push(Token { tok, pos: start });
            i += len;
            continue;
        }
        if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err("Unterminated string literal".into(), start)),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Token {
                tok: Tok::Str(s),
                pos: start,
            });
            continue;
        }
        let starts_number = c.is_ascii_digit()
            || c == '.'
            || ((c == '-' || c == '+')
                && peek.is_some_and(|p| p.is_ascii_digit() || p == '.' || p == 'I'));
        if starts_number {
            let mut j = i + 1;
            while j < chars.len() {
                let ch = chars[j];
                let exp_sign = (ch == '-' || ch == '+') && matches!(chars[j - 1], 'e' | 'E');
                if ch.is_ascii_alphanumeric() || ch == '.' || ch == '_' || exp_sign {
                    j += 1;
                } else {
                    break;
                }
            }
            let text: String = chars[i..j].iter().collect();
            let n = parse_number_literal(&text)
                .ok_or_else(|| err(format!("Invalid number '{text}'"), start))?;
            out.push(Token {
                tok: Tok::Number(n),
                pos: start,
            });
            i = j;
            continue;
        }
        if is_ident_start(c) {
            let mut j = i + 1;
            while j < chars.len() && is_ident_char(chars[j]) {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            let after_dot = matches!(out.last(), Some(Token { tok: Tok::Dot, .. }));
            let tok = match word.as_str() {
                _ if after_dot => Tok::Ident(word),
                "null" => Tok::Null,
                "true" => Tok::Bool(true),
                "false" => Tok::Bool(false),
                "NaN" => Tok::Number(f64::NAN),
                "Infinity" => Tok::Number(f64::INFINITY),
                _ => Tok::Ident(word),
            };
            out.push(Token { tok, pos: start });
            i = j;
            continue;
        }
        return Err(err(format!("Unexpected symbol '{c}'"), start));
    }
    out.push(Token {
        tok: Tok::End,
        pos: chars.len(),
    });
    Ok(out)
}

/// True when the last token ends a value, so a following `.` is a
/// de-reference (`a.5` is not `a` followed by `0.5`).
fn follows_value(out: &[Token]) -> bool {
    matches!(
        out.last().map(|t| &t.tok),
        Some(Tok::Ident(_) | Tok::RBracket | Tok::RParen | Tok::Star)
    )
}

/// Parses a number literal: JSON numbers, `0x` hexadecimal, `0o` octal,
/// `Infinity` with an optional sign.
pub(crate) fn parse_number_literal(text: &str) -> Option<f64> {
    let (neg, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = if let Some(hex) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()? as f64
    } else if let Some(oct) = body.strip_prefix("0o").or(body.strip_prefix("0O")) {
        u64::from_str_radix(oct, 8).ok()? as f64
    } else if body == "Infinity" {
        f64::INFINITY
    } else {
        // Only digits, one point and an exponent: rejects `inf`, `nan`, `1_0`.
        if body.is_empty()
            || !body
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
            || !body.chars().any(|c| c.is_ascii_digit())
        {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    Some(if neg { -magnitude } else { magnitude })
}
