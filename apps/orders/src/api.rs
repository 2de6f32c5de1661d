//! The HTTP API of `lameduck-orders` (contract in the project's DESIGN).
//!
//! A client that disconnects, or a forced shutdown that drops the request, cannot cut a
//! write (create, cancel) in half and lose its outcome: a write handed to the writer is
//! committed and audited whether or not its caller still waits, and the shutdown stops
//! the writer only once it has finished them (the `finish-writes` hook); without the
//! writer (`--write-batching off`) a write runs in a task tracked by [`App::work`], which
//! the shutdown waits for before it closes the database.

use std::collections::HashMap;

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bytes::Bytes;
use lameduck::context::RequestContext;
use lameduck::middleware::route::Routes;
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditError, AuditLog};
use crate::db::Db;
use crate::model::{valid_idempotency_key, NewOrder, Order};
use crate::ops::{AuditCtx, Cancelled, Created, Done, Op};
use crate::payments::{PayError, Payments};
use crate::sql::is_unavailable;
use crate::writer::WriteError;

/// Default and largest page size of `GET /orders`.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page size.
pub const MAX_PAGE: i64 = 500;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct App {
    /// The database.
    pub db: Db,
    /// The audit log.
    pub audit: AuditLog,
    /// Writes in progress outside the writer (with `--write-batching off`, and payments);
    /// the shutdown waits for them.
    pub work: TaskTracker,
    /// The payment gateway's client (`--payment-url`), if payments are on.
    pub payments: Option<Payments>,
}

/// The routes, with their templates for the metrics' route labels.
pub fn router(app: App) -> Routes {
    Routes::new()
        .route("/orders", post(create).get(list))
        .route("/orders/{id}", get(fetch))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/orders/{id}/pay", post(pay))
        .map_router(|r| {
            r.fallback(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
            })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed on this route",
                )
            })
        })
        .with_state(app)
}

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no order {id}"))
    }
}

/// An order's `{id}` from the path. A segment that is not UTF-8 (`/orders/%FF`) names no
/// order: 404 `not_found` in the JSON error shape, not axum's plain-text 400.
struct OrderId(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for OrderId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(OrderId(id)),
            Err(_) => {
                let raw = parts.uri.path().trim_start_matches("/orders/");
                let raw = raw.split('/').next().unwrap_or(raw);
                Err(ApiError::not_found(raw))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = (self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        self.with_retry_after(retry_after)
    }
}

impl ApiError {
    /// The answer, with `Retry-After: secs` when given.
    fn with_retry_after(self, secs: Option<u64>) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut res = (self.status, body).into_response();
        if let Some(v) = secs.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

impl IntoResponse for PayError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            PayError::Off => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message).into_response()
            }
            PayError::NotFound(id) => ApiError::not_found(&id).into_response(),
            e @ PayError::Conflict(_) => {
                let code = if e.in_progress() {
                    "payment_in_progress"
                } else {
                    "conflict"
                };
                ApiError::new(StatusCode::CONFLICT, code, message).into_response()
            }
            PayError::Failed(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "payment_failed", message).into_response()
            }
            PayError::Unavailable { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "dependency_unavailable",
                    message,
                )
                .with_retry_after(Some(secs))
            }
            PayError::Write(e) => ApiError::from(e).into_response(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "database unavailable, retry later",
            );
        }
        tracing::error!(error = %e, "database error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        tracing::error!(error = %e, "audit log unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "audit log unavailable, retry later",
        )
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Db(e) => e.into(),
            WriteError::Audit(e) => e.into(),
            WriteError::Overloaded => {
                // Counted in orders_write_refused_total; a line per refusal would flood the
                // log exactly when the service is busiest.
                tracing::debug!("write refused: the writer's queue is full");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many writes waiting, retry later",
                )
            }
            WriteError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "database unavailable, retry later",
            ),
            WriteError::OutcomeUnknown(after) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!(
                    "the write took longer than {after:?} and its outcome is unknown: it may \
                     still commit; a retry with the same Idempotency-Key returns the order if \
                     it was created (and creates it once if not)"
                ),
            ),
            WriteError::NoSpace(text) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{text}; retry later"),
            ),
            WriteError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting down, retry later",
            ),
        }
    }
}

/// The request's fields for the audit line of its write.
fn audit_ctx(ctx: &RequestContext) -> AuditCtx {
    AuditCtx {
        client_ip: ctx.peer().map(|p| p.ip().to_string()),
        request_id: ctx.request_id().as_str().to_string(),
        trace_id: Some(ctx.trace().trace_id_str().to_owned()),
    }
}

/// Run `op` so that a client that goes away cannot cut a commit in half and lose its
/// outcome: through the writer, which finishes every write it accepted before it stops
/// (the `finish-writes` hook), or else in a task the shutdown waits for. The writer needs
/// no task of its own per write: spawning one cost about 7,000 instructions per POST
/// (`benches/orders-instructions`, 32 clients: 108,000 against 100,700).
/// Write `op` through the writer (or a pooled connection in a tracked task). Once the write
/// is handed over it will commit or fail on its own, so the request is past its point of
/// no return: the request timeout no longer answers 503 `handler_timeout` (an invitation
/// to retry) for a write that may have committed; the answer says what happened.
async fn write(app: &App, op: Op, ctx: &RequestContext) -> Result<Done, ApiError> {
    let audit = audit_ctx(ctx);
    if let Some(writer) = app.db.writer() {
        let handed = || ctx.past_point_of_no_return();
        return Ok(writer.write_then(op, Some(audit), handed).await?);
    }
    let db = app.db.clone();
    let job = app
        .work
        .clone()
        .spawn(async move { db.write(op, Some(audit)).await });
    ctx.past_point_of_no_return();
    match job.await {
        Ok(done) => Ok(done?),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )),
    }
}

fn body_error(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        )
    } else {
        ApiError::bad_request("invalid_body", r.body_text())
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut keys = headers.get_all("idempotency-key").iter();
    let Some(v) = keys.next() else {
        return Ok(None);
    };
    if keys.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "more than one Idempotency-Key header",
        ));
    }
    if !valid_idempotency_key(v.as_bytes()) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(v.to_str().ok().map(str::to_owned))
}

async fn create(
    State(app): State<App>,
    ctx: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let key = idempotency_key(&headers)?;
    let new: NewOrder = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    new.validate()
        .map_err(|m| ApiError::bad_request("invalid_field", m))?;
    let created = match write(&app, Op::Create { new, key }, &ctx).await? {
        Done::Created(c) => c,
        other => return Err(unexpected(&other)),
    };
    match created {
        Created::New(order) => Ok(created_response(order, false)),
        Created::Replayed(order) => Ok(created_response(order, true)),
        Created::KeyMismatch => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )),
    }
}

/// A write answered with another kind of outcome than its op's: a bug.
fn unexpected(done: &Done) -> ApiError {
    tracing::error!(?done, "a write answered with an outcome of another kind");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

fn created_response(order: Order, replayed: bool) -> Response {
    let mut location = String::with_capacity(8 + order.id.len());
    location.push_str("/orders/");
    location.push_str(&order.id);
    let location = HeaderValue::from_str(&location).ok();
    let mut res = (StatusCode::CREATED, Json(order)).into_response();
    if let Some(l) = location {
        res.headers_mut().insert(header::LOCATION, l);
    }
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

async fn fetch(State(app): State<App>, OrderId(id): OrderId) -> Result<Json<Order>, ApiError> {
    app.db
        .get(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(&id))
}

async fn list(
    State(app): State<App>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("limit must be an integer from 1 to {MAX_PAGE}, got {v:?}"),
                ))
            }
        },
    };
    let orders = app
        .db
        .list(q.get("after").map(String::as_str), limit)
        .await?;
    let next = (orders.len() as i64 == limit)
        .then(|| orders.last().map(|o| o.id.clone()))
        .flatten();
    Ok(Json(json!({ "orders": orders, "next_after": next })))
}

async fn cancel(
    State(app): State<App>,
    ctx: RequestContext,
    OrderId(id): OrderId,
) -> Result<Json<Order>, ApiError> {
    let outcome = match write(&app, Op::Cancel { id: id.clone() }, &ctx).await? {
        Done::Cancelled(c) => c,
        other => return Err(unexpected(&other)),
    };
    match outcome {
        Cancelled::Done(order) => Ok(Json(order)),
        Cancelled::NotFound => Err(ApiError::not_found(&id)),
        Cancelled::Conflict(order) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "order {} is {} and cannot be cancelled",
                order.id, order.status
            ),
        )),
    }
}

/// `POST /orders/{id}/pay`: charge the order through the gateway, once (see
/// [`payments`](crate::payments)). Runs in a task the shutdown waits for, with the request's
/// context (its drain deadline bounds the gateway calls).
async fn pay(
    State(app): State<App>,
    ctx: RequestContext,
    OrderId(id): OrderId,
) -> Result<Json<Order>, PayError> {
    let Some(payments) = app.payments.clone() else {
        return Err(PayError::Off);
    };
    let audit = audit_ctx(&ctx);
    let job = app
        .work
        .clone()
        .spawn(ctx.scope(async move { payments.pay(&id, audit).await }));
    match job.await {
        Ok(paid) => paid.map(Json),
        Err(_) => Err(PayError::Write(crate::writer::WriteError::Unavailable(
            "internal error".into(),
        ))),
    }
}
