//! Compact-JWS verification and claim checks. Pure (no host calls, time is a
//! parameter) so it runs in native unit tests.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier as _;
use serde_json::{Map, Value};
use sha2::Sha256;

/// The signature algorithms this plugin accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Rs256,
    /// ECDSA on P-256 with SHA-256 (RFC 7518 §3.4).
    Es256,
    /// Ed25519 (RFC 8037 §3.1).
    EdDsa,
}

impl Alg {
    /// Case-sensitive, as in RFC 7518; anything else (including `none`) is refused.
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }
}

/// Key material, ready to verify (the HMAC key schedule is done once).
#[derive(Clone)]
pub enum KeyMaterial {
    Hs256(Hmac<Sha256>),
    Rs256(VerifyingKey<Sha256>),
    Es256(p256::ecdsa::VerifyingKey),
    EdDsa(ed25519_dalek::VerifyingKey),
}

/// One configured key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub material: KeyMaterial,
}

impl Key {
    pub fn alg(&self) -> Alg {
        match self.material {
            KeyMaterial::Hs256(_) => Alg::Hs256,
            KeyMaterial::Rs256(_) => Alg::Rs256,
            KeyMaterial::Es256(_) => Alg::Es256,
            KeyMaterial::EdDsa(_) => Alg::EdDsa,
        }
    }

    fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            KeyMaterial::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(signing_input);
                // `verify_slice` compares in constant time.
                mac.verify_slice(signature).is_ok()
            }
            KeyMaterial::Rs256(key) => Signature::try_from(signature)
                .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            // JWS carries `r || s`, 32 bytes each (RFC 7518 §3.4), not DER.
            KeyMaterial::Es256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            // Strict: no small-order keys, no non-canonical signatures.
            KeyMaterial::EdDsa(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(signing_input, &sig).is_ok()),
        }
    }
}

/// Why a request was refused. `reason()` is what the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    BadSignature,
    UnknownKey,
    AlgMismatch,
    MissingExp,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::BadSignature => "bad signature",
            Failure::UnknownKey => "unknown key",
            Failure::AlgMismatch => "alg mismatch",
            Failure::MissingExp => "missing exp",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not yet valid",
            Failure::WrongIssuer => "wrong issuer",
            Failure::WrongAudience => "wrong audience",
        }
    }
}

/// Verifies tokens against the configured keys and claim rules.
#[derive(Clone)]
pub struct Verifier {
    pub keys: Vec<Key>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
    pub require_exp: bool,
}

impl Verifier {
    /// Checks `token` at time `now` (Unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Map<String, Value>, Failure> {
        self.verify_with(token, now, &[])
    }

    /// [`Verifier::verify`] with `more` keys (a fetched JWKS) beside the configured ones.
    pub fn verify_with(
        &self,
        token: &str,
        now: u64,
        more: &[Key],
    ) -> Result<Map<String, Value>, Failure> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed);
        };
        let header = decode_object(header_b64)?;
        let payload = b64(payload_b64)?;
        let signature = b64(sig_b64)?;

        // Extensions we don't understand must make the token invalid (RFC 7515 §4.1.11).
        if header.contains_key("crit") {
            return Err(Failure::Malformed);
        }
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => Alg::parse(alg).ok_or(Failure::AlgMismatch)?,
            _ => return Err(Failure::Malformed),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(Failure::Malformed),
        };

        // The key decides the algorithm, never the token: an HS256 token is
        // never checked against an RS256 key (key-confusion attack).
        let mut usable = candidates(self.keys.iter().chain(more), kid)?;
        usable.retain(|k| k.alg() == alg);
        if usable.is_empty() {
            return Err(Failure::AlgMismatch);
        }
        let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        if !usable.iter().any(|k| k.verify(signing_input, &signature)) {
            return Err(Failure::BadSignature);
        }

        let claims = match serde_json::from_slice(&payload) {
            Ok(Value::Object(claims)) => claims,
            _ => return Err(Failure::Malformed),
        };
        self.check_claims(&claims, now)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), Failure> {
        // f64: NumericDate may be fractional; u64 seconds fit exactly far past any real date.
        let now = now as f64;
        let leeway = self.leeway_secs as f64;
        match numeric_date(claims, "exp")? {
            Some(exp) if now - leeway >= exp => return Err(Failure::Expired),
            None if self.require_exp => return Err(Failure::MissingExp),
            _ => {}
        }
        for name in ["nbf", "iat"] {
            if numeric_date(claims, name)?.is_some_and(|t| t > now + leeway) {
                return Err(Failure::NotYetValid);
            }
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(Failure::WrongIssuer);
        }
        if let Some(audience) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !ok {
                return Err(Failure::WrongAudience);
            }
        }
        Ok(())
    }
}

/// Keys the token may be signed with: the ones named by `kid`, else the keys
/// without a kid (they accept any kid).
fn candidates<'k>(
    keys: impl Iterator<Item = &'k Key> + Clone,
    kid: Option<&str>,
) -> Result<Vec<&'k Key>, Failure> {
    let Some(kid) = kid else {
        return Ok(keys.collect());
    };
    let named: Vec<&Key> = keys
        .clone()
        .filter(|k| k.kid.as_deref() == Some(kid))
        .collect();
    if !named.is_empty() {
        return Ok(named);
    }
    let wildcards: Vec<&Key> = keys.filter(|k| k.kid.is_none()).collect();
    if wildcards.is_empty() {
        return Err(Failure::UnknownKey);
    }
    Ok(wildcards)
}

/// The `kid` of a token's header, if it decodes and has a string one; the
/// full checks come later, in [`Verifier::verify`].
pub fn peek_kid(token: &str) -> Option<String> {
    let header = decode_object(token.split('.').next()?).ok()?;
    match header.get("kid")? {
        Value::String(kid) => Some(kid.clone()),
        _ => None,
    }
}

/// Strict base64url: no padding, no stray bits, no whitespace.
fn b64(part: &str) -> Result<Vec<u8>, Failure> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| Failure::Malformed)
}

fn decode_object(part: &str) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice(&b64(part)?) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Failure::Malformed),
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Failure> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(Failure::Malformed),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::RsaPrivateKey;
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rsa::signature::{SignatureEncoding, Signer};
    use serde_json::json;

    pub const PRIVATE_PEM: &str = include_str!("../testdata/rs256-private.pem");
    pub const PUBLIC_PEM: &str = include_str!("../testdata/rs256-public.pem");
    const OTHER_PRIVATE_PEM: &str = include_str!("../testdata/other-private.pem");
    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", enc(header), enc(claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    pub fn sign_rs256(private_pem: &str, header: &Value, claims: &Value) -> String {
        let key = RsaPrivateKey::from_pkcs8_pem(private_pem).unwrap();
        let input = format!("{}.{}", enc(header), enc(claims));
        let sig = SigningKey::<Sha256>::new(key).sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// A fixed P-256 key (seed byte repeated: a valid scalar), so no RNG.
    pub fn es_signer(seed: u8) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }

    /// A fixed Ed25519 key from its seed.
    pub fn ed_signer(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    pub fn sign_es256(key: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", enc(header), enc(claims));
        let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    pub fn sign_eddsa(key: &ed25519_dalek::SigningKey, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", enc(header), enc(claims));
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// The public JWK of `es_signer(1)`.
    pub fn ec_jwk(kid: Option<&str>) -> Value {
        let point = es_signer(1).verifying_key().to_encoded_point(false);
        let mut jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        });
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// The public JWK of `ed_signer(2)`.
    pub fn ed_jwk(kid: Option<&str>) -> Value {
        let x = ed_signer(2).verifying_key().to_bytes();
        let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(x)});
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// The test RSA public key as a JWK.
    pub fn rsa_jwk() -> Value {
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPublicKey::from_public_key_pem(PUBLIC_PEM).unwrap();
        json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        })
    }

    fn jwk_key(jwk: Value) -> Key {
        crate::jwk::parse(jwk.as_object().unwrap()).unwrap()
    }

    #[test]
    fn accepts_valid_es256_and_eddsa() {
        let v = verifier(vec![jwk_key(ec_jwk(Some("e"))), jwk_key(ed_jwk(Some("d")))]);
        let es = sign_es256(
            &es_signer(1),
            &json!({"alg": "ES256", "kid": "e"}),
            &valid(),
        );
        let ed = sign_eddsa(
            &ed_signer(2),
            &json!({"alg": "EdDSA", "kid": "d"}),
            &valid(),
        );
        for token in [es, ed] {
            assert_eq!(v.verify(&token, NOW).unwrap()["sub"], "alice");
        }
        // No kid: every key of the token's alg is tried.
        let es = sign_es256(&es_signer(1), &json!({"alg": "ES256"}), &valid());
        assert!(v.verify(&es, NOW).is_ok());
    }

    #[test]
    fn rejects_es256_and_eddsa_signed_by_other_keys() {
        let v = verifier(vec![jwk_key(ec_jwk(None)), jwk_key(ed_jwk(None))]);
        let es = sign_es256(&es_signer(9), &json!({"alg": "ES256"}), &valid());
        let ed = sign_eddsa(&ed_signer(9), &json!({"alg": "EdDSA"}), &valid());
        for token in [es, ed] {
            assert_eq!(v.verify(&token, NOW), Err(Failure::BadSignature));
        }
        // A DER-encoded or truncated ECDSA signature is not `r || s`.
        let es = sign_es256(&es_signer(1), &json!({"alg": "ES256"}), &valid());
        let (input, sig) = es.rsplit_once('.').unwrap();
        let short = URL_SAFE_NO_PAD.encode(&URL_SAFE_NO_PAD.decode(sig).unwrap()[..63]);
        assert_eq!(
            v.verify(&format!("{input}.{short}"), NOW),
            Err(Failure::BadSignature)
        );
    }

    #[test]
    fn the_key_decides_between_es256_and_eddsa() {
        let v = verifier(vec![jwk_key(ec_jwk(Some("k")))]);
        let ed = sign_eddsa(
            &ed_signer(2),
            &json!({"alg": "EdDSA", "kid": "k"}),
            &valid(),
        );
        assert_eq!(v.verify(&ed, NOW), Err(Failure::AlgMismatch));
    }

    #[test]
    fn fetched_keys_join_the_configured_ones() {
        let v = verifier(vec![hs_key(Some("h"), SECRET)]);
        let more = [jwk_key(ed_jwk(Some("d")))];
        let ed = sign_eddsa(
            &ed_signer(2),
            &json!({"alg": "EdDSA", "kid": "d"}),
            &valid(),
        );
        assert_eq!(v.verify(&ed, NOW), Err(Failure::UnknownKey));
        assert!(v.verify_with(&ed, NOW, &more).is_ok());
        assert_eq!(peek_kid(&ed).as_deref(), Some("d"));
        assert_eq!(peek_kid(&hs(valid())), None);
        assert_eq!(peek_kid("garbage"), None);
    }

    fn hs_key(kid: Option<&str>, secret: &[u8]) -> Key {
        Key {
            kid: kid.map(String::from),
            material: KeyMaterial::Hs256(Hmac::new_from_slice(secret).unwrap()),
        }
    }

    fn rs_key(kid: Option<&str>) -> Key {
        let key = rsa::RsaPublicKey::from_public_key_pem(PUBLIC_PEM).unwrap();
        Key {
            kid: kid.map(String::from),
            material: KeyMaterial::Rs256(VerifyingKey::new(key)),
        }
    }

    fn verifier(keys: Vec<Key>) -> Verifier {
        Verifier {
            keys,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            require_exp: true,
        }
    }

    fn hs(claims: Value) -> String {
        sign_hs256(SECRET, &json!({"alg": "HS256", "typ": "JWT"}), &claims)
    }

    fn rs(claims: Value) -> String {
        sign_rs256(PRIVATE_PEM, &json!({"alg": "RS256"}), &claims)
    }

    fn valid() -> Value {
        json!({"sub": "alice", "exp": NOW + 60})
    }

    #[test]
    fn accepts_valid_hs256() {
        let v = verifier(vec![hs_key(None, SECRET)]);
        let claims = v.verify(&hs(valid()), NOW).unwrap();
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn accepts_valid_rs256() {
        let v = verifier(vec![rs_key(None)]);
        let claims = v.verify(&rs(valid()), NOW).unwrap();
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn rejects_wrong_hs256_secret() {
        let v = verifier(vec![hs_key(None, b"another-secret-another-secret-xx")]);
        assert_eq!(v.verify(&hs(valid()), NOW), Err(Failure::BadSignature));
    }

    #[test]
    fn rejects_rs256_signed_by_another_key() {
        let v = verifier(vec![rs_key(None)]);
        let token = sign_rs256(OTHER_PRIVATE_PEM, &json!({"alg": "RS256"}), &valid());
        assert_eq!(v.verify(&token, NOW), Err(Failure::BadSignature));
    }

    #[test]
    fn rejects_tampered_payload_and_signature() {
        let v = verifier(vec![hs_key(None, SECRET), rs_key(Some("r"))]);
        for token in [hs(valid()), rs(valid())] {
            let (input, sig) = token.rsplit_once('.').unwrap();
            let (header, _) = input.split_once('.').unwrap();
            let forged = enc(&json!({"sub": "mallory", "exp": NOW + 60}));
            assert_eq!(
                v.verify(&format!("{header}.{forged}.{sig}"), NOW),
                Err(Failure::BadSignature)
            );
            let mut bad = sig.as_bytes().to_vec();
            bad[0] = if bad[0] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert_eq!(
                v.verify(&format!("{input}.{bad}"), NOW),
                Err(Failure::BadSignature)
            );
            assert_eq!(
                v.verify(&format!("{input}."), NOW),
                Err(Failure::BadSignature)
            );
        }
    }

    #[test]
    fn expiry_and_leeway() {
        let v = verifier(vec![hs_key(None, SECRET)]);
        let at = |exp: u64| v.verify(&hs(json!({"exp": exp})), NOW);
        assert_eq!(at(NOW - 100), Err(Failure::Expired));
        assert_eq!(at(NOW - 30), Err(Failure::Expired));
        assert!(at(NOW - 29).is_ok(), "within the 30 s leeway");
        assert!(at(NOW).is_ok());

        let strict = Verifier {
            leeway_secs: 0,
            ..v.clone()
        };
        let at = |exp: u64| strict.verify(&hs(json!({"exp": exp})), NOW);
        assert_eq!(at(NOW), Err(Failure::Expired), "exp must be after now");
        assert!(at(NOW + 1).is_ok());
        // Fractional NumericDate.
        let token = hs(json!({"exp": NOW as f64 + 0.5}));
        assert!(strict.verify(&token, NOW).is_ok());
    }

    #[test]
    fn exp_requirement() {
        let v = verifier(vec![hs_key(None, SECRET)]);
        let token = hs(json!({"sub": "alice"}));
        assert_eq!(v.verify(&token, NOW), Err(Failure::MissingExp));
        let lax = Verifier {
            require_exp: false,
            ..v.clone()
        };
        assert!(lax.verify(&token, NOW).is_ok());
        let bad = hs(json!({"exp": "tomorrow"}));
        assert_eq!(lax.verify(&bad, NOW), Err(Failure::Malformed));
    }

    #[test]
    fn nbf_and_iat_with_leeway() {
        let v = verifier(vec![hs_key(None, SECRET)]);
        let exp = NOW + 600;
        for claim in ["nbf", "iat"] {
            let at = |t: u64| v.verify(&hs(json!({"exp": exp, claim: t})), NOW);
            assert_eq!(at(NOW + 31), Err(Failure::NotYetValid), "{claim}");
            assert!(at(NOW + 30).is_ok(), "{claim} within leeway");
            assert!(at(NOW - 1000).is_ok(), "{claim} in the past");
        }
    }

    #[test]
    fn issuer_and_audience() {
        let v = Verifier {
            issuer: Some("https://issuer.example".into()),
            audience: Some("weir-demo".into()),
            ..verifier(vec![hs_key(None, SECRET)])
        };
        let check = |claims: Value| v.verify(&hs(claims), NOW);
        let exp = NOW + 60;
        let iss = "https://issuer.example";
        assert!(check(json!({"exp": exp, "iss": iss, "aud": "weir-demo"})).is_ok());
        assert!(check(json!({"exp": exp, "iss": iss, "aud": ["x", "weir-demo"]})).is_ok());
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://evil.example", "aud": "weir-demo"})),
            Err(Failure::WrongIssuer)
        );
        assert_eq!(
            check(json!({"exp": exp, "aud": "weir-demo"})),
            Err(Failure::WrongIssuer)
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": iss, "aud": "other"})),
            Err(Failure::WrongAudience)
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": iss, "aud": ["x", "y"]})),
            Err(Failure::WrongAudience)
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": iss})),
            Err(Failure::WrongAudience)
        );
    }

    #[test]
    fn rejects_alg_none() {
        let v = verifier(vec![hs_key(None, SECRET), rs_key(None)]);
        for alg in ["none", "None", "hs256", "HS512", "ES256"] {
            let token = format!("{}.{}.", enc(&json!({"alg": alg})), enc(&valid()));
            assert_eq!(v.verify(&token, NOW), Err(Failure::AlgMismatch), "{alg}");
        }
    }

    #[test]
    fn token_cannot_pick_hs256_for_rs256_key() {
        // Classic key confusion: HMAC keyed with the RSA public key's bytes.
        let v = verifier(vec![rs_key(Some("k1"))]);
        let header = json!({"alg": "HS256", "kid": "k1"});
        let token = sign_hs256(PUBLIC_PEM.as_bytes(), &header, &valid());
        assert_eq!(v.verify(&token, NOW), Err(Failure::AlgMismatch));
        let token = sign_hs256(PUBLIC_PEM.as_bytes(), &json!({"alg": "HS256"}), &valid());
        assert_eq!(v.verify(&token, NOW), Err(Failure::AlgMismatch));
        // And the other way round.
        let v = verifier(vec![hs_key(None, SECRET)]);
        assert_eq!(v.verify(&rs(valid()), NOW), Err(Failure::AlgMismatch));
    }

    #[test]
    fn kid_selection() {
        let v = verifier(vec![
            hs_key(Some("h1"), SECRET),
            hs_key(Some("h2"), b"second-secret-second-secret-0123"),
            rs_key(Some("r1")),
        ]);
        let with_kid = |kid: &str, secret: &[u8]| {
            sign_hs256(secret, &json!({"alg": "HS256", "kid": kid}), &valid())
        };
        assert!(v.verify(&with_kid("h1", SECRET), NOW).is_ok());
        assert_eq!(
            v.verify(&with_kid("h2", SECRET), NOW),
            Err(Failure::BadSignature)
        );
        assert_eq!(
            v.verify(&with_kid("nope", SECRET), NOW),
            Err(Failure::UnknownKey)
        );
        assert_eq!(
            v.verify(&with_kid("r1", SECRET), NOW),
            Err(Failure::AlgMismatch)
        );
        let rs_token = sign_rs256(PRIVATE_PEM, &json!({"alg": "RS256", "kid": "r1"}), &valid());
        assert!(v.verify(&rs_token, NOW).is_ok());
        // No kid in the token: every key of the token's alg is tried.
        assert!(v.verify(&hs(valid()), NOW).is_ok());
        assert!(v.verify(&rs(valid()), NOW).is_ok());

        // A key without a kid accepts tokens whose kid is unknown.
        let v = verifier(vec![rs_key(Some("r1")), hs_key(None, SECRET)]);
        assert!(v.verify(&with_kid("rotated", SECRET), NOW).is_ok());
        // ...but a kid that names a key selects only that key.
        assert_eq!(
            v.verify(&with_kid("r1", SECRET), NOW),
            Err(Failure::AlgMismatch)
        );
    }

    #[test]
    fn rejects_malformed() {
        let v = verifier(vec![hs_key(None, SECRET)]);
        let good = hs(valid());
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let hs_header = json!({"alg": "HS256"});
        let cases = [
            String::new(),
            "abc".to_string(),
            format!("{h}.{p}"),
            format!("{good}.x"),
            format!("{h}.{p}.{s}="),
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}.{s} "),
            format!("{h}.{p}.!!"),
            format!("{}.{p}.{s}", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.{p}.{s}", enc(&json!(["HS256"]))),
            format!("{}.{p}.{s}", enc(&json!({"alg": 256}))),
            format!("{}.{p}.{s}", enc(&json!({"typ": "JWT"}))),
            format!("{}.{p}.{s}", enc(&json!({"alg": "HS256", "kid": 1}))),
            sign_hs256(SECRET, &json!({"alg": "HS256", "crit": ["exp"]}), &valid()),
            sign_hs256(SECRET, &hs_header, &json!(["not", "an", "object"])),
        ];
        for token in cases {
            assert_eq!(v.verify(&token, NOW), Err(Failure::Malformed), "{token:?}");
        }
        // A non-JSON payload with a valid signature.
        let input = format!("{}.{}", enc(&hs_header), URL_SAFE_NO_PAD.encode("{oops"));
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        let token = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(v.verify(&token, NOW), Err(Failure::Malformed));
    }
}
