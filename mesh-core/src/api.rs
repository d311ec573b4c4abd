//! Consul's HTTP JSON shapes, as pure conversions.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::kv::KvEntry;

/// Longest key accepted (bytes). Consul bounds keys by its request limits;
/// 8 KiB keeps one key well inside a frame.
pub const MAX_KEY_BYTES: usize = 8 * 1024;

/// A bad request from an API client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    /// The key is empty.
    #[error("Missing key name")]
    EmptyKey,
    /// The key is too long.
    #[error("Key too long: {0} bytes, max {MAX_KEY_BYTES}")]
    KeyTooLong(usize),
    /// The key contains a NUL byte.
    #[error("Key contains a NUL byte")]
    NulInKey,
    /// A `Value` is not valid base64.
    #[error("Value is not valid base64: {0}")]
    BadBase64(String),
}

/// One entry as `GET /v1/kv/<key>` returns it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    /// Lock acquisitions.
    pub lock_index: u64,
    /// The key.
    pub key: String,
    /// Client flags.
    pub flags: u64,
    /// Base64 value; `null` when empty (Consul's nil value).
    pub value: Option<String>,
    /// Creating write's index.
    pub create_index: u64,
    /// Last write's index.
    pub modify_index: u64,
}

impl From<&KvEntry> for KvPair {
    fn from(e: &KvEntry) -> Self {
        Self {
            lock_index: e.lock_index,
            key: e.key.clone(),
            flags: e.flags,
            value: (!e.value.is_empty()).then(|| base64::engine::general_purpose::STANDARD.encode(&e.value)),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

impl KvPair {
    /// The decoded value bytes.
    pub fn decoded_value(&self) -> Result<Vec<u8>, ApiError> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| ApiError::BadBase64(e.to_string())),
        }
    }
}

/// Checks a key for a single-key operation.
pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::KeyTooLong(key.len()));
    }
    if key.contains('\0') {
        return Err(ApiError::NulInKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_consul() {
        let e = KvEntry {
            key: "foo".into(),
            value: b"bar".to_vec(),
            flags: 0,
            create_index: 7,
            modify_index: 9,
            lock_index: 0,
        };
        let json = serde_json::to_string(&KvPair::from(&e)).unwrap();
        assert_eq!(
            json,
            r#"{"LockIndex":0,"Key":"foo","Flags":0,"Value":"YmFy","CreateIndex":7,"ModifyIndex":9}"#
        );
        let back: KvPair = serde_json::from_str(&json).unwrap();
        assert_eq!(back.decoded_value().unwrap(), b"bar");
        let empty = KvEntry { value: vec![], ..e };
        assert_eq!(KvPair::from(&empty).value, None);
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(validate_key(""), Err(ApiError::EmptyKey));
        assert_eq!(validate_key("a\0b"), Err(ApiError::NulInKey));
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(validate_key("a/b c").is_ok());
    }
}
