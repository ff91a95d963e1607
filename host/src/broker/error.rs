//! What can go wrong talking to the broker, by kind: the caller's, the
//! broker's unavailability, a bug in Troupe.

/// What can go wrong talking to the broker. Three kinds
/// ([`BrokerError::kind`]): what the caller asked cannot be done (bad
/// input: a `4xx` for an HTTP client), the broker is unavailable (its
/// store or server failed, or it is shut down: try again later), or the
/// library was misused (a bug in Troupe, never the caller's).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker store: {0}")]
    Store(String),
    #[error("the broker is shut down")]
    Closed,
    #[error("no dead letter with id {0:?}")]
    NoSuchDeadLetter(String),
    /// Input the broker cannot take (an event type that cannot be a NATS
    /// subject, a queued item that is not an event).
    #[error("{0}")]
    BadInput(String),
    /// A call no correct caller makes (a group subscribed twice, a
    /// delivery settled on another broker).
    #[error("broker misused (a bug): {0}")]
    Misuse(String),
    #[error("NATS: {0}")]
    Nats(String),
    /// An event larger than one message of the broker can hold.
    #[error("{0}")]
    TooLarge(String),
    /// A commit's state changes were refused, and with them the whole
    /// commit: what the step read changed since, or a bucket would go over
    /// its quota.
    #[error("state commit refused: {0}")]
    Refused(crate::kv::Refused),
    /// The store is damaged (a page or a row that cannot be read as
    /// written): nothing more is done with it until it is restored or set
    /// aside (docs/operations.md).
    #[error("the broker's store is damaged: {0}")]
    Damaged(String),
}

/// What kind of failure a [`BrokerError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's: what it asked for cannot be done as asked.
    Caller,
    /// The broker's store or server is unavailable, or it is shut down.
    Unavailable,
    /// A bug in Troupe.
    Internal,
}

impl BrokerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BrokerError::NoSuchDeadLetter(_)
            | BrokerError::BadInput(_)
            | BrokerError::TooLarge(_)
            | BrokerError::Refused(_) => ErrorKind::Caller,
            BrokerError::Store(_)
            | BrokerError::Closed
            | BrokerError::Nats(_)
            | BrokerError::Damaged(_) => ErrorKind::Unavailable,
            BrokerError::Misuse(_) => ErrorKind::Internal,
        }
    }
}

impl From<rusqlite::Error> for BrokerError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match &e {
            // What SQLite finds malformed, and rows that do not read back
            // as they were written (text that is not UTF-8, extensions
            // that are not the JSON we wrote): damage, said as such.
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
            {
                BrokerError::Damaged(e.to_string())
            }
            rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::Utf8Error(..) => {
                BrokerError::Damaged(format!("a row cannot be read back: {e}"))
            }
            _ => BrokerError::Store(e.to_string()),
        }
    }
}
