//! Recursive-descent parser. Precedence, loosest first:
//! `||`, `&&`, `==` `!=`, `<` `<=` `>` `>=`, `!`, then `.` / `[ ]` and
//! grouping. Binary operators associate to the left.

use super::ExprError;
use super::functions::Func;
use super::lexer::{Tok, Token, lex};

/// Nesting limit, as in Actions, so hostile input cannot exhaust the stack.
pub(crate) const MAX_DEPTH: usize = 50;

/// Context names an expression may reference (`github.sha`, `env.X`, ...).
pub const KNOWN_CONTEXTS: &[&str] = &[
    "github", "env", "vars", "secrets", "matrix", "needs", "steps", "job", "runner", "inputs",
    "strategy",
];

/// Other names of a context: Forgejo and Gitea workflows may write `forge.`,
/// `forgejo.` or `gitea.` for `github.` (forgejo-runner's interpreter).
const CONTEXT_ALIASES: &[(&str, &str)] = &[
    ("forge", "github"),
    ("forgejo", "github"),
    ("gitea", "github"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// What `.x`, `['x']` or `.*` selects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Selector {
    /// `.name`: a property name, matched case-insensitively.
    Name(String),
    /// `[expr]`.
    Index(Box<Node>),
    /// `.*` or `[*]`.
    Wildcard,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    /// A top-level context name, lower-cased.
    Context(String),
    Access(Box<Node>, Selector),
    Not(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// An expression tree node and the character offset it starts at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub pos: usize,
}

impl Node {
    /// Whether a status function (`success()`, `failure()`, `always()`,
    /// `cancelled()`) is called anywhere in the tree.
    pub(crate) fn has_status_function(&self) -> bool {
        match &self.kind {
            Kind::Call(f, args) => f.is_status() || args.iter().any(Node::has_status_function),
            Kind::Access(base, sel) => {
                base.has_status_function()
                    || matches!(sel, Selector::Index(i) if i.has_status_function())
            }
            Kind::Not(n) => n.has_status_function(),
            Kind::Binary(_, l, r) => l.has_status_function() || r.has_status_function(),
            _ => false,
        }
    }
}

/// Parses `source`. `extra_contexts` are further accepted top-level names
/// (the keys present in the caller's contexts).
pub(crate) fn parse<'s>(
    source: &str,
    extra_contexts: impl Iterator<Item = &'s str> + Clone,
) -> Result<Node, ExprError> {
    let tokens = lex(source)?;
    let mut p = Parser {
        source,
        tokens,
        i: 0,
        depth: 0,
        extra: &|name: &str| extra_contexts.clone().any(|c| c.eq_ignore_ascii_case(name)),
    };
    if p.peek().tok == Tok::End {
        return Err(p.error("Expected an expression".into(), 0));
    }
    let node = p.or()?;
    let t = p.peek().clone();
    if t.tok != Tok::End {
        return Err(p.unexpected(&t));
    }
    Ok(node)
}

struct Parser<'a> {
    source: &'a str,
    tokens: Vec<Token>,
    i: usize,
    depth: usize,
    extra: &'a dyn Fn(&str) -> bool,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        // The token list always ends with `End`, and `i` never passes it.
        &self.tokens[self.i.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if t.tok != Tok::End {
            self.i += 1;
        }
        t
    }

    fn error(&self, message: String, offset: usize) -> ExprError {
        ExprError {
            message,
            source_text: self.source.to_string(),
            offset,
        }
    }

    fn unexpected(&self, t: &Token) -> ExprError {
        let message = if t.tok == Tok::End {
            "Unexpected end of expression".to_string()
        } else {
            format!("Unexpected token '{}'", t.tok.describe())
        };
        self.error(message, t.pos)
    }

    fn expect(&mut self, tok: Tok) -> Result<Token, ExprError> {
        let t = self.next();
        if t.tok == tok {
            Ok(t)
        } else {
            let mut e = self.unexpected(&t);
            e.message = format!("{}, expected '{}'", e.message, tok.describe());
            Err(e)
        }
    }

    fn enter(&mut self, pos: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(
                format!("Expression nests deeper than {MAX_DEPTH} levels"),
                pos,
            ));
        }
        Ok(())
    }

    fn binary_level(
        &mut self,
        ops: &[(Tok, BinOp)],
        next: fn(&mut Self) -> Result<Node, ExprError>,
    ) -> Result<Node, ExprError> {
        let mut left = next(self)?;
        loop {
            let Some(op) = ops
                .iter()
                .find(|(t, _)| *t == self.peek().tok)
                .map(|(_, op)| *op)
            else {
                return Ok(left);
            };
            self.next();
            let right = next(self)?;
            let pos = left.pos;
            left = Node {
                kind: Kind::Binary(op, Box::new(left), Box::new(right)),
                pos,
            };
        }
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let pos = self.peek().pos;
        self.enter(pos)?;
        let r = self.binary_level(&[(Tok::Or, BinOp::Or)], Self::and);
        self.depth -= 1;
        r
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        self.binary_level(&[(Tok::And, BinOp::And)], Self::equality)
    }

    fn equality(&mut self) -> Result<Node, ExprError> {
        self.binary_level(
            &[(Tok::Eq, BinOp::Eq), (Tok::Ne, BinOp::Ne)],
            Self::comparison,
        )
    }

    fn comparison(&mut self) -> Result<Node, ExprError> {
        self.binary_level(
            &[
                (Tok::Lt, BinOp::Lt),
                (Tok::Le, BinOp::Le),
                (Tok::Gt, BinOp::Gt),
                (Tok::Ge, BinOp::Ge),
            ],
            Self::unary,
        )
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.peek().tok == Tok::Not {
            let t = self.next();
            self.enter(t.pos)?;
            let inner = self.unary();
            self.depth -= 1;
            return Ok(Node {
                kind: Kind::Not(Box::new(inner?)),
                pos: t.pos,
            });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Node, ExprError> {
        let mut node = self.primary()?;
        loop {
            let selector = match self.peek().tok {
                Tok::Dot => {
                    self.next();
                    let t = self.next();
                    match t.tok {
                        Tok::Star => Selector::Wildcard,
                        Tok::Ident(name) => Selector::Name(name),
                        _ => {
                            let mut e = self.unexpected(&t);
                            e.message = format!("{}, expected a property name or '*'", e.message);
                            return Err(e);
                        }
                    }
                }
                Tok::LBracket => {
                    self.next();
                    if self.peek().tok == Tok::Star {
                        self.next();
                        self.expect(Tok::RBracket)?;
                        Selector::Wildcard
                    } else {
                        let index = self.or()?;
                        self.expect(Tok::RBracket)?;
                        Selector::Index(Box::new(index))
                    }
                }
                _ => return Ok(node),
            };
            let pos = node.pos;
            node = Node {
                kind: Kind::Access(Box::new(node), selector),
                pos,
            };
        }
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let t = self.next();
        let kind = match t.tok {
            Tok::Null => Kind::Null,
            Tok::Bool(b) => Kind::Bool(b),
            Tok::Number(n) => Kind::Number(n),
            Tok::Str(ref s) => Kind::Str(s.clone()),
            Tok::LParen => {
                let inner = self.or()?;
                self.expect(Tok::RParen)?;
                return Ok(inner);
            }
            Tok::Ident(ref name) if self.peek().tok == Tok::LParen => {
                let func = Func::lookup(name).map_err(|m| self.error(m, t.pos))?;
                self.next();
                let mut args = Vec::new();
                if self.peek().tok != Tok::RParen {
                    loop {
                        args.push(self.or()?);
                        if self.peek().tok == Tok::Comma {
                            self.next();
                        } else {
                            break;
                        }
                    }
                }
                self.expect(Tok::RParen)?;
                func.check_arity(args.len())
                    .map_err(|m| self.error(m, t.pos))?;
                Kind::Call(func, args)
            }
            Tok::Ident(ref name) => {
                let mut lower = name.to_ascii_lowercase();
                if let Some((_, canonical)) = CONTEXT_ALIASES.iter().find(|(a, _)| *a == lower) {
                    lower = canonical.to_string();
                }
                if !KNOWN_CONTEXTS.contains(&lower.as_str()) && !(self.extra)(name) {
                    return Err(self.error(
                        format!(
                            "Unrecognized named-value '{name}'; known contexts are {}",
                            KNOWN_CONTEXTS.join(", ")
                        ),
                        t.pos,
                    ));
                }
                Kind::Context(lower)
            }
            _ => return Err(self.unexpected(&t)),
        };
        Ok(Node { kind, pos: t.pos })
    }
}
