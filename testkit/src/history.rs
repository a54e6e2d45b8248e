//! Reading a workflow's history: what its activities answered.

use retake_domain::adapt::Evidence;
use temporalio_protos::protos::temporal::api::history::v1::HistoryEvent;
use temporalio_protos::protos::temporal::api::history::v1::history_event::Attributes;

/// The answers of every `load_evidence` activity in `events`, in order: the evidence each
/// adaptive attempt chose from.
pub fn load_evidence_answers(
    events: Vec<HistoryEvent>,
) -> Result<Vec<Evidence>, serde_json::Error> {
    let (mut scheduled, mut found) = (Vec::new(), Vec::new());
    for e in events {
        match e.attributes {
            Some(Attributes::ActivityTaskScheduledEventAttributes(a))
                if a.activity_type
                    .as_ref()
                    .is_some_and(|t| t.name == "load_evidence") =>
            {
                scheduled.push(e.event_id);
            }
            Some(Attributes::ActivityTaskCompletedEventAttributes(c))
                if scheduled.contains(&c.scheduled_event_id) =>
            {
                let data = c
                    .result
                    .and_then(|r| r.payloads.into_iter().next())
                    .map(|p| p.data)
                    .unwrap_or_default();
                found.push(serde_json::from_slice(&data)?);
            }
            _ => {}
        }
    }
    Ok(found)
}
