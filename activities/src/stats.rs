//! Totals for the `/metrics` endpoint. [`Stats`] and [`Reporting`] live with the other ports
//! (`crate::ports`), the SQL implementation with the store; this path is kept for the callers
//! that name them by it.

pub use crate::ports::{Reporting, Stats};
