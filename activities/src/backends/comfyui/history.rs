//! Reading ComfyUI's answers: `/prompt` refusals, `/queue` and `/history` entries, outputs and
//! timings. ComfyUI's shapes vary between versions, so everything but the fields used is
//! ignored and missing pieces have fallbacks.

use crate::ports::BackendError;
use serde_json::Value;
use std::time::Duration;

/// How a finished (or not yet finished) history entry reads.
#[derive(Debug, PartialEq)]
pub(super) enum Entry {
    /// Still running (ComfyUI writes the entry at the end; a partial one reads as running).
    Running,
    Success {
        file: Option<FileRef>,
        elapsed: Option<Duration>,
    },
    /// Interrupted: by someone else (ours are cancelled before this is read while polling), or
    /// by our own cancellation (read afterwards to bill what ran). `elapsed` is the execution
    /// time ComfyUI recorded before it stopped.
    Interrupted { elapsed: Option<Duration> },
    Failed {
        message: String,
        elapsed: Option<Duration>,
    },
}

impl Entry {
    /// The execution time ComfyUI recorded, for a finished entry.
    pub(super) fn elapsed(&self) -> Option<Duration> {
        match self {
            Entry::Running => None,
            Entry::Success { elapsed, .. }
            | Entry::Interrupted { elapsed }
            | Entry::Failed { elapsed, .. } => *elapsed,
        }
    }
}

/// One output file: the `/view` query.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FileRef {
    pub(super) filename: String,
    pub(super) subfolder: String,
    pub(super) kind: String,
}

/// Read one `/history` entry: `{"prompt": [...], "outputs": {...}, "status": {...}}`.
pub(super) fn entry(value: &Value) -> Entry {
    let status = value.get("status");
    let status_str = status
        .and_then(|s| s.get("status_str"))
        .and_then(Value::as_str);
    let completed = status
        .and_then(|s| s.get("completed"))
        .and_then(Value::as_bool);
    let messages: Vec<(&str, &Value)> = status
        .and_then(|s| s.get("messages"))
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|msg| Some((msg.get(0)?.as_str()?, msg.get(1)?)))
                .collect()
        })
        .unwrap_or_default();
    let message = |kind: &str| messages.iter().find(|(k, _)| *k == kind).map(|(_, d)| *d);
    // Execution time: from `execution_start` to whichever message ended it.
    let stamp = |kind: &str| message(kind)?.get("timestamp")?.as_u64();
    let end = [
        "execution_success",
        "execution_interrupted",
        "execution_error",
    ]
    .iter()
    .find_map(|k| stamp(k));
    let elapsed = match (stamp("execution_start"), end) {
        (Some(a), Some(b)) if b >= a => Some(Duration::from_millis(b - a)),
        _ => None,
    };
    match (status_str, completed) {
        (Some("error"), _) => {
            if message("execution_interrupted").is_some() {
                return Entry::Interrupted { elapsed };
            }
            let message = match message("execution_error") {
                Some(e) => {
                    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
                    let node = match e.get("node_id") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        _ => "?".to_owned(),
                    };
                    format!(
                        "node {node} ({}) failed: {}: {}",
                        text("node_type"),
                        text("exception_type"),
                        text("exception_message").trim()
                    )
                }
                None => "ComfyUI reported an error without a message".to_owned(),
            };
            Entry::Failed { message, elapsed }
        }
        // Entries of old versions have no status: their presence means done.
        (Some("success"), _) | (None, None) | (_, Some(true)) => Entry::Success {
            file: first_output(value.get("outputs")),
            elapsed,
        },
        _ => Entry::Running,
    }
}

/// The first output file, by node id (numeric ids in numeric order), preferring saved files
/// (`type` `output`) over previews (`temp`).
pub(super) fn first_output(outputs: Option<&Value>) -> Option<FileRef> {
    let mut nodes: Vec<(&String, &Value)> = outputs?.as_object()?.iter().collect();
    nodes.sort_by_key(|(id, _)| (id.parse::<u64>().map_err(|_| ()), (*id).clone()));
    let files: Vec<FileRef> = nodes
        .into_iter()
        .flat_map(|(_, out)| {
            ["images", "gifs", "videos", "audio"]
                .into_iter()
                .filter_map(|k| out.get(k).and_then(Value::as_array))
                .flatten()
        })
        .filter_map(|f| {
            let text = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_owned);
            Some(FileRef {
                filename: text("filename").filter(|n| !n.is_empty())?,
                subfolder: text("subfolder").unwrap_or_default(),
                kind: text("type").unwrap_or_else(|| "output".to_owned()),
            })
        })
        .collect();
    files
        .iter()
        .find(|f| f.kind == "output")
        .or(files.first())
        .cloned()
}

/// `extra_data.client_id` of a queue item or of a history entry's `prompt`:
/// `[number, prompt_id, graph, extra_data, outputs…]`.
fn client_id(item: &Value) -> Option<&str> {
    item.get(3)?.get("client_id")?.as_str()
}

/// The prompt ids in the running and pending queues (`GET /queue`), with their client ids.
pub(super) fn queued(queue: &Value) -> Vec<(String, Option<String>, bool)> {
    let mut found = Vec::new();
    for (list, running) in [("queue_running", true), ("queue_pending", false)] {
        for item in queue
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = item.get(1).and_then(Value::as_str) {
                found.push((id.to_owned(), client_id(item).map(str::to_owned), running));
            }
        }
    }
    found
}

/// The execution time of `client`'s earlier prompts that did not succeed (interrupted, failed) in
/// a `GET /history` answer: GPU time the attempt used before this run, billed with it.
pub(super) fn spent_before(history: &Value, client: &str) -> Duration {
    history
        .as_object()
        .map(|entries| {
            entries
                .values()
                .filter(|e| e.get("prompt").and_then(client_id) == Some(client))
                .map(entry)
                .filter(|e| matches!(e, Entry::Interrupted { .. } | Entry::Failed { .. }))
                .filter_map(|e| e.elapsed())
                .sum()
        })
        .unwrap_or_default()
}

/// The finished, successful prompt of `client` in a `GET /history` answer, if any.
pub(super) fn succeeded(history: &Value, client: &str) -> Option<(String, Entry)> {
    history.as_object()?.iter().find_map(|(id, e)| {
        if e.get("prompt").and_then(client_id) != Some(client) {
            return None;
        }
        let entry = entry(e);
        matches!(entry, Entry::Success { file: Some(_), .. }).then(|| (id.clone(), entry))
    })
}

/// A readable reason from a `/prompt` refusal:
/// `{"error": {"message", "details"} | "…", "node_errors": {id: {"class_type", "errors": […]}}}`.
pub(super) fn refusal(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(body).chars().take(300).collect();
    };
    let mut parts = Vec::new();
    match value.get("error") {
        Some(Value::String(s)) => parts.push(s.clone()),
        Some(e @ Value::Object(_)) => parts.push(detail(e)),
        _ => {}
    }
    parts.extend(node_errors(value.get("node_errors")));
    if parts.is_empty() {
        value.to_string().chars().take(300).collect()
    } else {
        parts.join("; ")
    }
}

/// One line per node error; empty when there are none.
pub(super) fn node_errors(errors: Option<&Value>) -> Vec<String> {
    let Some(nodes) = errors.and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (id, node) in nodes {
        let class = node
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let errs = node.get("errors").and_then(Value::as_array);
        for e in errs.into_iter().flatten() {
            lines.push(format!("node {id} ({class}): {}", detail(e)));
        }
        if errs.is_none_or(Vec::is_empty) {
            lines.push(format!("node {id} ({class}): {node}"));
        }
    }
    lines
}

fn detail(e: &Value) -> String {
    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").trim();
    match (text("message"), text("details")) {
        ("", "") => e.to_string(),
        (m, "") => m.to_owned(),
        (m, d) => format!("{m}: {d}"),
    }
}

/// The failure of a finished entry as a backend error.
pub(super) fn failure(what: &str, entry: Entry) -> BackendError {
    let used = entry.elapsed().map(super::millis);
    let e = match entry {
        Entry::Interrupted { .. } => {
            BackendError::Transient(format!("the prompt was interrupted on the server ({what})"))
        }
        Entry::Failed { message, .. } if crate::backends::infrastructure(&message) => {
            BackendError::Infrastructure(format!("{message} ({what})"))
        }
        Entry::Failed { message, .. } => BackendError::Rejected(format!("{message} ({what})")),
        Entry::Success { .. } => BackendError::Rejected(format!(
            "{what}: the workflow produced no image, gif or video (does it end in a Save node?)"
        )),
        Entry::Running => BackendError::Transient(format!("{what}: still running")),
    };
    match used {
        Some(gpu_ms) => e.after(gpu_ms),
        None => e,
    }
}
