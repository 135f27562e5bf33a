//! The one privacy mechanism of data-layer: keyed tokens (HMAC-SHA-256) and
//! sealing (XChaCha20-Poly1305), with keys that carry an id so they can
//! rotate. Redis index keys, cursors, cache keys, change events, the saga
//! log and the audit trail all use these functions and no others.
//!
//! ```
//! use dl_privacy::{Privacy, SecretKey};
//!
//! let key = SecretKey::from_bytes("k1", [7u8; 32]).unwrap();
//! let privacy = Privacy::new(key);
//!
//! // Equal values, equal tokens (per domain); the value cannot be read back.
//! let t = privacy.token("patients.mrn", b"MRN-0001");
//! assert_eq!(t, privacy.token("patients.mrn", b"MRN-0001"));
//! assert_ne!(t, privacy.token("patients.family_name", b"MRN-0001"));
//! assert!(t.starts_with("k1."));
//!
//! // Sealed text is authenticated: altered, or bound to another context, it
//! // does not open.
//! let sealed = privacy.seal(b"cursor:patients", b"{\"k\":\"MRN-0001\"}");
//! assert_eq!(privacy.open(b"cursor:patients", &sealed).unwrap(), b"{\"k\":\"MRN-0001\"}");
//! assert!(privacy.open(b"cursor:notes", &sealed).is_err());
//! ```
//!
//! Keys are [`secrecy::SecretBox`]es: no `Debug`, log or settings dump shows
//! them. Each purpose gets its own key derived from the configured one
//! (HMAC with a purpose label), so a token key never seals and the other
//! way round.

use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, Generate as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretBox};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Bytes of a token's MAC kept (128 bits: collisions are out of reach).
const TOKEN_BYTES: usize = 16;
/// Bytes of an XChaCha20 nonce (random per seal: no counter to keep).
const NONCE_BYTES: usize = 24;
/// Longest sealed text [`Privacy::open`] reads.
pub const MAX_SEALED: usize = 64 * 1024;

/// Why sealed text does not open. Never says more than that: which check
/// failed tells an attacker nothing useful, and the text is never quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Not of the form `<key id>.<base64url>`, or too long.
    #[error("not sealed text")]
    Malformed,
    /// Sealed under a key this process does not hold (rotated out, or
    /// another deployment's).
    #[error("sealed under an unknown key")]
    UnknownKey,
    /// Altered, forged, or sealed for another context.
    #[error("does not authenticate")]
    Forged,
}

/// Why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The id must be 1 to 16 of `[A-Za-z0-9_-]` (it is written beside
    /// every token and ciphertext).
    #[error("a key id must be 1 to 16 characters of A-Z a-z 0-9 _ -")]
    BadId,
    /// The secret must be at least 32 bytes.
    #[error("a key must be at least 32 bytes (base64 or base64url, padded or not)")]
    TooShort,
    /// The secret is not base64.
    #[error("a key must be base64 or base64url")]
    NotBase64,
}

/// A new random key as settings take it (`privacy.key`): base64 of 32
/// bytes from the operating system's generator, like
/// `openssl rand -base64 32`.
#[must_use]
pub fn new_key_text() -> String {
    let bytes = <[u8; 32]>::generate();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A secret key with its id.
pub struct SecretKey {
    id: String,
    secret: SecretBox<[u8]>,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    (1..=16).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl SecretKey {
    /// A key from raw bytes (at least 32).
    ///
    /// # Errors
    /// [`KeyError`] for a bad id or a short key.
    pub fn from_bytes(id: &str, bytes: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        if !valid_id(id) {
            return Err(KeyError::BadId);
        }
        let bytes = bytes.as_ref();
        if bytes.len() < 32 {
            return Err(KeyError::TooShort);
        }
        Ok(SecretKey {
            id: id.to_owned(),
            secret: SecretBox::new(bytes.to_vec().into_boxed_slice()),
        })
    }

    /// A key from base64 or base64url text (as settings give it).
    ///
    /// # Errors
    /// [`KeyError`]; the text is never quoted.
    pub fn from_base64(id: &str, text: &str) -> Result<Self, KeyError> {
        let t = text.trim().trim_end_matches('=');
        let bytes = B64
            .decode(t.replace('+', "-").replace('/', "_"))
            .map_err(|_| KeyError::NotBase64)?;
        Self::from_bytes(id, bytes)
    }

    /// A random key (for a process that was given none: what it seals or
    /// tokenizes is good only for its own lifetime).
    #[must_use]
    pub fn random(id: &str) -> Self {
        let bytes = <[u8; 32]>::generate();
        Self::from_bytes(id, bytes).unwrap_or_else(|_| {
            // A bad id from the caller: fall back to a fixed valid one.
            Self::from_bytes("ephemeral", bytes).expect("32 bytes and a valid id")
        })
    }

    /// The key's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A sub-key for one purpose: HMAC(secret, label).
    fn derive(&self, label: &str) -> SecretBox<[u8; 32]> {
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(self.secret.expose_secret())
            .expect("HMAC takes keys of any length");
        mac.update(b"data-layer/");
        mac.update(label.as_bytes());
        let out: [u8; 32] = mac.finalize().into_bytes().into();
        SecretBox::new(Box::new(out))
    }
}

/// One key's derived sub-keys.
struct Derived {
    id: String,
    token: SecretBox<[u8; 32]>,
    seal: XChaCha20Poly1305,
}

impl Derived {
    fn new(key: &SecretKey) -> Self {
        let seal_key = key.derive("seal/v1");
        Derived {
            id: key.id.clone(),
            token: key.derive("token/v1"),
            seal: XChaCha20Poly1305::new(seal_key.expose_secret().into()),
        }
    }
}

/// Tokens and sealing under a current key, with earlier keys kept to open
/// what they sealed (rotation). Cheap to share (`Arc<Privacy>`).
pub struct Privacy {
    current: Derived,
    previous: Vec<Derived>,
}

impl fmt::Debug for Privacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Privacy")
            .field("key_id", &self.current.id)
            .field(
                "previous_key_ids",
                &self
                    .previous
                    .iter()
                    .map(|d| d.id.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Privacy {
    /// Tokens and sealing under `key`.
    #[must_use]
    pub fn new(key: SecretKey) -> Self {
        Privacy {
            current: Derived::new(&key),
            previous: Vec::new(),
        }
    }

    /// Also opens what `key` sealed (a key rotated out). Tokens are always
    /// made with the current key.
    #[must_use]
    pub fn with_previous(mut self, key: SecretKey) -> Self {
        self.previous.push(Derived::new(&key));
        self
    }

    /// A random key for this process only, with a warning-worthy id
    /// (`ephemeral`): cursors it seals do not open in another process.
    #[must_use]
    pub fn ephemeral() -> Self {
        Self::new(SecretKey::random("ephemeral"))
    }

    /// The current key's id.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// A keyed token of `value` in `domain` (say `"<entity>.<field>"`):
    /// `<key id>.<22 base64url characters>`. Equal inputs give equal
    /// tokens, so equality lookups work on tokens; the value cannot be
    /// recovered, and without the key it cannot be guessed and checked.
    #[must_use]
    pub fn token(&self, domain: &str, value: &[u8]) -> String {
        let mut mac =
            <HmacSha256 as hmac::KeyInit>::new_from_slice(self.current.token.expose_secret())
                .expect("HMAC takes keys of any length");
        // Length-prefixed, so ("a", "bc") and ("ab", "c") differ.
        mac.update(&(domain.len() as u64).to_be_bytes());
        mac.update(domain.as_bytes());
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(self.current.id.len() + 23);
        out.push_str(&self.current.id);
        out.push('.');
        B64.encode_string(&digest[..TOKEN_BYTES], &mut out);
        out
    }

    /// Seals `plaintext`, bound to `context` (authenticated, not
    /// encrypted: it must be given again to open): `<key id>.<base64url of
    /// nonce, ciphertext and tag>`.
    #[must_use]
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> String {
        let nonce = XNonce::generate();
        let sealed = self
            .current
            .seal
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length this crate is given");
        let mut body = Vec::with_capacity(NONCE_BYTES + sealed.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        let mut out = String::with_capacity(self.current.id.len() + 1 + body.len() * 4 / 3 + 4);
        out.push_str(&self.current.id);
        out.push('.');
        B64.encode_string(&body, &mut out);
        out
    }

    /// Opens what [`Privacy::seal`] sealed for the same `context`, under
    /// the current key or a previous one.
    ///
    /// # Errors
    /// [`OpenError`]: malformed, an unknown key, or altered / forged /
    /// another context.
    pub fn open(&self, context: &[u8], sealed: &str) -> Result<Vec<u8>, OpenError> {
        if sealed.len() > MAX_SEALED {
            return Err(OpenError::Malformed);
        }
        let (id, body) = sealed.split_once('.').ok_or(OpenError::Malformed)?;
        if !valid_id(id) {
            return Err(OpenError::Malformed);
        }
        let body = B64.decode(body).map_err(|_| OpenError::Malformed)?;
        if body.len() < NONCE_BYTES + 16 {
            return Err(OpenError::Malformed);
        }
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|d| d.id == id)
            .ok_or(OpenError::UnknownKey)?;
        let (nonce, ciphertext) = body.split_at(NONCE_BYTES);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::Malformed)?;
        key.seal
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| OpenError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn privacy(id: &str, byte: u8) -> Privacy {
        Privacy::new(SecretKey::from_bytes(id, [byte; 32]).unwrap())
    }

    #[test]
    fn tokens_are_stable_keyed_and_domain_separated() {
        let a = privacy("k1", 1);
        let b = privacy("k1", 2);
        let t = a.token("patients.mrn", b"MRN-1");
        assert_eq!(t, a.token("patients.mrn", b"MRN-1"));
        assert_ne!(t, b.token("patients.mrn", b"MRN-1"), "another key");
        assert_ne!(t, a.token("patients.mrn", b"MRN-2"));
        assert_ne!(a.token("a", b"bc"), a.token("ab", b"c"));
        assert_eq!(t.len(), 3 + 22);
        assert!(!t.contains("MRN"));
    }

    #[test]
    fn sealed_text_opens_only_unaltered_in_its_context() {
        let p = privacy("k1", 1);
        let s = p.seal(b"ctx", b"secret value");
        assert!(!s.contains("secret"));
        assert_eq!(p.open(b"ctx", &s).unwrap(), b"secret value");
        assert_eq!(p.open(b"other", &s), Err(OpenError::Forged));
        // Every single-character alteration of the body fails.
        let (id, body) = s.split_once('.').unwrap();
        for i in 0..body.len() {
            let mut chars: Vec<char> = body.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let altered = format!("{id}.{}", chars.into_iter().collect::<String>());
            assert!(p.open(b"ctx", &altered).is_err(), "altered at {i}");
        }
        for bad in [
            "",
            ".",
            "k1.",
            "k1",
            "k1.!!!!",
            "a b.AAAA",
            &"k1.".repeat(30_000),
        ] {
            assert!(p.open(b"ctx", bad).is_err(), "{bad:.20}");
        }
        assert_eq!(
            privacy("k2", 1).open(b"ctx", &s),
            Err(OpenError::UnknownKey)
        );
        // Same bytes, another id: the derived keys match, so it opens;
        // another secret under the same id does not.
        assert_eq!(privacy("k1", 9).open(b"ctx", &s), Err(OpenError::Forged));
        // Two seals of the same text differ (random nonces).
        assert_ne!(p.seal(b"ctx", b"x"), p.seal(b"ctx", b"x"));
    }

    #[test]
    fn rotated_keys_still_open_what_they_sealed() {
        let old = privacy("old", 1);
        let s = old.seal(b"ctx", b"v");
        let new = privacy("new", 2).with_previous(SecretKey::from_bytes("old", [1; 32]).unwrap());
        assert_eq!(new.open(b"ctx", &s).unwrap(), b"v");
        assert!(new.seal(b"ctx", b"v").starts_with("new."));
        assert!(new.token("d", b"v").starts_with("new."));
    }

    #[test]
    fn keys_never_show_and_bad_keys_are_refused() {
        let k = SecretKey::from_base64("k1", &B64.encode([42u8; 32])).unwrap();
        let mut shown = format!("{k:?}");
        shown.push_str(&format!("{:?}", Privacy::new(k)));
        assert!(
            !shown.contains("42") && !shown.contains("KioqKi"),
            "{shown}"
        );
        assert_eq!(
            SecretKey::from_bytes("k1", [0; 31]).unwrap_err(),
            KeyError::TooShort
        );
        assert_eq!(
            SecretKey::from_bytes("k 1", [0; 32]).unwrap_err(),
            KeyError::BadId
        );
        assert_eq!(
            SecretKey::from_bytes("', DROP TABLE x;--", [0; 32]).unwrap_err(),
            KeyError::BadId
        );
        assert_eq!(
            SecretKey::from_base64("k1", "not base64 !").unwrap_err(),
            KeyError::NotBase64
        );
        // Standard base64 with padding is accepted too.
        let std = base64::engine::general_purpose::STANDARD.encode([250u8; 33]);
        assert!(SecretKey::from_base64("k1", &std).is_ok());
    }
}
