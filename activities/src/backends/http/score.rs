//! `POST {base_url}/score`: the scorer half of the contract.

use super::HttpBackend;
use crate::backends::wire;
use crate::io::{ScoreRequest, Scored};
use crate::ports::BackendError;
use retake_domain::contract::{Params, Scores, validate_scores};
use retake_domain::scores::CategoryScore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
struct ScoreBody<'a> {
    idempotency_key: &'a str,
    segment_id: &'a str,
    scene_type: &'a str,
    seed: u64,
    params: &'a Params,
    output_uri: &'a str,
}

/// The scorer's answer; `null` reads as absent.
#[derive(Debug, Deserialize)]
struct ScoreReply {
    #[serde(default)]
    scores: Option<Scores>,
    #[serde(default)]
    failures: Option<Vec<String>>,
    #[serde(default)]
    breakdown: Option<Vec<CategoryScore>>,
    #[serde(default)]
    scale: Option<f64>,
}

pub(super) async fn score(
    backend: &HttpBackend,
    req: &ScoreRequest,
) -> Result<Scored, BackendError> {
    let key = req.key.idempotency_key();
    let body = ScoreBody {
        idempotency_key: &key,
        segment_id: req.segment_id.as_str(),
        scene_type: req.scene_type.as_str(),
        seed: req.seed,
        params: &req.params,
        output_uri: &req.output_uri,
    };
    let what = format!("POST {}", backend.url(&["score"]));
    let reply: ScoreReply = wire::json(&what, backend.post("score", &key, &body)).await?;
    normalise(&what, reply)
}

/// Apply `scale`, then check every score is within 0..=1.
fn normalise(what: &str, reply: ScoreReply) -> Result<Scored, BackendError> {
    let divisor = match reply.scale {
        None => 1.0,
        Some(s) if s == 1.0 || s == 100.0 => s,
        Some(s) => {
            return Err(BackendError::Rejected(format!(
                "{what}: malformed response at `scale`: must be 1 or 100, got {s}"
            )));
        }
    };
    let mut qa = Scored {
        scores: reply.scores.unwrap_or_default(),
        failures: reply.failures.unwrap_or_default(),
        breakdown: reply.breakdown.unwrap_or_default(),
    };
    for score in qa.scores.values_mut() {
        *score /= divisor;
    }
    for category in &mut qa.breakdown {
        category.score /= divisor;
    }
    validate_scores(&qa).map_err(|e| {
        let scale = if divisor == 1.0 {
            "0..=1"
        } else {
            "0..=100 (scale 100)"
        };
        BackendError::Rejected(format!("scores must be within {scale}: {e} ({what})"))
    })?;
    Ok(qa)
}
