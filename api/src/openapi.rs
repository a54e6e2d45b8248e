//! The OpenAPI document, generated from the handlers' annotations.

use crate::routes::{budgets, ops, policies, segments};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "retake", description = "Durable, transparent, budget-bounded retries of failed generations."),
    paths(
        ops::healthz, ops::metrics,
        policies::show, policies::set,
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
