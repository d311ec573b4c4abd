//! Consul's HTTP JSON shapes and request checks, as pure conversions: no
//! HTTP here, the server's routes and the CLI both use these.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::kv::KvEntry;

pub mod agent;

/// Longest key accepted, in bytes. Consul has no explicit key limit (its
/// request-size limits bound keys indirectly); 8 KiB is far above real keys
/// and keeps a key, which travels in the URL path, within common proxies'
/// request-line limits.
pub const MAX_KEY_BYTES: usize = 8 * 1024;

/// Bad input at the API boundary. The key variants are requests the client
/// must fix (the HTTP layer answers 400; nothing was stored);
/// [`ApiError::BadBase64`] is a response body the CLI cannot decode. Value
/// size is limited by the HTTP layer while it reads the body, before a large
/// value is buffered, so it has no variant here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The key is empty. Message as Consul's.
    #[error("Missing key name")]
    EmptyKey,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("Key too long: {0} bytes, the limit is {MAX_KEY_BYTES}")]
    KeyTooLong(usize),
    /// The key contains a NUL character.
    #[error("Key contains a NUL character; keys must be NUL-free text")]
    NulInKey,
    /// The key starts with `/`, e.g. from `/v1/kv//foo`. Consul's Go router
    /// cleans such paths (redirecting to `/v1/kv/foo`), so Consul clients
    /// never create these keys and could not address one.
    #[error("Key must not start with '/'; drop the leading slash")]
    LeadingSlash,
    /// A `Value` field is not standard, padded base64.
    #[error("Value is not valid base64: {0}")]
    BadBase64(String),
}

/// One entry as Consul's `GET /v1/kv/<key>` returns it:
///
/// ```json
/// {"LockIndex":0,"Key":"foo","Flags":0,"Value":"YmFy","CreateIndex":7,"ModifyIndex":7}
/// ```
///
/// `Value` is standard base64 with padding, and `null` for an empty value
/// (Consul stores an empty body as a nil slice, which Go encodes as `null`).
/// A missing `Value` field also reads as `None`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    /// Lock acquisitions.
    pub lock_index: u64,
    /// The full key.
    pub key: String,
    /// Opaque client flags.
    pub flags: u64,
    /// Base64 of the value; `None` (JSON `null`) when the value is empty.
    pub value: Option<String>,
    /// The session holding the key's lock; absent when unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Index of the write that created the key.
    pub create_index: u64,
    /// Index of the last write to the key.
    pub modify_index: u64,
}

impl From<&KvEntry> for KvPair {
    fn from(e: &KvEntry) -> Self {
        Self {
            lock_index: e.lock_index,
            key: e.key.clone(),
            flags: e.flags,
            value: (!e.value.is_empty()).then(|| STANDARD.encode(&e.value)),
            session: e.session.clone(),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

impl KvPair {
    /// The value bytes: empty for `null`, else the decoded base64.
    pub fn decoded_value(&self) -> Result<Vec<u8>, ApiError> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(text) => STANDARD
                .decode(text)
                .map_err(|e| ApiError::BadBase64(e.to_string())),
        }
    }
}

/// Checks a key named by a single-key request (GET, PUT, DELETE without
/// `?recurse`/`?keys`). Rejects, in this order: the empty key, keys longer
/// than [`MAX_KEY_BYTES`], keys starting with `/`, keys containing NUL.
/// Everything else is a valid key, including spaces, `//` inside and
/// non-ASCII text. Prefixes (`?recurse`, `?keys`) are not checked: any prefix,
/// the empty one included, simply matches what it matches.
pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::KeyTooLong(key.len()));
    }
    if key.starts_with('/') {
        return Err(ApiError::LeadingSlash);
    }
    if key.contains('\0') {
        return Err(ApiError::NulInKey);
    }
    Ok(())
}

/// A UUID (version 4 layout) from 16 random bytes, lowercase.
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(value: &[u8]) -> KvEntry {
        KvEntry {
            key: "foo".into(),
            value: value.to_vec(),
            flags: 3,
            create_index: 7,
            modify_index: 9,
            lock_index: 0,
            session: None,
        }
    }

    #[test]
    fn json_shape_matches_consul() {
        let json = serde_json::to_string(&KvPair::from(&entry(b"bar"))).unwrap();
        assert_eq!(
            json,
            r#"{"LockIndex":0,"Key":"foo","Flags":3,"Value":"YmFy","CreateIndex":7,"ModifyIndex":9}"#
        );
        let back: KvPair = serde_json::from_str(&json).unwrap();
        assert_eq!(back.decoded_value().unwrap(), b"bar");
    }

    #[test]
    fn empty_value_is_null() {
        let pair = KvPair::from(&entry(b""));
        assert_eq!(pair.value, None);
        let json = serde_json::to_string(&pair).unwrap();
        assert!(json.contains(r#""Value":null"#), "{json}");
        assert_eq!(pair.decoded_value().unwrap(), b"");
    }

    /// A body exactly as a real Consul agent sends it, with a lock holder
    /// (`Session`) and a missing `Value`.
    #[test]
    fn reads_consul_output() {
        let json = r#"[{"LockIndex":1,"Key":"a","Flags":0,"Value":"aGk=","Session":"x","CreateIndex":1,"ModifyIndex":2},
                       {"LockIndex":0,"Key":"b","Flags":0,"CreateIndex":3,"ModifyIndex":3}]"#;
        let pairs: Vec<KvPair> = serde_json::from_str(json).unwrap();
        assert_eq!(pairs[0].decoded_value().unwrap(), b"hi");
        assert_eq!(pairs[1].value, None);
        assert_eq!(pairs[0].session.as_deref(), Some("x"));
        assert_eq!(pairs[1].session, None);
        let out = serde_json::to_string(&pairs[1]).unwrap();
        assert!(!out.contains("Session"), "omitted when unlocked: {out}");
    }

    #[test]
    fn bad_base64_is_an_error_not_a_panic() {
        for bad in ["YmFy=", "Ym*y", "YmF", "YmFy\n"] {
            let pair = KvPair {
                value: Some(bad.into()),
                ..KvPair::from(&entry(b""))
            };
            assert!(
                matches!(pair.decoded_value(), Err(ApiError::BadBase64(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(validate_key(""), Err(ApiError::EmptyKey));
        assert_eq!(validate_key("a\0b"), Err(ApiError::NulInKey));
        assert_eq!(validate_key("/a"), Err(ApiError::LeadingSlash));
        assert_eq!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(ApiError::KeyTooLong(MAX_KEY_BYTES + 1))
        );
        for ok in [
            "a",
            "a/b c",
            "a//b/",
            "é/ü",
            "k".repeat(MAX_KEY_BYTES).as_str(),
        ] {
            assert_eq!(validate_key(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(ApiError::EmptyKey.to_string(), "Missing key name");
    }

    proptest! {
        #[test]
        fn value_round_trips_through_json(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let pair = KvPair::from(&entry(&value));
            let json = serde_json::to_string(&pair).unwrap();
            let back: KvPair = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back.decoded_value().unwrap(), value);
        }

        #[test]
        fn validation_and_decoding_never_panic(key in any::<String>(), text in any::<String>()) {
            let _ = validate_key(&key);
            let pair = KvPair { value: Some(text), ..KvPair::from(&entry(b"")) };
            let _ = pair.decoded_value();
        }
    }

    #[test]
    fn uuids_have_the_v4_layout() {
        let u = uuid_v4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
