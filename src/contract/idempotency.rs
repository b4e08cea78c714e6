//! What an Idempotency-Key record holds of a request: the key as the header must send
//! it, and the hash of the body it compares a retry's against.

use super::{ErrorCode, FieldError};
use sha2::{Digest, Sha256};

const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// Checks an `Idempotency-Key` header: 1–255 bytes of printable ASCII.
pub fn validate_idempotency_key(raw: &[u8]) -> Result<&str, FieldError> {
    let printable = raw.iter().all(|b| (0x20..=0x7e).contains(b));
    match std::str::from_utf8(raw) {
        Ok(key) if !raw.is_empty() && raw.len() <= MAX_IDEMPOTENCY_KEY_BYTES && printable => {
            Ok(key)
        }
        _ => Err(FieldError::new(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key",
            "Idempotency-Key must be 1-255 printable ASCII characters",
        )),
    }
}

/// What an Idempotency-Key record of an erasure compares: no upsert body hashes the
/// same (`erase` is not a member of an upsert).
pub fn erase_hash(external_user_id: &str) -> String {
    body_hash(&serde_json::json!({ "erase": external_user_id }))
}

/// SHA-256 (hex) of the body's canonical JSON: members sorted (objects parse into
/// sorted maps), no whitespace, so two bodies that parse to the same JSON hash the same.
pub fn body_hash(body: &impl serde::Serialize) -> String {
    let mut canonical = Vec::with_capacity(1024);
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut canonical, body);
    hex::encode(Sha256::digest(&canonical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn body_hash_ignores_whitespace_and_member_order() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"x":[1,2],"y":"z"}}"#).unwrap();
        let b: Value =
            serde_json::from_str("{ \"b\" : {\"y\":\"z\", \"x\":[1, 2]}, \"a\" : 1 }").unwrap();
        let c: Value = serde_json::from_str(r#"{"a":2,"b":{"x":[1,2],"y":"z"}}"#).unwrap();
        assert_eq!(body_hash(&a), body_hash(&b));
        assert_ne!(body_hash(&a), body_hash(&c));
    }

    #[test]
    fn idempotency_key_rules() {
        assert!(validate_idempotency_key(b"7b6c7e9e-2c2d-4a8d-9d3a-4f3d2c1b0a99").is_ok());
        assert!(validate_idempotency_key(&[b'k'; 255]).is_ok());
        for bad in [&b""[..], &[b'k'; 256], b"tab\there", "é".as_bytes()] {
            assert!(validate_idempotency_key(bad).is_err());
        }
    }
}
