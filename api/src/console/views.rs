//! What the pages show, shaped from the store's records and the live status: plain strings and
//! flags, so templates only lay them out (and escape them). Pure functions, unit-tested.

use super::time::{gpu, human_ms, parse_rfc3339_ms};
use retake_activities::files::FileRoots;
use retake_activities::ports::{PolicyChange, SegmentRow, StoredAttempt, StoredOutcome};
use retake_client::AwaitingReview;
use retake_domain::contract::{AttemptRecord, Params};
use retake_domain::event::CreatorEvent;
use retake_domain::params::ParamChange;
use retake_domain::status::InFlight;
use retake_domain::{FieldError, RetryPolicy, select};
use serde_json::Value;

/// Text outputs larger than this are cut (a chapter is far smaller; a page stays quick).
const TEXT_LIMIT: u64 = 64 * 1024;

/// An attempt's output as the browser can show it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Output {
    /// `image`, `video`, `text`, `uri` (shown as text: the browser cannot load it) or `none`.
    pub(crate) kind: &'static str,
    /// The URI (for `image`/`video`, the `src`).
    pub(crate) uri: String,
    /// The text, for `text`.
    pub(crate) text: String,
}

fn extension(uri: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or("");
    path.rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

/// `image` or `video` for an `http(s)` URI the browser can fetch and show, by its extension.
fn fetchable_media(uri: &str) -> Option<&'static str> {
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return None;
    }
    match extension(uri).as_str() {
        "png" | "jpg" | "jpeg" | "webp" | "gif" | "avif" | "svg" => Some("image"),
        "mp4" | "webm" | "mov" | "ogv" => Some("video"),
        _ => None,
    }
}

/// How to show `uri`: media a browser can fetch (`http(s)`, `data:`) inline by extension; local
/// text files (`file://`, what text backends write) read here, up to [`TEXT_LIMIT`], when they lie
/// under `files`' roots; anything else (`sim://`, `file://` media, files elsewhere) as the URI
/// itself, never read.
pub(crate) async fn output(uri: Option<&str>, files: &FileRoots) -> Output {
    let Some(uri) = uri.filter(|u| !u.is_empty()) else {
        return Output {
            kind: "none",
            ..Output::default()
        };
    };
    let kind = match (fetchable_media(uri), extension(uri).as_str()) {
        (Some(kind), _) => kind,
        (None, "txt" | "md" | "json") if uri.starts_with("file://") => {
            if let Some(text) = read_text(uri, files).await {
                return Output {
                    kind: "text",
                    uri: uri.to_owned(),
                    text,
                };
            }
            "uri"
        }
        _ if uri.starts_with("data:image/") => "image",
        _ => "uri",
    };
    Output {
        kind,
        uri: uri.to_owned(),
        text: String::new(),
    }
}

async fn read_text(uri: &str, files: &FileRoots) -> Option<String> {
    let (mut text, cut) = files.open_text(uri, TEXT_LIMIT).await.ok()?;
    if cut {
        text.push_str("\n… (cut)");
    }
    Some(text)
}

/// A name and a shown value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pair {
    pub(crate) name: String,
    pub(crate) value: String,
}

/// One score of an attempt, on the 0–1 scale the scorer gave it, with the pass threshold of
/// its metric in the scene type's policy (empty when the metric has none) and whether it fell
/// below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScoreView {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) min: String,
    pub(crate) below: bool,
}

/// One category of the scorer's breakdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Category {
    pub(crate) name: String,
    pub(crate) score: String,
    pub(crate) feedback: String,
}

/// One attempt, as its card shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttemptView {
    pub(crate) number: u32,
    pub(crate) status: &'static str,
    pub(crate) selected: bool,
    pub(crate) running: bool,
    /// Whether a creator may accept it ([`AttemptRecord::acceptable`]: it has an output).
    pub(crate) acceptable: bool,
    /// Its quality (the policy's weighted score) when it was scored: what "best" compares.
    pub(crate) rank: Option<f64>,
    /// The acceptable attempt of the run in review with the highest quality: preselected, and
    /// marked on its card (see `pages::mark_best`).
    pub(crate) best: bool,
    pub(crate) seed: String,
    pub(crate) strategy: String,
    pub(crate) why: String,
    pub(crate) arms: String,
    pub(crate) params: Vec<Pair>,
    pub(crate) jitter: Vec<String>,
    pub(crate) quality: String,
    pub(crate) scores: Vec<ScoreView>,
    pub(crate) breakdown: Vec<Category>,
    pub(crate) failures: String,
    pub(crate) error: String,
    pub(crate) note: String,
    pub(crate) prompt: String,
    pub(crate) gpu: String,
    /// The worker that generated it (empty when unknown).
    pub(crate) worker: String,
    pub(crate) output: Output,
    /// For a text attempt that revised a draft: which one ("the original draft", "attempt 2")
    /// and the changes from it (empty when there is nothing to compare).
    pub(crate) diff_against: String,
    pub(crate) diff: Vec<DiffLine>,
}

/// One line of a diff: `eq` (context), `del` (only in the draft), `ins` (only in the
/// revision) or `gap` (unchanged lines left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiffLine {
    pub(crate) kind: &'static str,
    pub(crate) text: String,
}

/// Lines of context kept around each change.
const DIFF_CONTEXT: usize = 2;

/// The line changes from `draft` to `revised`, with [`DIFF_CONTEXT`] unchanged lines around each
/// change and a `gap` where more were left out; empty when the texts are the same.
pub(crate) fn diff_lines(draft: &str, revised: &str) -> Vec<DiffLine> {
    // A last line without its newline is the same line to a reader.
    let ended = |t: &str| {
        if t.ends_with('\n') {
            t.to_owned()
        } else {
            format!("{t}\n")
        }
    };
    let (draft, revised) = (ended(draft), ended(revised));
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_millis(200))
        .diff_lines(&draft, &revised);
    let mut out = Vec::new();
    for (i, group) in diff.grouped_ops(DIFF_CONTEXT).iter().enumerate() {
        if i > 0 || group.first().is_some_and(|op| op.old_range().start > 0) {
            out.push(DiffLine {
                kind: "gap",
                text: "…".to_owned(),
            });
        }
        for op in group {
            for change in diff.iter_changes(op) {
                out.push(DiffLine {
                    kind: match change.tag() {
                        similar::ChangeTag::Equal => "eq",
                        similar::ChangeTag::Delete => "del",
                        similar::ChangeTag::Insert => "ins",
                    },
                    text: change.value().trim_end_matches(['\n', '\r']).to_owned(),
                });
            }
        }
    }
    out
}

/// Fill in the diffs of a run's text attempts: each against the draft it revised (`revises`:
/// 0 is the failed generation the retry started from, its `output_uri` parameter; else an
/// earlier attempt of the run, whose text the page already shows).
pub(crate) async fn add_diffs(
    records: &[&AttemptRecord],
    views: &mut [AttemptView],
    files: &FileRoots,
) {
    let mut original: Option<Option<String>> = None;
    for i in 0..views.len() {
        if views[i].output.kind != "text" {
            continue;
        }
        let Some(rec) = records.iter().find(|r| r.attempt == views[i].number) else {
            continue;
        };
        let (against, draft) = match rec.revises {
            Some(0) => {
                if original.is_none() {
                    let uri = rec
                        .original_params
                        .0
                        .get("output_uri")
                        .and_then(Value::as_str);
                    original = Some(match uri {
                        Some(u) if u.starts_with("file://") => read_text(u, files).await,
                        _ => None,
                    });
                }
                ("the original draft".to_owned(), original.clone().flatten())
            }
            Some(k) => (
                format!("attempt {k}"),
                views
                    .iter()
                    .find(|v| v.number == k && v.output.kind == "text")
                    .map(|v| v.output.text.clone()),
            ),
            None => continue,
        };
        if let Some(draft) = draft {
            views[i].diff = diff_lines(&draft, &views[i].output.text);
            views[i].diff_against = against;
        }
    }
}

impl AttemptView {
    /// An attempt in flight with what the workflow already knows of it: seed, parameters sent,
    /// jitter, strategy, where it stands, the worker it was placed on.
    pub(crate) fn planned(known: &InFlight) -> Self {
        let stage = match known.stage.as_str() {
            "placing" => "Waiting for a worker…",
            "scoring" => "Generated; scoring…",
            _ => "Generating…",
        };
        let note = match known.reruns {
            0 => stage.to_owned(),
            1 => format!("{stage} (re-run after a failure on its machine)"),
            n => format!("{stage} (re-run {n} times after failures on its machine)"),
        };
        Self {
            seed: known.seed.to_string(),
            strategy: known.strategy.clone().unwrap_or_default(),
            params: shown_params(&known.params),
            jitter: shown_jitter(&known.jitter),
            worker: known.worker.clone().unwrap_or_default(),
            note,
            ..Self::in_flight(known.attempt)
        }
    }

    /// The attempt in flight: planned, not recorded yet.
    pub(crate) fn in_flight(number: u32) -> Self {
        Self {
            number,
            status: "running",
            selected: false,
            running: true,
            acceptable: false,
            rank: None,
            best: false,
            seed: String::new(),
            strategy: String::new(),
            why: String::new(),
            arms: String::new(),
            params: Vec::new(),
            jitter: Vec::new(),
            quality: String::new(),
            scores: Vec::new(),
            breakdown: Vec::new(),
            failures: String::new(),
            error: String::new(),
            note: "Generating…".to_owned(),
            prompt: String::new(),
            gpu: String::new(),
            worker: String::new(),
            output: Output {
                kind: "none",
                ..Output::default()
            },
            diff_against: String::new(),
            diff: Vec::new(),
        }
    }
}

/// Parameters as the cards list them, a name and its value each.
fn shown_params(params: &Params) -> Vec<Pair> {
    params
        .0
        .iter()
        .map(|(k, v)| Pair {
            name: k.clone(),
            value: shown(v),
        })
        .collect()
}

/// Each jittered parameter as the cards list it: `cfg_scale 7 → 6.809`.
fn shown_jitter(jitter: &[ParamChange]) -> Vec<String> {
    jitter
        .iter()
        .map(|c| format!("{} {} → {:.3}", c.param, c.original, c.value))
        .collect()
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The card of `a`; `quality` by the scene type's policy (the number runs are ranked by).
pub(crate) async fn attempt(
    a: &AttemptRecord,
    selected: bool,
    policy: &RetryPolicy,
    files: &FileRoots,
) -> AttemptView {
    let scored = !a.scores.is_empty();
    AttemptView {
        number: a.attempt,
        status: a.status.as_str(),
        selected,
        running: false,
        acceptable: a.acceptable(),
        rank: scored.then(|| select::quality(policy, &a.scores)),
        best: false,
        seed: a.seed.to_string(),
        strategy: a
            .strategy
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        why: a
            .variation
            .as_ref()
            .and_then(|v| v.why.clone())
            .unwrap_or_default(),
        arms: a
            .variation
            .as_ref()
            .map(|v| v.arms.join(", "))
            .unwrap_or_default(),
        params: shown_params(&a.params),
        jitter: shown_jitter(&a.jitter),
        quality: if scored {
            format!("{:.3}", select::quality(policy, &a.scores))
        } else {
            String::new()
        },
        scores: a
            .scores
            .iter()
            .map(|(k, v)| {
                let threshold = policy.thresholds.get(k);
                ScoreView {
                    name: k.clone(),
                    value: format!("{v:.3}"),
                    min: threshold
                        .map(|t| format!("{:.2}", t.min))
                        .unwrap_or_default(),
                    below: threshold.is_some_and(|t| *v < t.min),
                }
            })
            .collect(),
        breakdown: a
            .breakdown
            .iter()
            .map(|c| Category {
                name: c.category.clone(),
                score: format!("{:.3}", c.score),
                feedback: c.feedback.clone(),
            })
            .collect(),
        failures: a.failures.join(", "),
        error: match (&a.error_type, &a.error) {
            (Some(t), Some(e)) => format!("{t}: {e}"),
            (None, Some(e)) => e.clone(),
            (Some(t), None) => t.clone(),
            (None, None) => String::new(),
        },
        note: a.note.clone().unwrap_or_default(),
        prompt: a.prompt.clone().unwrap_or_default(),
        gpu: gpu(a.gpu_ms),
        worker: a.worker.clone().unwrap_or_default(),
        output: output(a.output_uri.as_deref(), files).await,
        diff_against: String::new(),
        diff: Vec::new(),
    }
}

/// A decision or signal, with who took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventView {
    pub(crate) action: String,
    pub(crate) by: String,
    pub(crate) reason: String,
    pub(crate) detail: String,
}

pub(crate) fn event(e: &CreatorEvent) -> EventView {
    EventView {
        action: e.action.clone(),
        by: e.by.clone(),
        reason: e.reason.clone(),
        detail: if e.detail.is_null() {
            String::new()
        } else {
            e.detail.to_string()
        },
    }
}

/// The best quality among `attempts` that were scored, by `policy`, as `0.834`.
pub(crate) fn best_quality<'a>(
    attempts: impl Iterator<Item = &'a AttemptRecord>,
    policy: &RetryPolicy,
) -> Option<f64> {
    attempts
        .filter(|a| !a.scores.is_empty())
        .map(|a| select::quality(policy, &a.scores))
        .reduce(f64::max)
}

/// One line of the review queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueRow {
    pub(crate) segment_id: String,
    pub(crate) project_id: String,
    pub(crate) scene_type: String,
    pub(crate) report: String,
    pub(crate) best: String,
    pub(crate) waited: String,
    pub(crate) left: String,
    /// When it went to review (ms since the epoch), for ordering newest first.
    pub(crate) since_ms: i64,
}

/// The queue line of a run awaiting review: the store's pending outcome of that run (its report
/// and when it was recorded, i.e. escalated) and attempts; the run's start stands
/// in while the outcome is not recorded yet.
pub(crate) fn queue_row(
    run: &AwaitingReview,
    pending: Option<&StoredOutcome>,
    attempts: &[StoredAttempt],
    policy: &RetryPolicy,
    now_ms: i64,
) -> QueueRow {
    let since_ms = pending
        .and_then(|o| parse_rfc3339_ms(&o.updated_at))
        .unwrap_or(run.started_unix_ms);
    let window_ms =
        i64::try_from(policy.review_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let left = window_ms.saturating_sub(now_ms - since_ms);
    QueueRow {
        segment_id: run.segment_id.clone(),
        project_id: run.project_id.clone(),
        scene_type: run.scene_type.clone(),
        report: pending.map_or_else(
            || "(escalated; the outcome is being recorded)".to_owned(),
            |o| o.report.clone(),
        ),
        best: best_quality(attempts.iter().map(|a| &a.record), policy)
            .map_or_else(|| "—".to_owned(), |q| format!("{q:.3}")),
        waited: human_ms(now_ms - since_ms),
        left: if left > 0 {
            human_ms(left)
        } else {
            "over (closing)".to_owned()
        },
        since_ms,
    }
}

/// A form input of the retry-with form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Input {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) error: String,
}

impl Input {
    /// Whether the value wants a multi-line field: a prompt, or text with line breaks or too long
    /// to read in one line.
    pub(crate) fn long(&self) -> bool {
        self.name.contains("prompt") || self.value.contains('\n') || self.value.chars().count() > 60
    }
}

/// The field errors of a rejected decision. The workflow's update validator answers with the
/// `Display` of the same [`retake_domain::ValidationError`] the JSON API's 422 carries
/// (`invalid input: attempts: must be …; params.seed: …`), behind the API's `decision rejected: `;
/// this reads the fields back, so the form can show each next to its input. Anything else (not
/// awaiting review, …) is one message without a field.
pub(crate) fn rejected_fields(message: &str) -> Vec<FieldError> {
    let rest = message
        .strip_prefix("decision rejected: ")
        .unwrap_or(message);
    let Some(list) = rest.strip_prefix("invalid input: ") else {
        return vec![FieldError::new("", rest)];
    };
    list.split("; ")
        .map(|part| match part.split_once(": ") {
            Some((field, msg)) if !field.contains(' ') => FieldError::new(field, msg),
            _ => FieldError::new("", part),
        })
        .collect()
}

/// Errors of `field` (exactly, or below it: `vary` takes `vary.cfg_scale.range`), joined.
pub(crate) fn errors_of(errors: &[FieldError], field: &str) -> String {
    errors
        .iter()
        .filter(|e| {
            e.field == field
                || e.field
                    .strip_prefix(field)
                    .is_some_and(|r| r.starts_with('.'))
        })
        .map(|e| e.message.clone())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A form value as the JSON the API would have been sent: a JSON literal when it is one
/// (`7.5`, `true`, `"x"`), else the text as a string, so a typo gets the API's own type error.
pub(crate) fn form_value(raw: &str) -> Value {
    serde_json::from_str::<Value>(raw)
        .ok()
        .filter(|v| !v.is_object() && !v.is_array())
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// One segment in the segments list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentListRow {
    pub(crate) segment_id: String,
    pub(crate) project_id: String,
    pub(crate) scene_type: String,
    /// How its latest run stands, in words (`retrying now`, `awaiting review`, `passed`, …).
    pub(crate) status: String,
    /// The CSS class of the status: `passed`, `failed` or empty.
    pub(crate) tone: &'static str,
    pub(crate) report: String,
    pub(crate) updated: String,
    /// A thumbnail: the selected (or last) output when it is an image the browser can show.
    pub(crate) thumbnail: String,
}

impl SegmentListRow {
    /// A retry making attempts now (from Temporal's visibility): nothing recorded yet to show.
    pub(crate) fn running(run: AwaitingReview) -> Self {
        Self {
            segment_id: run.segment_id,
            project_id: run.project_id,
            scene_type: run.scene_type,
            status: "retrying now".to_owned(),
            tone: "",
            report: String::new(),
            updated: String::new(),
            thumbnail: String::new(),
        }
    }

    /// A segment's latest recorded run.
    pub(crate) fn recorded(row: SegmentRow) -> Self {
        let status = match (row.outcome.as_str(), row.review.as_str()) {
            ("escalated", "pending") => "awaiting review".to_owned(),
            (_, "retrying") => "retrying after review".to_owned(),
            ("escalated", "accepted") | ("passed", "accepted") => {
                "passed (review accepted)".to_owned()
            }
            (_, "rejected") => "rejected in review".to_owned(),
            (outcome, _) => outcome.replace('_', " "),
        };
        let tone = match row.outcome.as_str() {
            "passed" => "passed",
            "escalated" | "aborted" | "budget_exhausted" if row.review != "accepted" => "failed",
            _ => "",
        };
        let thumbnail = row
            .output_uri
            .filter(|u| fetchable_media(u) == Some("image"))
            .unwrap_or_default();
        Self {
            segment_id: row.segment_id,
            project_id: row.project_id,
            scene_type: row.scene_type,
            status,
            tone,
            report: row.report,
            updated: row.updated_at,
            thumbnail,
        }
    }
}

/// One stored policy on the scene type's page: when, by whom, what changed from the one
/// stored before it, and the whole policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeView {
    pub(crate) at: String,
    pub(crate) by: String,
    pub(crate) what: String,
    pub(crate) policy: String,
}

/// `changes` (newest first) as the page lists them: each with the top-level fields that differ
/// from the change before it (`max_attempts 3 → 5`); the oldest shown is "first stored" when it
/// is the first ever, else "(earlier changes not shown)" applies to its comparison.
pub(crate) fn policy_changes(changes: &[PolicyChange], complete: bool) -> Vec<ChangeView> {
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let what = match changes.get(i + 1) {
                Some(before) => changed_fields(&before.policy, &c.policy),
                None if complete => "first stored".to_owned(),
                None => "earlier changes are not shown".to_owned(),
            };
            ChangeView {
                at: c.changed_at.clone(),
                by: c.by.clone(),
                what,
                policy: serde_json::to_string_pretty(&c.policy).unwrap_or_default(),
            }
        })
        .collect()
}

/// The top-level fields that differ between two stored policies, `name old → new`, in name
/// order; "no change" when none does.
fn changed_fields(before: &Value, after: &Value) -> String {
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    let short = |v: Option<&Value>| {
        let text = v.map_or("(none)".to_owned(), |v| v.to_string());
        if text.chars().count() > 60 {
            format!("{}…", text.chars().take(60).collect::<String>())
        } else {
            text
        }
    };
    let changed: Vec<String> = keys
        .into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| format!("{k} {} → {}", short(b.get(k)), short(a.get(k))))
        .collect();
    if changed.is_empty() {
        "no change".to_owned()
    } else {
        changed.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retake_domain::ValidationError;

    #[test]
    fn a_diff_shows_the_changed_lines_with_context_and_gaps() {
        let draft = "a\nb\nc\nd\ne\nf\ng\n";
        let revised = "a\nb\nc\nd\nE\nf\ng\n";
        let lines = diff_lines(draft, revised);
        let d: Vec<(&str, &str)> = lines.iter().map(|l| (l.kind, l.text.as_str())).collect();
        assert_eq!(
            d,
            [
                ("gap", "…"),
                ("eq", "c"),
                ("eq", "d"),
                ("del", "e"),
                ("ins", "E"),
                ("eq", "f"),
                ("eq", "g")
            ]
        );
        assert!(diff_lines("same\n", "same").is_empty());
    }

    #[test]
    fn a_rejected_decision_gives_back_its_fields_as_the_domain_wrote_them() {
        let v = ValidationError {
            errors: vec![
                FieldError::new("attempts", "must be between 1 and 10, got 0"),
                FieldError::new("vary.cfg_scale.range", "must be ≥ 0"),
            ],
        };
        let fields = rejected_fields(&format!("decision rejected: {v}"));
        assert_eq!(fields, v.errors);
        assert_eq!(errors_of(&fields, "vary"), "must be ≥ 0");
        assert_eq!(
            errors_of(&fields, "attempts"),
            "must be between 1 and 10, got 0"
        );
        assert_eq!(errors_of(&fields, "attempt"), "");
        let other = rejected_fields("decision rejected: segment 5 is not awaiting review");
        assert_eq!(
            other,
            vec![FieldError::new("", "segment 5 is not awaiting review")]
        );
    }

    #[test]
    fn form_values_become_the_json_the_api_would_get() {
        assert_eq!(form_value("7.5"), serde_json::json!(7.5));
        assert_eq!(form_value("12"), serde_json::json!(12));
        assert_eq!(form_value("true"), serde_json::json!(true));
        assert_eq!(form_value("euler a"), serde_json::json!("euler a"));
        assert_eq!(form_value("{\"a\":1}"), serde_json::json!("{\"a\":1}"));
    }

    #[tokio::test]
    async fn outputs_show_inline_only_where_a_browser_can_load_them() {
        let dir = tempfile_dir();
        let files = FileRoots::new([dir.clone()]);
        let output = |u: Option<&'static str>| {
            let files = files.clone();
            async move { output(u, &files).await }
        };
        assert_eq!(output(Some("https://cdn/x/a.PNG?v=1")).await.kind, "image");
        assert_eq!(output(Some("https://cdn/x/a.mp4")).await.kind, "video");
        assert_eq!(output(Some("sim://5/1234.mp4")).await.kind, "uri");
        assert_eq!(output(Some("file:///nonexistent/a.png")).await.kind, "uri");
        assert_eq!(output(None).await.kind, "none");
        let path = dir.join("attempt-1.md");
        std::fs::write(&path, "Chapter <one>").unwrap();
        let uri = url::Url::from_file_path(&path).unwrap().to_string();
        let out = super::output(Some(&uri), &files).await;
        assert_eq!((out.kind, out.text.as_str()), ("text", "Chapter <one>"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_text_file_outside_the_roots_is_shown_as_its_uri_and_never_read() {
        let dir = tempfile_dir().join("roots");
        std::fs::create_dir_all(&dir).unwrap();
        let files = FileRoots::new([dir.clone()]);
        for uri in [
            "file:///proc/self/environ.txt",
            "file:///etc/os-release.txt",
            "file:///proc/self/environ",
        ] {
            let out = output(Some(uri), &files).await;
            assert_eq!((out.kind, out.text.as_str()), ("uri", ""), "{uri}");
        }
        // The diff against "the original draft" reads the run's `params.output_uri`: refused too.
        let secret = dir.parent().unwrap().join("secret.md");
        std::fs::write(&secret, "RETAKE_API_TOKENS=admin=x").unwrap();
        let secret_uri = url::Url::from_file_path(&secret).unwrap().to_string();
        assert_eq!(output(Some(&secret_uri), &files).await.kind, "uri");
        assert_eq!(read_text(&secret_uri, &files).await, None);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "retake-console-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_policy_change_lists_the_fields_it_changed_from_the_one_before() {
        let change = |by: &str, policy: Value| PolicyChange {
            changed_at: "2026-12-07T10:00:00Z".into(),
            by: by.into(),
            policy,
        };
        let changes = [
            change(
                "api:admin mina",
                serde_json::json!({"enabled": true, "max_attempts": 5}),
            ),
            change(
                "cli:jun",
                serde_json::json!({"enabled": true, "max_attempts": 5}),
            ),
            change(
                "api:admin",
                serde_json::json!({"enabled": false, "max_attempts": 3}),
            ),
        ];
        let shown = policy_changes(&changes, true);
        let what: Vec<(&str, &str)> = shown
            .iter()
            .map(|c| (c.by.as_str(), c.what.as_str()))
            .collect();
        assert_eq!(
            what,
            [
                ("api:admin mina", "no change"),
                ("cli:jun", "enabled false → true; max_attempts 3 → 5"),
                ("api:admin", "first stored")
            ]
        );
        assert_eq!(
            policy_changes(&changes[2..], false)[0].what,
            "earlier changes are not shown"
        );
    }

    #[test]
    fn a_prompt_or_long_or_multi_line_value_gets_a_multi_line_field() {
        let input = |name: &str, value: &str| Input {
            name: name.into(),
            value: value.into(),
            error: String::new(),
        };
        assert!(input("prompt", "short").long());
        assert!(input("negative_prompt", "").long());
        assert!(input("style", "two\nlines").long());
        assert!(input("style", &"x".repeat(61)).long());
        assert!(!input("cfg_scale", "7.5").long());
    }
}
