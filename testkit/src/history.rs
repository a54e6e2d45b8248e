//! Reading what activities answered out of a workflow's event history.

use retake_domain::adapt::Evidence;
use temporalio_protos::protos::constants::LOCAL_ACTIVITY_MARKER_NAME;
use temporalio_protos::protos::coresdk::common::extract_local_activity_marker_data;
use temporalio_protos::protos::temporal::api::history::v1::HistoryEvent;
use temporalio_protos::protos::temporal::api::history::v1::history_event::Attributes;

/// The answers of every `load_evidence` step in `events`, in order: the evidence each adaptive
/// attempt chose from. Runs before the `local-store-steps` patch scheduled it as an activity
/// (its answer in `ActivityTaskCompleted`); later runs run it locally (its answer in the local
/// activity's marker).
pub fn load_evidence_answers(
    events: Vec<HistoryEvent>,
) -> Result<Vec<Evidence>, serde_json::Error> {
    let (mut scheduled, mut found) = (Vec::new(), Vec::new());
    for e in events {
        let data = match e.attributes {
            Some(Attributes::ActivityTaskScheduledEventAttributes(a))
                if a.activity_type
                    .as_ref()
                    .is_some_and(|t| t.name == "load_evidence") =>
            {
                scheduled.push(e.event_id);
                continue;
            }
            Some(Attributes::ActivityTaskCompletedEventAttributes(c))
                if scheduled.contains(&c.scheduled_event_id) =>
            {
                c.result.and_then(|r| r.payloads.into_iter().next())
            }
            Some(Attributes::MarkerRecordedEventAttributes(m))
                if m.marker_name == LOCAL_ACTIVITY_MARKER_NAME
                    && m.failure.is_none()
                    && extract_local_activity_marker_data(&m.details)
                        .is_some_and(|d| d.activity_type == "load_evidence") =>
            {
                m.details
                    .get("result")
                    .and_then(|r| r.payloads.first().cloned())
            }
            _ => continue,
        };
        found.push(serde_json::from_slice(
            &data.map(|p| p.data).unwrap_or_default(),
        )?);
    }
    Ok(found)
}
