//! The reference against the structs it describes, and docs/configuration.md
//! against the reference.

use super::*;
use crate::auth::{AuthConfig, TokenConfig};
use crate::cache::config::{CacheConfig, OriginConfig};
use crate::config::engine::{EngineConfig, EtcdConfig};
use crate::config::{Config, TlsSettings};
use crate::migrate::MigrationStep;
use crate::session::SessionConfig;
use crate::watch::WatchConfig;
use serde::de::{Deserialize, Deserializer, Error as _, Visitor};

/// The field names a derived `Deserialize` asks for, read by asking it to
/// deserialize from a deserializer that only records them.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(Self::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.expect("a struct")
}

/// Every table of the file: where it is, and the struct it deserializes to.
/// A new `[section]` (or array of tables) adds its line here, and the keys
/// that are tables in their parent go in `TABLES`.
fn structs() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", fields::<Config>()),
        ("session.", fields::<SessionConfig>()),
        ("tls.", fields::<TlsSettings>()),
        ("auth.", fields::<AuthConfig>()),
        ("auth.tokens[].", fields::<TokenConfig>()),
        ("migrations[].", fields::<MigrationStep>()),
        ("cache.", fields::<CacheConfig>()),
        ("cache.origins[].", fields::<OriginConfig>()),
        ("engine.", fields::<EngineConfig>()),
        ("engine.etcd.", fields::<EtcdConfig>()),
        ("watch.", fields::<WatchConfig>()),
    ]
}

/// Keys whose value is a table or an array of tables described by its own
/// entries in `structs()`.
const TABLES: &[&str] = &[
    "session",
    "tls",
    "auth",
    "auth.tokens",
    "migrations",
    "cache",
    "cache.origins",
    "engine",
    "engine.etcd",
    "watch",
];

/// Every field of every configuration struct has an entry, and every entry
/// is a field: a key added to a struct without its reference entry fails here.
#[test]
fn every_field_has_an_entry_and_every_entry_a_field() {
    let mut keys = Vec::new();
    for (prefix, names) in structs() {
        for name in names {
            let key = format!("{prefix}{name}");
            if TABLES.contains(&key.as_str()) {
                continue;
            }
            assert!(
                SETTINGS.iter().any(|setting| setting.key == key),
                "`{key}` has no entry in src/config/reference.rs (SETTINGS): add one with its default and what it does"
            );
            keys.push(key);
        }
    }
    for setting in SETTINGS {
        assert!(
            keys.iter().any(|key| key == setting.key),
            "src/config/reference.rs describes `{}`, which no configuration struct has",
            setting.key
        );
    }
}

/// The example, as printed, configures exactly the server's defaults: every
/// default it states is the one applied.
#[test]
fn the_example_is_the_defaults() {
    let example = example();
    let parsed: Config = toml::from_str(&example).expect("the example parses");
    assert_eq!(parsed, Config::default());
    for setting in SETTINGS {
        let (_, name) = setting.table_and_name();
        assert!(
            example.contains(&format!("\n{name} = "))
                || example.contains(&format!("\n# {name} = ")),
            "{} missing from the example",
            setting.key
        );
    }
}

/// `# name = value`: a commented-out key, not prose.
fn assignment(line: &str) -> bool {
    line.strip_prefix("# ")
        .and_then(|rest| rest.split_once(" = "))
        .is_some_and(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// Uncommented, the example's arrays of tables parse, and the defaults it
/// shows for an origin are the ones an origin without them gets.
#[test]
fn the_commented_tables_parse_with_their_stated_defaults() {
    let example = example();
    let mut uncommented = String::new();
    let mut in_array = false;
    for line in example.lines() {
        if line.starts_with("# [[") {
            in_array = true;
            uncommented.push_str(line.trim_start_matches("# ").split("   ").next().unwrap());
        } else if line.starts_with('[') {
            in_array = false;
            uncommented.push_str(line);
        } else if in_array && assignment(line) && !line.starts_with("# token_sha256_file") {
            uncommented.push_str(&line[2..]);
        } else {
            uncommented.push_str(line);
        }
        uncommented.push('\n');
    }
    let parsed: Config =
        toml::from_str(&uncommented).unwrap_or_else(|error| panic!("{error}\n{uncommented}"));
    assert_eq!(parsed.auth.tokens.len(), 1);
    assert_eq!(parsed.migrations.len(), 1);
    assert_eq!(parsed.cache.origins.len(), 1);
    let minimal: OriginConfig = toml::from_str(
        "prefix = \"cache:api:\"\nurl = \"https://api.example.com/{key}\"\nca_file = \"/etc/tierkv/origin-ca.pem\"\n",
    )
    .unwrap();
    assert_eq!(parsed.cache.origins[0], minimal);
}

/// docs/configuration.md holds the reference as generated; regenerate it
/// with `tierkv config reference` (between the markers) when this fails.
#[test]
fn docs_configuration_md_is_the_generated_reference() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let docs = std::fs::read_to_string(path).unwrap();
    let begin = docs
        .find(BEGIN_MARKER)
        .expect("docs/configuration.md has the begin marker")
        + BEGIN_MARKER.len();
    let end = docs
        .find(END_MARKER)
        .expect("docs/configuration.md has the end marker");
    assert_eq!(
        docs[begin..end].trim(),
        markdown().trim(),
        "docs/configuration.md's reference differs from `tierkv config reference`: replace the table between the markers with its output"
    );
}
