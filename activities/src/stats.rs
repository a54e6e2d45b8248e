//! Totals for the `/metrics` endpoint. [`Stats`] and [`Reporting`] live with the other ports
//! (`crate::ports`), the SQL implementation with the store; this path is kept for the callers
//! that name them by it.

pub use crate::ports::{Reporting, Stats, VariationCount};

use crate::ports::{Store, StoreError};
use retake_domain::RetryPolicy;
use retake_domain::SceneType;
use retake_domain::adapt::{self, EvidenceQuery, Insights};

/// What the scene type's latest scored attempts say about which variations fix which failures:
/// over `window` attempts in `scope` when given, else the scene type's stored policy's
/// `adaptive` settings (the evidence its adaptive attempts choose from).
pub async fn insights(
    store: &dyn Store,
    scene_type: &SceneType,
    window: Option<u32>,
    scope: Option<String>,
) -> Result<Insights, StoreError> {
    let stored = store.policy(scene_type.as_str()).await?;
    let settings = stored
        .as_ref()
        .and_then(|p| RetryPolicy::parse(p).ok())
        .map(|p| p.adaptive)
        .unwrap_or_default();
    let query = EvidenceQuery {
        window: window.unwrap_or(settings.window),
        scope: scope.or(settings.scope),
    };
    let evidence = store.evidence(scene_type.as_str(), &query).await?;
    Ok(Insights {
        scene_type: scene_type.to_string(),
        window: query.window,
        scope: query.scope,
        insights: adapt::insights(&evidence.rows),
    })
}
