//! The one place where a failed request becomes a response.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::db::DbError;
use crate::input::InputError;
use crate::references::ReferenceError;
use crate::response;

/// Why a request to a known endpoint failed, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client sent a body we cannot use (400).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The client sent an id a write cannot act on (400).
    #[error("{0}")]
    BadId(String),
    /// The request body could not be read (400).
    #[error("cannot read the request body: {0}")]
    Body(String),
    /// The request body is larger than the limit (413).
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The thing to delete does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// A referenced row does not exist (422).
    #[error("{0}")]
    Unprocessable(String),
    /// A reference could not be checked: the API that owns it is unreachable (503) or the
    /// local database failed (500).
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Our database failed (500).
    #[error(transparent)]
    Database(#[from] DbError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Input(_) | ApiError::BadId(_) | ApiError::Body(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Reference(ReferenceError::Remote { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Reference(ReferenceError::Local(_)) | ApiError::Database(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        match self {
            // Database details are for the log, not for clients.
            ApiError::Database(_) | ApiError::Reference(ReferenceError::Local(_)) => {
                response::error(status, "internal error")
            }
            other => response::error(status, &other.to_string()),
        }
    }
}
