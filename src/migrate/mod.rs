//! Versioned records and their migrations: the `[[migrations]]` steps of the
//! configuration, validated into per-prefix chains of RFC 6902 JSON Patch
//! documents, applied lazily when a record is read ([`lazy`]) and in bulk by
//! `AdminService.Migrate` ([`batch`]). No transport types live here.
//!
//! Every record carries a `schema_version` (1 unless a write or a migration
//! set another). A prefix's **target** is the `to` of its last step; a key
//! uses the chain of the longest migration prefix it starts with. A JSON
//! record older than its target is brought up to it by applying the steps
//! from its version on, in order. A record newer than the target (written by
//! a newer server during a rolling deploy) is left alone: an older server
//! never downgrades it. A record a patch cannot apply to (a failing `test`
//! op, a value that is not JSON) is left untouched and reported.

pub mod batch;
pub mod error;
pub mod lazy;
pub mod state;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::engine::{Namespaces, Record};
use crate::records::limits::{
    json_depth, MAX_JSON_DEPTH, MAX_METADATA_BYTES, MAX_SCHEMA_VERSION, MAX_VALUE_BYTES,
};

pub use batch::Migrator;
pub use error::MigrateError;
pub use lazy::{LazyCounts, LazyMigrator};
pub use state::{MigrationProgress, MigrationRequest, MigrationState};

/// One `[[migrations]]` step of the configuration: records under `prefix`
/// at schema version `from` become version `to` by applying `patch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationStep {
    /// The key prefix the step applies to; it must lie inside a configured
    /// namespace.
    pub prefix: String,
    /// The schema version the step starts from.
    pub from: u32,
    /// The schema version it produces: `from + 1`.
    pub to: u32,
    /// An RFC 6902 JSON Patch document, as JSON text.
    pub patch: String,
}

/// One validated chain of steps for a prefix.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The prefix.
    pub prefix: String,
    /// The version the first step starts from.
    pub first: u32,
    /// The version the last step produces.
    pub target: u32,
    /// The patches, `patches[i]` taking version `first + i` to `first + i + 1`.
    patches: Vec<json_patch::Patch>,
}

/// What reading a record means for its migration.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// No migration covers the key.
    Uncovered,
    /// The record is at its prefix's target version.
    Current,
    /// The record is newer than this server knows: left as is.
    NewerThanKnown,
    /// The record, migrated: value, metadata (with `migratedAt`) and schema
    /// version changed; version and expiry as read.
    Migrated(Record),
    /// No patch can bring the record up to date; it is left untouched.
    Failed(String),
}

/// The validated `[[migrations]]`: one chain per prefix.
#[derive(Debug, Clone, Default)]
pub struct Migrations {
    /// Chains by prefix.
    chains: BTreeMap<String, Chain>,
}

impl Migrations {
    /// Validates `steps` against the configured `namespaces`: per prefix the
    /// steps must form one contiguous chain (`1 -> 2`, `2 -> 3`, in any order
    /// in the file), each `to` must be `from + 1`, each patch must parse as
    /// an RFC 6902 document, and each prefix must lie inside a configured
    /// namespace that no service owns. Errors name the step by its index.
    pub fn new(steps: &[MigrationStep], namespaces: &Namespaces) -> Result<Self, MigrateError> {
        let mut by_prefix: BTreeMap<&str, Vec<(usize, &MigrationStep, json_patch::Patch)>> =
            BTreeMap::new();
        for (index, step) in steps.iter().enumerate() {
            let fail = |message: String| MigrateError::InvalidStep {
                index,
                prefix: step.prefix.clone(),
                from: step.from,
                to: step.to,
                message,
            };
            if step.prefix.is_empty() {
                return Err(fail(
                    "prefix must not be empty; migrations apply to a key prefix inside a namespace"
                        .into(),
                ));
            }
            let namespace = namespaces.route(&step.prefix);
            if namespace == crate::engine::namespace::DEFAULT_NAMESPACE {
                let configured: Vec<&str> = namespaces.configured_prefixes().collect();
                return Err(fail(format!(
                    "prefix is not inside a configured namespace ({}); add its namespace to \
                     `namespaces` or fix the prefix",
                    configured.join(", ")
                )));
            }
            if let Some(owner) = namespaces.owner(namespace) {
                return Err(fail(format!(
                    "prefix lies in namespace {:?}, owned by {owner}, whose records are not \
                     migrated",
                    namespaces.prefix(namespace)
                )));
            }
            if step.from == 0 {
                return Err(fail("from must be at least 1 (versions start at 1)".into()));
            }
            if step.to != step.from.saturating_add(1) {
                return Err(fail(format!(
                    "to must be from + 1 ({}); each step raises the version by one",
                    step.from.saturating_add(1)
                )));
            }
            if step.to > MAX_SCHEMA_VERSION {
                return Err(fail(format!(
                    "to is {}; the limit for schema versions is {MAX_SCHEMA_VERSION}",
                    step.to
                )));
            }
            let patch: json_patch::Patch = serde_json::from_str(&step.patch)
                .map_err(|error| fail(format!("patch is not an RFC 6902 JSON Patch: {error}")))?;
            by_prefix
                .entry(step.prefix.as_str())
                .or_default()
                .push((index, step, patch));
        }
        let mut chains = BTreeMap::new();
        for (prefix, mut steps) in by_prefix {
            steps.sort_by_key(|(index, step, _)| (step.from, *index));
            for pair in steps.windows(2) {
                let (_, previous, _) = &pair[0];
                let (index, step, _) = &pair[1];
                if step.from == previous.from {
                    return Err(MigrateError::InvalidStep {
                        index: *index,
                        prefix: step.prefix.clone(),
                        from: step.from,
                        to: step.to,
                        message: format!(
                            "a step of this prefix from version {} is already configured",
                            step.from
                        ),
                    });
                }
                if step.from != previous.to {
                    return Err(MigrateError::InvalidStep {
                        index: *index,
                        prefix: step.prefix.clone(),
                        from: step.from,
                        to: step.to,
                        message: format!(
                            "the steps of this prefix leave a gap: no step from version {} to {}",
                            previous.to, step.from
                        ),
                    });
                }
            }
            let first = steps[0].1.from;
            let target = steps[steps.len() - 1].1.to;
            chains.insert(
                prefix.to_string(),
                Chain {
                    prefix: prefix.to_string(),
                    first,
                    target,
                    patches: steps.into_iter().map(|(_, _, patch)| patch).collect(),
                },
            );
        }
        Ok(Self { chains })
    }

    /// Whether no migration is configured.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// The chains, by prefix.
    pub fn chains(&self) -> impl Iterator<Item = &Chain> {
        self.chains.values()
    }

    /// The chain of the longest migration prefix `key` starts with.
    pub fn chain_for(&self, key: &str) -> Option<&Chain> {
        // Prefixes are few; a linear pass beats building a trie.
        self.chains
            .values()
            .filter(|chain| key.starts_with(chain.prefix.as_str()))
            .max_by_key(|chain| chain.prefix.len())
    }

    /// Whether a migration covers some key starting with `prefix`: a chain's
    /// prefix starts with it, or it starts with a chain's prefix.
    pub fn covers(&self, prefix: &str) -> bool {
        self.chains.values().any(|chain| {
            chain.prefix.starts_with(prefix) || prefix.starts_with(chain.prefix.as_str())
        })
    }

    /// A short description of the targets, to tell whether a saved
    /// checkpoint was made under the same configuration.
    pub fn fingerprint(&self) -> String {
        self.chains
            .values()
            .map(|chain| format!("{}={}..{}", chain.prefix, chain.first, chain.target))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What `record`, stored under `key`, needs; `now_millis` stamps
    /// `migratedAt`.
    pub fn plan(&self, key: &str, record: &Record, now_millis: u64) -> Plan {
        let Some(chain) = self.chain_for(key) else {
            return Plan::Uncovered;
        };
        chain.plan(record, now_millis)
    }
}

impl Chain {
    /// What `record` needs under this chain.
    pub fn plan(&self, record: &Record, now_millis: u64) -> Plan {
        let version = record.schema_version.max(1);
        if version == self.target {
            return Plan::Current;
        }
        if version > self.target {
            return Plan::NewerThanKnown;
        }
        if version < self.first {
            return Plan::Failed(format!(
                "schema version {version} is older than the first configured step (from {})",
                self.first
            ));
        }
        let mut value: serde_json::Value = match serde_json::from_slice(&record.value) {
            Ok(value) => value,
            Err(_) => return Plan::Failed("the value is not JSON".into()),
        };
        let start = (version - self.first) as usize;
        for (offset, patch) in self.patches[start..].iter().enumerate() {
            if let Err(error) = json_patch::patch(&mut value, &patch.0) {
                let from = version + offset as u32;
                return Plan::Failed(format!(
                    "the step from version {from} to {} does not apply: {error}",
                    from + 1
                ));
            }
        }
        if json_depth(&value) > MAX_JSON_DEPTH {
            return Plan::Failed(format!(
                "the migrated value nests deeper than {MAX_JSON_DEPTH} levels, the limit for JSON"
            ));
        }
        let value = serde_json::to_vec(&value).unwrap_or_default();
        if value.len() > MAX_VALUE_BYTES {
            return Plan::Failed(format!(
                "the migrated value is {} bytes; the limit is {MAX_VALUE_BYTES} bytes",
                value.len()
            ));
        }
        Plan::Migrated(Record {
            kind: record.kind,
            value,
            metadata: stamp_metadata(record.metadata.as_deref(), now_millis),
            expire_at_millis: record.expire_at_millis,
            version: record.version,
            schema_version: self.target,
        })
    }
}

/// The metadata of a migrated record: an object gets `migratedAt` (RFC 3339,
/// as the seed pattern adds it); no metadata becomes `{"migratedAt": …}`.
/// Metadata that is not an object (an array, a string…), or that would grow
/// past the metadata limit, is kept unchanged: its owner's data is not
/// reshaped to make room for a timestamp.
fn stamp_metadata(metadata: Option<&[u8]>, now_millis: u64) -> Option<Vec<u8>> {
    let stamp = serde_json::Value::String(rfc3339(now_millis));
    let mut object = match metadata {
        None => serde_json::Map::new(),
        Some(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(serde_json::Value::Object(object)) => object,
            _ => return metadata.map(<[u8]>::to_vec),
        },
    };
    object.insert("migratedAt".to_string(), stamp);
    let stamped = serde_json::to_vec(&serde_json::Value::Object(object)).unwrap_or_default();
    if stamped.len() > MAX_METADATA_BYTES {
        return metadata.map(<[u8]>::to_vec);
    }
    Some(stamped)
}

/// Milliseconds since the Unix epoch as RFC 3339 (`2026-11-26T02:06:46.123Z`;
/// no fraction on a whole second), as `google.protobuf.Timestamp` prints
/// it, computed here so the domain needs no protobuf types.
pub fn rfc3339(millis: u64) -> String {
    let seconds = millis / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    let time = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
    match millis % 1000 {
        0 => format!("{time}Z"),
        fraction => format!("{time}.{fraction:03}Z"),
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for days that are never negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ValueKind;

    fn step(prefix: &str, from: u32, to: u32, patch: &str) -> MigrationStep {
        MigrationStep {
            prefix: prefix.into(),
            from,
            to,
            patch: patch.into(),
        }
    }

    fn namespaces() -> Namespaces {
        Namespaces::new(["user:", "session:"])
            .with_owners([("session:", "tierkv.v1.SessionService")])
            .unwrap()
    }

    fn record(value: &str, schema_version: u32) -> Record {
        Record {
            kind: ValueKind::Json,
            value: value.as_bytes().to_vec(),
            metadata: None,
            expire_at_millis: Some(5),
            version: 7,
            schema_version,
        }
    }

    const COPY_NAME: &str = r#"[{"op": "copy", "from": "/name", "path": "/userName"}]"#;
    const ADD_V3: &str = r#"[{"op": "add", "path": "/v3", "value": true}]"#;

    /// Invalid configurations are refused naming the offending step.
    #[test]
    fn invalid_steps_are_refused_by_index() {
        let error = |steps: &[MigrationStep]| {
            Migrations::new(steps, &namespaces())
                .unwrap_err()
                .to_string()
        };
        let gap = error(&[step("user:", 1, 2, COPY_NAME), step("user:", 3, 4, ADD_V3)]);
        assert!(
            gap.starts_with("migrations[1]") && gap.contains("gap"),
            "{gap}"
        );
        let duplicate = error(&[step("user:", 1, 2, COPY_NAME), step("user:", 1, 2, ADD_V3)]);
        assert!(duplicate.contains("already configured"), "{duplicate}");
        let skip = error(&[step("user:", 1, 3, COPY_NAME)]);
        assert!(
            skip.starts_with("migrations[0]") && skip.contains("from + 1"),
            "{skip}"
        );
        let bad_patch = error(&[step("user:", 1, 2, r#"[{"op": "frobnicate"}]"#)]);
        assert!(bad_patch.contains("RFC 6902"), "{bad_patch}");
        let outside = error(&[step("other:", 1, 2, COPY_NAME)]);
        assert!(
            outside.contains("not inside a configured namespace"),
            "{outside}"
        );
        let owned = error(&[step("session:x", 1, 2, COPY_NAME)]);
        assert!(owned.contains("owned by"), "{owned}");
        let zero = error(&[step("user:", 0, 1, COPY_NAME)]);
        assert!(zero.contains("at least 1"), "{zero}");
    }

    /// Steps apply in order from the record's version; the longest prefix
    /// wins; newer and current records are left alone.
    #[test]
    fn chains_apply_in_order() {
        let migrations = Migrations::new(
            &[
                step("user:", 2, 3, ADD_V3),
                step("user:", 1, 2, COPY_NAME),
                step("user:vip:", 1, 2, ADD_V3),
            ],
            &namespaces(),
        )
        .unwrap();
        let Plan::Migrated(migrated) =
            migrations.plan("user:1", &record(r#"{"name":"John"}"#, 1), 0)
        else {
            panic!("expected a migration");
        };
        let value: serde_json::Value = serde_json::from_slice(&migrated.value).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"name": "John", "userName": "John", "v3": true})
        );
        assert_eq!(migrated.schema_version, 3);
        assert_eq!(migrated.version, 7);
        assert_eq!(migrated.expire_at_millis, Some(5));
        assert_eq!(
            migrated.metadata.as_deref(),
            Some(br#"{"migratedAt":"1970-01-01T00:00:00Z"}"#.as_slice())
        );
        assert_eq!(
            migrations.plan("user:vip:1", &record("{}", 2), 0),
            Plan::Current
        );
        assert_eq!(
            migrations.plan("user:1", &record("{}", 4), 0),
            Plan::NewerThanKnown
        );
        assert_eq!(
            migrations.plan("other", &record("{}", 1), 0),
            Plan::Uncovered
        );
        assert!(matches!(
            migrations.plan("user:1", &record("not json", 1), 0),
            Plan::Failed(_)
        ));
        // copy from a missing field fails the step.
        assert!(matches!(
            migrations.plan("user:1", &record("{}", 1), 0),
            Plan::Failed(reason) if reason.contains("from version 1 to 2")
        ));
    }

    /// Dates print as RFC 3339, leap days and whole seconds included.
    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_122_806_123), "2025-11-26T02:06:46.123Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    /// Object metadata gains migratedAt; other metadata is kept as is.
    #[test]
    fn metadata_is_stamped_when_it_is_an_object() {
        assert_eq!(
            stamp_metadata(Some(br#"{"a":1}"#), 1_500),
            Some(br#"{"a":1,"migratedAt":"1970-01-01T00:00:01.500Z"}"#.to_vec())
        );
        assert_eq!(stamp_metadata(Some(b"[1]"), 0), Some(b"[1]".to_vec()));
        let full = format!(r#"{{"a":"{}"}}"#, "x".repeat(1000));
        assert_eq!(
            stamp_metadata(Some(full.as_bytes()), 0),
            Some(full.into_bytes())
        );
    }
}
