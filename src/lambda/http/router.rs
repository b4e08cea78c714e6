//! Routes of the contract and the scope each needs.

use crate::domain::auth::Scope;
use lambda_http::http::Method;
use percent_encoding::percent_decode_str;

const USERS_PATH: &str = "/api/v1/users";
const AUDIENCES_PATH: &str = "/api/v1/audiences";
const WEBHOOKS_PATH: &str = "/api/v1/webhooks";
/// `POST /api/v1/users/batch`; other methods on this path read or erase user `batch`.
const BATCH: &str = "batch";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Upsert,
    Batch,
    FindByEmail,
    GetUser(String),
    DeleteUser(String),
    /// Segment's `POST /v1/identify` and `POST /v1/batch`.
    SegmentIdentify,
    SegmentBatch,
    ListAudiences,
    PutAudience(String),
    GetAudience(String),
    DeleteAudience(String),
    AudienceMembers(String),
    /// `GET /api/v1/users/{id}/audiences`.
    UserAudiences(String),
    ListWebhooks,
    PutWebhook(String),
    GetWebhook(String),
    DeleteWebhook(String),
    /// `POST /api/v1/webhooks/{id}/rotate-secret`.
    RotateWebhookSecret(String),
    /// `GET /api/v1/webhooks/{id}/deliveries`: the attempt log.
    WebhookDeliveries(String),
    /// `POST /api/v1/webhooks/{id}/replay`: logged deliveries sent again.
    ReplayWebhook(String),
}

/// A webhook's action: its path's end, the one method it takes, its route.
type WebhookAction = (&'static str, &'static str, fn(String) -> Route);

/// One path segment, percent-decoded: not empty, no `/`.
fn decoded(encoded: &str) -> Option<String> {
    if encoded.is_empty() || encoded.contains('/') {
        return None;
    }
    percent_decode_str(encoded)
        .decode_utf8()
        .ok()
        .map(|id| id.into_owned())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
}

impl Route {
    pub fn of(method: &Method, path: &str) -> Result<Route, RouteError> {
        let segment = match path {
            "/v1/identify" => Some(Route::SegmentIdentify),
            "/v1/batch" => Some(Route::SegmentBatch),
            _ => None,
        };
        if let Some(route) = segment {
            return match *method {
                Method::POST => Ok(route),
                _ => Err(RouteError::MethodNotAllowed { allow: "POST" }),
            };
        }
        if let Some(rest) = path.strip_prefix(AUDIENCES_PATH) {
            return Self::audiences(method, rest);
        }
        if let Some(rest) = path.strip_prefix(WEBHOOKS_PATH) {
            return Self::webhooks(method, rest);
        }
        let rest = path.strip_prefix(USERS_PATH).ok_or(RouteError::NotFound)?;
        if let Some(user) = rest
            .strip_suffix("/audiences")
            .and_then(|r| r.strip_prefix('/'))
        {
            let id = decoded(user).ok_or(RouteError::NotFound)?;
            return match *method {
                Method::GET => Ok(Route::UserAudiences(id)),
                _ => Err(RouteError::MethodNotAllowed { allow: "GET" }),
            };
        }
        match rest {
            "" | "/" => match *method {
                Method::POST => Ok(Route::Upsert),
                Method::GET => Ok(Route::FindByEmail),
                _ => Err(RouteError::MethodNotAllowed { allow: "GET, POST" }),
            },
            _ => {
                let encoded = rest.strip_prefix('/').ok_or(RouteError::NotFound)?;
                let id = decoded(encoded).ok_or(RouteError::NotFound)?;
                match *method {
                    Method::GET => Ok(Route::GetUser(id)),
                    Method::DELETE => Ok(Route::DeleteUser(id)),
                    Method::POST if encoded == BATCH => Ok(Route::Batch),
                    // As openapi.yaml documents this path: the batch resource. (GET and
                    // DELETE still reach a user whose id is `batch`.)
                    _ if encoded == BATCH => Err(RouteError::MethodNotAllowed { allow: "POST" }),
                    _ => Err(RouteError::MethodNotAllowed {
                        allow: "GET, DELETE",
                    }),
                }
            }
        }
    }

    /// `/api/v1/audiences`, `…/{id}`, `…/{id}/members`.
    fn audiences(method: &Method, rest: &str) -> Result<Route, RouteError> {
        if matches!(rest, "" | "/") {
            return match *method {
                Method::GET => Ok(Route::ListAudiences),
                _ => Err(RouteError::MethodNotAllowed { allow: "GET" }),
            };
        }
        let rest = rest.strip_prefix('/').ok_or(RouteError::NotFound)?;
        if let Some(audience) = rest.strip_suffix("/members") {
            let id = decoded(audience).ok_or(RouteError::NotFound)?;
            return match *method {
                Method::GET => Ok(Route::AudienceMembers(id)),
                _ => Err(RouteError::MethodNotAllowed { allow: "GET" }),
            };
        }
        let id = decoded(rest).ok_or(RouteError::NotFound)?;
        match *method {
            Method::PUT => Ok(Route::PutAudience(id)),
            Method::GET => Ok(Route::GetAudience(id)),
            Method::DELETE => Ok(Route::DeleteAudience(id)),
            _ => Err(RouteError::MethodNotAllowed {
                allow: "GET, PUT, DELETE",
            }),
        }
    }

    /// `/api/v1/webhooks`, `…/{id}`, `…/{id}/rotate-secret`, `…/{id}/deliveries`,
    /// `…/{id}/replay`.
    fn webhooks(method: &Method, rest: &str) -> Result<Route, RouteError> {
        if matches!(rest, "" | "/") {
            return match *method {
                Method::GET => Ok(Route::ListWebhooks),
                _ => Err(RouteError::MethodNotAllowed { allow: "GET" }),
            };
        }
        let rest = rest.strip_prefix('/').ok_or(RouteError::NotFound)?;
        let actions: [WebhookAction; 3] = [
            ("/rotate-secret", "POST", Route::RotateWebhookSecret),
            ("/deliveries", "GET", Route::WebhookDeliveries),
            ("/replay", "POST", Route::ReplayWebhook),
        ];
        for (end, allow, route) in actions {
            if let Some(webhook) = rest.strip_suffix(end) {
                let id = decoded(webhook).ok_or(RouteError::NotFound)?;
                return if method.as_str() == allow {
                    Ok(route(id))
                } else {
                    Err(RouteError::MethodNotAllowed { allow })
                };
            }
        }
        let id = decoded(rest).ok_or(RouteError::NotFound)?;
        match *method {
            Method::PUT => Ok(Route::PutWebhook(id)),
            Method::GET => Ok(Route::GetWebhook(id)),
            Method::DELETE => Ok(Route::DeleteWebhook(id)),
            _ => Err(RouteError::MethodNotAllowed {
                allow: "GET, PUT, DELETE",
            }),
        }
    }

    pub fn scope(&self) -> Scope {
        match self {
            Route::Upsert | Route::Batch => Scope::UsersWrite,
            Route::SegmentIdentify | Route::SegmentBatch => Scope::SegmentWrite,
            Route::GetUser(_) | Route::UserAudiences(_) => Scope::UsersRead,
            Route::PutAudience(_) | Route::DeleteAudience(_) => Scope::AudiencesWrite,
            Route::ListAudiences | Route::GetAudience(_) | Route::AudienceMembers(_) => {
                Scope::AudiencesRead
            }
            Route::FindByEmail => Scope::UsersReadPii,
            Route::DeleteUser(_) => Scope::UsersDelete,
            Route::PutWebhook(_)
            | Route::DeleteWebhook(_)
            | Route::RotateWebhookSecret(_)
            | Route::ReplayWebhook(_) => Scope::WebhooksWrite,
            Route::ListWebhooks | Route::GetWebhook(_) | Route::WebhookDeliveries(_) => {
                Scope::WebhooksRead
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Route::Upsert => "POST /api/v1/users",
            Route::Batch => "POST /api/v1/users/batch",
            Route::FindByEmail => "GET /api/v1/users?email",
            Route::GetUser(_) => "GET /api/v1/users/{id}",
            Route::DeleteUser(_) => "DELETE /api/v1/users/{id}",
            Route::SegmentIdentify => "POST /v1/identify",
            Route::SegmentBatch => "POST /v1/batch",
            Route::ListAudiences => "GET /api/v1/audiences",
            Route::PutAudience(_) => "PUT /api/v1/audiences/{id}",
            Route::GetAudience(_) => "GET /api/v1/audiences/{id}",
            Route::DeleteAudience(_) => "DELETE /api/v1/audiences/{id}",
            Route::AudienceMembers(_) => "GET /api/v1/audiences/{id}/members",
            Route::UserAudiences(_) => "GET /api/v1/users/{id}/audiences",
            Route::ListWebhooks => "GET /api/v1/webhooks",
            Route::PutWebhook(_) => "PUT /api/v1/webhooks/{id}",
            Route::GetWebhook(_) => "GET /api/v1/webhooks/{id}",
            Route::DeleteWebhook(_) => "DELETE /api/v1/webhooks/{id}",
            Route::RotateWebhookSecret(_) => "POST /api/v1/webhooks/{id}/rotate-secret",
            Route::WebhookDeliveries(_) => "GET /api/v1/webhooks/{id}/deliveries",
            Route::ReplayWebhook(_) => "POST /api/v1/webhooks/{id}/replay",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert_eq!(Route::of(&Method::POST, "/api/v1/users"), Ok(Route::Upsert));
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/users"),
            Ok(Route::FindByEmail)
        );
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/users/usr%2042%C3%A9"),
            Ok(Route::GetUser("usr 42é".into()))
        );
        assert_eq!(
            Route::of(&Method::DELETE, "/api/v1/users"),
            Err(RouteError::MethodNotAllowed { allow: "GET, POST" })
        );
        assert_eq!(
            Route::of(&Method::POST, "/api/v1/users/u1"),
            Err(RouteError::MethodNotAllowed {
                allow: "GET, DELETE"
            })
        );
        assert_eq!(
            Route::of(&Method::DELETE, "/api/v1/users/u%201"),
            Ok(Route::DeleteUser("u 1".into()))
        );
        assert_eq!(
            Route::of(&Method::POST, "/api/v1/users/batch"),
            Ok(Route::Batch)
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/batch"),
            Ok(Route::SegmentBatch)
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/identify"),
            Ok(Route::SegmentIdentify)
        );
        assert_eq!(
            Route::of(&Method::GET, "/v1/batch"),
            Err(RouteError::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/track"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/users/batch"),
            Ok(Route::GetUser("batch".into()))
        );
        assert_eq!(
            Route::of(&Method::PUT, "/api/v1/users/batch"),
            Err(RouteError::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(
            Route::of(&Method::POST, "/api/v1/users/b%61tch"),
            Err(RouteError::MethodNotAllowed {
                allow: "GET, DELETE"
            })
        );
        assert_eq!(
            Route::of(&Method::PUT, "/api/v1/audiences/trials"),
            Ok(Route::PutAudience("trials".into()))
        );
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/audiences"),
            Ok(Route::ListAudiences)
        );
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/audiences/a%20b/members"),
            Ok(Route::AudienceMembers("a b".into()))
        );
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/users/u%2F1/audiences"),
            Ok(Route::UserAudiences("u/1".into()))
        );
        assert_eq!(
            Route::of(&Method::POST, "/api/v1/audiences/a"),
            Err(RouteError::MethodNotAllowed {
                allow: "GET, PUT, DELETE"
            })
        );
        let webhooks = [
            (Method::GET, "/api/v1/webhooks", Route::ListWebhooks),
            (
                Method::PUT,
                "/api/v1/webhooks/crm",
                Route::PutWebhook("crm".into()),
            ),
            (
                Method::GET,
                "/api/v1/webhooks/c%20rm",
                Route::GetWebhook("c rm".into()),
            ),
            (
                Method::DELETE,
                "/api/v1/webhooks/crm",
                Route::DeleteWebhook("crm".into()),
            ),
            (
                Method::POST,
                "/api/v1/webhooks/crm/rotate-secret",
                Route::RotateWebhookSecret("crm".into()),
            ),
            (
                Method::GET,
                "/api/v1/webhooks/crm/deliveries",
                Route::WebhookDeliveries("crm".into()),
            ),
            (
                Method::POST,
                "/api/v1/webhooks/crm/replay",
                Route::ReplayWebhook("crm".into()),
            ),
        ];
        for (method, path, route) in webhooks {
            assert_eq!(Route::of(&method, path), Ok(route), "{method} {path}");
        }
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/webhooks/crm/rotate-secret"),
            Err(RouteError::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/webhooks/crm/replay"),
            Err(RouteError::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(
            Route::of(&Method::POST, "/api/v1/webhooks/crm/deliveries"),
            Err(RouteError::MethodNotAllowed { allow: "GET" })
        );
        assert_eq!(
            Route::of(&Method::POST, "/api/v1/webhooks/crm"),
            Err(RouteError::MethodNotAllowed {
                allow: "GET, PUT, DELETE"
            })
        );
        for path in [
            "/api/v1/webhooksx",
            "/api/v1/webhooks/a/b",
            "/api/v1/webhooks//rotate-secret",
            "/api/v1/audiences/a/b",
            "/api/v1/audiences//members",
            "/api/v1/users//audiences",
            "/",
            "/api/v1/user",
            "/api/v1/usersx",
            "/api/v1/users/a/b",
            "/api/v1/users/%FF",
        ] {
            assert_eq!(
                Route::of(&Method::GET, path),
                Err(RouteError::NotFound),
                "{path}"
            );
        }
    }
}
