//! From the engine's change events to a watcher's events: the filter by
//! prefix and owned namespaces, and the values, as Get returns them.

use std::sync::Arc;

use crate::engine::{Change, ChangeEvent, Engine, EngineError};
use crate::kv::value::entry_from_record;
use crate::kv::ValueType;

use super::history;
use super::{Batch, EventKind, WatchError, WatchEvent};

/// Which keys a watcher sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Filter {
    /// The watched prefix.
    pub prefix: String,
}

impl Filter {
    /// Whether an event of `key` goes to this watcher: under the prefix (a
    /// dropped namespace when it holds keys under the prefix), and outside
    /// every namespace another service owns (as List leaves them out).
    fn admits(&self, engine: &dyn Engine, key: &str, kind: EventKind) -> bool {
        let under = match kind {
            EventKind::NamespaceCleared => {
                key.starts_with(&self.prefix) || self.prefix.starts_with(key)
            }
            _ => key.starts_with(&self.prefix),
        };
        under && engine.namespaces().owner_of(key).is_none()
    }
}

/// Turns the engine's events of one batch into a watcher's events: the
/// same for every watcher of a (prefix, include_values) group.
#[derive(Clone)]
pub(super) struct Converter {
    pub engine: Arc<dyn Engine>,
    pub filter: Filter,
    pub include_values: bool,
}

impl Converter {
    /// The events of one batch that go to this watcher, with values when
    /// asked for: from the feed when it carries them, otherwise read from
    /// the store (the value only when the key still holds that version).
    pub async fn convert(
        &self,
        batch: &[ChangeEvent],
        live: bool,
    ) -> Result<Vec<WatchEvent>, WatchError> {
        let mut events = Vec::new();
        let mut to_read = Vec::new();
        for event in batch {
            let (kind, version, expire_at_millis) = match &event.change {
                Change::Put {
                    version,
                    expire_at_millis,
                    ..
                } => (EventKind::Put, *version, *expire_at_millis),
                Change::Delete => (EventKind::Delete, 0, None),
                Change::NamespaceCleared => (EventKind::NamespaceCleared, 0, None),
            };
            if !self.filter.admits(self.engine.as_ref(), &event.key, kind) {
                continue;
            }
            let (schema_version, written) = history::put_details(event);
            let mut out = WatchEvent {
                key: Arc::clone(&event.key),
                kind,
                version,
                expire_at_millis,
                schema_version: if kind == EventKind::Put {
                    schema_version
                } else {
                    0
                },
                value: None,
                value_superseded: false,
            };
            if self.include_values && kind == EventKind::Put {
                match written.filter(|_| live) {
                    Some(record) => {
                        out.value =
                            Some(entry_from_record(&event.key, record, ValueType::AsStored)?)
                    }
                    None => to_read.push(events.len()),
                }
            }
            events.push(out);
        }
        if !to_read.is_empty() {
            let keys: Vec<String> = to_read
                .iter()
                .map(|index| events[*index].key.to_string())
                .collect();
            let records = self.engine.get_many(keys).await?;
            for (index, record) in to_read.into_iter().zip(records) {
                let event = &mut events[index];
                match record {
                    Some(record) if record.version == event.version => {
                        if event.schema_version == 0 {
                            event.schema_version = record.schema_version;
                        }
                        event.value =
                            Some(entry_from_record(&event.key, record, ValueType::AsStored)?);
                    }
                    _ => event.value_superseded = true,
                }
            }
        }
        Ok(events)
    }

    /// [`Self::convert`] as a shared batch, or `None` when nothing of it is
    /// under the prefix.
    pub async fn batch(
        &self,
        batch: &[ChangeEvent],
        sequence: u64,
        live: bool,
    ) -> Result<Option<Arc<Batch>>, WatchError> {
        let events = self.convert(batch, live).await?;
        Ok((!events.is_empty()).then(|| Arc::new(Batch::new(events, sequence))))
    }
}

/// The error of a feed that closed: the store is shutting down.
pub(super) fn feed_closed() -> WatchError {
    WatchError::Engine(EngineError::Unavailable(
        "the change feed closed (the store is shutting down)".into(),
    ))
}
