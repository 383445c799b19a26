//! The manifest config and its validation into a ready [`Settings`].

use std::collections::BTreeMap;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::VerifyingKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::Value;

use crate::jwk::MIN_RSA_BITS;
use crate::jwks::{Jwks, JwksConfig};
use crate::jwt::{Alg, Key, KeyMaterial, Verifier};
/// RFC 7518 §3.2: an HS256 key should be at least as long as the hash.
const MIN_HMAC_BYTES: usize = 32;

/// Headers a claim must never be written to: framing, routing and hop-by-hop.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default = "yes")]
    require_exp: bool,
    #[serde(default = "yes")]
    forward_token: bool,
    // Defaulted so that "no keys" gets our own clearer message.
    #[serde(default)]
    keys: Vec<KeyConfig>,
    #[serde(default)]
    jwks: Option<JwksConfig>,
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    #[serde(default)]
    kid: Option<String>,
    // A string, not an enum, so a bad value gets a message naming the key.
    alg: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_base64: Option<String>,
    #[serde(default)]
    public_key_pem: Option<String>,
    #[serde(default)]
    jwk: Option<serde_json::Map<String, Value>>,
}

fn default_header() -> String {
    "authorization".into()
}
fn default_leeway() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// The validated config.
pub struct Settings {
    /// Lower-case name of the header carrying the token.
    pub header: String,
    pub forward_token: bool,
    /// `(claim, lower-case header)` pairs.
    pub claims_to_headers: Vec<(String, String)>,
    pub verifier: Verifier,
    /// Keys fetched from a JWKS URL, if configured.
    pub jwks: Option<Jwks>,
    /// Non-fatal advice for the operator, logged at load.
    pub warnings: Vec<String>,
}

/// Decodes and validates the route's config. Errors name the bad field.
pub fn compile(raw: Value) -> Result<Settings, String> {
    let config: Config =
        serde_path_to_error::deserialize(raw).map_err(|e| match e.path().to_string() {
            path if path == "." => e.inner().to_string(),
            path => format!("{path}: {}", e.inner()),
        })?;

    let header = header_name(&config.header).map_err(|e| format!("header: {e}"))?;
    for (field, value) in [("issuer", &config.issuer), ("audience", &config.audience)] {
        if value.as_deref() == Some("") {
            return Err(format!(
                "{field}: must not be empty (leave it out to accept any)"
            ));
        }
    }

    if config.keys.is_empty() && config.jwks.is_none() {
        return Err("keys: at least one key is required (or a `jwks` source)".into());
    }
    let jwks = config
        .jwks
        .map(Jwks::new)
        .transpose()
        .map_err(|e| format!("jwks.{e}"))?;
    let mut warnings = Vec::new();
    let mut keys: Vec<Key> = Vec::with_capacity(config.keys.len());
    for (i, key) in config.keys.into_iter().enumerate() {
        let key = compile_key(key, &mut warnings).map_err(|e| format!("keys[{i}].{e}"))?;
        if let Some(kid) = &key.kid
            && keys.iter().any(|k| k.kid.as_ref() == Some(kid))
        {
            return Err(format!("keys[{i}].kid: duplicate kid {kid:?}"));
        }
        keys.push(key);
    }

    let mut claims_to_headers: Vec<(String, String)> = Vec::new();
    for (claim, target) in config.claims_to_headers {
        let field = format!("claims_to_headers.{claim}");
        if claim.is_empty() {
            return Err("claims_to_headers: claim names must not be empty".into());
        }
        let target = header_name(&target).map_err(|e| format!("{field}: {e}"))?;
        if RESERVED_HEADERS.contains(&target.as_str()) {
            return Err(format!("{field}: {target:?} may not be set from a claim"));
        }
        if target == header {
            return Err(format!(
                "{field}: {target:?} is the header that carries the token"
            ));
        }
        if let Some((other, _)) = claims_to_headers.iter().find(|(_, h)| *h == target) {
            return Err(format!(
                "{field}: header {target:?} is already set from claim {other:?}"
            ));
        }
        claims_to_headers.push((claim, target));
    }

    Ok(Settings {
        header,
        forward_token: config.forward_token,
        claims_to_headers,
        verifier: Verifier {
            keys,
            issuer: config.issuer,
            audience: config.audience,
            leeway_secs: config.leeway_secs,
            require_exp: config.require_exp,
        },
        jwks,
        warnings,
    })
}

/// Errors start with the field name; the caller prefixes `keys[i].`.
fn compile_key(key: KeyConfig, warnings: &mut Vec<String>) -> Result<Key, String> {
    if key.kid.as_deref() == Some("") {
        return Err("kid: must not be empty (leave it out to match any kid)".into());
    }
    let alg = Alg::parse(&key.alg).ok_or_else(|| {
        format!(
            "alg: unsupported {:?} (expected \"HS256\", \"RS256\", \"ES256\" or \"EdDSA\")",
            key.alg
        )
    })?;
    let has_secret = key.secret.is_some() || key.secret_base64.is_some();
    let mut kid = key.kid;
    let material = match alg {
        Alg::Hs256 => {
            if key.public_key_pem.is_some() || key.jwk.is_some() {
                return Err("public_key_pem: not used with HS256 (use secret)".into());
            }
            let secret = match (key.secret, key.secret_base64) {
                (Some(s), None) => s.into_bytes(),
                (None, Some(b)) => decode_base64(&b)
                    .ok_or("secret_base64: not valid base64 (standard or URL-safe)")?,
                (None, None) => return Err("secret: HS256 needs secret or secret_base64".into()),
                (Some(_), Some(_)) => {
                    return Err("secret: set only one of secret and secret_base64".into());
                }
            };
            if secret.is_empty() {
                return Err("secret: must not be empty".into());
            }
            if secret.len() < MIN_HMAC_BYTES {
                warnings.push(format!(
                    "HS256 key {} is {} bytes; at least {MIN_HMAC_BYTES} are recommended",
                    kid.as_deref().unwrap_or("(no kid)"),
                    secret.len()
                ));
            }
            // HMAC accepts keys of any length, so this cannot fail.
            let mac = Hmac::new_from_slice(&secret).map_err(|e| format!("secret: {e}"))?;
            KeyMaterial::Hs256(mac)
        }
        Alg::Rs256 if key.jwk.is_none() => {
            if has_secret {
                return Err("secret: not used with RS256 (use public_key_pem or jwk)".into());
            }
            let pem = key
                .public_key_pem
                .ok_or("public_key_pem: RS256 needs a public key (public_key_pem or jwk)")?;
            let public = parse_public_key(&pem).map_err(|e| format!("public_key_pem: {e}"))?;
            KeyMaterial::Rs256(VerifyingKey::new(public))
        }
        Alg::Rs256 | Alg::Es256 | Alg::EdDsa => {
            if has_secret {
                return Err(format!("secret: not used with {} (use jwk)", key.alg));
            }
            if key.public_key_pem.is_some() {
                return Err(format!(
                    "public_key_pem: {} keys are given as `jwk` here",
                    key.alg
                ));
            }
            let jwk = key
                .jwk
                .ok_or_else(|| format!("jwk: {} needs a public key as a JWK", key.alg))?;
            let parsed = crate::jwk::parse(&jwk).map_err(|e| format!("jwk: {e}"))?;
            if parsed.alg() != alg {
                return Err(format!("jwk: not a {} key", key.alg));
            }
            kid = kid.or(parsed.kid);
            parsed.material
        }
    };
    Ok(Key { kid, material })
}

/// Accepts SPKI (`PUBLIC KEY`) and PKCS#1 (`RSA PUBLIC KEY`) PEM.
fn parse_public_key(pem: &str) -> Result<RsaPublicKey, String> {
    // TOML multi-line strings are often indented; PEM parsing is not forgiving.
    let pem: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed = if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        RsaPublicKey::from_pkcs1_pem(&pem).map_err(|e| e.to_string())
    } else if pem.starts_with("-----BEGIN PUBLIC KEY-----") {
        RsaPublicKey::from_public_key_pem(&pem).map_err(|e| e.to_string())
    } else if pem.contains("PRIVATE KEY-----") {
        return Err("this is a private key; configure the public key instead".into());
    } else {
        Err("expected a PEM \"PUBLIC KEY\" or \"RSA PUBLIC KEY\" block".into())
    };
    let key = parsed.map_err(|e| format!("not a valid RSA public key ({e})"))?;
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key is {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(key)
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let s = s.trim();
    [alphabet::STANDARD, alphabet::URL_SAFE]
        .iter()
        .find_map(|a| GeneralPurpose::new(a, config).decode(s).ok())
}

/// Validates an HTTP field name (RFC 9110 token) and lower-cases it.
fn header_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::{PRIVATE_PEM, PUBLIC_PEM, sign_hs256, sign_rs256};
    use serde_json::json;

    const PKCS1_PEM: &str = include_str!("../testdata/rs256-public-pkcs1.pem");
    const SMALL_PEM: &str = include_str!("../testdata/rsa1024-public.pem");

    fn err(config: Value) -> String {
        match compile(config) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e,
        }
    }

    fn hs_config() -> Value {
        json!({"keys": [{"alg": "HS256", "secret": "0123456789abcdef0123456789abcdef"}]})
    }

    #[test]
    fn defaults() {
        let s = compile(hs_config()).unwrap();
        assert_eq!(s.header, "authorization");
        assert!(s.forward_token);
        assert!(s.claims_to_headers.is_empty());
        assert!(s.warnings.is_empty());
        let v = &s.verifier;
        assert_eq!((v.leeway_secs, v.require_exp), (30, true));
        assert_eq!((v.issuer.as_deref(), v.audience.as_deref()), (None, None));
    }

    #[test]
    fn full_config() {
        let s = compile(json!({
            "header": "X-Token",
            "issuer": "https://issuer.example",
            "audience": "weir-demo",
            "leeway_secs": 5,
            "require_exp": false,
            "forward_token": false,
            "keys": [
                {"kid": "h", "alg": "HS256", "secret_base64": "c2hvcnQ="},
                {"kid": "r", "alg": "RS256", "public_key_pem": PUBLIC_PEM},
                {"alg": "RS256", "public_key_pem": PKCS1_PEM},
            ],
            "claims_to_headers": {"sub": "X-User", "scope": "x-scope"},
        }))
        .unwrap();
        assert_eq!(s.header, "x-token");
        assert!(!s.forward_token);
        assert_eq!(
            s.claims_to_headers,
            [
                ("scope".into(), "x-scope".into()),
                ("sub".into(), "x-user".into())
            ]
        );
        assert_eq!(s.verifier.keys.len(), 3);
        assert_eq!(s.warnings.len(), 1, "short secret warns: {:?}", s.warnings);
        let v = &s.verifier;
        assert_eq!((v.leeway_secs, v.require_exp), (5, false));
    }

    #[test]
    fn pem_in_both_formats_verifies() {
        let now = 1_700_000_000;
        let claims = json!({"sub": "a", "exp": now + 10});
        let token = sign_rs256(PRIVATE_PEM, &json!({"alg": "RS256"}), &claims);
        // Indented, as in a TOML multi-line string.
        let indented: String = PKCS1_PEM.lines().map(|l| format!("    {l}\n")).collect();
        for pem in [PUBLIC_PEM, PKCS1_PEM, indented.as_str()] {
            let s = compile(json!({"keys": [{"alg": "RS256", "public_key_pem": pem}]})).unwrap();
            assert!(s.verifier.verify(&token, now).is_ok());
        }
    }

    #[test]
    fn secret_base64_is_the_raw_key() {
        let now = 1_700_000_000;
        let raw = b"\x00\xffbinary-secret-binary-secret-0123";
        let token = sign_hs256(raw, &json!({"alg": "HS256"}), &json!({"exp": now + 10}));
        for b64 in [
            "AP9iaW5hcnktc2VjcmV0LWJpbmFyeS1zZWNyZXQtMDEyMw==",
            "AP9iaW5hcnktc2VjcmV0LWJpbmFyeS1zZWNyZXQtMDEyMw",
            " AP9iaW5hcnktc2VjcmV0LWJpbmFyeS1zZWNyZXQtMDEyMw\n",
        ] {
            let s = compile(json!({"keys": [{"alg": "HS256", "secret_base64": b64}]})).unwrap();
            assert!(s.verifier.verify(&token, now).is_ok());
        }
        let url_safe = json!({"keys": [{"alg": "HS256", "secret_base64": "_-_-"}]});
        assert!(compile(url_safe).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({}), "keys: at least one key is required"),
            (json!({"keys": []}), "keys: at least one key"),
            (json!({"keyz": []}), "keyz: unknown field `keyz`"),
            (
                json!({"leeway_secs": "30", "keys": []}),
                "leeway_secs: invalid type",
            ),
            (
                json!({"keys": [{"alg": "HS256", "secret": "s", "x": 1}]}),
                "keys[0].x: unknown field `x`",
            ),
            (
                json!({"keys": [{"secret": "s"}]}),
                "keys[0]: missing field `alg`",
            ),
            (
                json!({"keys": [{"alg": "none", "secret": "s"}]}),
                "keys[0].alg: unsupported \"none\"",
            ),
            (
                json!({"keys": [{"alg": "ES384", "secret": "s"}]}),
                "keys[0].alg: unsupported",
            ),
            (
                json!({"keys": [{"alg": "HS256", "secret": ""}]}),
                "keys[0].secret: must not be empty",
            ),
            (
                json!({"keys": [{"alg": "HS256"}]}),
                "keys[0].secret: HS256 needs",
            ),
            (
                json!({"keys": [{"alg": "HS256", "secret": "a", "secret_base64": "YQ"}]}),
                "keys[0].secret: set only one",
            ),
            (
                json!({"keys": [{"alg": "HS256", "secret_base64": "***"}]}),
                "keys[0].secret_base64: not valid base64",
            ),
            (
                json!({"keys": [{"alg": "HS256", "secret": "s", "public_key_pem": PUBLIC_PEM}]}),
                "keys[0].public_key_pem: not used with HS256",
            ),
            (
                json!({"keys": [{"alg": "RS256"}]}),
                "keys[0].public_key_pem: RS256 needs",
            ),
            (
                json!({"keys": [{"alg": "RS256", "secret": "s", "public_key_pem": PUBLIC_PEM}]}),
                "keys[0].secret: not used with RS256",
            ),
            (
                json!({"keys": [{"alg": "HS256", "secret": "s"}, {"alg": "RS256", "public_key_pem": "garbage"}]}),
                "keys[1].public_key_pem: not a valid RSA public key (expected a PEM",
            ),
            (
                json!({"keys": [{"alg": "RS256", "public_key_pem": PUBLIC_PEM.replace("MII", "MIJ")}]}),
                "keys[0].public_key_pem: not a valid RSA public key (",
            ),
            (
                json!({"keys": [{"alg": "RS256", "public_key_pem": PRIVATE_PEM}]}),
                "keys[0].public_key_pem: this is a private key",
            ),
            (
                json!({"keys": [{"alg": "RS256", "public_key_pem": SMALL_PEM}]}),
                "keys[0].public_key_pem: RSA key is 1024 bits",
            ),
            (
                json!({"keys": [{"kid": "", "alg": "HS256", "secret": "s"}]}),
                "keys[0].kid: must not be empty",
            ),
            (
                json!({"keys": [{"kid": "a", "alg": "HS256", "secret": "s"}, {"kid": "a", "alg": "HS256", "secret": "t"}]}),
                "keys[1].kid: duplicate kid \"a\"",
            ),
            (
                json!({"header": "bad header", "keys": []}),
                "header: \"bad header\" is not a valid header name",
            ),
            (
                json!({"issuer": "", "keys": []}),
                "issuer: must not be empty",
            ),
            (
                json!({"audience": "", "keys": []}),
                "audience: must not be empty",
            ),
        ];
        for (config, want) in cases {
            let got = err(config);
            assert!(
                got.starts_with(want) || got.contains(want),
                "{got:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn claims_to_headers_validation() {
        let with = |map: Value| {
            let mut c = hs_config();
            c["claims_to_headers"] = map;
            c
        };
        let cases = [
            (
                json!({"sub": "x user"}),
                "claims_to_headers.sub: \"x user\" is not a valid header name",
            ),
            (
                json!({"sub": ""}),
                "claims_to_headers.sub: \"\" is not a valid header name",
            ),
            (json!({"sub": "x-user\r\n"}), "claims_to_headers.sub:"),
            (
                json!({"sub": "Host"}),
                "claims_to_headers.sub: \"host\" may not be set",
            ),
            (
                json!({"sub": "content-length"}),
                "may not be set from a claim",
            ),
            (
                json!({"sub": "Authorization"}),
                "is the header that carries the token",
            ),
            (
                json!({"a": "x-id", "b": "X-ID"}),
                "claims_to_headers.b: header \"x-id\" is already set from claim \"a\"",
            ),
            (
                json!({"": "x-id"}),
                "claims_to_headers: claim names must not be empty",
            ),
            (json!({"sub": 1}), "claims_to_headers.sub: invalid type"),
        ];
        for (map, want) in cases {
            let got = err(with(map));
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }
}
