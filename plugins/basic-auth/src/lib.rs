//! # basic-auth: HTTP Basic authentication against password hashes
//!
//! Users are listed with a bcrypt (`$2b$...`) or argon2 (`$argon2id$...`)
//! hash of their password, never the password itself. A request with
//! `Authorization: Basic ...` naming a user and the right password goes on
//! with the credentials removed, the user's name in `consumer_header`
//! (`x-consumer`) and in the request variable `consumer`; any other request
//! gets 401 with `WWW-Authenticate: Basic realm="..."`.
//!
//! Password hashes are slow on purpose. Each instance remembers, per user,
//! a SHA-256 of the last password that verified, so a client sending the
//! same credentials again costs one SHA-256, not one bcrypt.

use std::collections::HashMap;

use argon2::PasswordVerifier;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_sdk::{Action, Header, Hooks, Plugin, Request, check_header_name, reply};

/// The route's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The accepted users.
    pub users: Vec<User>,
    /// Realm announced in `WWW-Authenticate` (default `weir`).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Header set on the upstream request to the user's name (default `x-consumer`).
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
}

/// One user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user name.
    pub name: String,
    /// bcrypt (`$2a$`, `$2b$`, `$2y$`) or argon2 (`$argon2id$`, `$argon2i$`, `$argon2d$`) hash.
    pub hash: String,
}

fn default_realm() -> String {
    "weir".into()
}
fn default_consumer_header() -> String {
    "x-consumer".into()
}

/// How a password is checked.
#[derive(Debug)]
enum Hash {
    Bcrypt(String),
    Argon2(String),
}

impl Hash {
    fn parse(at: &str, h: &str) -> Result<Hash, String> {
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) {
            // Parse once now, so a broken hash fails at load, not per request.
            bcrypt::verify("", h).map_err(|e| format!("{at}: not a valid bcrypt hash ({e})"))?;
            return Ok(Hash::Bcrypt(h.to_owned()));
        }
        if h.starts_with("$argon2") {
            argon2::PasswordHash::new(h)
                .map_err(|e| format!("{at}: not a valid argon2 hash ({e})"))?;
            return Ok(Hash::Argon2(h.to_owned()));
        }
        Err(format!(
            "{at}: not a bcrypt or argon2 hash; never write passwords in clear (make one with `htpasswd -nbB user password`, or `argon2`)"
        ))
    }

    fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Argon2(h) => argon2::PasswordHash::new(h).is_ok_and(|ph| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &ph)
                    .is_ok()
            }),
        }
    }
}

/// The filter.
#[derive(Debug)]
pub struct BasicAuth {
    users: HashMap<String, Hash>,
    /// The first user's hash: unknown users are checked against it, so they take as long.
    decoy: String,
    challenge: String,
    consumer_header: String,
    /// Per user, SHA-256 of the last password that verified.
    verified: HashMap<String, [u8; 32]>,
}

/// `Basic base64(user:password)` → (user, password).
fn credentials(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl BasicAuth {
    fn check(&mut self, user: &str, password: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let Some(hash) = self.users.get(user) else {
            let _ = bcrypt::verify(password, &self.decoy);
            return false;
        };
        if self.verified.get(user) == Some(&digest) {
            return true;
        }
        let ok = hash.verify(password);
        if ok {
            self.verified.insert(user.to_owned(), digest);
        }
        ok
    }
}

impl Plugin for BasicAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.users.is_empty() {
            return Err("users: at least one user is required".into());
        }
        if config.realm.contains(['"', '\\']) || config.realm.chars().any(char::is_control) {
            return Err("realm: must not contain quotes, backslashes or control characters".into());
        }
        check_header_name(&config.consumer_header).map_err(|e| format!("consumer_header: {e}"))?;
        let mut users = HashMap::new();
        for (i, u) in config.users.iter().enumerate() {
            if u.name.is_empty() || u.name.contains(':') {
                return Err(format!(
                    "users[{i}].name: must be non-empty and without `:`"
                ));
            }
            let hash = Hash::parse(&format!("users[{i}].hash"), &u.hash)?;
            if users.insert(u.name.clone(), hash).is_some() {
                return Err(format!("users[{i}].name: {:?} is listed twice", u.name));
            }
        }
        // A bcrypt decoy of the usual cost, whatever the users' hashes are.
        let decoy = match &config.users[0].hash {
            h if h.starts_with("$2") => h.clone(),
            _ => "$2b$10$7EqJtq98hPqEX7fNZaFWoO5G3ZKM1YEd.CqPK7hRLJt3oMZfXdYvq".into(),
        };
        Ok(BasicAuth {
            users,
            decoy,
            challenge: format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm),
            consumer_header: config.consumer_header,
            verified: HashMap::new(),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let found = req.header("authorization").and_then(|h| credentials(&h));
        let Some((user, _)) = found.filter(|(u, p)| self.check(u, p)) else {
            return reply(401)
                .header("www-authenticate", self.challenge.as_str())
                .text("unauthorized\n")
                .into();
        };
        let _ = req.remove_header("authorization");
        let _ = req.set_headers(&[Header {
            name: self.consumer_header.clone(),
            value: user.clone(),
        }]);
        let _ = req.set_var("consumer", &user);
        Action::Continue
    }
}

weir_sdk::export!(BasicAuth);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        // "alice:s3cr:et" — the password may contain `:`.
        assert_eq!(
            credentials("Basic YWxpY2U6czNjcjpldA=="),
            Some(("alice".into(), "s3cr:et".into()))
        );
        assert_eq!(
            credentials("basic YWxpY2U6"),
            Some(("alice".into(), String::new()))
        );
        assert_eq!(credentials("Bearer YWxpY2U6czNjcmV0"), None);
        assert_eq!(credentials("Basic !!!"), None);
        assert_eq!(credentials("Basic YWxpY2U="), None, "no colon");
    }
}
