//! Tree-walking evaluator.

use super::functions::{self, Func};
use super::parser::{BinOp, Kind, Node, Selector};
use super::value::{Val, ValKind, empty_object, loose_compare, loose_equal};
use super::{Contexts, ExprError, JobStatus, PendingHashFiles};
use serde_json::Value;
use std::cmp::Ordering;

pub(crate) struct Evaluator<'a> {
    pub ctx: &'a Contexts,
    pub source: &'a str,
    /// Set when the caller wants to learn which `hashFiles` result is missing.
    pub pending: Option<&'a PendingHashFiles>,
}

impl<'a> Evaluator<'a> {
    fn error(&self, message: String, offset: usize) -> ExprError {
        ExprError {
            message,
            source_text: self.source.to_string(),
            offset,
        }
    }

    pub(crate) fn eval(&self, node: &Node) -> Result<Val<'a>, ExprError> {
        Ok(match &node.kind {
            Kind::Null => Val::Null,
            Kind::Bool(b) => Val::Bool(*b),
            Kind::Number(n) => Val::Num(*n),
            Kind::Str(s) => Val::Str(s.clone()),
            Kind::Context(name) => self.context(name),
            Kind::Access(base, selector) => {
                let base = self.eval(base)?;
                match selector {
                    Selector::Wildcard => wildcard(&base),
                    Selector::Name(name) => access(&base, &Key::Name(name)),
                    Selector::Index(index) => {
                        let index = self.eval(index)?;
                        access(&base, &Key::Value(index))
                    }
                }
            }
            Kind::Not(inner) => Val::Bool(!self.eval(inner)?.truthy()),
            Kind::Binary(BinOp::And, l, r) => {
                let l = self.eval(l)?;
                if l.truthy() { self.eval(r)? } else { l }
            }
            Kind::Binary(BinOp::Or, l, r) => {
                let l = self.eval(l)?;
                if l.truthy() { l } else { self.eval(r)? }
            }
            Kind::Binary(op, l, r) => {
                let (l, r) = (self.eval(l)?, self.eval(r)?);
                let ord = loose_compare(&l, &r);
                Val::Bool(match op {
                    BinOp::Eq => loose_equal(&l, &r),
                    BinOp::Ne => !loose_equal(&l, &r),
                    BinOp::Lt => ord == Some(Ordering::Less),
                    BinOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                    BinOp::Gt => ord == Some(Ordering::Greater),
                    BinOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
                    BinOp::And | BinOp::Or => unreachable!("handled above"),
                })
            }
            Kind::Call(func, args) => self.call(*func, args, node.pos)?,
        })
    }

    fn context(&self, name: &str) -> Val<'a> {
        let found = self.ctx.values.get(name).or_else(|| {
            self.ctx
                .values
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        });
        match found {
            Some(v) => Val::from_ref(v),
            None => empty_object(),
        }
    }

    fn call(&self, func: Func, args: &[Node], pos: usize) -> Result<Val<'a>, ExprError> {
        let status = self.ctx.status;
        match func {
            Func::Success => return Ok(Val::Bool(status == JobStatus::Success)),
            Func::Failure => return Ok(Val::Bool(status == JobStatus::Failure)),
            Func::Cancelled => return Ok(Val::Bool(status == JobStatus::Cancelled)),
            Func::Always => return Ok(Val::Bool(true)),
            _ => {}
        }
        let vals = args
            .iter()
            .map(|a| self.eval(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match func {
            Func::Contains => Val::Bool(functions::contains(&vals[0], &vals[1])),
            Func::StartsWith => Val::Bool(functions::affix(&vals[0], &vals[1], true)),
            Func::EndsWith => Val::Bool(functions::affix(&vals[0], &vals[1], false)),
            Func::Format => Val::Str(
                functions::format(&vals[0].to_display_string(), &vals[1..])
                    .map_err(|m| self.error(m, pos))?,
            ),
            Func::Join => Val::Str(functions::join(&vals[0], vals.get(1))),
            Func::ToJson => Val::Str(functions::to_json(&vals[0])),
            Func::FromJson => functions::from_json(&vals[0]).map_err(|m| self.error(m, pos))?,
            Func::HashFiles => {
                let args: Vec<String> = vals.iter().map(Val::to_display_string).collect();
                match self.ctx.hash_files.get(&args) {
                    Some(hash) => Val::Str(hash.clone()),
                    None => {
                        if let Some(p) = self.pending {
                            *p.borrow_mut() = Some(args);
                        }
                        return Err(self.error(
                            "hashFiles() cannot be computed here: it hashes files in the job's \
                             workspace, so it works in a step's `if`, `env`, `run`, `with` and \
                             `working-directory` and in job outputs"
                                .into(),
                            pos,
                        ));
                    }
                }
            }
            Func::Success | Func::Failure | Func::Cancelled | Func::Always => {
                unreachable!("handled above")
            }
        })
    }
}

enum Key<'k, 'a> {
    Name(&'k str),
    Value(Val<'a>),
}

/// Looks up one key; `None` when it is missing (a filter skips those).
fn lookup<'a>(base: &Val<'a>, key: &Key<'_, 'a>) -> Option<Val<'a>> {
    match base {
        Val::Ref(v) => lookup_json(v, key).map(Val::from_ref),
        Val::Owned(v) => lookup_json(v, key).cloned().map(Val::from_owned),
        Val::Filtered(items) => {
            let index = array_index(key, items.len())?;
            items.get(index).cloned()
        }
        _ => None,
    }
}

fn lookup_json<'v>(v: &'v Value, key: &Key) -> Option<&'v Value> {
    match v {
        Value::Object(map) => {
            let name = match key {
                Key::Name(n) => (*n).to_string(),
                Key::Value(k) if k.is_primitive() => k.to_display_string(),
                Key::Value(_) => return None,
            };
            map.get(&name).or_else(|| {
                map.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&name))
                    .map(|(_, v)| v)
            })
        }
        Value::Array(a) => a.get(array_index(key, a.len())?),
        _ => None,
    }
}

/// An array index: a whole, non-negative number within range.
fn array_index(key: &Key, len: usize) -> Option<usize> {
    let Key::Value(k) = key else { return None };
    if !k.is_primitive() {
        return None;
    }
    let n = k.to_number();
    if n.fract() != 0.0 || n < 0.0 || n >= len as f64 {
        return None;
    }
    Some(n as usize)
}

/// `.name` / `[index]`. On a filter result it applies to every element and
/// drops the elements that lack the key.
fn access<'a>(base: &Val<'a>, key: &Key<'_, 'a>) -> Val<'a> {
    if let Val::Filtered(items) = base {
        return Val::Filtered(items.iter().filter_map(|x| lookup(x, key)).collect());
    }
    lookup(base, key).unwrap_or(Val::Null)
}

/// `.*` / `[*]`: the elements of an array or the values of an object; on a
/// filter result, the children of every element, flattened.
fn wildcard<'a>(base: &Val<'a>) -> Val<'a> {
    match base {
        Val::Filtered(items) => Val::Filtered(items.iter().flat_map(children).collect()),
        other if other.is_primitive() => Val::Null,
        other => Val::Filtered(children(other)),
    }
}

fn children<'a>(v: &Val<'a>) -> Vec<Val<'a>> {
    if v.kind() == ValKind::Array {
        return v.array_items().unwrap_or_default();
    }
    match v {
        Val::Ref(Value::Object(m)) => m.values().map(Val::from_ref).collect(),
        Val::Owned(o) => match &**o {
            Value::Object(m) => m.values().cloned().map(Val::from_owned).collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}
