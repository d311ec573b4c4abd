//! Consul's gossip encryption key (`encrypt`, `consul keygen`): base64 of
//! 16, 24 or 32 bytes (AES-128, -192 or -256).
//!
//! This build has no gossip layer (no Serf: membership goes through the
//! servers over RPC, which TLS protects), so the key encrypts nothing. It
//! is still checked as Consul checks it, so a configuration that Consul
//! would refuse is refused here too, and `mesh keygen` makes one for the
//! scripts that provision it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Checks `key` as Consul's agent does at start.
pub fn check(key: &str) -> Result<(), String> {
    let bytes = STANDARD
        .decode(key.trim())
        .map_err(|e| format!("Failed to decode encryption key: {e}"))?;
    match bytes.len() {
        16 | 24 | 32 => Ok(()),
        n => Err(format!(
            "Invalid encryption key: {n} bytes; it must be 16, 24 or 32 bytes (base64), as `mesh keygen` makes"
        )),
    }
}

/// A key from 32 random bytes the caller drew: what `consul keygen` prints.
pub fn encode(random: &[u8; 32]) -> String {
    STANDARD.encode(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_as_consul_checks_them() {
        let key = encode(&[7; 32]);
        assert_eq!(key.len(), 44);
        assert_eq!(check(&key), Ok(()));
        assert_eq!(check(&STANDARD.encode([1u8; 16])), Ok(()));
        assert!(check("not base64!")
            .unwrap_err()
            .contains("Failed to decode"));
        assert!(check(&STANDARD.encode([1u8; 20]))
            .unwrap_err()
            .contains("20 bytes"));
    }
}
