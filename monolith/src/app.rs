//! The HTTP application: the legacy API for the resources one process owns.
//!
//! Routing is done by hand in one fallback handler, because axum's router is case-sensitive
//! and cannot give koa-router's 405/501 answers; [`crate::legacy`] holds the rules.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use tracing::Instrument;

use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::input::Fields;
use crate::legacy::{Endpoint, Resource, Verb, lookup_id, strict_id};
use crate::posts::{self, NewPost};
use crate::references::References;
use crate::response;
use crate::sql::Conn;
use crate::threads::{self, NewThread};
use crate::users::{self, NewUser};

/// Largest request body a write accepts.
pub const MAX_BODY: usize = 1 << 20;

/// One process's share of the message board: its database, the resources it owns and how it
/// checks references to rows it may not own.
pub struct Board {
    db: Db,
    owned: Vec<Resource>,
    references: Arc<dyn References>,
}

impl Board {
    /// A board answering for `owned`, storing in `db`, checking references with `references`.
    pub fn new(db: Db, owned: &[Resource], references: Arc<dyn References>) -> Board {
        Board {
            db,
            owned: owned.to_vec(),
            references,
        }
    }

    /// The axum application.
    pub fn router(self) -> Router {
        Router::new().fallback(handle).with_state(Arc::new(self))
    }

    /// Whether this process answers `endpoint`: `/` and `/api` always, the rest if owned.
    fn serves(&self, endpoint: &Endpoint<'_>) -> bool {
        endpoint
            .resource()
            .is_none_or(|resource| self.owned.contains(&resource))
    }

    async fn answer(&self, verb: Option<Verb>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let endpoint = Endpoint::parse(parts.uri.path())
            .filter(|endpoint| self.serves(endpoint) && endpoint.known_to(verb));
        // koa-router answers 501 for a method it does not implement, whatever the path, and
        // lists the path's methods when it knows the path.
        let Some(verb) = verb else {
            let response = response::status_text(StatusCode::NOT_IMPLEMENTED);
            return match endpoint {
                Some(endpoint) => response::with_allow(response, endpoint.allowed().header_lines()),
                None => response,
            };
        };
        let Some(endpoint) = endpoint else {
            return response::status_text(StatusCode::NOT_FOUND);
        };
        let allowed = endpoint.allowed();
        if verb == Verb::Options {
            return response::with_allow(
                response::empty(StatusCode::NO_CONTENT),
                allowed.header_lines(),
            );
        }
        if !allowed.contains(verb) {
            return response::with_allow(
                response::status_text(StatusCode::METHOD_NOT_ALLOWED),
                allowed.header_lines(),
            );
        }
        self.dispatch(verb, endpoint, &parts.headers, body)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    }

    /// Serves an allowed method: POST on collections, DELETE on a post, GET/HEAD elsewhere.
    async fn dispatch(
        &self,
        verb: Verb,
        endpoint: Endpoint<'_>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, ApiError> {
        let ok = StatusCode::OK;
        match endpoint {
            Endpoint::Root => Ok(response::text(ok, "Ready to receive requests")),
            Endpoint::ApiRoot => Ok(response::text(ok, "API ready to receive requests")),
            Endpoint::Users if verb == Verb::Post => {
                let new = NewUser::from_fields(&read_fields(headers, body).await?)?;
                self.json_of(StatusCode::CREATED, move |conn| users::insert(&conn, &new))
                    .await
            }
            Endpoint::Users => self.json_of(ok, |conn| users::list(&conn)).await,
            Endpoint::User(id) => {
                self.one(lookup_id(&id), |conn, id| users::find(&conn, id))
                    .await
            }
            Endpoint::Threads if verb == Verb::Post => {
                let new = NewThread::from_fields(&read_fields(headers, body).await?)?;
                let exists = self
                    .references
                    .exists(Resource::Users, new.created_by)
                    .await;
                require(
                    exists,
                    NewThread::CREATED_BY,
                    Resource::Users,
                    new.created_by,
                )?;
                self.json_of(StatusCode::CREATED, move |conn| {
                    threads::insert(&conn, &new)
                })
                .await
            }
            Endpoint::Threads => self.json_of(ok, |conn| threads::list(&conn)).await,
            Endpoint::Thread(id) => {
                self.one(lookup_id(&id), |conn, id| threads::find(&conn, id))
                    .await
            }
            Endpoint::Posts if verb == Verb::Post => {
                let new = NewPost::from_fields(&read_fields(headers, body).await?)?;
                // Both checks may cross the network: ask them together, report in field order.
                let (thread, user) = tokio::join!(
                    self.references.exists(Resource::Threads, new.thread),
                    self.references.exists(Resource::Users, new.user),
                );
                require(thread, "thread", Resource::Threads, new.thread)?;
                require(user, "user", Resource::Users, new.user)?;
                self.json_of(StatusCode::CREATED, move |conn| posts::insert(&conn, &new))
                    .await
            }
            Endpoint::Posts => self.json_of(ok, |conn| posts::list(&conn)).await,
            Endpoint::PostsInThread(id) => match lookup_id(&id) {
                Some(id) => {
                    self.json_of(ok, move |conn| posts::in_thread(&conn, id))
                        .await
                }
                None => Ok(response::json(ok, &[(); 0])),
            },
            Endpoint::PostsByUser(id) => match lookup_id(&id) {
                Some(id) => {
                    self.json_of(ok, move |conn| posts::by_user(&conn, id))
                        .await
                }
                None => Ok(response::json(ok, &[(); 0])),
            },
            Endpoint::Post(raw) => {
                let id = strict_id(&raw).ok_or_else(|| {
                    ApiError::BadId(format!("post id {raw:?} is not a positive integer"))
                })?;
                if self.db.run(move |conn| posts::delete(&conn, id)).await? {
                    Ok(response::empty(StatusCode::NO_CONTENT))
                } else {
                    Err(ApiError::NotFound(format!("post {id} does not exist")))
                }
            }
        }
    }

    /// `status` with whatever `query` returns.
    async fn json_of<T, F>(&self, status: StatusCode, query: F) -> Result<Response, ApiError>
    where
        T: Serialize + Send + 'static,
        F: FnOnce(Conn<'_>) -> Result<T, DbError> + Send + 'static,
    {
        Ok(response::json(status, &self.db.run(query).await?))
    }

    /// 200 with the row, or the legacy 204 when the id reads as nothing or finds nothing.
    async fn one<T, F>(&self, id: Option<i64>, find: F) -> Result<Response, ApiError>
    where
        T: Serialize + Send + 'static,
        F: FnOnce(Conn<'_>, i64) -> Result<Option<T>, DbError> + Send + 'static,
    {
        let found = match id {
            Some(id) => self.db.run(move |conn| find(conn, id)).await?,
            None => None,
        };
        Ok(match found {
            Some(row) => response::json(StatusCode::OK, &row),
            None => response::empty(StatusCode::NO_CONTENT),
        })
    }
}

async fn handle(State(board): State<Arc<Board>>, request: Request) -> Response {
    let verb = Verb::from_method(request.method());
    // Fields are only recorded when debug logging is on, so the hot path pays nothing.
    let span =
        tracing::debug_span!("request", method = %request.method(), path = request.uri().path());
    let response = board.answer(verb, request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    // Stripped here rather than left to hyper, so HEAD holds for `oneshot` callers too.
    if verb == Some(Verb::Head) {
        response::strip_body(response)
    } else {
        response
    }
}

/// 422 naming `field` unless the referenced row exists.
fn require(
    exists: Result<bool, crate::references::ReferenceError>,
    field: &str,
    resource: Resource,
    id: i64,
) -> Result<(), ApiError> {
    if exists? {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "field \"{field}\": {} {id} does not exist",
            resource.singular()
        )))
    }
}

/// Reads a write's body, refusing more than [`MAX_BODY`] bytes before reading them when the
/// client declared its length.
async fn read_fields(headers: &HeaderMap, body: Body) -> Result<Fields, ApiError> {
    let too_large = ApiError::TooLarge { limit: MAX_BODY };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large);
    }
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large),
        Err(err) => return Err(ApiError::Body(err.to_string())),
    };
    Ok(Fields::parse(&bytes)?)
}
