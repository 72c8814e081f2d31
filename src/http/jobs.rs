//! Account jobs in flight, by user: HTTP-level state that lives as long as the process
//! (held by `App`, which is why it is a file of its own: `app` may depend on it without
//! depending on the handlers).

use super::error::Error;
use crate::cache::Flights;

#[derive(Default)]
pub struct AccountJobs {
    /// Account erasures in progress: a repeated `DELETE /v1/me` joins the running one. The
    /// result says how far the fleet event got (`None`: no fleet).
    pub erasures: Flights<Result<Option<crate::fleet::Propagation>, Error>>,
    /// Exports streaming: one at a time per account (each reads the whole archive range and
    /// every original).
    pub exports: Flights<()>,
}
