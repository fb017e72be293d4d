//! Log entry payloads: client commands and their results.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{KvError, MAX_KEY_LEN, MAX_SCAN_LIMIT, MAX_VALUE_LEN};

/// A client write, as stored in a log entry (postcard-encoded).
///
/// `(client_id, seq)` identifies the request for exactly-once application; a
/// client has at most one outstanding request and increases `seq` for each new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub client_id: u64,
    pub seq: u64,
    pub op: WriteOp,
}

/// The write a command performs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put { key: Bytes, value: Bytes },
    /// Remove `key` if present.
    Delete { key: Bytes },
    /// Set `key` to `new` only if its current value equals `expected`
    /// (`None` = the key must be absent).
    Cas { key: Bytes, expected: Option<Bytes>, new: Bytes },
}

/// The outcome of a write that was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    /// `existed`: the key had a value before (now overwritten).
    Put { existed: bool },
    /// `existed`: the key had a value before (now removed).
    Delete { existed: bool },
    /// `swapped`: the value matched and was replaced. `current` is the value
    /// found when it did not match (`None` = absent); it is `None` after a swap
    /// (the value is then `new`), to avoid keeping a copy in the session table.
    Cas { swapped: bool, current: Option<Bytes> },
}

impl Command {
    /// Encodes the command for a log entry.
    pub fn encode(&self) -> Bytes {
        postcard::to_allocvec(self).expect("postcard encoding of a command cannot fail").into()
    }

    /// Decodes a log entry. Trailing bytes are rejected so that every byte
    /// string has at most one meaning.
    pub fn decode(data: &[u8]) -> Result<Command, KvError> {
        let (cmd, rest) =
            postcard::take_from_bytes::<Command>(data).map_err(|e| KvError::Decode { reason: e.to_string() })?;
        if !rest.is_empty() {
            return Err(KvError::Decode { reason: format!("{} trailing bytes", rest.len()) });
        }
        Ok(cmd)
    }

    /// Checks the key and value limits.
    pub fn validate(&self) -> Result<(), KvError> {
        self.op.validate()
    }
}

impl WriteOp {
    /// The key written.
    pub fn key(&self) -> &Bytes {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } | WriteOp::Cas { key, .. } => key,
        }
    }

    /// Checks the key and value limits.
    pub fn validate(&self) -> Result<(), KvError> {
        validate_key(self.key())?;
        match self {
            WriteOp::Put { value, .. } => validate_value(value),
            WriteOp::Delete { .. } => Ok(()),
            WriteOp::Cas { expected, new, .. } => {
                // An over-long `expected` could never match; reject it as a client bug.
                if let Some(e) = expected.as_ref().filter(|e| e.len() > MAX_VALUE_LEN) {
                    return Err(KvError::ExpectedTooLong { len: e.len() });
                }
                validate_value(new)
            }
        }
    }
}

/// Checks that a key is non-empty and at most [`MAX_KEY_LEN`] bytes.
pub fn validate_key(key: &[u8]) -> Result<(), KvError> {
    match key.len() {
        0 => Err(KvError::EmptyKey),
        len if len > MAX_KEY_LEN => Err(KvError::KeyTooLong { len }),
        _ => Ok(()),
    }
}

/// Checks that a scan's prefix is at most [`MAX_KEY_LEN`] bytes (a longer one matches
/// no key) and that it asks for 1 to [`MAX_SCAN_LIMIT`] pairs.
pub fn validate_scan(prefix: &[u8], limit: usize) -> Result<(), KvError> {
    if prefix.len() > MAX_KEY_LEN {
        return Err(KvError::PrefixTooLong { len: prefix.len() });
    }
    if limit == 0 || limit > MAX_SCAN_LIMIT {
        return Err(KvError::ScanLimit { limit });
    }
    Ok(())
}

/// Checks that a value is at most [`MAX_VALUE_LEN`] bytes.
pub fn validate_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(KvError::ValueTooLong { len: value.len() });
    }
    Ok(())
}
