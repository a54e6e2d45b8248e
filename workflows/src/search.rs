//! Custom search attributes the workflow keeps current, so the web UI and
//! `temporal workflow list --query "SegmentId='5'"` find a segment. They must be registered on the
//! namespace before a workflow upserts them (the dev setup does; `retake worker` checks).

use temporalio_common::search_attributes::SearchAttributeKey;

pub(crate) const SEGMENT_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword("SegmentId");
pub(crate) const PROJECT_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword("ProjectId");
pub(crate) const SCENE_TYPE: SearchAttributeKey<String> = SearchAttributeKey::keyword("SceneType");
/// `running`, `awaiting_review`, then the outcome (`passed`, `escalated`, ...).
pub(crate) const RETRY_OUTCOME: SearchAttributeKey<String> =
    SearchAttributeKey::keyword("RetryOutcome");
/// The behaviour version the run started with ([`crate::BEHAVIOUR`]), set once at its start:
/// what `retake runs versions` counts open runs by, so an operator knows when no open run can
/// still take an old path (docs/versioning.md).
pub(crate) const BEHAVIOUR_KEY: SearchAttributeKey<String> =
    SearchAttributeKey::keyword(BEHAVIOUR_ATTRIBUTE);

/// Name of the search attribute that holds a run's behaviour version.
pub const BEHAVIOUR_ATTRIBUTE: &str = "RetakeBehaviour";

/// Names of the custom search attributes (all of type Keyword).
pub const SEARCH_ATTRIBUTES: [&str; 5] = [
    "SegmentId",
    "ProjectId",
    "SceneType",
    "RetryOutcome",
    BEHAVIOUR_ATTRIBUTE,
];
