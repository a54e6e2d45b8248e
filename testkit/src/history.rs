//! Reading what activities answered out of a workflow's event history.

use retake_domain::adapt::Evidence;
use temporalio_protos::protos::constants::LOCAL_ACTIVITY_MARKER_NAME;
use temporalio_protos::protos::coresdk::common::extract_local_activity_marker_data;
use temporalio_protos::protos::temporal::api::history::v1::HistoryEvent;
use temporalio_protos::protos::temporal::api::history::v1::history_event::Attributes;

/// The answers of every `load_evidence` step in `events`, in order: the evidence each adaptive
/// attempt chose from. It is a local activity, so its answer is in its marker.
pub fn load_evidence_answers(
    events: Vec<HistoryEvent>,
) -> Result<Vec<Evidence>, serde_json::Error> {
    let mut found = Vec::new();
    for e in events {
        let data = match e.attributes {
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
