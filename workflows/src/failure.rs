//! What an activity failure really was, for the attempt's record.
//!
//! An activity failure reaches the workflow wrapped: its top-level message is Temporal's
//! "Activity task failed", and what the adapter said (ComfyUI's validation error, llama.cpp's
//! `context_length_exceeded`, a timeout) is in its cause chain. Recording the wrapper would tell
//! every failure apart from none, so the record takes the root: the failure type and message the
//! adapter raised, or the kind of timeout and the last failure before it.

use retake_activities::io::Used;
use temporalio_common::error::IncomingError;
use temporalio_common::protos::temporal::api::enums::v1::TimeoutType;
use temporalio_common::protos::temporal::api::failure::v1::Failure;
use temporalio_common::protos::temporal::api::failure::v1::failure::FailureInfo;
use temporalio_sdk::ActivityExecutionError;

/// The root of a failure: its type and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cause {
    /// The application failure type (`BackendRejected`, …), `Timeout`, `Cancelled`, …
    pub(crate) kind: String,
    pub(crate) message: String,
}

/// The root cause of a failed activity.
pub(crate) fn of(e: &ActivityExecutionError) -> Cause {
    match e.failure() {
        Some(f) => describe(f),
        None => Cause {
            kind: "PayloadConversion".to_owned(),
            message: e.to_string(),
        },
    }
}

/// What the generation reported of itself when it failed or was cancelled ([`Used`]).
pub(crate) fn used(e: &ActivityExecutionError) -> Option<Used> {
    match e {
        ActivityExecutionError::Cancelled(c) => c.details::<Used>().ok().flatten(),
        ActivityExecutionError::Failed(_) => match e.cause() {
            Some(IncomingError::Application(app)) => app.details::<Used>().ok().flatten(),
            _ => None,
        },
        _ => None,
    }
}

/// The worker that ran the failed or cancelled activity: as Temporal recorded it (the identity
/// in the activity failure; empty when no worker ever started it), else as the activity itself
/// reported it (a cancellation carries no identity).
pub(crate) fn worker(e: &ActivityExecutionError) -> Option<String> {
    match e.failure().and_then(|f| f.failure_info.as_ref()) {
        Some(FailureInfo::ActivityFailureInfo(info)) if !info.identity.is_empty() => {
            Some(info.identity.clone())
        }
        _ => used(e).and_then(|u| u.worker),
    }
}

/// Whether the generation failed because of its machine: the backend said so
/// (`InfrastructureFailure`).
pub(crate) fn infrastructure(e: &ActivityExecutionError) -> bool {
    matches!(
        &e.failure().map(below_wrapper).and_then(|f| f.failure_info.as_ref()),
        Some(FailureInfo::ApplicationFailureInfo(app))
            if app.r#type == retake_domain::contract::INFRASTRUCTURE_FAILURE
    )
}

/// Whether no worker started the activity in time (a schedule-to-start timeout): for a
/// generation placed on a worker by name, that worker is busy or gone.
pub(crate) fn not_started(e: &ActivityExecutionError) -> bool {
    matches!(
        &e.failure().map(below_wrapper).and_then(|f| f.failure_info.as_ref()),
        Some(FailureInfo::TimeoutFailureInfo(t))
            if TimeoutType::try_from(t.timeout_type) == Ok(TimeoutType::ScheduleToStart)
    )
}

/// The failure below the activity wrapper ("Activity task failed"), or `f` itself.
fn below_wrapper(f: &Failure) -> &Failure {
    match (&f.failure_info, &f.cause) {
        (Some(FailureInfo::ActivityFailureInfo(_)), Some(cause)) => cause.as_ref(),
        _ => f,
    }
}

/// The root cause of a failure proto: below the activity wrapper, the failure itself.
pub(crate) fn describe(f: &Failure) -> Cause {
    let inner = below_wrapper(f);
    match &inner.failure_info {
        Some(FailureInfo::ApplicationFailureInfo(app)) => Cause {
            kind: if app.r#type.is_empty() {
                "ApplicationFailure".to_owned()
            } else {
                app.r#type.clone()
            },
            message: inner.message.clone(),
        },
        Some(FailureInfo::TimeoutFailureInfo(t)) => {
            let what = match TimeoutType::try_from(t.timeout_type) {
                Ok(TimeoutType::Heartbeat) => {
                    "no heartbeat in time (the worker running it stopped or hung)"
                }
                Ok(TimeoutType::StartToClose) => "it ran longer than its start-to-close timeout",
                Ok(TimeoutType::ScheduleToStart) => "no worker picked it up in time",
                Ok(TimeoutType::ScheduleToClose) => {
                    "it did not finish within its schedule-to-close timeout"
                }
                _ => "it timed out",
            };
            let mut message = format!("timed out: {what}");
            if let Some(last) = &inner.cause {
                let last = describe(last);
                message.push_str(&format!(
                    "; last failure before it: {}: {}",
                    last.kind, last.message
                ));
            }
            Cause {
                kind: "Timeout".to_owned(),
                message,
            }
        }
        Some(FailureInfo::CanceledFailureInfo(_)) => Cause {
            kind: "Cancelled".to_owned(),
            message: non_empty(&inner.message, "cancelled"),
        },
        Some(FailureInfo::ServerFailureInfo(_)) => Cause {
            kind: "ServerFailure".to_owned(),
            message: inner.message.clone(),
        },
        Some(FailureInfo::TerminatedFailureInfo(_)) => Cause {
            kind: "Terminated".to_owned(),
            message: non_empty(&inner.message, "terminated"),
        },
        _ => Cause {
            kind: "Failure".to_owned(),
            message: inner.message.clone(),
        },
    }
}

fn non_empty(message: &str, otherwise: &str) -> String {
    if message.is_empty() {
        otherwise.to_owned()
    } else {
        message.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use temporalio_common::protos::temporal::api::failure::v1::{
        ActivityFailureInfo, ApplicationFailureInfo, TimeoutFailureInfo,
    };

    fn application(kind: &str, message: &str) -> Failure {
        Failure {
            message: message.to_owned(),
            failure_info: Some(FailureInfo::ApplicationFailureInfo(
                ApplicationFailureInfo {
                    r#type: kind.to_owned(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    fn wrapped(cause: Failure) -> Failure {
        Failure {
            message: "Activity task failed".to_owned(),
            cause: Some(Box::new(cause)),
            failure_info: Some(FailureInfo::ActivityFailureInfo(
                ActivityFailureInfo::default(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn the_adapters_message_and_type_are_the_cause_not_the_wrapper() {
        let msg = "Prompt outputs failed validation; node 2 (ImageAddNoise): Value 7.0 bigger \
                   than max of 1.0: strength";
        let cause = describe(&wrapped(application("BackendRejected", msg)));
        assert_eq!(cause.kind, "BackendRejected");
        assert_eq!(cause.message, msg);
    }

    #[test]
    fn a_heartbeat_timeout_says_so_and_quotes_the_last_failure_before_it() {
        let timeout = Failure {
            message: "activity Heartbeat timeout".to_owned(),
            cause: Some(Box::new(application(
                "BackendTransient",
                "HTTP 503 from the job API",
            ))),
            failure_info: Some(FailureInfo::TimeoutFailureInfo(TimeoutFailureInfo {
                timeout_type: TimeoutType::Heartbeat as i32,
                ..Default::default()
            })),
            ..Default::default()
        };
        let cause = describe(&wrapped(timeout));
        assert_eq!(cause.kind, "Timeout");
        assert!(
            cause.message.contains("no heartbeat in time"),
            "{}",
            cause.message
        );
        assert!(
            cause
                .message
                .ends_with("last failure before it: BackendTransient: HTTP 503 from the job API"),
            "{}",
            cause.message
        );
    }

    #[test]
    fn an_untyped_application_failure_is_named_as_such() {
        let cause = describe(&wrapped(application("", "boom")));
        assert_eq!(cause.kind, "ApplicationFailure");
        assert_eq!(cause.message, "boom");
    }
}
