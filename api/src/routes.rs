//! The one route table. The router, the per-route metric labels, the `Allow` header of a 405,
//! the audit log's action names, and the check that `openapi.json` documents exactly what is
//! served are all read from [`ROUTES`]; a route is added here and nowhere else.

use crate::{
    admin, audit, callbacks, cancel, consent, erase, intake, messages, ops, preview, respondents,
    stats,
};
use poem::endpoint::BoxEndpoint;
use poem::{EndpointExt, Response};

/// An HTTP method the API serves (a `Copy` value, so the table can be a constant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    pub fn http(self) -> poem::http::Method {
        match self {
            Method::Get => poem::http::Method::GET,
            Method::Post => poem::http::Method::POST,
            Method::Put => poem::http::Method::PUT,
            Method::Delete => poem::http::Method::DELETE,
        }
    }
}

/// One method of a route.
pub struct Op {
    pub method: Method,
    /// The audit log's name for a successful call (admin routes the log keeps).
    pub audit: Option<&'static str>,
    pub handler: fn() -> BoxEndpoint<'static, Response>,
}

/// One route: its template (as documented and labelled), its path in the router, whether it
/// needs the admin token, and its methods.
pub struct Route {
    pub template: &'static str,
    pub path: &'static str,
    pub admin: bool,
    /// An intake route: browser pages of `QUIZFLOW_CORS_ORIGINS` may call it (never an admin
    /// route).
    pub cors: bool,
    pub ops: &'static [Op],
}

fn boxed<E>(e: E) -> BoxEndpoint<'static, Response>
where
    E: poem::Endpoint + 'static,
{
    e.map_to_response().boxed()
}

const fn op(method: Method, handler: fn() -> BoxEndpoint<'static, Response>) -> Op {
    Op {
        method,
        audit: None,
        handler,
    }
}

const fn audited(
    method: Method,
    action: &'static str,
    handler: fn() -> BoxEndpoint<'static, Response>,
) -> Op {
    Op {
        method,
        audit: Some(action),
        handler,
    }
}

const fn public(template: &'static str, path: &'static str, ops: &'static [Op]) -> Route {
    Route {
        template,
        path,
        admin: false,
        cors: false,
        ops,
    }
}

const fn intake(template: &'static str, path: &'static str, ops: &'static [Op]) -> Route {
    Route {
        template,
        path,
        admin: false,
        cors: true,
        ops,
    }
}

const fn admin(template: &'static str, path: &'static str, ops: &'static [Op]) -> Route {
    Route {
        template,
        path,
        admin: true,
        cors: false,
        ops,
    }
}

pub const ROUTES: &[Route] = &[
    intake(
        "/v1/quizzes/{quiz_id}/submissions",
        "/v1/quizzes/:quiz_id/submissions",
        &[op(Method::Post, || boxed(intake::submit_one))],
    ),
    intake(
        "/v1/submissions/batch",
        "/v1/submissions/batch",
        &[op(Method::Post, || boxed(intake::submit_batch))],
    ),
    admin(
        "/v1/campaigns",
        "/v1/campaigns",
        &[
            audited(Method::Post, "campaign.create", || {
                boxed(admin::create_campaign)
            }),
            op(Method::Get, || boxed(admin::list_campaigns)),
        ],
    ),
    admin(
        "/v1/campaigns/{id}",
        "/v1/campaigns/:id",
        &[
            op(Method::Get, || boxed(admin::get_campaign)),
            audited(Method::Put, "campaign.replace", || {
                boxed(admin::replace_campaign)
            }),
            audited(Method::Delete, "campaign.delete", || {
                boxed(admin::delete_campaign)
            }),
        ],
    ),
    admin(
        "/v1/campaigns/{id}/preview",
        "/v1/campaigns/:id/preview",
        &[op(Method::Post, || boxed(preview::preview))],
    ),
    admin(
        "/v1/campaigns/{id}/test",
        "/v1/campaigns/:id/test",
        &[audited(Method::Post, "campaign.test", || {
            boxed(preview::test)
        })],
    ),
    admin(
        "/v1/submissions/{id}",
        "/v1/submissions/:id",
        &[audited(Method::Get, "submission.read", || {
            boxed(admin::get_submission)
        })],
    ),
    admin(
        "/v1/submissions/{id}/cancel",
        "/v1/submissions/:id/cancel",
        &[audited(Method::Post, "submission.cancel", || {
            boxed(cancel::submission)
        })],
    ),
    admin(
        "/v1/messages",
        "/v1/messages",
        &[audited(Method::Post, "message.create", || {
            boxed(messages::send_one)
        })],
    ),
    admin(
        "/v1/messages/batch",
        "/v1/messages/batch",
        &[audited(Method::Post, "message.create_batch", || {
            boxed(messages::send_batch)
        })],
    ),
    admin(
        "/v1/messages/{id}",
        "/v1/messages/:id",
        &[op(Method::Get, || boxed(messages::get))],
    ),
    admin(
        "/v1/respondents",
        "/v1/respondents",
        &[audited(Method::Get, "respondent.export", || {
            boxed(respondents::export)
        })],
    ),
    admin(
        "/v1/cancellations",
        "/v1/cancellations",
        &[audited(Method::Post, "cancellation.create", || {
            boxed(cancel::by_key)
        })],
    ),
    admin(
        "/v1/stats",
        "/v1/stats",
        &[op(Method::Get, || boxed(stats::stats))],
    ),
    admin(
        "/v1/audit",
        "/v1/audit",
        &[op(Method::Get, || boxed(audit::list))],
    ),
    admin(
        "/v1/respondents/erase",
        "/v1/respondents/erase",
        &[audited(Method::Post, "respondent.erase", || {
            boxed(erase::erase)
        })],
    ),
    admin(
        "/v1/erasures/{id}",
        "/v1/erasures/:id",
        &[op(Method::Get, || boxed(erase::status))],
    ),
    admin(
        "/v1/dead-letters",
        "/v1/dead-letters",
        &[audited(Method::Get, "dead_letters.read", || {
            boxed(admin::list_dead_letters)
        })],
    ),
    admin(
        "/v1/dead-letters/redrive",
        "/v1/dead-letters/redrive",
        &[audited(Method::Post, "dead_letters.redrive", || {
            boxed(admin::redrive_bulk)
        })],
    ),
    admin(
        "/v1/dead-letters/{id}/redrive",
        "/v1/dead-letters/:id/redrive",
        &[audited(Method::Post, "dead_letter.redrive", || {
            boxed(admin::redrive_one)
        })],
    ),
    admin(
        "/v1/suppressions",
        "/v1/suppressions",
        &[
            audited(Method::Get, "suppressions.read", || boxed(consent::list)),
            audited(Method::Post, "suppression.add", || boxed(consent::add)),
            audited(Method::Delete, "suppression.delete", || {
                boxed(consent::remove)
            }),
        ],
    ),
    public(
        "/v1/inbound/twilio",
        "/v1/inbound/twilio",
        &[op(Method::Post, || boxed(consent::inbound_twilio))],
    ),
    public(
        "/v1/unsubscribe/{token}",
        "/v1/unsubscribe/:token",
        &[
            op(Method::Get, || boxed(consent::unsubscribe_page)),
            op(Method::Post, || boxed(consent::unsubscribe)),
        ],
    ),
    public(
        "/v1/callbacks/twilio",
        "/v1/callbacks/twilio",
        &[op(Method::Post, || boxed(callbacks::twilio))],
    ),
    public(
        "/v1/callbacks/whatsapp",
        "/v1/callbacks/whatsapp",
        &[
            op(Method::Get, || boxed(callbacks::whatsapp_verify)),
            op(Method::Post, || boxed(callbacks::whatsapp)),
        ],
    ),
    public(
        "/v1/callbacks/evolution",
        "/v1/callbacks/evolution",
        &[op(Method::Post, || boxed(callbacks::evolution))],
    ),
    public(
        "/v1/callbacks/email",
        "/v1/callbacks/email",
        &[op(Method::Post, || boxed(callbacks::email))],
    ),
    public(
        "/v1/qr/{token}.png",
        "/v1/qr/:file",
        &[op(Method::Get, || boxed(ops::qr_image))],
    ),
    public("/", "/", &[op(Method::Get, || boxed(ops::dashboard))]),
    public(
        "/healthz",
        "/healthz",
        &[op(Method::Get, || boxed(ops::healthz))],
    ),
    public(
        "/readyz",
        "/readyz",
        &[op(Method::Get, || boxed(ops::readyz))],
    ),
    public(
        "/metrics",
        "/metrics",
        &[op(Method::Get, || boxed(ops::metrics))],
    ),
    public(
        "/openapi.json",
        "/openapi.json",
        &[op(Method::Get, || boxed(ops::openapi))],
    ),
    public("/docs", "/docs", &[op(Method::Get, || boxed(ops::docs))]),
];

/// The route a path is served by (its template), or `other`: a bounded label set.
pub fn label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| matches(r.template, path))
        .map_or("other", |r| r.template)
}

/// A template's segments against a path's: `{x}` takes one non-empty segment, `{x}.png` one
/// ending in `.png`.
fn matches(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let ok = match ts.strip_prefix('{').and_then(|r| r.split_once('}')) {
                    Some((_, suffix)) => ps.len() > suffix.len() && ps.ends_with(suffix),
                    None => ts == ps,
                };
                if !ok {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

fn route(template: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.template == template)
}

/// The `Allow` header of a route (a GET route also answers HEAD).
pub fn allowed_methods(template: &str) -> Option<String> {
    let r = route(template)?;
    let mut methods = Vec::new();
    for op in r.ops {
        methods.push(op.method.as_str());
        if op.method == Method::Get {
            methods.push("HEAD");
        }
    }
    Some(methods.join(", "))
}

/// The audit log's action for a successful call, for the calls it keeps.
pub fn audit_action(method: &str, template: &str) -> Option<&'static str> {
    route(template)?
        .ops
        .iter()
        .find(|o| o.method.as_str() == method)?
        .audit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_their_templates_and_nothing_else_grows_the_labels() {
        for (path, want) in [
            (
                "/v1/quizzes/promo/submissions",
                "/v1/quizzes/{quiz_id}/submissions",
            ),
            ("/v1/submissions/batch", "/v1/submissions/batch"),
            ("/v1/submissions/5f0c", "/v1/submissions/{id}"),
            (
                "/v1/dead-letters/abc/redrive",
                "/v1/dead-letters/{id}/redrive",
            ),
            ("/v1/dead-letters/redrive", "/v1/dead-letters/redrive"),
            ("/v1/qr/token.png", "/v1/qr/{token}.png"),
            ("/", "/"),
            ("/v1/quizzes/promo/other", "other"),
            ("/wp-admin", "other"),
            ("/v1/campaigns/", "other"),
        ] {
            assert_eq!(label(path), want, "{path}");
        }
        assert_eq!(
            allowed_methods("/v1/campaigns/{id}").as_deref(),
            Some("GET, HEAD, PUT, DELETE")
        );
        assert_eq!(
            audit_action("POST", "/v1/campaigns"),
            Some("campaign.create")
        );
        assert_eq!(audit_action("GET", "/v1/campaigns"), None);
    }
}
