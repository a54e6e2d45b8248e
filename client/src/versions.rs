//! How many open retries run each behaviour version, from Temporal's visibility: what an operator
//! reads before removing an old path of the workflow (docs/versioning.md). Every run records its
//! version in the search attribute `RetakeBehaviour` at its start; a run whose first workflow
//! task has not run yet has none so far.

use crate::Error;
use retake_workflows::{BEHAVIOUR_ATTRIBUTE, BEHAVIOURS};
use std::collections::BTreeMap;
use temporalio_client::{Client, NamespacedClient, tonic};
use temporalio_protos::protos::temporal::api::workflowservice::v1::{
    CountWorkflowExecutionsRequest, ListWorkflowExecutionsRequest,
};

/// The open (Running) retries of one task queue, by the behaviour version they recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BehaviourCounts {
    /// Open runs per version: every version this build can replay ([`BEHAVIOURS`], zero
    /// included), and any other version found (one this build cannot replay).
    pub versions: BTreeMap<String, u64>,
    /// Open runs that have not recorded a version yet (their first workflow task is to come).
    pub unrecorded: u64,
}

impl BehaviourCounts {
    /// Every open run counted.
    pub fn open(&self) -> u64 {
        self.versions.values().sum::<u64>() + self.unrecorded
    }

    /// The versions with open runs that this build cannot replay.
    pub fn unknown(&self) -> Vec<&str> {
        self.versions
            .iter()
            .filter(|(v, n)| **n > 0 && !BEHAVIOURS.contains(&v.as_str()))
            .map(|(v, _)| v.as_str())
            .collect()
    }
}

fn quoted(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Open retries of `task_queue`, by behaviour version; with `started_before` (an RFC 3339 time,
/// e.g. `2027-01-10T12:00:00Z`) only those started before it. Visibility cannot group by a custom
/// search attribute, so each known version is counted on its own (`CountWorkflowExecutions`),
/// runs without one are counted with `IS NULL`, and runs of any other version are listed and
/// grouped here (normally none). Visibility is eventually consistent: a run started or closed a
/// moment ago may not be counted yet.
pub async fn open_runs_by_behaviour(
    client: &Client,
    task_queue: &str,
    started_before: Option<&str>,
) -> Result<BehaviourCounts, Error> {
    let mut open = format!(
        "WorkflowType = {} AND ExecutionStatus = 'Running' AND TaskQueue = {}",
        quoted(retake_domain::WORKFLOW_TYPE),
        quoted(task_queue)
    );
    if let Some(t) = started_before {
        open.push_str(&format!(" AND StartTime < {}", quoted(t)));
    }
    let mut counts = BehaviourCounts::default();
    for version in BEHAVIOURS {
        let query = format!("{open} AND {BEHAVIOUR_ATTRIBUTE} = {}", quoted(version));
        counts
            .versions
            .insert((*version).to_owned(), count(client, query).await?);
    }
    counts.unrecorded = count(client, format!("{open} AND {BEHAVIOUR_ATTRIBUTE} IS NULL")).await?;
    let known: Vec<String> = BEHAVIOURS.iter().map(|v| quoted(v)).collect();
    let others = format!(
        "{open} AND {BEHAVIOUR_ATTRIBUTE} NOT IN ({})",
        known.join(", ")
    );
    let mut svc = client.connection().workflow_service();
    let mut token = Vec::new();
    loop {
        let page = svc
            .list_workflow_executions(tonic::Request::new(ListWorkflowExecutionsRequest {
                namespace: client.namespace(),
                page_size: 1000,
                next_page_token: token,
                query: others.clone(),
            }))
            .await
            .map_err(|status| Error::from_status(status, "the open runs"))?
            .into_inner();
        for info in page.executions {
            let version = info
                .search_attributes
                .as_ref()
                .and_then(|sa| sa.indexed_fields.get(BEHAVIOUR_ATTRIBUTE))
                .and_then(|p| serde_json::from_slice::<String>(&p.data).ok())
                .unwrap_or_default();
            *counts.versions.entry(version).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            return Ok(counts);
        }
        token = page.next_page_token;
    }
}

async fn count(client: &Client, query: String) -> Result<u64, Error> {
    let mut svc = client.connection().workflow_service();
    let answer = svc
        .count_workflow_executions(tonic::Request::new(CountWorkflowExecutionsRequest {
            namespace: client.namespace(),
            query,
        }))
        .await
        .map_err(|status| Error::from_status(status, "the open runs"))?;
    Ok(u64::try_from(answer.into_inner().count).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_are_those_this_build_cannot_replay() {
        let mut counts = BehaviourCounts {
            unrecorded: 1,
            ..Default::default()
        };
        counts.versions.insert(BEHAVIOURS[0].to_owned(), 3);
        counts.versions.insert("v0".to_owned(), 2);
        counts.versions.insert("v-1".to_owned(), 0);
        assert_eq!(counts.open(), 6);
        assert_eq!(counts.unknown(), ["v0"]);
    }
}
