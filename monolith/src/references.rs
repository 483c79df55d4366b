//! Answering "does user N / thread N exist?" for a write that refers to them.
//!
//! The monolith asks its own database. An extracted service no longer owns that data, so it
//! asks the public API (through the proxy) and never cares whether the resource it asks about
//! has been extracted yet.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::db::{self, Db, DbError, chain};
use crate::legacy::Resource;

/// The pending answer of a reference check.
pub type Check<'a> = Pin<Box<dyn Future<Output = Result<bool, ReferenceError>> + Send + 'a>>;

/// Answers whether a referenced row exists.
pub trait References: Send + Sync {
    /// Whether the row `id` of `resource` exists.
    fn exists(&self, resource: Resource, id: i64) -> Check<'_>;
}

/// Why a reference could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The local database failed (500).
    #[error(transparent)]
    Local(#[from] DbError),
    /// The API that owns the data could not answer (503).
    #[error("cannot check {resource} {id} through the API at {api_base}: {problem}")]
    Remote {
        /// The `--api-base` asked.
        api_base: String,
        /// What was checked.
        resource: &'static str,
        /// Which id.
        id: i64,
        /// What went wrong, for the operator.
        problem: String,
    },
}

/// Checks references in the same database (the monolith).
///
/// With a wait, a missing row is looked for again every [`LocalReferences::RECHECK`] until it
/// appears or the wait is over: once a resource's writes are switched to its service, a row
/// created there reaches the monolith's copy a few milliseconds later (reverse sync), and a
/// client that creates a user and at once a thread by that user must not get 422 meanwhile.
#[derive(Clone, Debug)]
pub struct LocalReferences {
    db: Db,
    wait: Duration,
}

impl LocalReferences {
    /// How often a missing row is looked for again during the wait.
    pub const RECHECK: Duration = Duration::from_millis(5);

    /// Checks references in `db`; a missing row is missing at once.
    pub fn new(db: Db) -> LocalReferences {
        LocalReferences::with_wait(db, Duration::ZERO)
    }

    /// Checks references in `db`, waiting up to `wait` for a missing row to appear.
    pub fn with_wait(db: Db, wait: Duration) -> LocalReferences {
        LocalReferences { db, wait }
    }
}

impl References for LocalReferences {
    fn exists(&self, resource: Resource, id: i64) -> Check<'_> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + self.wait;
            loop {
                if self
                    .db
                    .run(move |conn| db::exists(&conn, resource, id))
                    .await?
                {
                    return Ok(true);
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Self::RECHECK.min(deadline - now)).await;
            }
        })
    }
}

/// Why an `--api-base` was refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error("--api-base {api_base:?}: {problem}")]
pub struct InvalidApiBase {
    api_base: String,
    problem: &'static str,
}

/// Checks references with `GET {api_base}/api/{resource}/{id}`: 200 exists, 204 does not.
#[derive(Clone, Debug)]
pub struct RemoteReferences {
    api_base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl RemoteReferences {
    /// How long one check may take, connection included, before the write fails with 503.
    pub const TIMEOUT: Duration = Duration::from_secs(5);

    /// Largest answer read from the API; a user or thread is a few hundred bytes.
    const MAX_BODY: usize = 1 << 20;

    /// Asks the API at `api_base` (`http://host:port`, optionally with a path prefix).
    pub fn new(api_base: &str) -> Result<RemoteReferences, InvalidApiBase> {
        RemoteReferences::with_timeout(api_base, Self::TIMEOUT)
    }

    /// As [`RemoteReferences::new`] with another time limit per check.
    pub fn with_timeout(
        api_base: &str,
        timeout: Duration,
    ) -> Result<RemoteReferences, InvalidApiBase> {
        let invalid = |problem| InvalidApiBase {
            api_base: api_base.to_owned(),
            problem,
        };
        let uri: Uri = api_base
            .parse()
            .map_err(|_| invalid("not a URL; expected e.g. http://127.0.0.1:8080"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(invalid("https is not supported yet; use http://")),
            _ => {
                return Err(invalid(
                    "expected an http:// URL, e.g. http://127.0.0.1:8080",
                ));
            }
        }
        if uri.authority().is_none() {
            return Err(invalid("missing host"));
        }
        if uri.query().is_some() {
            return Err(invalid("must not have a query"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Ok(RemoteReferences {
            api_base: api_base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// The base URL checks are sent to.
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    async fn ask(&self, path: &str) -> Result<bool, String> {
        let request = Request::get(format!("{}{path}", self.api_base))
            .body(Empty::new())
            .map_err(|err| format!("cannot build GET {path}: {err}"))?;
        let answer = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| format!("GET {path} failed: {}", chain(&err)))?;
            let status = response.status();
            // Read the body so the connection goes back to the pool.
            Limited::new(response.into_body(), Self::MAX_BODY)
                .collect()
                .await
                .map_err(|err| format!("GET {path}: reading the answer failed: {err}"))?;
            match status {
                StatusCode::OK => Ok(true),
                StatusCode::NO_CONTENT => Ok(false),
                other => Err(format!("GET {path} answered {other}, expected 200 or 204")),
            }
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .unwrap_or_else(|_| Err(format!("GET {path} timed out after {:?}", self.timeout)))
    }
}

impl References for RemoteReferences {
    fn exists(&self, resource: Resource, id: i64) -> Check<'_> {
        Box::pin(async move {
            let path = format!("/api/{}/{id}", resource.name());
            self.ask(&path)
                .await
                .map_err(|problem| ReferenceError::Remote {
                    api_base: self.api_base.clone(),
                    resource: resource.singular(),
                    id,
                    problem,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_must_be_plain_http() {
        let cases: &[(&str, bool)] = &[
            ("http://127.0.0.1:8080", true),
            ("http://127.0.0.1:8080/", true),
            ("http://proxy.internal/board", true),
            ("https://127.0.0.1:8080", false),
            ("127.0.0.1:8080", false),
            ("ftp://host", false),
            ("http://host/?q=1", false),
            ("not a url", false),
        ];
        for (base, ok) in cases {
            assert_eq!(RemoteReferences::new(base).is_ok(), *ok, "{base}");
        }
        let refs = RemoteReferences::new("http://127.0.0.1:8080/").expect("valid");
        assert_eq!(refs.api_base(), "http://127.0.0.1:8080");
    }
}
