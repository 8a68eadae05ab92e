//! The store's one error type: what its callers can act on, without knowing Redis.

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Redis did not answer in time, or the connection failed: worth trying again (each store
    /// call is safe to repeat).
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a script's unexpected answer, a record that cannot be read or written.
    #[error("{0}")]
    Other(String),
}

/// A store call's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether trying again may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        let transient = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal();
        if transient {
            Error::Unavailable(error.to_string())
        } else {
            Error::Other(error.to_string())
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Error::Other(format!("a record: {error}"))
    }
}
