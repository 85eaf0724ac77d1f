//! JSON Web Signature for ACME requests ([RFC 8555 §6.2], [RFC 7515]) with
//! ES256 (and RS256, for RSA account keys certbot made), JWKs ([RFC 7517])
//! and their thumbprints ([RFC 7638]).
//!
//! [RFC 8555 §6.2]: https://www.rfc-editor.org/rfc/rfc8555#section-6.2
//! [RFC 7515]: https://www.rfc-editor.org/rfc/rfc7515
//! [RFC 7517]: https://www.rfc-editor.org/rfc/rfc7517
//! [RFC 7638]: https://www.rfc-editor.org/rfc/rfc7638

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::error::ErrorStack;
use openssl::hash::{hash, MessageDigest};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use serde_json::{json, Value};

/// What can go wrong with an account key, its JWK or a signature. The
/// messages are the ones users have always seen.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Not base64url ([RFC 7515 §2]).
    ///
    /// [RFC 7515 §2]: https://www.rfc-editor.org/rfc/rfc7515#section-2
    #[error("bad base64url: {0}")]
    Base64(#[from] base64::DecodeError),
    /// A key component does not fit its fixed width.
    #[error("key component too large: {0}")]
    TooLarge(ErrorStack),
    /// OpenSSL refused (key generation, a component, a signature).
    #[error("{0}")]
    OpenSsl(#[from] ErrorStack),
    /// An EC key on another curve than P-256.
    #[error("only P-256 EC account keys are supported")]
    NotP256,
    /// Neither EC nor RSA.
    #[error("unsupported account key type")]
    UnsupportedKey,
    /// A required JWK member is missing (or not a string).
    #[error("JWK member {0:?} missing")]
    MissingMember(String),
    /// An EC JWK whose `d` does not belong to its `x`, `y`.
    #[error("EC JWK: private and public parts do not match")]
    Mismatch,
    /// A JWK `kty` other than EC or RSA.
    #[error("unsupported JWK kty {0:?}")]
    UnsupportedKty(Option<String>),
}

type Result<T, E = JwsError> = std::result::Result<T, E>;

/// base64url without padding ([RFC 7515 §2]).
///
/// [RFC 7515 §2]: https://www.rfc-editor.org/rfc/rfc7515#section-2
pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64_decode(s: &str) -> Result<Vec<u8>> {
    Ok(URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))?)
}

/// An ACME account key.
#[derive(Clone)]
pub struct AccountKey {
    pkey: PKey<Private>,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "AccountKey({})", self.alg())
    }
}

fn padded(n: &openssl::bn::BigNumRef, len: i32) -> Result<Vec<u8>> {
    n.to_vec_padded(len).map_err(JwsError::TooLarge)
}

impl AccountKey {
    /// A new ECDSA P-256 account key.
    pub fn generate() -> Result<AccountKey> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let ec = EcKey::generate(&group)?;
        Ok(AccountKey { pkey: PKey::from_ec_key(ec)? })
    }

    pub fn from_pkey(pkey: PKey<Private>) -> Result<AccountKey> {
        let k = AccountKey { pkey };
        match k.pkey.id() {
            openssl::pkey::Id::RSA => Ok(k),
            openssl::pkey::Id::EC => {
                let ec = k.pkey.ec_key()?;
                if ec.group().curve_name() == Some(Nid::X9_62_PRIME256V1) {
                    Ok(k)
                } else {
                    Err(JwsError::NotP256)
                }
            }
            _ => Err(JwsError::UnsupportedKey),
        }
    }

    pub fn pkey(&self) -> &PKey<Private> {
        &self.pkey
    }

    /// The JWS `alg`: ES256 for P-256, RS256 for RSA.
    pub fn alg(&self) -> &'static str {
        if self.pkey.id() == openssl::pkey::Id::RSA {
            "RS256"
        } else {
            "ES256"
        }
    }

    /// The public JWK with only the required members, in the lexicographic
    /// order RFC 7638 §3.2 asks for (so its serialisation is the thumbprint input).
    pub fn public_jwk(&self) -> Result<Value> {
        if let Ok(rsa) = self.pkey.rsa() {
            return Ok(
                json!({"e": b64(&rsa.e().to_vec()), "kty": "RSA", "n": b64(&rsa.n().to_vec())}),
            );
        }
        let ec = self.pkey.ec_key()?;
        let (x, y) = ec_xy(&ec)?;
        Ok(json!({"crv": "P-256", "kty": "EC", "x": b64(&x), "y": b64(&y)}))
    }

    /// The private JWK, as certbot stores it in `private_key.json`.
    pub fn private_jwk(&self) -> Result<Value> {
        if let Ok(rsa) = self.pkey.rsa() {
            let opt = |b: Option<&openssl::bn::BigNumRef>| {
                b.map(|b| b64(&b.to_vec())).unwrap_or_default()
            };
            return Ok(
                json!({"kty": "RSA", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec()), "d": b64(&rsa.d().to_vec()),
                "p": opt(rsa.p()), "q": opt(rsa.q()), "dp": opt(rsa.dmp1()), "dq": opt(rsa.dmq1()), "qi": opt(rsa.iqmp())}),
            );
        }
        let ec = self.pkey.ec_key()?;
        let (x, y) = ec_xy(&ec)?;
        let d = padded(ec.private_key(), 32)?;
        Ok(json!({"kty": "EC", "crv": "P-256", "x": b64(&x), "y": b64(&y), "d": b64(&d)}))
    }

    /// Load a private JWK (EC P-256 or RSA), as certbot stores it.
    pub fn from_private_jwk(v: &Value) -> Result<AccountKey> {
        let field = |k: &str| -> Result<BigNum> {
            let s = v
                .get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| JwsError::MissingMember(k.to_string()))?;
            Ok(BigNum::from_slice(&b64_decode(s)?)?)
        };
        match v.get("kty").and_then(Value::as_str) {
            Some("EC") => {
                if v.get("crv").and_then(Value::as_str) != Some("P-256") {
                    return Err(JwsError::NotP256);
                }
                let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
                let (x, y, d) = (field("x")?, field("y")?, field("d")?);
                let public = EcKey::from_public_key_affine_coordinates(&group, &x, &y)?;
                let ec = EcKey::from_private_components(&group, &d, public.public_key())?;
                ec.check_key().map_err(|_| JwsError::Mismatch)?;
                Ok(AccountKey { pkey: PKey::from_ec_key(ec)? })
            }
            Some("RSA") => {
                let rsa = Rsa::from_private_components(
                    field("n")?,
                    field("e")?,
                    field("d")?,
                    field("p")?,
                    field("q")?,
                    field("dp")?,
                    field("dq")?,
                    field("qi")?,
                )?;
                Ok(AccountKey { pkey: PKey::from_rsa(rsa)? })
            }
            other => Err(JwsError::UnsupportedKty(other.map(str::to_string))),
        }
    }

    /// RFC 7638 thumbprint: base64url(SHA-256(canonical public JWK)).
    pub fn thumbprint(&self) -> Result<String> {
        Ok(thumbprint_of(&self.public_jwk()?))
    }

    /// Sign `protected.payload` and return the flattened JWS JSON
    /// ([RFC 8555 §6.2]). ES256 signatures are r‖s, each left-padded to 32
    /// bytes ([RFC 7518 §3.4]), never DER.
    ///
    /// [RFC 8555 §6.2]: https://www.rfc-editor.org/rfc/rfc8555#section-6.2
    /// [RFC 7518 §3.4]: https://www.rfc-editor.org/rfc/rfc7518#section-3.4
    pub fn sign(&self, protected: &Value, payload: &str) -> Result<Value> {
        let p64 = b64(protected.to_string().as_bytes());
        let input = format!("{p64}.{payload}");
        let sig = self.sign_bytes(input.as_bytes())?;
        Ok(json!({"protected": p64, "payload": payload, "signature": b64(&sig)}))
    }

    pub fn sign_bytes(&self, data: &[u8]) -> Result<Vec<u8>> {
        if self.pkey.id() == openssl::pkey::Id::RSA {
            let mut s = Signer::new(MessageDigest::sha256(), &self.pkey)?;
            s.update(data)?;
            return Ok(s.sign_to_vec()?);
        }
        let ec = self.pkey.ec_key()?;
        let digest = hash(MessageDigest::sha256(), data)?;
        let sig = EcdsaSig::sign(&digest, &ec)?;
        let mut out = padded(sig.r(), 32)?;
        out.extend(padded(sig.s(), 32)?);
        Ok(out)
    }

    /// certbot's account id: MD5 of the public key in SubjectPublicKeyInfo PEM.
    pub fn certbot_id(&self) -> Result<String> {
        let pem = self.pkey.public_key_to_pem()?;
        let d = hash(MessageDigest::md5(), &pem)?;
        Ok(d.iter().map(|b| format!("{b:02x}")).collect())
    }
}

fn ec_xy(ec: &EcKey<Private>) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut ctx = BigNumContext::new()?;
    let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
    ec.public_key().affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
    Ok((padded(&x, 32)?, padded(&y, 32)?))
}

/// Thumbprint of a public JWK whose members are already the required ones
/// (serde_json with `preserve_order` keeps the insertion order, which the
/// constructors above make lexicographic).
pub fn thumbprint_of(jwk: &Value) -> String {
    let canon = canonical(jwk);
    b64(&hash(MessageDigest::sha256(), canon.as_bytes()).map(|d| d.to_vec()).unwrap_or_default())
}

/// JSON with object members sorted and no white space (RFC 7638 §3).
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let only_required = json!({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]});
        assert_eq!(thumbprint_of(&only_required), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn es256_signature_is_64_bytes_and_verifies() {
        let k = AccountKey::generate().unwrap();
        // Enough signatures that a short r or s (1 in 128) turns up.
        for i in 0..400 {
            let msg = format!("message {i}");
            let sig = k.sign_bytes(msg.as_bytes()).unwrap();
            assert_eq!(sig.len(), 64);
            let r = BigNum::from_slice(&sig[..32]).unwrap();
            let s = BigNum::from_slice(&sig[32..]).unwrap();
            let es = EcdsaSig::from_private_components(r, s).unwrap();
            let digest = hash(MessageDigest::sha256(), msg.as_bytes()).unwrap();
            assert!(es.verify(&digest, &k.pkey.ec_key().unwrap()).unwrap());
        }
    }

    #[test]
    fn jwk_coordinates_are_padded_and_round_trip() {
        for _ in 0..50 {
            let k = AccountKey::generate().unwrap();
            let j = k.public_jwk().unwrap();
            assert_eq!(b64_decode(j["x"].as_str().unwrap()).unwrap().len(), 32);
            assert_eq!(b64_decode(j["y"].as_str().unwrap()).unwrap().len(), 32);
            let back = AccountKey::from_private_jwk(&k.private_jwk().unwrap()).unwrap();
            assert_eq!(back.thumbprint().unwrap(), k.thumbprint().unwrap());
            assert_eq!(back.certbot_id().unwrap(), k.certbot_id().unwrap());
        }
    }

    #[test]
    fn rsa_jwk_round_trip_and_sign() {
        let k =
            AccountKey::from_pkey(PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()).unwrap();
        assert_eq!(k.alg(), "RS256");
        let back = AccountKey::from_private_jwk(&k.private_jwk().unwrap()).unwrap();
        assert_eq!(back.thumbprint().unwrap(), k.thumbprint().unwrap());
        assert_eq!(back.sign_bytes(b"x").unwrap().len(), 256);
    }

    #[test]
    fn bad_jwks_are_errors() {
        for v in [
            json!({}),
            json!({"kty": "EC", "crv": "P-384"}),
            json!({"kty": "EC", "crv": "P-256", "x": "!!", "y": "AA", "d": "AA"}),
            json!({"kty": "oct"}),
        ] {
            assert!(AccountKey::from_private_jwk(&v).is_err(), "{v}");
        }
        // The messages users see (a backup's account, a stored one) are kept.
        let msg = |v: Value| AccountKey::from_private_jwk(&v).unwrap_err().to_string();
        assert_eq!(msg(json!({"kty": "oct"})), r#"unsupported JWK kty Some("oct")"#);
        assert_eq!(
            msg(json!({"kty": "EC", "crv": "P-384"})),
            "only P-256 EC account keys are supported"
        );
        assert_eq!(
            msg(json!({"kty": "EC", "crv": "P-256", "y": "AA", "d": "AA"})),
            r#"JWK member "x" missing"#
        );
        assert!(msg(json!({"kty": "EC", "crv": "P-256", "x": "!!", "y": "AA", "d": "AA"}))
            .starts_with("bad base64url: "));
    }
}
