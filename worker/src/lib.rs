//! The retake command line and worker wiring. Binaries stay thin; everything here is callable
//! from tests.

pub mod cli;
pub mod commands;
pub mod connect;
pub mod memory;
pub mod pipe;
/// Starting and steering retries (re-exported from `retake-client`).
pub use retake_client as retries;
/// The custom search attributes the workflow keeps current (for dev servers the tests and the
/// bench start).
pub use retake_workflows::SEARCH_ATTRIBUTES;
pub mod sweep;
pub mod telemetry;
pub mod worker;

/// Default store: a SQLite file under `.retake/` in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.retake/retake.db";

#[cfg(test)]
mod tests {
    /// The scripts register the search attributes on the dev server themselves (before anything
    /// is built): their list must stay the workflow's.
    #[test]
    fn the_scripts_register_exactly_the_workflows_search_attributes() {
        let lib = include_str!("../../scripts/lib.sh");
        let line = lib
            .lines()
            .find(|l| l.starts_with("SEARCH_ATTRIBUTES=("))
            .expect("scripts/lib.sh lists SEARCH_ATTRIBUTES");
        let listed: Vec<&str> = line
            .trim_start_matches("SEARCH_ATTRIBUTES=(")
            .trim_end_matches(')')
            .split_whitespace()
            .map(|s| s.trim_end_matches("=Keyword"))
            .collect();
        assert_eq!(listed, super::SEARCH_ATTRIBUTES);
    }
}
