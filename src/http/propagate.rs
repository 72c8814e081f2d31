//! Deletes and revocations reach every live instance before the response: the handler sends
//! the fleet event ([`crate::fleet::Fleet::broadcast`]) after its durable change, and the
//! response carries how far it got in `Pixgate-Fleet` (absent without Redis: one instance).
//! Instances that did not acknowledge are named in the log and in the audit event.

use http::Response;
use http::header::{HeaderName, HeaderValue};

use super::{Body, Ctx};
use crate::app::App;
use crate::fleet::{Event, Propagation};

pub const PIXGATE_FLEET: HeaderName = HeaderName::from_static("pixgate-fleet");

/// Sends `event` to the fleet (`None` without a fleet).
pub async fn broadcast(app: &App, event: &Event) -> Option<Propagation> {
    let fleet = app.fleet.as_ref()?;
    Some(fleet.broadcast(event).await)
}

/// Records `p` for the request (log line, audit event) and adds the header to `resp`.
pub fn report(
    app: &App,
    p: Option<&Propagation>,
    ctx: &Ctx,
    mut resp: Response<Body>,
) -> Response<Body> {
    let Some(p) = p else {
        return resp;
    };
    let bound = app.config.auth.revocation_cache_secs;
    if !p.complete() {
        let missing = if p.sent {
            p.missing.clone()
        } else {
            vec!["*".to_owned()]
        };
        tracing::warn!(request_id = %ctx.request_id, unacknowledged = ?missing, bound_secs = bound,
            "fleet: not every instance confirmed; they forget within the bound");
        ctx.set_unacknowledged(missing);
    }
    if let Ok(v) = HeaderValue::from_str(&p.header_value(bound)) {
        resp.headers_mut().insert(PIXGATE_FLEET, v);
    }
    resp
}

/// Sends `event` and answers `resp` with the outcome.
pub async fn propagate(app: &App, event: Event, ctx: &Ctx, resp: Response<Body>) -> Response<Body> {
    let p = broadcast(app, &event).await;
    report(app, p.as_ref(), ctx, resp)
}
