//! The `inputs` context: built from the event and from the inputs a workflow
//! declares under `on:` (`shared/spec/forgejo-runner-protocol.md` §6).
//!
//! - `workflow_call`: Forgejo expands a reusable workflow on the server and
//!   sends each inner job with the caller's `with:` values written as
//!   `on.workflow_call.inputs.<name>.default`; those defaults are the inputs.
//! - `workflow_dispatch`: the event's `inputs` as they come, plus the
//!   declared default of every input the event lacks.
//! - A local run (`solstice exec`) has no event: every declared default.
//!
//! Defaults are converted by the input's `type`: `boolean` gives a boolean,
//! `number` a number, `string` a string; other types keep the YAML value.

use serde_json::{Map, Value};

use super::model::{InputSpec, Workflow};

/// Where a job's inputs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSource<'a> {
    /// A forge task: its `github.event_name` and `github.event`.
    Event { name: &'a str, event: &'a Value },
    /// `solstice exec`: no event; the declared defaults of `workflow_dispatch`
    /// inputs, then those of `workflow_call` inputs not declared there.
    Local,
}

/// The `inputs` context of a job of `wf` (always an object).
pub fn inputs_context(wf: &Workflow, source: InputSource<'_>) -> Value {
    let mut out = Map::new();
    match source {
        InputSource::Event {
            name: "workflow_call",
            ..
        } => add_defaults(&mut out, &wf.on.workflow_call_inputs),
        InputSource::Event {
            name: "workflow_dispatch",
            event,
        } => {
            if let Some(Value::Object(given)) = event.get("inputs") {
                out.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            add_defaults(&mut out, &wf.on.workflow_dispatch_inputs);
        }
        InputSource::Event { .. } => {}
        InputSource::Local => {
            add_defaults(&mut out, &wf.on.workflow_dispatch_inputs);
            add_defaults(&mut out, &wf.on.workflow_call_inputs);
        }
    }
    Value::Object(out)
}

/// Adds the typed default of every declared input not in `out` yet.
fn add_defaults(out: &mut Map<String, Value>, declared: &indexmap::IndexMap<String, InputSpec>) {
    for (name, spec) in declared {
        if out.contains_key(name) {
            continue;
        }
        if let Some(v) = typed_default(spec) {
            out.insert(name.clone(), v);
        }
    }
}

/// An input's default converted by its type. A `boolean` without a default
/// is `false`, as on GitHub; other inputs without one are left out (`null`).
fn typed_default(spec: &InputSpec) -> Option<Value> {
    use serde_norway::Value as Y;
    let scalar = |v: &Y| -> Option<String> {
        match v {
            Y::String(s) => Some(s.clone()),
            Y::Bool(b) => Some(b.to_string()),
            Y::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let Some(default) = &spec.default else {
        return (spec.kind == "boolean").then_some(Value::Bool(false));
    };
    match spec.kind.as_str() {
        "boolean" => Some(match default {
            Y::Bool(b) => Value::Bool(*b),
            other => match scalar(other) {
                Some(s) if s.trim().eq_ignore_ascii_case("true") => Value::Bool(true),
                Some(s) if s.trim().eq_ignore_ascii_case("false") || s.trim().is_empty() => {
                    Value::Bool(false)
                }
                // Not a boolean after all: kept as written rather than guessed.
                Some(s) => Value::String(s),
                None => yaml_to_json(other),
            },
        }),
        "number" => Some(match default {
            Y::Number(n) => number(n.as_f64()).unwrap_or_else(|| Value::String(n.to_string())),
            other => match scalar(other) {
                Some(s) => number(s.trim().parse::<f64>().ok()).unwrap_or(Value::String(s)),
                None => yaml_to_json(other),
            },
        }),
        "string" => Some(scalar(default).map_or_else(|| yaml_to_json(default), Value::String)),
        _ => Some(yaml_to_json(default)),
    }
}

/// A finite number as JSON: whole numbers as integers (`3`, not `3.0`).
fn number(n: Option<f64>) -> Option<Value> {
    let n = n.filter(|n| n.is_finite())?;
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        // Exact: a whole number below 2^53.
        #[allow(clippy::cast_possible_truncation)]
        return Some(Value::from(n as i64));
    }
    serde_json::Number::from_f64(n).map(Value::Number)
}

/// A YAML value as JSON (a default given as a list or mapping).
fn yaml_to_json(v: &serde_norway::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::parse_workflow;
    use serde_json::json;

    fn wf(on: &str) -> Workflow {
        parse_workflow(&format!(
            "{on}\njobs:\n  j:\n    runs-on: linux\n    steps:\n      - run: 'true'\n"
        ))
        .unwrap()
    }

    const CALL: &str = "\
on:
  workflow_call:
    inputs:
      flag:
        type: boolean
        default: true
      off:
        type: boolean
        default: 'false'
      n:
        type: number
        default: '42'
      ratio:
        type: number
        default: 1.5
      name:
        type: string
        default: 7
      untyped:
        default: hello
      nodefault:
        type: string
      nobool:
        type: boolean
  __metadata:
    workflow_call_id: abc
    inputs: {flag: true}
";

    #[test]
    fn workflow_call_inputs_are_the_typed_defaults() {
        let w = wf(CALL);
        let event = json!({});
        let got = inputs_context(
            &w,
            InputSource::Event {
                name: "workflow_call",
                event: &event,
            },
        );
        assert_eq!(
            got,
            json!({
                "flag": true,
                "off": false,
                "n": 42,
                "ratio": 1.5,
                "name": "7",
                "untyped": "hello",
                "nobool": false,
            })
        );
        // Another event gets no inputs.
        let push = inputs_context(
            &w,
            InputSource::Event {
                name: "push",
                event: &event,
            },
        );
        assert_eq!(push, json!({}));
    }

    #[test]
    fn dispatch_keeps_event_values_and_fills_in_defaults() {
        let w = wf("\
on:
  push:
  workflow_dispatch:
    inputs:
      level:
        type: number
        default: 1
      dry:
        type: boolean
        default: true
      who:
        default: world
");
        let event = json!({"inputs": {"level": "3"}});
        let got = inputs_context(
            &w,
            InputSource::Event {
                name: "workflow_dispatch",
                event: &event,
            },
        );
        assert_eq!(got, json!({"level": "3", "dry": true, "who": "world"}));
        // Without event inputs: only the defaults.
        let none = json!({});
        let got = inputs_context(
            &w,
            InputSource::Event {
                name: "workflow_dispatch",
                event: &none,
            },
        );
        assert_eq!(got, json!({"level": 1, "dry": true, "who": "world"}));
        assert_eq!(
            inputs_context(&w, InputSource::Local),
            json!({"level": 1, "dry": true, "who": "world"})
        );
    }

    #[test]
    fn local_runs_take_dispatch_then_call_defaults() {
        let w = wf("\
on:
  workflow_dispatch:
    inputs:
      a: {default: from-dispatch}
  workflow_call:
    inputs:
      a: {default: from-call}
      b: {type: number, default: 2}
");
        assert_eq!(
            inputs_context(&w, InputSource::Local),
            json!({"a": "from-dispatch", "b": 2})
        );
    }

    #[test]
    fn any_shape_of_on_is_accepted() {
        for on in [
            "on: push",
            "on: [push, workflow_dispatch]",
            "on:\n  workflow_call:",
            "on:\n  workflow_call: 3",
            "on:\n  workflow_call:\n    inputs: [a, b]",
            "on:\n  workflow_call:\n    inputs:\n      a: just-a-string\n      7: {default: x}",
            "on:\n  workflow_dispatch:\n    inputs:\n      a: {type: [x], default: {k: v}}",
            "on: {}",
            "on: null",
            "",
        ] {
            let w = wf(on);
            let event = json!({"inputs": "not an object"});
            for name in ["workflow_call", "workflow_dispatch", "push"] {
                let v = inputs_context(
                    &w,
                    InputSource::Event {
                        name,
                        event: &event,
                    },
                );
                assert!(v.is_object(), "{on}: {v}");
            }
        }
        // A numeric key and a non-mapping input are skipped; a mapping default is kept.
        let w =
            wf("on:\n  workflow_dispatch:\n    inputs:\n      a: {default: {k: v}}\n      b: x\n");
        assert_eq!(
            inputs_context(&w, InputSource::Local),
            json!({"a": {"k": "v"}})
        );
    }
}
