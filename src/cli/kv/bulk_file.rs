//! The files of `tierkv kv bulk`: wrangler's bulk put and bulk delete
//! formats, read as a stream, one entry at a time, into mutations.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;

use super::write::expiration_from;
use crate::api::convert::json_to_proto;
use crate::cli::error::CliError;
use crate::proto::v1 as pb;

/// One entry of wrangler's bulk put format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkPutEntry {
    key: String,
    value: String,
    expiration: Option<i64>,
    expiration_ttl: Option<u64>,
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    base64: bool,
}

/// One entry of a bulk delete file: `"key"` or `{"name": "key"}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum BulkDeleteEntry {
    Key(String),
    Object {
        name: Option<String>,
        key: Option<String>,
    },
}

const BULK_PUT_USAGE: &str = "bulk put expects [{\"key\", \"value\", \"expiration\"?, \"expiration_ttl\"?, \"metadata\"?, \"base64\"?}, …]";
const BULK_DELETE_USAGE: &str = "bulk delete expects [\"key\", …] or [{\"name\": \"key\"}, …]";

fn bulk_put_mutation(index: usize, entry: BulkPutEntry) -> Result<pb::Mutation, CliError> {
    let value = if entry.base64 {
        pb::put_request::Value::Bytes(BASE64.decode(&entry.value).map_err(|error| {
            CliError::Usage(format!(
                "entry {index} ({:?}): value is not base64: {error}",
                entry.key
            ))
        })?)
    } else {
        pb::put_request::Value::Text(entry.value)
    };
    let expiration = expiration_from(entry.expiration_ttl, entry.expiration)
        .map_err(|error| CliError::Usage(format!("entry {index} ({:?}): {error}", entry.key)))?;
    Ok(pb::Mutation {
        operation: Some(pb::mutation::Operation::Put(pb::PutRequest {
            key: entry.key,
            value: Some(value),
            metadata: entry.metadata.map(json_to_proto),
            expiration,
            ..Default::default()
        })),
    })
}

pub(super) fn bulk_delete_mutation(
    index: usize,
    entry: BulkDeleteEntry,
) -> Result<pb::Mutation, CliError> {
    let key = match entry {
        BulkDeleteEntry::Key(key) => key,
        BulkDeleteEntry::Object {
            name: Some(key), ..
        }
        | BulkDeleteEntry::Object {
            name: None,
            key: Some(key),
        } => key,
        BulkDeleteEntry::Object { .. } => {
            return Err(CliError::Usage(format!(
                "entry {index}: {BULK_DELETE_USAGE}"
            )))
        }
    };
    Ok(pb::Mutation {
        operation: Some(pb::mutation::Operation::Delete(pb::DeleteRequest {
            key,
            if_version: None,
        })),
    })
}

/// Calls `each` with every element of the JSON array that `reader` holds, in
/// order, one element at a time: memory stays that of one element, whatever
/// the size of the array. Returns the number of elements.
fn for_each_in_array<T, F>(
    reader: impl std::io::Read,
    usage: &str,
    mut each: F,
) -> Result<usize, CliError>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(usize, T) -> Result<(), CliError>,
{
    let mut stopped = None;
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let visitor = ArrayVisitor {
        each: &mut each,
        stopped: &mut stopped,
        _element: std::marker::PhantomData,
    };
    let parsed = serde::Deserializer::deserialize_seq(&mut deserializer, visitor)
        .and_then(|count| deserializer.end().map(|()| count));
    match (parsed, stopped) {
        (_, Some(error)) => Err(error),
        (Ok(count), None) => Ok(count),
        (Err(error), None) => Err(CliError::Usage(format!("{usage}: {error}"))),
    }
}

struct ArrayVisitor<'a, T, F> {
    each: &'a mut F,
    /// The error of `each` that stopped the walk, if any.
    stopped: &'a mut Option<CliError>,
    _element: std::marker::PhantomData<T>,
}

impl<'de, T, F> serde::de::Visitor<'de> for ArrayVisitor<'_, T, F>
where
    T: serde::Deserialize<'de>,
    F: FnMut(usize, T) -> Result<(), CliError>,
{
    type Value = usize;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<usize, A::Error> {
        let mut index = 0;
        while let Some(item) = items.next_element::<T>()? {
            if let Err(error) = (self.each)(index, item) {
                *self.stopped = Some(error);
                return Err(serde::de::Error::custom("stopped"));
            }
            index += 1;
        }
        Ok(index)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum BulkKind {
    Put,
    Delete,
}

impl BulkKind {
    pub(super) fn verb(self) -> &'static str {
        match self {
            BulkKind::Put => "writing",
            BulkKind::Delete => "deleting",
        }
    }

    /// Walks the file's entries as mutations, one at a time.
    pub(super) fn for_each_mutation(
        self,
        path: &std::path::Path,
        mut each: impl FnMut(pb::Mutation) -> Result<(), CliError>,
    ) -> Result<usize, CliError> {
        let file = std::fs::File::open(path)
            .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", path.display())))?;
        let reader = std::io::BufReader::with_capacity(256 * 1024, file);
        let usage = |usage: &str| format!("{}: {usage}", path.display());
        match self {
            BulkKind::Put => for_each_in_array(reader, &usage(BULK_PUT_USAGE), |index, entry| {
                each(bulk_put_mutation(index, entry)?)
            }),
            BulkKind::Delete => {
                for_each_in_array(reader, &usage(BULK_DELETE_USAGE), |index, entry| {
                    each(bulk_delete_mutation(index, entry)?)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_mutations(json: &str) -> Result<Vec<pb::Mutation>, CliError> {
        let mut mutations = Vec::new();
        for_each_in_array(json.as_bytes(), BULK_PUT_USAGE, |index, entry| {
            mutations.push(bulk_put_mutation(index, entry)?);
            Ok(())
        })?;
        Ok(mutations)
    }

    fn delete_mutations(json: &str) -> Result<Vec<pb::Mutation>, CliError> {
        let mut mutations = Vec::new();
        for_each_in_array(json.as_bytes(), BULK_DELETE_USAGE, |index, entry| {
            mutations.push(bulk_delete_mutation(index, entry)?);
            Ok(())
        })?;
        Ok(mutations)
    }

    /// Wrangler's bulk put format, base64 included, becomes put mutations.
    #[test]
    fn parses_wrangler_bulk_put() {
        let mutations = put_mutations(
            r#"[
            {"key": "a", "value": "1"},
            {"key": "b", "value": "aGk=", "base64": true, "expiration_ttl": 60, "metadata": {"m": 1}},
            {"key": "c", "value": "x", "expiration": 4102444800}
        ]"#,
        )
        .unwrap();
        assert_eq!(mutations.len(), 3);
        let Some(pb::mutation::Operation::Put(put)) = &mutations[1].operation else {
            panic!("expected a put");
        };
        assert_eq!(
            put.value,
            Some(pb::put_request::Value::Bytes(b"hi".to_vec()))
        );
        assert!(matches!(
            put.expiration,
            Some(pb::put_request::Expiration::Ttl(_))
        ));
        assert_eq!(put_mutations("[]").unwrap().len(), 0);
        let missing_value = put_mutations(r#"[{"key": "a"}]"#).unwrap_err().to_string();
        assert!(missing_value.contains("value"), "{missing_value}");
        let both =
            put_mutations(r#"[{"key": "a", "value": "1", "expiration": 1, "expiration_ttl": 60}]"#)
                .unwrap_err()
                .to_string();
        assert!(both.contains("entry 0 (\"a\")"), "{both}");
        for broken in [
            r#"{"key": "a"}"#,
            r#"[{"key": "a", "value": "1"}"#,
            r#"[] []"#,
            "",
        ] {
            assert!(put_mutations(broken).is_err(), "{broken}");
        }
    }

    /// Deletes accept strings and `{name}` objects.
    #[test]
    fn parses_wrangler_bulk_delete() {
        let mutations = delete_mutations(r#"["a", {"name": "b"}, {"key": "c"}]"#).unwrap();
        assert_eq!(mutations.len(), 3);
        assert!(delete_mutations("[1]").is_err());
        assert!(delete_mutations(r#"[{"other": "x"}]"#).is_err());
        assert!(delete_mutations(r#"{"a": 1}"#).is_err());
    }
}
