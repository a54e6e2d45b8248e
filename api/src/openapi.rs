//! The OpenAPI document, generated from the handlers' annotations. Every body is described by the
//! type the handler parses or returns (the domain and store types carry `ToSchema` behind their
//! `openapi` feature), so a generated client speaks the same shapes as the server.

use crate::routes::{budgets, insights, ops, policies, segments};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "retake", description = "Durable, transparent, budget-bounded retries of failed generations."),
    paths(
        ops::healthz, ops::metrics,
        policies::show, policies::set, policies::changes, insights::show,
        budgets::show, budgets::set,
        segments::start, segments::status, segments::abort, segments::escalate, segments::decide,
        segments::history,
    ),
    modifiers(&Bearer),
)]
struct Api;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub(crate) fn document() -> utoipa::openapi::OpenApi {
    Api::openapi()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// A schema says something about the body: a reference to a component, or a type with
    /// properties, items or a format (not a bare `object`).
    fn described(schema: &Value) -> bool {
        schema.get("$ref").is_some()
            || schema.get("properties").is_some()
            || schema.get("items").is_some()
            || schema.get("type").is_some_and(|t| t != "object")
    }

    #[test]
    fn every_request_and_response_body_has_a_schema_of_its_own() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let mut bodies = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let mut contents: Vec<&Value> = op["responses"]
                    .as_object()
                    .unwrap()
                    .values()
                    .filter_map(|r| r.get("content"))
                    .collect();
                contents.extend(op.get("requestBody").map(|b| &b["content"]));
                for content in contents {
                    for (media, c) in content.as_object().unwrap() {
                        bodies += 1;
                        assert!(
                            described(&c["schema"]),
                            "{method} {path} {media}: {}",
                            c["schema"]
                        );
                    }
                }
            }
        }
        assert!(bodies > 40, "only {bodies} bodies found");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "RetryPolicy",
            "PolicyInput",
            "RetryRequest",
            "RetryStarted",
            "HistoryPage",
            "StoredAttempt",
            "AttemptRecord",
            "ErrorBody",
            "Budget",
            "BudgetLimit",
            "Status",
            "DecisionRequest",
        ] {
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        for name in ["RetryPolicy", "PolicyInput"] {
            assert!(
                schemas[name]["properties"]
                    .get("stop_after_same_refusals")
                    .is_some(),
                "{name} documents stop_after_same_refusals: {}",
                schemas[name]
            );
        }
    }
}
