//! Message types of the Forgejo/Gitea runner protocol (`ping.v1`, `runner.v1`),
//! declared by hand with `prost` derives. Field numbers follow
//! `shared/spec/forgejo-runner-protocol.md` §2; no `protoc` at build time.
//!
//! Messages that carry secrets (registration tokens, runner tokens, task
//! secrets and tokens) have a hand-written `Debug` that hides them.

use std::collections::HashMap;
use std::fmt;

pub use prost_types::{Struct, Timestamp};

/// `ping.v1.PingRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingRequest {
    #[prost(string, tag = "1")]
    pub data: String,
}

/// `ping.v1.PingResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingResponse {
    #[prost(string, tag = "1")]
    pub data: String,
}

/// `runner.v1.RunnerStatus` (the runner ignores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RunnerStatus {
    Unspecified = 0,
    Idle = 1,
    Active = 2,
    Offline = 3,
}

/// `runner.v1.Result`: the result of a task, a step or a need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TaskResult {
    Unspecified = 0,
    Success = 1,
    Failure = 2,
    Cancelled = 3,
    Skipped = 4,
}

impl TaskResult {
    /// Lower-case name without the `RESULT_` prefix, as `needs.<id>.result` spells it.
    pub fn context_name(self) -> &'static str {
        match self {
            TaskResult::Unspecified => "",
            TaskResult::Success => "success",
            TaskResult::Failure => "failure",
            TaskResult::Cancelled => "cancelled",
            TaskResult::Skipped => "skipped",
        }
    }

    /// Decodes a wire value; unknown numbers count as unspecified.
    pub fn from_wire(v: i32) -> TaskResult {
        TaskResult::try_from(v).unwrap_or(TaskResult::Unspecified)
    }
}

impl From<crate::events::Conclusion> for TaskResult {
    fn from(c: crate::events::Conclusion) -> Self {
        use crate::events::Conclusion;
        match c {
            Conclusion::Success => TaskResult::Success,
            Conclusion::Failure => TaskResult::Failure,
            Conclusion::Cancelled => TaskResult::Cancelled,
            Conclusion::Skipped => TaskResult::Skipped,
        }
    }
}

/// `runner.v1.RegisterRequest`
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct RegisterRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The registration token (secret).
    #[prost(string, tag = "2")]
    pub token: String,
    /// Deprecated; still filled with the label names for old servers.
    #[prost(string, repeated, tag = "3")]
    pub agent_labels: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub custom_labels: Vec<String>,
    #[prost(string, tag = "5")]
    pub version: String,
    #[prost(string, repeated, tag = "6")]
    pub labels: Vec<String>,
    #[prost(bool, tag = "7")]
    pub ephemeral: bool,
    /// Gitea 2026 only.
    #[prost(string, repeated, tag = "8")]
    pub capabilities: Vec<String>,
}

impl fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("name", &self.name)
            .field("token", &"***")
            .field("version", &self.version)
            .field("labels", &self.labels)
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

/// `runner.v1.Runner`
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct Runner {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(string, tag = "2")]
    pub uuid: String,
    /// The runner secret (40 hex characters).
    #[prost(string, tag = "3")]
    pub token: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(enumeration = "RunnerStatus", tag = "5")]
    pub status: i32,
    #[prost(string, repeated, tag = "6")]
    pub agent_labels: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub custom_labels: Vec<String>,
    #[prost(string, tag = "8")]
    pub version: String,
    #[prost(string, repeated, tag = "9")]
    pub labels: Vec<String>,
    #[prost(bool, tag = "10")]
    pub ephemeral: bool,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("id", &self.id)
            .field("uuid", &self.uuid)
            .field("token", &"***")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("labels", &self.labels)
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

/// `runner.v1.RegisterResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterResponse {
    #[prost(message, optional, tag = "1")]
    pub runner: Option<Runner>,
}

/// `runner.v1.DeclareRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeclareRequest {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, repeated, tag = "2")]
    pub labels: Vec<String>,
    /// Gitea 2026 only.
    #[prost(string, repeated, tag = "3")]
    pub capabilities: Vec<String>,
}

/// `runner.v1.DeclareResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeclareResponse {
    #[prost(message, optional, tag = "1")]
    pub runner: Option<Runner>,
}

/// `runner.v1.FetchTaskRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchTaskRequest {
    #[prost(int64, tag = "1")]
    pub tasks_version: i64,
    /// Forgejo ≥ 14: free slots; the server may return that many tasks.
    #[prost(int64, optional, tag = "2")]
    pub task_capacity: Option<i64>,
}

/// `runner.v1.FetchTaskResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchTaskResponse {
    #[prost(message, optional, tag = "1")]
    pub task: Option<Task>,
    #[prost(int64, tag = "2")]
    pub tasks_version: i64,
    /// Forgejo ≥ 14. May arrive with `task` empty (Forgejo 14.0.0/14.0.1 bug).
    #[prost(message, repeated, tag = "3")]
    pub additional_tasks: Vec<Task>,
}

/// `runner.v1.FetchSingleTaskRequest` (Forgejo ≥ 15).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchSingleTaskRequest {
    #[prost(int64, tag = "1")]
    pub tasks_version: i64,
    #[prost(string, optional, tag = "2")]
    pub handle: Option<String>,
}

/// `runner.v1.FetchSingleTaskResponse` (Forgejo ≥ 15). Field order reversed
/// compared with [`FetchTaskResponse`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchSingleTaskResponse {
    #[prost(int64, tag = "1")]
    pub tasks_version: i64,
    #[prost(message, optional, tag = "2")]
    pub task: Option<Task>,
}

/// `runner.v1.TaskNeed`
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskNeed {
    #[prost(map = "string, string", tag = "1")]
    pub outputs: HashMap<String, String>,
    #[prost(enumeration = "TaskResult", tag = "2")]
    pub result: i32,
}

/// `runner.v1.Task`
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct Task {
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// YAML of a single-job workflow.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub workflow_payload: Option<Vec<u8>>,
    /// The `github` context plus `forgejo_*`/`gitea_*` extras. Holds the task token.
    #[prost(message, optional, tag = "3")]
    pub context: Option<Struct>,
    #[prost(map = "string, string", tag = "4")]
    pub secrets: HashMap<String, String>,
    #[prost(string, tag = "5")]
    pub machine: String,
    #[prost(map = "string, message", tag = "6")]
    pub needs: HashMap<String, TaskNeed>,
    #[prost(map = "string, string", tag = "7")]
    pub vars: HashMap<String, String>,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secret_names: Vec<&String> = self.secrets.keys().collect();
        secret_names.sort();
        f.debug_struct("Task")
            .field("id", &self.id)
            .field(
                "workflow_payload",
                &self.workflow_payload.as_ref().map(|p| p.len()),
            )
            .field("context", &self.context.as_ref().map(|_| "{…}"))
            .field("secrets", &secret_names)
            .field("needs", &self.needs.keys().collect::<Vec<_>>())
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// `runner.v1.StepState`
#[derive(Clone, PartialEq, prost::Message)]
pub struct StepState {
    /// 0-based index within the job's `steps:`.
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(enumeration = "TaskResult", tag = "2")]
    pub result: i32,
    #[prost(message, optional, tag = "3")]
    pub started_at: Option<Timestamp>,
    #[prost(message, optional, tag = "4")]
    pub stopped_at: Option<Timestamp>,
    /// Absolute index of the step's first log row.
    #[prost(int64, tag = "5")]
    pub log_index: i64,
    #[prost(int64, tag = "6")]
    pub log_length: i64,
}

/// `runner.v1.TaskState`
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskState {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(enumeration = "TaskResult", tag = "2")]
    pub result: i32,
    #[prost(message, optional, tag = "3")]
    pub started_at: Option<Timestamp>,
    #[prost(message, optional, tag = "4")]
    pub stopped_at: Option<Timestamp>,
    #[prost(message, repeated, tag = "5")]
    pub steps: Vec<StepState>,
}

/// `runner.v1.UpdateTaskRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateTaskRequest {
    #[prost(message, optional, tag = "1")]
    pub state: Option<TaskState>,
    /// Job outputs not yet acknowledged in `sent_outputs`.
    #[prost(map = "string, string", tag = "2")]
    pub outputs: HashMap<String, String>,
}

/// `runner.v1.UpdateTaskResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateTaskResponse {
    /// Only `id` and `result` (the server's view: the cancellation signal).
    #[prost(message, optional, tag = "1")]
    pub state: Option<TaskState>,
    /// Every output key the server has stored for this task.
    #[prost(string, repeated, tag = "2")]
    pub sent_outputs: Vec<String>,
}

/// `runner.v1.LogRow`: one line, no trailing newline.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogRow {
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub content: String,
}

/// `runner.v1.UpdateLogRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateLogRequest {
    #[prost(int64, tag = "1")]
    pub task_id: i64,
    /// Absolute index of `rows[0]`: the rows already acknowledged.
    #[prost(int64, tag = "2")]
    pub index: i64,
    #[prost(message, repeated, tag = "3")]
    pub rows: Vec<LogRow>,
    #[prost(bool, tag = "4")]
    pub no_more: bool,
}

/// `runner.v1.UpdateLogResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateLogResponse {
    /// Rows the server now holds.
    #[prost(int64, tag = "1")]
    pub ack_index: i64,
}

/// Protobuf timestamp of a wall-clock time.
pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Protobuf timestamp of the current time.
pub fn now() -> Timestamp {
    timestamp(std::time::SystemTime::now())
}

/// Converts a protobuf `Struct` into JSON.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

/// Converts a protobuf `Value` into JSON. Integral numbers become integers.
pub fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// Converts JSON into a protobuf `Value` (the fake forge builds contexts with it).
pub fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Converts a JSON object into a protobuf `Struct`; other values give an empty one.
pub fn json_to_struct(v: &serde_json::Value) -> Struct {
    match v {
        serde_json::Value::Object(m) => Struct {
            fields: m
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        },
        _ => Struct::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_examples_from_the_spec() {
        let ping = PingRequest {
            data: "runner-1".into(),
        };
        assert_eq!(
            ping.encode_to_vec(),
            [0x0a, 0x08, b'r', b'u', b'n', b'n', b'e', b'r', b'-', b'1']
        );
        let fetch = FetchTaskRequest {
            tasks_version: 0,
            task_capacity: Some(2),
        };
        assert_eq!(fetch.encode_to_vec(), [0x10, 0x02]);
        let resp = FetchTaskResponse::decode(&[0x10u8, 0x07][..]).unwrap();
        assert_eq!(resp.tasks_version, 7);
        assert!(resp.task.is_none());
        assert_eq!(
            UpdateLogResponse { ack_index: 5 }.encode_to_vec(),
            [0x08, 0x05]
        );
        // An empty body is a message at its defaults.
        assert_eq!(UpdateLogResponse::decode(&[][..]).unwrap().ack_index, 0);
        // FetchSingleTaskResponse has its fields the other way round.
        let single = FetchSingleTaskResponse {
            tasks_version: 3,
            task: None,
        };
        assert_eq!(single.encode_to_vec(), [0x08, 0x03]);
    }

    #[test]
    fn debug_hides_secrets() {
        let task = Task {
            id: 9,
            secrets: HashMap::from([("API_KEY".into(), "hunter2-secret".into())]),
            context: Some(json_to_struct(
                &serde_json::json!({"token": "ctx-token-value"}),
            )),
            ..Task::default()
        };
        let d = format!("{task:?}");
        assert!(d.contains("API_KEY"), "{d}");
        assert!(!d.contains("hunter2") && !d.contains("ctx-token"), "{d}");
        let r = Runner {
            token: "abcdef0123456789".into(),
            ..Runner::default()
        };
        assert!(!format!("{r:?}").contains("abcdef"));
        let reg = RegisterRequest {
            token: "regtoken-zzz".into(),
            ..RegisterRequest::default()
        };
        assert!(!format!("{reg:?}").contains("regtoken"));
        let resp = RegisterResponse { runner: Some(r) };
        assert!(!format!("{resp:?}").contains("abcdef"));
    }

    #[test]
    fn struct_json_round_trip() {
        let v = serde_json::json!({
            "event": {"inputs": {"n": 3}, "list": [1, "a", true, null]},
            "run_id": "42",
            "ref_protected": false,
            "ratio": 0.5
        });
        assert_eq!(struct_to_json(&json_to_struct(&v)), v);
    }
}
