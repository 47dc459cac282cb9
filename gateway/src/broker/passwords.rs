//! The broker's password file: one `user:hash` a line, `#` comments.
//!
//! Two kinds of hash are read: mosquitto's `$7$iterations$salt$hash` (PBKDF2 with
//! HMAC-SHA512, base64 salt and hash), so a mosquitto password file works as it is, and
//! the PHC string of argon2id (`$argon2id$v=19$...`) that `fieldgate passwd` writes.

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A stored password hash.
#[derive(Clone)]
enum Hash {
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Argon2(String),
}

/// Users and their password hashes.
#[derive(Clone, Default)]
pub struct Passwords {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passwords({} users)", self.users.len())
    }
}

impl Passwords {
    /// Reads a password file; errors name the file and line.
    pub fn load(path: &Path) -> anyhow::Result<Passwords> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read password file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
    }

    /// Parses password file text; an error starts with its line number.
    pub fn parse(text: &str) -> anyhow::Result<Passwords> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let Some((user, hash)) = line.split_once(':') else {
                anyhow::bail!("{n}: expected `user:hash`");
            };
            if user.is_empty() {
                anyhow::bail!("{n}: empty user name");
            }
            let hash = parse_hash(hash).map_err(|e| anyhow::anyhow!("{n}: user `{user}`: {e}"))?;
            if users.insert(user.to_string(), hash).is_some() {
                anyhow::bail!("{n}: user `{user}` is listed twice");
            }
        }
        Ok(Passwords { users })
    }

    /// Whether the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is the password of `user`. Takes a few milliseconds (on
    /// purpose): call it off the async threads.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            }) => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, *iterations, &mut out);
                constant_time_eq(&out, hash)
            }
            Some(Hash::Argon2(phc)) => PasswordHash::new(phc).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password, &h)
                    .is_ok()
            }),
            None => false,
        }
    }
}

fn parse_hash(s: &str) -> anyhow::Result<Hash> {
    if let Some(rest) = s.strip_prefix("$7$") {
        let mut parts = rest.split('$');
        let (Some(iterations), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("a `$7$` hash is `$7$iterations$salt$hash`");
        };
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow::anyhow!("bad iteration count {iterations:?}"))?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|e| anyhow::anyhow!("salt is not base64: {e}"))?;
        let hash = STANDARD
            .decode(hash)
            .map_err(|e| anyhow::anyhow!("hash is not base64: {e}"))?;
        if hash.is_empty() || salt.is_empty() {
            anyhow::bail!("empty salt or hash");
        }
        return Ok(Hash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        });
    }
    if s.starts_with("$argon2id$") {
        let h = PasswordHash::new(s).map_err(|e| anyhow::anyhow!("bad argon2id hash: {e}"))?;
        if h.salt.is_none() || h.hash.is_none() {
            anyhow::bail!("bad argon2id hash: no salt or hash in it");
        }
        return Ok(Hash::Argon2(s.to_string()));
    }
    if s.starts_with("$6$") {
        anyhow::bail!(
            "`$6$` (salted SHA-512) hashes are too weak to accept; set the password again \
             with `fieldgate passwd` or `mosquitto_passwd` (which writes `$7$`)"
        );
    }
    anyhow::bail!("unknown hash; expected mosquitto's `$7$...` or `$argon2id$...`")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An argon2id hash of `password`, as `fieldgate passwd` writes it.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let h = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    Ok(h.to_string())
}

/// Sets `user`'s password in the file at `path` (created if missing), keeping the other
/// lines as they are. The file is written aside and renamed, readable by its owner only.
pub fn set(path: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(':') || user.contains(char::is_whitespace) {
        anyhow::bail!("a user name must be non-empty, without `:` or spaces");
    }
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    Passwords::parse(&old).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
    let line = format!("{user}:{}", hash(password)?);
    let mut out = String::new();
    let mut replaced = false;
    for l in old.lines() {
        if l.trim().split_once(':').is_some_and(|(u, _)| u == user) {
            out.push_str(&line);
            replaced = true;
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str(&line);
        out.push('\n');
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `$7$` line made the way mosquitto_passwd makes it, from the PBKDF2 definition.
    fn mosquitto_line(user: &str, password: &str, iterations: u32) -> String {
        let salt = b"0123456789ab";
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, iterations, &mut out);
        format!(
            "{user}:$7${iterations}${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(out)
        )
    }

    /// Written by `mosquitto_passwd -c -b FILE alice s3cret` (mosquitto 2.0.11).
    const MOSQUITTO_PASSWD: &str = "alice:$7$101$+ziSfFG1x0WQW1WD$yNeV0dBT3yJjfYRNqnyWIOS4wPENqseW/mJ/zYKRHHoNiWdAFtyswCOThV1svDgpS1fecmI+kFUvgcctJ6MzZA==";

    #[test]
    fn mosquitto_and_argon2id_lines_verify() {
        let text = format!(
            "# users\n{MOSQUITTO_PASSWD}\nbob:{}\n",
            hash("hunter2").unwrap()
        );
        let p = Passwords::parse(&text).unwrap();
        assert!(p.verify("alice", b"s3cret"));
        assert!(!p.verify("alice", b"s3cret "));
        assert!(p.verify("bob", b"hunter2"));
        assert!(!p.verify("bob", b"s3cret"));
        assert!(!p.verify("carol", b""));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, want) in [
            ("alice", "1: expected"),
            ("\nalice:$7$x$AA==$AA==", "2: user `alice`: bad iteration"),
            ("a:$6$abc$def", "too weak"),
            ("a:plain", "unknown hash"),
            ("a:$argon2id$nonsense", "bad argon2id"),
        ] {
            let e = Passwords::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let line = mosquitto_line("a", "x", 1);
        let e = Passwords::parse(&format!("{line}\n{line}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn set_adds_and_replaces_a_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        set(&path, "alice", "one").unwrap();
        set(&path, "bob", "two").unwrap();
        set(&path, "alice", "three").unwrap();
        let p = Passwords::load(&path).unwrap();
        assert!(p.verify("alice", b"three"));
        assert!(!p.verify("alice", b"one"));
        assert!(p.verify("bob", b"two"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains("three"), "no password in the file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by its owner only");
        assert!(set(&path, "a:b", "x").is_err());
    }
}
