//! JSON Web Keys (RFC 7517): one public key from the config, or the usable
//! keys of a fetched key set. RSA (`n`, `e`), EC P-256 (`x`, `y`) and OKP
//! Ed25519 (`x`); anything else is refused (config) or skipped (key set).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1v15::VerifyingKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde_json::{Map, Value};

use crate::jwt::{Alg, Key, KeyMaterial};

/// RFC 7518 §3.3: smaller RSA keys must not be used.
pub const MIN_RSA_BITS: usize = 2048;

/// One public JWK as a key. Errors say what is wrong with it.
pub fn parse(jwk: &Map<String, Value>) -> Result<Key, String> {
    let field = |name: &str| match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("`{name}` must be a string")),
    };
    if let Some(usage) = field("use")?
        && usage != "sig"
    {
        return Err(format!("`use` is {usage:?}, not \"sig\""));
    }
    if jwk.contains_key("d") {
        return Err("this is a private key (it has `d`); use the public key".into());
    }
    let kty = field("kty")?.ok_or("`kty` is missing")?;
    let crv = field("crv")?;
    let (alg, material) = match (kty, crv) {
        ("RSA", _) => (Alg::Rs256, rsa_key(&bytes(jwk, "n")?, &bytes(jwk, "e")?)?),
        ("EC", Some("P-256")) => (Alg::Es256, ec_key(&bytes(jwk, "x")?, &bytes(jwk, "y")?)?),
        ("OKP", Some("Ed25519")) => (Alg::EdDsa, ed_key(&bytes(jwk, "x")?)?),
        ("EC" | "OKP", crv) => {
            return Err(format!(
                "unsupported curve {crv:?} (expected \"P-256\" for EC, \"Ed25519\" for OKP)"
            ));
        }
        (kty, _) => return Err(format!("unsupported `kty` {kty:?}")),
    };
    if let Some(named) = field("alg")?
        && Alg::parse(named) != Some(alg)
    {
        return Err(format!("`alg` {named:?} does not fit a {kty} key"));
    }
    let kid = field("kid")?.filter(|k| !k.is_empty()).map(str::to_string);
    Ok(Key { kid, material })
}

/// The usable keys of a JWK Set document, and why each other key was skipped.
pub fn parse_set(body: &[u8]) -> Result<(Vec<Key>, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err("no `keys` array".into());
    };
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        let parsed = match jwk {
            Value::Object(jwk) => parse(jwk),
            _ => Err("not an object".into()),
        };
        match parsed {
            Ok(key) => usable.push(key),
            Err(why) => skipped.push(format!("keys[{i}]: {why}")),
        }
    }
    Ok((usable, skipped))
}

/// A base64url member (padding tolerated, as some servers add it).
fn bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{name}` is missing"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("`{name}` is not base64url"))
}

fn rsa_key(n: &[u8], e: &[u8]) -> Result<KeyMaterial, String> {
    let key = RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
        .map_err(|e| format!("not a valid RSA public key ({e})"))?;
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key is {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(KeyMaterial::Rs256(VerifyingKey::new(key)))
}

fn ec_key(x: &[u8], y: &[u8]) -> Result<KeyMaterial, String> {
    if x.len() != 32 || y.len() != 32 {
        return Err("P-256 `x` and `y` must be 32 bytes each".into());
    }
    // SEC1 uncompressed point: 0x04 || x || y.
    let mut point = Vec::with_capacity(65);
    point.push(4);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .map(KeyMaterial::Es256)
        .map_err(|_| "not a point on P-256".into())
}

fn ed_key(x: &[u8]) -> Result<KeyMaterial, String> {
    let x: &[u8; 32] = x.try_into().map_err(|_| "Ed25519 `x` must be 32 bytes")?;
    ed25519_dalek::VerifyingKey::from_bytes(x)
        .map(KeyMaterial::EdDsa)
        .map_err(|_| "not a valid Ed25519 public key".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::{ec_jwk, ed_jwk};
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_each_key_type() {
        let ec = parse(&obj(ec_jwk(Some("e1")))).unwrap();
        assert_eq!((ec.kid.as_deref(), ec.alg()), (Some("e1"), Alg::Es256));
        let ed = parse(&obj(ed_jwk(None))).unwrap();
        assert_eq!((ed.kid.as_deref(), ed.alg()), (None, Alg::EdDsa));
        let rsa = parse(&obj(crate::jwt::tests::rsa_jwk())).unwrap();
        assert_eq!(rsa.alg(), Alg::Rs256);
    }

    #[test]
    fn a_set_keeps_usable_keys_and_says_why_it_skipped_the_rest() {
        let mut wrong_alg = ec_jwk(Some("a"));
        wrong_alg["alg"] = json!("ES384");
        let mut enc = ec_jwk(Some("b"));
        enc["use"] = json!("enc");
        let doc = json!({"keys": [
            ec_jwk(Some("ok")),
            wrong_alg,
            enc,
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "X25519", "x": "AA"},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            ed_jwk(Some("ed")),
            "nonsense",
        ]});
        let (keys, skipped) = parse_set(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["ok", "ed"]);
        assert_eq!(skipped.len(), 7, "{skipped:?}");
        assert!(skipped[0].contains("does not fit"), "{skipped:?}");
        assert!(skipped[1].contains("not \"sig\""), "{skipped:?}");
        assert!(parse_set(b"{}").is_err());
        assert!(parse_set(b"<html>").is_err());
    }

    #[test]
    fn refuses_private_keys_and_points_off_the_curve() {
        let mut private = ed_jwk(None);
        private["d"] = json!("AAAA");
        assert!(parse(&obj(private)).err().unwrap().contains("private key"));
        let mut off = ec_jwk(None);
        off["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(parse(&obj(off)).err().unwrap().contains("not a point"));
    }
}
