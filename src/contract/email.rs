//! Email address rules: `local@domain`, at most 254 bytes after trimming.

const MAX_EMAIL_BYTES: usize = 254;
const MAX_LOCAL_BYTES: usize = 64;
const MAX_LABEL_BYTES: usize = 63;

/// Trims and checks an address; `None` when it is not a valid `local@domain`.
pub fn parse_email(raw: &str) -> Option<&str> {
    let email = raw.trim();
    if email.len() > MAX_EMAIL_BYTES {
        return None;
    }
    let (local, domain) = email.rsplit_once('@')?;
    (valid_local(local) && valid_domain(domain)).then_some(email)
}

/// The lower-case form that lookups by email compare.
pub fn normalize_email(email: &str) -> String {
    email.to_lowercase()
}

fn valid_local(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~.-";
    !local.is_empty()
        && local.len() <= MAX_LOCAL_BYTES
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || SPECIALS.contains(c))
}

// A dotted host name; internationalised labels are accepted as Unicode letters.
fn valid_domain(domain: &str) -> bool {
    let mut labels = 0;
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL_BYTES
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if !ok {
            return false;
        }
        labels += 1;
    }
    labels >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_addresses_and_trims() {
        assert_eq!(parse_email(" jane@acme.io "), Some("jane@acme.io"));
        assert_eq!(
            parse_email("Jane.Doe+tag@mail.acme.co.uk"),
            Some("Jane.Doe+tag@mail.acme.co.uk")
        );
        assert_eq!(parse_email("josé@exämple.de"), Some("josé@exämple.de"));
    }

    #[test]
    fn refuses_what_is_not_local_at_domain() {
        for bad in [
            "",
            "jane",
            "@acme.io",
            "jane@",
            "jane@acme",
            "jane@@acme.io",
            "ja ne@acme.io",
            "jane@acme..io",
            ".jane@acme.io",
            "jane.@acme.io",
            "jane@-acme.io",
            "ja\nne@acme.io",
        ] {
            assert_eq!(parse_email(bad), None, "{bad:?} accepted");
        }
    }

    #[test]
    fn refuses_addresses_over_254_bytes() {
        let label = "b".repeat(63);
        let long = format!("{}@{label}.{label}.{label}.io", "a".repeat(64));
        assert!(long.len() > 254);
        assert_eq!(parse_email(&long), None);
    }
}
