//! Tokens, grants, authentication and token strength.

use super::*;

fn config(tokens: Vec<TokenConfig>) -> AuthConfig {
    AuthConfig { tokens }
}

fn token(name: &str, secret: &str, prefixes: &[&str], permissions: &[Permission]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token_sha256: hash_token(secret),
        token_sha256_file: None,
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        permissions: permissions.to_vec(),
    }
}

/// Grants are by prefix and permission; unknown tokens get nothing.
#[test]
fn grants_by_prefix_and_permission() {
    let auth = Authenticator::new(&config(vec![
        token(
            "orders",
            "s1",
            &["orders:", "user:"],
            &[Permission::Read, Permission::Write],
        ),
        token("reader", "s2", &["user:"], &[Permission::Read]),
        token("ops", "s3", &[], &[Permission::Admin]),
    ]))
    .unwrap()
    .unwrap();
    let orders = auth.authenticate("s1").unwrap();
    assert!(orders.may(Access::Write, "orders:1"));
    assert!(orders.may(Access::Read, "user:9"));
    assert!(!orders.may(Access::Read, "session:x"));
    assert!(!orders.has(Permission::Stats));
    let reader = auth.authenticate("s2").unwrap();
    assert!(reader.may(Access::Read, "user:1"));
    assert!(!reader.may(Access::Write, "user:1"));
    assert!(!reader.may_all_under(Access::Read, "us"));
    assert!(reader.may_all_under(Access::Read, "user:1"));
    let ops = auth.authenticate("s3").unwrap();
    for part in Permission::ADMIN_PARTS {
        assert!(ops.has(part), "admin means {part:?}");
    }
    assert!(ops.has(Permission::Admin));
    assert!(!ops.may(Access::Read, "user:1"));
    assert!(auth.authenticate("s4").is_none());
    assert!(auth.authenticate("").is_none());
}

/// No tokens: authentication is off; bad configurations are refused by name.
#[test]
fn configuration_is_validated() {
    assert!(Authenticator::new(&AuthConfig::default())
        .unwrap()
        .is_none());
    let mut bad_hash = token("a", "s", &["x:"], &[Permission::Read]);
    bad_hash.token_sha256 = "abc".into();
    let error = Authenticator::new(&config(vec![bad_hash])).unwrap_err();
    assert!(
        error.contains("auth.tokens[0]") && error.contains("64 hex"),
        "{error}"
    );
    let error = Authenticator::new(&config(vec![
        token("a", "s", &["x:"], &[Permission::Read]),
        token("b", "s", &["y:"], &[Permission::Read]),
    ]))
    .unwrap_err();
    assert!(error.contains("twice"), "{error}");
    let error =
        Authenticator::new(&config(vec![token("a", "s", &[], &[Permission::Write])])).unwrap_err();
    assert!(error.contains("need prefixes"), "{error}");
    let error = Authenticator::new(&config(vec![token("a", "s", &["x:"], &[])])).unwrap_err();
    assert!(error.contains("permissions"), "{error}");
}

/// `token_sha256_file` reads the hash from a file (a mounted Secret);
/// exactly one of it and `token_sha256` is set, and a bad file is named
/// without quoting what it holds.
#[test]
fn token_hash_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sha256");
    std::fs::write(&path, format!("{}\n", hash_token("s1"))).unwrap();
    let mut from_file = token("app", "s1", &["x:"], &[Permission::Read]);
    from_file.token_sha256 = String::new();
    from_file.token_sha256_file = Some(path.clone());
    let auth = Authenticator::new(&config(vec![from_file.clone()]))
        .unwrap()
        .unwrap();
    assert_eq!(auth.authenticate("s1").unwrap().name, "app");
    assert!(auth.authenticate("s2").is_none());

    std::fs::write(&path, "not-a-hash-but-a-secret").unwrap();
    let error = Authenticator::new(&config(vec![from_file.clone()])).unwrap_err();
    assert!(
        error.contains("auth.tokens[0]")
            && error.contains("app.sha256")
            && error.contains("64 hex"),
        "{error}"
    );
    assert!(!error.contains("not-a-hash"), "{error}");

    let mut missing = from_file.clone();
    missing.token_sha256_file = Some(dir.path().join("absent"));
    let error = Authenticator::new(&config(vec![missing])).unwrap_err();
    assert!(error.contains("absent"), "{error}");

    let mut both = from_file.clone();
    both.token_sha256 = hash_token("s1");
    let error = Authenticator::new(&config(vec![both])).unwrap_err();
    assert!(error.contains("not both"), "{error}");
    let mut neither = from_file;
    neither.token_sha256_file = None;
    let error = Authenticator::new(&config(vec![neither])).unwrap_err();
    assert!(
        error.contains("token_sha256 or token_sha256_file"),
        "{error}"
    );
}

/// The hash matches the standard SHA-256 of the token.
#[test]
fn token_hash_is_sha256_hex() {
    assert_eq!(
        hash_token("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(new_token().starts_with("tkv_"));
    assert_ne!(new_token(), new_token());
}

/// Each AdminService permission stands alone; `admin` is all four.
#[test]
fn admin_permissions_are_split() {
    let auth = Authenticator::new(&config(vec![
        token("monitoring", "m", &[], &[Permission::Stats]),
        token("dropper", "d", &[], &[Permission::Drop, Permission::Backup]),
    ]))
    .unwrap()
    .unwrap();
    let monitoring = auth.authenticate("m").unwrap();
    assert!(monitoring.has(Permission::Stats));
    for other in [
        Permission::Migrate,
        Permission::Backup,
        Permission::Drop,
        Permission::Admin,
    ] {
        assert!(!monitoring.has(other), "{other:?}");
    }
    let dropper = auth.authenticate("d").unwrap();
    assert!(dropper.has(Permission::Drop) && dropper.has(Permission::Backup));
    assert!(!dropper.has(Permission::Stats));
    let parsed: AuthConfig = toml::from_str(
        "[[tokens]]\nname = \"a\"\ntoken_sha256 = \"00\"\npermissions = [\"stats\", \"admin\"]\n",
    )
    .unwrap();
    assert_eq!(parsed.deprecated_admin_tokens(), vec!["a"]);
}

/// A reload replaces the tokens at once, keeps them when the new
/// configuration is invalid, and never turns authentication off.
#[test]
fn reloads_swap_tokens_and_never_turn_authentication_off() {
    let state = AuthState::new(&config(vec![token(
        "a",
        "s1",
        &["x:"],
        &[Permission::Read],
    )]))
    .unwrap();
    let before = state.current().unwrap();
    assert_eq!(
        state
            .reload(&config(vec![token(
                "b",
                "s2",
                &["x:"],
                &[Permission::Read]
            )]))
            .unwrap(),
        1
    );
    let after = state.current().unwrap();
    assert!(after.authenticate("s1").is_none() && after.authenticate("s2").is_some());
    assert!(
        before.authenticate("s1").is_some(),
        "a call holding the old one finishes"
    );
    let mut bad = token("c", "s3", &["x:"], &[Permission::Read]);
    bad.token_sha256 = "nope".into();
    assert!(state.reload(&config(vec![bad])).is_err());
    let error = state.reload(&AuthConfig::default()).unwrap_err();
    assert!(
        error.contains("does not turn authentication off"),
        "{error}"
    );
    assert!(state.current().unwrap().authenticate("s2").is_some());
    // Off at start, a reload may turn it on.
    let off = AuthState::new(&AuthConfig::default()).unwrap();
    assert!(off.current().is_none());
    off.reload(&config(vec![token(
        "d",
        "s4",
        &["x:"],
        &[Permission::Read],
    )]))
    .unwrap();
    assert!(off.current().is_some());
}

/// Generated tokens pass the strength check; short, repetitive,
/// patterned and human-looking ones do not.
#[test]
fn token_strength() {
    for _ in 0..1000 {
        let token = new_token();
        assert_eq!(check_token_strength(&token), Ok(()), "{token}");
    }
    for strong in [
        "3f9a0c41d2e87b65a0f1c93e4d5b2a77",
        "3F9A0C41D2E87B65A0F1C93E4D5B2A7786E1F0C9",
        "q3Zr8Tb1xW0vLk9PfE2hYc+/mN7sJd4u",
    ] {
        assert_eq!(check_token_strength(strong), Ok(()), "{strong}");
    }
    let weak = |token: &str| check_token_strength(token).unwrap_err();
    assert_eq!(weak(""), WeakToken::Empty);
    assert_eq!(
        weak("correct horse battery staple"),
        WeakToken::UnusualCharacters
    );
    assert_eq!(
        weak("naïve-token-naïve-token-naïve-token"),
        WeakToken::UnusualCharacters
    );
    assert!(matches!(weak("hunter2"), WeakToken::TooShort { .. }));
    assert!(matches!(
        weak("0123456789abcdef"),
        WeakToken::TooShort { .. }
    ));
    assert!(matches!(
        weak(&"a".repeat(64)),
        WeakToken::Repetitive { .. }
    ));
    assert!(matches!(
        weak(&"ab".repeat(20)),
        WeakToken::Repetitive { .. }
    ));
    assert!(matches!(
        weak("passwordpasswordpassword1234567890"),
        WeakToken::Patterned { .. }
    ));
    assert!(weak("hunter2").to_string().contains("128"));
}
