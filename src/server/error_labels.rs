//! The error labels mongod adds to a reply (its `ErrorLabelBuilder`, error_labels.cpp), with the
//! error categories of MongoDB's error_codes.yml they depend on.

use bson::Document;

/// Codes in error_codes.yml's `RetriableError` category.
const RETRIABLE: &[i32] = &[
    6, 7, 89, 91, 134, 189, 262, 317, 358, 384, 402, 406, 407, 412, 453, 462, 9001, 10107, 11600,
    11602, 13435, 13436, 50915, 91331,
];

pub fn is_retriable(code: i32) -> bool {
    RETRIABLE.contains(&code)
}

/// `isTransientTransactionError`: the transaction can be retried whole.
fn is_transient(code: i32, has_wce: bool, commit_or_abort: bool) -> bool {
    if code == 358 {
        return false;
    }
    // WriteConflict, LockTimeout, PreparedTransactionInProgress, ShardCannotRefreshDueToLocksHeld,
    // StaleDbVersion, TxnRetryCounterNotSupported, then the snapshot and retargeting categories.
    if matches!(
        code,
        112 | 24 | 267 | 343 | 249 | 239 | 246 | 250 | 272 | 150 | 13388
    ) {
        return true;
    }
    if commit_or_abort {
        code == 251 && !has_wce
    } else {
        is_retriable(code) || code == 251
    }
}

/// The labels for an error `code` and/or write concern error `wc_code` answered to `body`.
pub fn labels_for(
    body: &Document,
    cmd: &str,
    code: Option<i32>,
    wc_code: Option<i32>,
) -> Vec<String> {
    let has_txn_number = body.contains_key("txnNumber");
    let in_txn = has_txn_number && body.contains_key("autocommit");
    let commit_or_abort = matches!(cmd, "commitTransaction" | "abortTransaction");
    if let Some(c) = code {
        if in_txn && is_transient(c, wc_code.is_some(), commit_or_abort) {
            return vec!["TransientTransactionError".into()];
        }
    }
    let retryable = has_txn_number && (!in_txn || commit_or_abort);
    if retryable && (code.is_some_and(is_retriable) || wc_code.is_some_and(is_retriable)) {
        return vec!["RetryableWriteError".into()];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn labels_follow_the_session_options() {
        let retryable = doc! {"insert": "c", "txnNumber": 1i64};
        assert_eq!(
            labels_for(&retryable, "insert", Some(91), None),
            ["RetryableWriteError"]
        );
        assert!(labels_for(&retryable, "insert", Some(2), None).is_empty());
        let plain = doc! {"insert": "c"};
        assert!(labels_for(&plain, "insert", Some(91), None).is_empty());
        let in_txn = doc! {"insert": "c", "txnNumber": 1i64, "autocommit": false};
        assert_eq!(
            labels_for(&in_txn, "insert", Some(91), None),
            ["TransientTransactionError"]
        );
        let commit = doc! {"commitTransaction": 1, "txnNumber": 1i64, "autocommit": false};
        assert_eq!(
            labels_for(&commit, "commitTransaction", Some(91), None),
            ["RetryableWriteError"]
        );
        assert_eq!(
            labels_for(&commit, "commitTransaction", Some(251), None),
            ["TransientTransactionError"]
        );
        assert!(labels_for(&commit, "commitTransaction", Some(251), Some(64)).is_empty());
        assert_eq!(
            labels_for(&retryable, "insert", None, Some(91)),
            ["RetryableWriteError"]
        );
    }
}
