//! URLs that may carry a password.

use std::fmt;

/// A connection URL whose password (in the user-info part or a
/// `password=` query parameter) is never printed: `Debug` and `Display`
/// show `***` in its place. Use [`SecretUrl::expose`] to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    raw: String,
    redacted: String,
    scheme: String,
}

impl SecretUrl {
    /// Parses a URL.
    ///
    /// # Errors
    /// `Err(())` when it is not a URL; the caller reports the key, so the
    /// value itself need not travel in the error.
    #[allow(clippy::result_unit_err)]
    pub fn parse(raw: &str) -> Result<Self, ()> {
        let mut url = url::Url::parse(raw).map_err(|_| ())?;
        if url.cannot_be_a_base() {
            return Err(());
        }
        let scheme = url.scheme().to_owned();
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = matches!(
                    k.to_ascii_lowercase().as_str(),
                    "password" | "pass" | "pwd" | "secret" | "token" | "sslpassword"
                );
                (
                    k.into_owned(),
                    if secret {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        Ok(SecretUrl {
            raw: raw.to_owned(),
            redacted: url.to_string(),
            scheme,
        })
    }

    /// The URL with its password, to hand to a driver. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The scheme (`postgres`, `redis`, ...).
    #[must_use]
    pub fn scheme(&self) -> &str {
        &self.scheme
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let u = SecretUrl::parse(
            "postgres://app:s3cr3t-pw@db:5432/x?sslmode=require&password=other-pw",
        )
        .unwrap();
        for shown in [u.to_string(), format!("{u:?}")] {
            assert!(!shown.contains("s3cr3t-pw"), "{shown}");
            assert!(!shown.contains("other-pw"), "{shown}");
            assert!(shown.contains("app:***@db"), "{shown}");
            assert!(shown.contains("sslmode=require"), "{shown}");
        }
        assert!(u.expose().contains("s3cr3t-pw"));
    }

    #[test]
    fn not_a_url() {
        assert!(SecretUrl::parse("not a url").is_err());
        assert!(SecretUrl::parse("mailto:x@y").is_err());
    }
}
