//! API keys: their shape, hashing and scopes (pure), plus the record the key store
//! keeps. Plaintext keys exist only in the request and at creation; we store and log
//! nothing but the SHA-256.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

const KEY_PREFIXES: [&str; 2] = ["sk_live_", "sk_test_"];
const MIN_SECRET_CHARS: usize = 24;
const MAX_SECRET_CHARS: usize = 128;
const GENERATED_SECRET_CHARS: usize = 40;
pub const DEFAULT_RATE_LIMIT: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    UsersWrite,
    UsersRead,
    UsersReadPii,
    UsersDelete,
    AudiencesWrite,
    AudiencesRead,
    /// Segment's routes only: the write key of a library that may run where others see
    /// it (docs/segment.md, "A leaked write key"). `users:write` covers them too.
    SegmentWrite,
    WebhooksWrite,
    WebhooksRead,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::UsersWrite,
        Scope::UsersRead,
        Scope::UsersReadPii,
        Scope::UsersDelete,
        Scope::AudiencesWrite,
        Scope::AudiencesRead,
        Scope::SegmentWrite,
        Scope::WebhooksWrite,
        Scope::WebhooksRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::UsersWrite => "users:write",
            Scope::UsersRead => "users:read",
            Scope::UsersReadPii => "users:read_pii",
            Scope::UsersDelete => "users:delete",
            Scope::AudiencesWrite => "audiences:write",
            Scope::AudiencesRead => "audiences:read",
            Scope::SegmentWrite => "segment:write",
            Scope::WebhooksWrite => "webhooks:write",
            Scope::WebhooksRead => "webhooks:read",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|scope| scope.as_str()).collect();
                format!("unknown scope `{s}` (expected one of {})", known.join(", "))
            })
    }
}

/// What the key store knows about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub workspace_id: String,
    pub scopes: Vec<Scope>,
    /// Requests per second; `None` takes the deployment's default (`DEFAULT_RATE_LIMIT`).
    pub rate_limit: Option<u32>,
    pub created_at: i64,
    pub revoked: bool,
}

impl ApiKeyRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || scope == Scope::SegmentWrite && self.scopes.contains(&Scope::UsersWrite)
    }
}

/// Why an `Authorization` header was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("no Authorization header")]
    Missing,
    #[error("Authorization is not a Bearer key")]
    Malformed,
}

/// Extracts the key from `Authorization: Bearer <key>` (scheme case-insensitive) and
/// checks its shape: `sk_live_`/`sk_test_` and at least 24 ASCII letters or digits.
pub fn bearer_key(header: Option<&[u8]>) -> Result<&str, CredentialError> {
    let header = header.ok_or(CredentialError::Missing)?;
    let header = std::str::from_utf8(header).map_err(|_| CredentialError::Malformed)?;
    let (scheme, key) = header
        .trim()
        .split_once(' ')
        .ok_or(CredentialError::Malformed)?;
    let key = key.trim_start();
    if !scheme.eq_ignore_ascii_case("bearer") || !is_key_shaped(key) {
        return Err(CredentialError::Malformed);
    }
    Ok(key)
}

/// The key of a Segment library's request: `Authorization: Basic base64(key:)` (the
/// write key as user name, an empty password), or `Bearer <key>` as on our own routes.
pub fn write_key(header: Option<&[u8]>) -> Result<String, CredentialError> {
    use base64::Engine;
    let text = header.ok_or(CredentialError::Missing)?;
    let text = std::str::from_utf8(text).map_err(|_| CredentialError::Malformed)?;
    let Some((scheme, encoded)) = text.trim().split_once(' ') else {
        return Err(CredentialError::Malformed);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return bearer_key(header).map(str::to_owned);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| CredentialError::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| CredentialError::Malformed)?;
    // The user name is the key; libraries send an empty password.
    let key = decoded.split(':').next().unwrap_or_default();
    if !is_key_shaped(key) {
        return Err(CredentialError::Malformed);
    }
    Ok(key.to_owned())
}

/// Whether a string has a key's shape (a `writeKey` in a Segment body, say).
pub fn is_key_shaped(key: &str) -> bool {
    KEY_PREFIXES.iter().any(|prefix| {
        key.strip_prefix(prefix).is_some_and(|secret| {
            (MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&secret.len())
                && secret.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    })
}

/// The hex SHA-256 under which a key is stored.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A key's public id: derived from its hash, safe to show and log.
pub fn key_id(hash: &str) -> String {
    format!("key_{}", &hash[..16])
}

/// A new random key: `sk_live_` (or `sk_test_`) and 40 alphanumerics (~238 bits).
pub fn generate_key(test: bool) -> String {
    let prefix = if test {
        KEY_PREFIXES[1]
    } else {
        KEY_PREFIXES[0]
    };
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), GENERATED_SECRET_CHARS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_libraries_send_the_key_as_a_basic_user_name() {
        use base64::Engine;
        let key = "sk_live_abcdefghijklmnopqrstuvwxyz0123";
        let basic = |text: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            )
        };
        assert_eq!(
            write_key(Some(basic(&format!("{key}:")).as_bytes())),
            Ok(key.to_owned())
        );
        assert_eq!(write_key(Some(basic(key).as_bytes())), Ok(key.to_owned()));
        assert_eq!(
            write_key(Some(format!("Bearer {key}").as_bytes())),
            Ok(key.to_owned())
        );
        assert_eq!(write_key(None), Err(CredentialError::Missing));
        for bad in [basic("nope:"), "Basic !!!".into(), basic("sk_live_short:")] {
            assert_eq!(
                write_key(Some(bad.as_bytes())),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
    }

    const KEY: &str = "sk_live_abcdefghijklmnopqrstuvwx";

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for header in ["Bearer ", "bearer ", "BEARER  "] {
            assert_eq!(
                bearer_key(Some(format!("{header}{KEY}").as_bytes())),
                Ok(KEY)
            );
        }
    }

    #[test]
    fn missing_and_malformed_headers_are_told_apart() {
        assert_eq!(bearer_key(None), Err(CredentialError::Missing));
        for bad in [
            "",
            "Bearer",
            "Basic sk_live_abcdefghijklmnopqrstuvwx",
            "Bearer sk_live_short",
            "Bearer pk_live_abcdefghijklmnopqrstuvwx",
            "Bearer sk_live_abcdefghijklmnopqrstuv-x",
            "sk_live_abcdefghijklmnopqrstuvwx",
        ] {
            assert_eq!(
                bearer_key(Some(bad.as_bytes())),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn generated_keys_are_well_shaped_and_distinct() {
        let (a, b) = (generate_key(false), generate_key(true));
        assert!(is_key_shaped(&a) && a.starts_with("sk_live_"));
        assert!(is_key_shaped(&b) && b.starts_with("sk_test_"));
        assert_ne!(key_hash(&a), key_hash(&b));
        assert_eq!(key_id(&key_hash(&a)).len(), 20);
    }

    #[test]
    fn scopes_parse_from_their_wire_names() {
        assert_eq!("users:read_pii".parse(), Ok(Scope::UsersReadPii));
        assert!("users:admin".parse::<Scope>().is_err());
        assert_eq!("segment:write".parse(), Ok(Scope::SegmentWrite));
    }

    #[test]
    fn a_segment_key_serves_segments_routes_only_and_users_write_covers_them() {
        let key = |scopes: Vec<Scope>| ApiKeyRecord {
            key_id: "k".into(),
            workspace_id: "w".into(),
            scopes,
            rate_limit: None,
            created_at: 0,
            revoked: false,
        };
        let segment = key(vec![Scope::SegmentWrite]);
        assert!(segment.allows(Scope::SegmentWrite));
        assert!(Scope::ALL
            .iter()
            .filter(|s| **s != Scope::SegmentWrite)
            .all(|s| !segment.allows(*s)));
        assert!(key(vec![Scope::UsersWrite]).allows(Scope::SegmentWrite));
        assert!(!key(vec![Scope::UsersRead]).allows(Scope::SegmentWrite));
    }
}
