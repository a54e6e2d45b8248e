//! The scene type's retry policy as a form, field by field: what an admin edits most (attempts,
//! parallelism, what triggers a retry, thresholds, jitter, strategy ladder, review window) without
//! writing JSON. The form becomes the JSON body `PUT /scene-types/{id}/retry-policy` takes, on top
//! of the stored policy (so fields the form has no input for — prompts, cost rule, adaptive
//! settings — are kept), and goes through the same validation; each error the API names comes
//! back next to its input. Pure, unit-tested; the page lays it out (`scene_type.html`).

use super::session::Fields;
use super::views::{Input, form_value};
use retake_domain::{FieldError, RetryPolicy, ValidationError};
use serde_json::{Map, Value, json};

/// The numeric fields: (name, label, hint).
const NUMBERS: [(&str, &str, &str); 6] = [
    ("max_attempts", "Attempts at most", "1–10"),
    (
        "parallelism",
        "Attempts at once",
        "1–10; never more run at once than there are attempts",
    ),
    (
        "est_gpu_ms_per_attempt",
        "GPU ms reserved per attempt",
        "settled to what the backend reports",
    ),
    (
        "review_window_secs",
        "Review window (s)",
        "how long an escalated segment waits; 0 ends at once",
    ),
    ("seed_bits", "Seed bits", "16–53"),
    (
        "stop_after_same_refusals",
        "Stop after same refusals",
        "0–10: attempts in a row the backend refuses with the same error before escalating; 0 never stops early",
    ),
];

/// The fields chosen from a list: (name, label, options).
const CHOICES: [(&str, &str, &[&str]); 5] = [
    ("selection", "Selection", &["first_pass", "best_of_n"]),
    (
        "placement",
        "Placement",
        &["avoid_failed", "any", "same_worker"],
    ),
    ("profile", "Profile", &["media", "text"]),
    ("language", "Language", &["en", "ko"]),
    ("mixed_failures", "Mixed failures", &["stop", "retry"]),
];

/// A labelled input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Labelled {
    pub(crate) label: &'static str,
    pub(crate) hint: &'static str,
    pub(crate) input: Input,
}

/// A select and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) label: &'static str,
    pub(crate) options: &'static [&'static str],
    pub(crate) input: Input,
}

/// One pass threshold: the metric, its minimum and the failure kind a lower score is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ThresholdRow {
    pub(crate) metric: Input,
    pub(crate) min: Input,
    pub(crate) failure: Input,
}

impl ThresholdRow {
    /// The row's inputs, in column order.
    pub(crate) fn inputs(&self) -> [&Input; 3] {
        [&self.metric, &self.min, &self.failure]
    }
}

/// A row of named inputs: its name input and the inputs named `.<part>` after it.
trait Row {
    fn name(&self) -> &Input;
    /// The input of `part` (`min`, `range`, …), else the name input.
    fn part(&mut self, part: &str) -> &mut Input;
}

impl Row for ThresholdRow {
    fn name(&self) -> &Input {
        &self.metric
    }
    fn part(&mut self, part: &str) -> &mut Input {
        match part {
            "min" => &mut self.min,
            "failure" => &mut self.failure,
            _ => &mut self.metric,
        }
    }
}

impl Row for VaryRow {
    fn name(&self) -> &Input {
        &self.param
    }
    fn part(&mut self, part: &str) -> &mut Input {
        match part {
            "range" => &mut self.range,
            "min" => &mut self.min,
            "max" => &mut self.max,
            _ => &mut self.param,
        }
    }
}

/// The input `<name>[.<part>]` names among `rows` (a name may itself hold a dot: the longest
/// matching name wins).
fn row_input<'r, R: Row>(rows: &'r mut [R], field: &str) -> Option<&'r mut Input> {
    let row = rows
        .iter_mut()
        .filter(|r| !r.name().value.is_empty() && field.starts_with(&r.name().value))
        .max_by_key(|r| r.name().value.len())?;
    let rest = &field[row.name().value.len()..];
    let part = rest.strip_prefix('.').unwrap_or(rest).to_owned();
    Some(row.part(&part))
}

/// One jittered parameter: its name, the ± range and the optional bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VaryRow {
    pub(crate) param: Input,
    pub(crate) range: Input,
    pub(crate) min: Input,
    pub(crate) max: Input,
}

impl VaryRow {
    /// The row's inputs, in column order.
    pub(crate) fn inputs(&self) -> [&Input; 4] {
        [&self.param, &self.range, &self.min, &self.max]
    }
}

/// The policy form's values and errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyForm {
    pub(crate) enabled: bool,
    pub(crate) numbers: Vec<Labelled>,
    pub(crate) choices: Vec<Choice>,
    /// QA failure kinds that trigger a retry, comma-separated.
    pub(crate) retry_on: Input,
    /// Strategies by attempt, comma-separated.
    pub(crate) ladder: Input,
    /// The stored rows and one blank row to add one.
    pub(crate) thresholds: Vec<ThresholdRow>,
    pub(crate) vary: Vec<VaryRow>,
    /// Errors no input of the form stands for.
    pub(crate) general: Vec<String>,
}

fn input(name: impl Into<String>, value: impl Into<String>) -> Input {
    Input {
        name: name.into(),
        value: value.into(),
        error: String::new(),
    }
}

/// A JSON value as a form shows it: strings bare, numbers as written, nothing as blank.
fn shown(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn list(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| shown(Some(x)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn threshold_row(i: usize, metric: &str, min: String, failure: String) -> ThresholdRow {
    ThresholdRow {
        metric: input(format!("thresholds.{i}.metric"), metric),
        min: input(format!("thresholds.{i}.min"), min),
        failure: input(format!("thresholds.{i}.failure"), failure),
    }
}

fn vary_row(i: usize, param: &str, range: String, min: String, max: String) -> VaryRow {
    VaryRow {
        param: input(format!("vary.{i}.param"), param),
        range: input(format!("vary.{i}.range"), range),
        min: input(format!("vary.{i}.min"), min),
        max: input(format!("vary.{i}.max"), max),
    }
}

/// `rows` and, unless one of them is blank already, a blank row (`blank(i)`) to add one.
fn with_blank<R: Row>(mut rows: Vec<R>, blank: impl Fn(usize) -> R) -> Vec<R> {
    if rows.iter().all(|r| !r.name().value.is_empty()) {
        rows.push(blank(rows.len()));
    }
    rows
}

impl PolicyForm {
    /// The form filled in from `policy`, with a blank threshold and jitter row to add one.
    pub(crate) fn of(policy: &RetryPolicy) -> Self {
        let v = serde_json::to_value(policy).unwrap_or_default();
        let thresholds = v["thresholds"]
            .as_object()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, (metric, t))| {
                threshold_row(i, metric, shown(t.get("min")), shown(t.get("failure")))
            })
            .collect();
        let vary = v["vary"]
            .as_object()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, (param, j))| {
                vary_row(
                    i,
                    param,
                    shown(j.get("range")),
                    shown(j.get("min")),
                    shown(j.get("max")),
                )
            })
            .collect();
        Self::with(
            policy.enabled,
            |name| match name {
                "retry_on" | "ladder" => list(v.get(name)),
                _ => shown(v.get(name)),
            },
            thresholds,
            vary,
        )
    }

    /// The form as submitted (rows as many as were sent, plus a blank one if none is blank).
    pub(crate) fn read(fields: &Fields) -> Self {
        let rows = |prefix: &str| {
            (0..)
                .take_while(|i| {
                    fields
                        .0
                        .iter()
                        .any(|(k, _)| k.starts_with(&format!("{prefix}.{i}.")))
                })
                .count()
        };
        let thresholds = (0..rows("thresholds"))
            .map(|i| {
                let f = |part: &str| fields.get(&format!("thresholds.{i}.{part}")).to_owned();
                threshold_row(i, &f("metric"), f("min"), f("failure"))
            })
            .collect();
        let vary = (0..rows("vary"))
            .map(|i| {
                let f = |part: &str| fields.get(&format!("vary.{i}.{part}")).to_owned();
                vary_row(i, &f("param"), f("range"), f("min"), f("max"))
            })
            .collect();
        Self::with(
            !fields.get("enabled").is_empty(),
            |name| fields.get(name).to_owned(),
            thresholds,
            vary,
        )
    }

    /// The form with the value `value(name)` in each named input, and `thresholds` and `vary`
    /// rows with a blank one each.
    fn with(
        enabled: bool,
        value: impl Fn(&str) -> String,
        thresholds: Vec<ThresholdRow>,
        vary: Vec<VaryRow>,
    ) -> Self {
        Self {
            enabled,
            numbers: NUMBERS
                .iter()
                .map(|(name, label, hint)| Labelled {
                    label,
                    hint,
                    input: input(*name, value(name)),
                })
                .collect(),
            choices: CHOICES
                .iter()
                .map(|(name, label, options)| Choice {
                    label,
                    options,
                    input: input(*name, value(name)),
                })
                .collect(),
            retry_on: input("retry_on", value("retry_on")),
            ladder: input("ladder", value("ladder")),
            thresholds: with_blank(thresholds, |i| {
                threshold_row(i, "", String::new(), String::new())
            }),
            vary: with_blank(vary, |i| {
                vary_row(i, "", String::new(), String::new(), String::new())
            }),
            general: Vec::new(),
        }
    }

    /// The JSON body this form stands for, on top of `base` (the stored policy, so fields
    /// without an input are kept). A row whose name is blank is left out (that is how a row is
    /// removed); a name given twice is refused here, as JSON cannot say it.
    pub(crate) fn body(&self, base: &RetryPolicy) -> Result<Value, ValidationError> {
        let mut body = match serde_json::to_value(base) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut errors = Vec::new();
        body.insert("enabled".into(), Value::Bool(self.enabled));
        for n in &self.numbers {
            body.insert(n.input.name.clone(), form_value(&n.input.value));
        }
        for c in &self.choices {
            body.insert(c.input.name.clone(), Value::String(c.input.value.clone()));
        }
        let split = |s: &str| -> Vec<Value> {
            s.split([',', '→'])
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| Value::String(x.to_owned()))
                .collect()
        };
        body.insert("retry_on".into(), Value::Array(split(&self.retry_on.value)));
        body.insert("ladder".into(), Value::Array(split(&self.ladder.value)));
        let mut thresholds = Map::new();
        for r in self
            .thresholds
            .iter()
            .filter(|r| !r.metric.value.is_empty())
        {
            let mut t = Map::new();
            t.insert("min".into(), form_value(&r.min.value));
            if !r.failure.value.is_empty() {
                t.insert("failure".into(), Value::String(r.failure.value.clone()));
            }
            if thresholds
                .insert(r.metric.value.clone(), Value::Object(t))
                .is_some()
            {
                errors.push(FieldError::new(
                    format!("thresholds.{}", r.metric.value),
                    "is named twice",
                ));
            }
        }
        body.insert("thresholds".into(), Value::Object(thresholds));
        let mut vary = Map::new();
        for r in self.vary.iter().filter(|r| !r.param.value.is_empty()) {
            let mut j = json!({"range": form_value(&r.range.value)});
            for (bound, i) in [("min", &r.min), ("max", &r.max)] {
                if !i.value.is_empty() {
                    j[bound] = form_value(&i.value);
                }
            }
            if vary.insert(r.param.value.clone(), j).is_some() {
                errors.push(FieldError::new(
                    format!("vary.{}", r.param.value),
                    "is named twice",
                ));
            }
        }
        body.insert("vary".into(), Value::Object(vary));
        if errors.is_empty() {
            Ok(Value::Object(body))
        } else {
            Err(ValidationError { errors })
        }
    }

    /// Put each of `errors` next to the input it names (`max_attempts`, `ladder[2]`,
    /// `vary.cfg_scale.range`, `thresholds.face`, …); the rest is listed above the form.
    pub(crate) fn place(&mut self, errors: &[FieldError]) {
        for e in errors {
            if !self.place_one(e) {
                self.general.push(if e.field.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.field, e.message)
                });
            }
        }
    }

    fn place_one(&mut self, e: &FieldError) -> bool {
        let under = |name: &str| {
            e.field == name
                || e.field
                    .strip_prefix(name)
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
        };
        let add = |i: &mut Input| {
            if !i.error.is_empty() {
                i.error.push_str("; ");
            }
            i.error.push_str(&e.message);
            true
        };
        for n in &mut self.numbers {
            if under(&n.input.name) {
                return add(&mut n.input);
            }
        }
        for c in &mut self.choices {
            if under(&c.input.name) {
                return add(&mut c.input);
            }
        }
        if under("retry_on") {
            return add(&mut self.retry_on);
        }
        if under("ladder") {
            return add(&mut self.ladder);
        }
        // `thresholds.<metric>[.min|.failure]` and `vary.<param>[.range|.min|.max]`: the row
        // of that name.
        if let Some(rest) = e.field.strip_prefix("thresholds.")
            && let Some(i) = row_input(&mut self.thresholds, rest)
        {
            return add(i);
        }
        if let Some(rest) = e.field.strip_prefix("vary.")
            && let Some(i) = row_input(&mut self.vary, rest)
        {
            return add(i);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The form of `policy` posted back unchanged.
    fn posted(policy: &RetryPolicy) -> Fields {
        let form = PolicyForm::of(policy);
        let mut pairs: Vec<(String, String)> = Vec::new();
        if form.enabled {
            pairs.push(("enabled".into(), "on".into()));
        }
        for i in form
            .numbers
            .iter()
            .map(|n| &n.input)
            .chain(form.choices.iter().map(|c| &c.input))
            .chain([&form.retry_on, &form.ladder])
            .chain(form.thresholds.iter().flat_map(ThresholdRow::inputs))
            .chain(form.vary.iter().flat_map(VaryRow::inputs))
        {
            pairs.push((i.name.clone(), i.value.clone()));
        }
        Fields(pairs)
    }

    fn a_policy() -> RetryPolicy {
        RetryPolicy::parse(&json!({
            "enabled": true, "max_attempts": 4, "parallelism": 2, "selection": "best_of_n",
            "profile": "text", "language": "en",
            "ladder": ["revise", "revise_with_feedback"],
            "prompts": {"revise": "Chapter {chapter}, attempt {attempt}"},
            "cost_rule": {"review_cost_gpu_ms": 120000, "fix_chance": [0.5, 0.3]}
        }))
        .unwrap()
    }

    #[test]
    fn a_policy_posted_back_unchanged_is_the_same_policy() {
        for policy in [RetryPolicy::default(), a_policy()] {
            let form = PolicyForm::read(&posted(&policy));
            let body = form.body(&policy).unwrap();
            assert_eq!(RetryPolicy::parse(&body).unwrap(), policy, "{body:#}");
        }
    }

    #[test]
    fn fields_without_an_input_are_kept_from_the_stored_policy() {
        let policy = a_policy();
        let mut f = posted(&policy);
        f.0.retain(|(k, _)| k != "max_attempts");
        f.0.push(("max_attempts".into(), "6".into()));
        let changed = RetryPolicy::parse(&PolicyForm::read(&f).body(&policy).unwrap()).unwrap();
        assert_eq!(changed.max_attempts, 6);
        assert_eq!(
            (changed.prompts, changed.cost_rule),
            (policy.prompts, policy.cost_rule)
        );
    }

    #[test]
    fn rows_are_added_in_the_blank_row_and_removed_by_blanking_the_name() {
        let policy = RetryPolicy::default();
        let mut f = posted(&policy);
        let blank = PolicyForm::of(&policy).vary.len() - 1;
        for (k, v) in &mut f.0 {
            if *k == format!("vary.{blank}.param") {
                *v = "steps".into();
            }
            if *k == format!("vary.{blank}.range") {
                *v = "4".into();
            }
            if k == "vary.0.param" {
                v.clear();
            }
        }
        let form = PolicyForm::read(&f);
        assert!(
            form.vary.iter().any(|r| r.param.value.is_empty()),
            "a blank row to add one"
        );
        let changed = RetryPolicy::parse(&form.body(&policy).unwrap()).unwrap();
        let names: Vec<&str> = changed.vary.keys().map(String::as_str).collect();
        assert_eq!(names, ["denoise_strength", "steps"]);
    }

    #[test]
    fn the_apis_errors_land_next_to_their_inputs() {
        let policy = RetryPolicy::default();
        let mut form = PolicyForm::of(&policy);
        form.place(&[
            FieldError::new("max_attempts", "must be 1..=10"),
            FieldError::new("ladder[1]", "unknown variant `nope`"),
            FieldError::new("vary.cfg_scale.range", "must be > 0"),
            FieldError::new("thresholds.face", "must be in [0, 1]"),
            FieldError::new("adaptive.explore", "must be in [0, 1]"),
        ]);
        assert_eq!(form.numbers[0].input.error, "must be 1..=10");
        assert_eq!(form.ladder.error, "unknown variant `nope`");
        let cfg = form
            .vary
            .iter()
            .find(|r| r.param.value == "cfg_scale")
            .unwrap();
        assert_eq!(cfg.range.error, "must be > 0");
        assert_eq!(form.thresholds[0].metric.error, "must be in [0, 1]");
        assert_eq!(form.general, ["adaptive.explore: must be in [0, 1]"]);
    }

    #[test]
    fn a_bad_number_reaches_the_api_as_written_and_a_name_given_twice_is_refused() {
        let policy = RetryPolicy::default();
        let mut f = posted(&policy);
        for (k, v) in &mut f.0 {
            if k == "max_attempts" {
                *v = "lots".into();
            }
        }
        let body = PolicyForm::read(&f).body(&policy).unwrap();
        let err = RetryPolicy::parse(&body).unwrap_err();
        assert_eq!(err.errors[0].field, "max_attempts");

        let mut f = posted(&policy);
        for (k, v) in &mut f.0 {
            if k == "vary.1.param" {
                *v = "cfg_scale".into();
            }
        }
        let err = PolicyForm::read(&f).body(&policy).unwrap_err();
        assert_eq!(err.errors[0].field, "vary.cfg_scale");
    }

    #[test]
    fn stop_after_same_refusals_is_shown_edited_and_its_error_lands_next_to_it() {
        let policy = RetryPolicy::default();
        let shown = PolicyForm::of(&policy);
        let input = |form: &PolicyForm| {
            form.numbers
                .iter()
                .find(|n| n.input.name == "stop_after_same_refusals")
                .expect("an input for it")
                .input
                .clone()
        };
        assert_eq!(input(&shown).value, "2");
        let mut f = posted(&policy);
        for (k, v) in &mut f.0 {
            if k == "stop_after_same_refusals" {
                *v = "0".into();
            }
        }
        let changed = RetryPolicy::parse(&PolicyForm::read(&f).body(&policy).unwrap()).unwrap();
        assert_eq!(changed.stop_after_same_refusals, 0);
        for (k, v) in &mut f.0 {
            if k == "stop_after_same_refusals" {
                *v = "11".into();
            }
        }
        let mut form = PolicyForm::read(&f);
        let err = RetryPolicy::parse(&form.body(&policy).unwrap()).unwrap_err();
        form.place(&err.errors);
        assert!(
            input(&form).error.contains("between 0"),
            "{:?}",
            input(&form)
        );
        assert!(form.general.is_empty(), "{:?}", form.general);
    }

    #[test]
    fn every_choice_offered_is_one_the_policy_takes() {
        for (name, _, options) in CHOICES {
            for o in options {
                assert!(
                    RetryPolicy::parse(&json!({ name: o })).is_ok(),
                    "{name} = {o}"
                );
            }
        }
    }
}
