//! Who is calling. An operator token guards tenant management (and, without tenants, the whole
//! admin API); a tenant token guards that tenant's functions and models; invoke keys, issued by a
//! tenant, guard its private functions.
//!
//! Every token is 32 random bytes from the operating system, shown once, stored only as a SHA-256
//! hash and compared in constant time. A token says whose it is (`tlt_{tenant}_{secret}`,
//! `tlk_{tenant}_{id}_{secret}`), so checking one is a lookup plus one comparison, not a scan.

use std::path::Path;

use anyhow::Context;
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};

/// Prefix of the operator token.
pub const OPERATOR_PREFIX: &str = "tlo_";
/// Prefix of tenant tokens.
pub const TENANT_PREFIX: &str = "tlt_";
/// Prefix of invoke keys.
pub const KEY_PREFIX: &str = "tlk_";

/// A hash no secret has in practice, compared against when the named tenant does not exist.
pub const UNKNOWN_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who an admin request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The node's operator (or anyone, on a node without tokens).
    Operator,
    /// A tenant, by name.
    Tenant(String),
}

/// 32 random bytes, hex.
pub fn secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(hex::encode(bytes))
}

/// 4 random bytes, hex: names an invoke key.
pub fn key_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(hex::encode(bytes))
}

/// What is stored of a secret: its SHA-256, hex.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `stored`, in time independent of where they differ.
pub fn matches(secret: &str, stored: &str) -> bool {
    let computed = hash(secret);
    let (a, b) = (computed.as_bytes(), stored.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// `tlt_{tenant}_{secret}` → `(tenant, secret)`.
pub fn parse_tenant_token(token: &str) -> Option<(&str, &str)> {
    token.strip_prefix(TENANT_PREFIX)?.rsplit_once('_')
}

/// `tlk_{tenant}_{id}_{secret}` → `(tenant, id, secret)`.
pub fn parse_key(token: &str) -> Option<(&str, &str, &str)> {
    let (rest, secret) = token.strip_prefix(KEY_PREFIX)?.rsplit_once('_')?;
    let (tenant, id) = rest.rsplit_once('_')?;
    Some((tenant, id, secret))
}

/// The operator token's hash: the config's `operator_token` if set; else, on a node with
/// tenants, the token in `DATA/operator-token`, created at first start readable only by its
/// owner; else none (a single-user node without tokens).
pub fn operator_token(
    configured: Option<&str>,
    tenants: bool,
    data_dir: &Path,
) -> anyhow::Result<Option<String>> {
    if let Some(token) = configured {
        return Ok(Some(hash(token)));
    }
    if !tenants {
        return Ok(None);
    }
    let path = data_dir.join("operator-token");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            anyhow::ensure!(
                token.starts_with(OPERATOR_PREFIX),
                "{} does not hold an operator token (tlo_...): remove it to make a new one",
                path.display()
            );
            Ok(Some(hash(token)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = format!("{OPERATOR_PREFIX}{}", secret()?);
            write_private(&path, &format!("{token}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "operator token created (readable only by this user)");
            Ok(Some(hash(&token)))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a file only its owner can read, atomically (temp file, fsync, rename).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_match() {
        let s = secret().unwrap();
        assert_eq!(s.len(), 64);
        assert_ne!(s, secret().unwrap());
        assert!(matches(&s, &hash(&s)));
        assert!(!matches("nope", &hash(&s)));
        assert!(!matches(&s, "short"));
        assert_eq!(
            parse_tenant_token("tlt_acme-2_abc"),
            Some(("acme-2", "abc"))
        );
        assert_eq!(parse_tenant_token("tlk_a_b"), None);
        assert_eq!(
            parse_key("tlk_acme_1f2e_abc"),
            Some(("acme", "1f2e", "abc"))
        );
        assert_eq!(parse_key("tlk_acme"), None);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer  tlo_x ".parse().unwrap());
        assert_eq!(bearer(&h), Some("tlo_x"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn the_operator_token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tensorlet-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = operator_token(None, true, &dir).unwrap().unwrap();
        let file = dir.join("operator-token");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(operator_token(None, true, &dir).unwrap().unwrap(), first);
        let token = std::fs::read_to_string(&file).unwrap();
        assert!(matches(token.trim(), &first));
        assert_eq!(operator_token(None, false, &dir).unwrap(), None);
        assert_eq!(
            operator_token(Some("tlo_mine"), false, &dir).unwrap(),
            Some(hash("tlo_mine"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
