//! MongoDB's error codes and their names, as `src/mongo/base/error_codes.yml` in mongodb/mongo
//! defines them: the one place the server spells a code name. A code that is not in this table
//! is a "location" code (a `uassert` site number); mongod names those `Location<code>`.

macro_rules! error_codes {
    ($($name:ident = $code:literal,)*) => {
        /// A named MongoDB error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($name,)*
        }

        impl ErrorCode {
            pub const fn code(self) -> i32 {
                match self {
                    $(ErrorCode::$name => $code,)*
                }
            }

            pub const fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => stringify!($name),)*
                }
            }

            pub fn from_code(code: i32) -> Option<ErrorCode> {
                match code {
                    $($code => Some(ErrorCode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    InternalError = 1,
    BadValue = 2,
    NoSuchKey = 4,
    FailedToParse = 9,
    Unauthorized = 13,
    TypeMismatch = 14,
    Overflow = 15,
    ProtocolError = 17,
    IllegalOperation = 20,
    InvalidBSON = 22,
    AlreadyInitialized = 23,
    LockTimeout = 24,
    NamespaceNotFound = 26,
    IndexNotFound = 27,
    PathNotViable = 28,
    CannotBackfillArray = 34,
    ConflictingUpdateOperators = 40,
    CursorNotFound = 43,
    NamespaceExists = 48,
    MaxTimeMSExpired = 50,
    DollarPrefixedFieldName = 52,
    InvalidIdField = 53,
    NotSingleValueField = 54,
    EmptyFieldName = 56,
    CommandNotFound = 59,
    ImmutableField = 66,
    CannotCreateIndex = 67,
    InvalidOptions = 72,
    InvalidNamespace = 73,
    IndexOptionsConflict = 85,
    IndexKeySpecsConflict = 86,
    ShutdownInProgress = 91,
    NotExactValueField = 111,
    WriteConflict = 112,
    CommandNotSupported = 115,
    DocTooLargeForCapped = 116,
    ConflictingOperationInProgress = 117,
    DocumentValidationFailure = 121,
    CappedPositionLost = 136,
    ExceededMemoryLimit = 146,
    InvalidPipelineOperator = 168,
    PrimarySteppedDown = 189,
    IncompleteTransactionHistory = 217,
    TransactionTooOld = 225,
    CursorKilled = 237,
    NotImplemented = 238,
    SnapshotTooOld = 239,
    SnapshotUnavailable = 246,
    NoSuchTransaction = 251,
    TransactionCommitted = 256,
    TooManyLogicalSessions = 261,
    OperationNotSupportedInTransaction = 263,
    TooManyFilesOpen = 264,
    PreparedTransactionInProgress = 267,
    ChecksumMismatch = 288,
    CursorInUse = 292,
    UnsupportedOpQueryCommand = 352,
    NotWritablePrimary = 10107,
    BSONObjectTooLarge = 10334,
    DuplicateKey = 11000,
    MergeStageNoMatchingDocument = 13113,
    InterruptedAtShutdown = 11600,
    IDLFailedToParse = 40414,
    NotARetryableWriteCommand = 50768,
    // Codes fail points and drivers' retry rules name (error_codes.yml).
    HostUnreachable = 6,
    HostNotFound = 7,
    UnknownError = 8,
    UserNotFound = 11,
    AuthenticationFailed = 18,
    // 7.0's name, as this server reports 7.0; releases after 8.0 call it WriteConcernTimeout.
    WriteConcernFailed = 64,
    UnknownReplWriteConcern = 79,
    NetworkTimeout = 89,
    UnsatisfiableWriteConcern = 100,
    ReadConcernMajorityNotAvailableYet = 134,
    QueryPlanKilled = 175,
    KeyNotFound = 211,
    ExceededTimeLimit = 262,
    FailPointSetFailed = 266,
    ClientDisconnect = 279,
    SocketException = 9001,
    Interrupted = 11601,
    InterruptedDueToReplStateChange = 11602,
    NotPrimaryNoSecondaryOk = 13435,
    NotPrimaryOrSecondary = 13436,
    IDLUnknownField = 40415,
}

/// The name mongod gives `code`: the table's, else `Location<code>`.
pub fn code_name(code: i32) -> std::borrow::Cow<'static, str> {
    match ErrorCode::from_code(code) {
        Some(c) => c.name().into(),
        None => format!("Location{code}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            ErrorCode::from_code(121),
            Some(ErrorCode::DocumentValidationFailure)
        );
        assert_eq!(ErrorCode::DuplicateKey.code(), 11000);
        assert_eq!(code_name(10334), "BSONObjectTooLarge");
        assert_eq!(code_name(16410), "Location16410");
    }
}
