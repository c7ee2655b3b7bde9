//! Group commit: decided write requests ([`super::write`]) queue here, and
//! the requests queued while [`MAX_GROUPS_IN_FLIGHT`] transactions are
//! under way go together in the next one, within the cluster's
//! `--max-txn-ops` and `--max-request-bytes`. Each request keeps its own
//! compares, outcomes, versions (indices of its own in the transaction),
//! sequence and batch in the feed record. A request may join only if it
//! reads no key an earlier request of the group writes; a key it only puts
//! blindly it overwrites, as if committed right after. When the compares
//! fail, the failure branch (one compare-only nested `Txn` per request that
//! has compares) tells whose failed: those decide again, the others are
//! sent again as decided.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use etcd_client::{Compare, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::feed::{self, Entry};
use super::EtcdEngine;
use crate::engine::{EngineError, WriteOp};

/// Shared transactions in flight at once: while they are, new requests
/// queue and go together in the next.
const MAX_GROUPS_IN_FLIGHT: usize = 2;

/// A decided request waiting for a shared transaction.
pub(super) struct Pending {
    /// The batch.
    pub(super) ops: Arc<Vec<WriteOp>>,
    /// Its distinct keys, each with whether the decision read its state
    /// (a precondition or a delete). A key it only puts blindly may have
    /// been written by an earlier request of its group: it overwrites that
    /// write, as if committed right after it. A key it read may not.
    pub(super) keys: Vec<(String, bool)>,
    /// Its compares: the `mod_revision`s its decision read.
    pub(super) compares: Vec<Compare>,
    /// Its feed entries, indexed from 0.
    pub(super) entries: Vec<Entry>,
    /// When it was decided, by the engine's clock.
    pub(super) now: u64,
    /// etcd operations it needs at least.
    pub(super) required_ops: usize,
    /// Bytes it adds to the transaction.
    pub(super) bytes: usize,
    /// Where its answer goes.
    pub(super) reply: oneshot::Sender<Result<GroupAnswer, EngineError>>,
}

/// What became of a request in its group.
pub(super) enum GroupAnswer {
    /// Committed at `revision`, its indices shifted by `offset`.
    Committed {
        /// The shared transaction's revision.
        revision: i64,
        /// Where the request's indices start in it.
        offset: u16,
    },
    /// Its own compares failed: decide again.
    CompareFailed,
    /// Its compares held but another request's failed: send it again as is.
    Held,
}

/// Forms and commits groups of the requests `queue` receives until the
/// engine is dropped, [`MAX_GROUPS_IN_FLIGHT`] at a time. Its queue holds
/// at most one request per write call waiting on it.
pub(super) async fn commit_groups(
    engine: std::sync::Weak<super::Inner>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    let slots = Arc::new(Semaphore::new(MAX_GROUPS_IN_FLIGHT));
    let mut waiting = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(pending) => waiting.push_back(pending),
                None => return,
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Everything that arrived while the slots were busy joins.
        while let Ok(pending) = queue.try_recv() {
            waiting.push_back(pending);
        }
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = EtcdEngine { inner };
        let group = engine.take_group(&mut waiting);
        tokio::spawn(async move {
            engine.commit_group(group).await;
            drop(slot);
        });
    }
}

impl EtcdEngine {
    /// Takes from `queue` the requests one transaction can carry: in queue
    /// order, each that fits the cluster's limits with the earlier ones (the
    /// first always) and reads no key an earlier one writes (it may put one
    /// blindly: see [`Pending::keys`]). The others stay queued, in order,
    /// for the next group.
    fn take_group(&self, queue: &mut VecDeque<Pending>) -> Vec<Pending> {
        let options = &self.inner.options;
        let max_ops = options.max_txn_ops.saturating_sub(1);
        let max_bytes = self.limits().max_request_bytes;
        let mut group: Vec<Pending> = Vec::new();
        let mut names: HashSet<String> = HashSet::new();
        let (mut ops, mut compares, mut checking, mut bytes, mut indices) = (0, 0, 0, 0, 0);
        let mut left = VecDeque::with_capacity(queue.len());
        for pending in queue.drain(..) {
            let checks = usize::from(!pending.compares.is_empty());
            let fits = group.is_empty()
                || (ops + pending.required_ops <= max_ops
                    && compares + pending.compares.len() <= options.max_txn_ops
                    && checking + checks < options.max_txn_ops
                    && bytes + pending.bytes <= max_bytes
                    && indices + pending.ops.len() < feed::MAX_INDICES_PER_REVISION
                    && pending
                        .keys
                        .iter()
                        .all(|(key, read)| !read || !names.contains(key)));
            if !fits {
                left.push_back(pending);
                continue;
            }
            ops += pending.required_ops;
            compares += pending.compares.len();
            checking += checks;
            bytes += pending.bytes;
            indices += pending.ops.len();
            names.extend(pending.keys.iter().map(|(key, _)| key.clone()));
            group.push(pending);
        }
        *queue = left;
        group
    }

    /// Commits `group` as one transaction and answers each of its requests.
    async fn commit_group(&self, group: Vec<Pending>) {
        let max_ops = self.inner.options.max_txn_ops.saturating_sub(1);
        // The last operation on each etcd key wins: a later request's blind
        // put overwrites an earlier one's write of the key (etcd refuses a
        // transaction naming a key twice). An optional delete that replaces
        // a required operation becomes required.
        let mut last: HashMap<Vec<u8>, (TxnOp, bool)> = HashMap::new();
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut compares = Vec::new();
        let mut checks = Vec::new();
        let mut requests = Vec::with_capacity(group.len());
        let mut offsets = Vec::with_capacity(group.len());
        let mut now = 0;
        let mut offset = 0u16;
        for pending in &group {
            let (required, spare, _) = self.final_ops(&pending.ops, offset);
            let ops = required
                .into_iter()
                .map(|(key, op)| (key, op, true))
                .chain(spare.into_iter().map(|(key, op)| (key, op, false)));
            for (key, op, required) in ops {
                match last.get_mut(&key) {
                    Some(slot) => *slot = (op, required || slot.1),
                    None => {
                        order.push(key.clone());
                        last.insert(key, (op, required));
                    }
                }
            }
            compares.extend(pending.compares.iter().cloned());
            if group.len() > 1 && !pending.compares.is_empty() {
                checks.push(TxnOp::txn(Txn::new().when(pending.compares.clone())));
            }
            requests.push(
                pending
                    .entries
                    .iter()
                    .map(|entry| entry.clone().shifted(offset))
                    .collect::<Vec<Entry>>(),
            );
            offsets.push(offset);
            now = now.max(pending.now);
            offset += pending.ops.len() as u16;
        }
        let mut success = Vec::with_capacity(order.len() + 1);
        let mut optional = Vec::new();
        for key in order {
            if let Some((op, required)) = last.remove(&key) {
                if required {
                    success.push(op);
                } else {
                    optional.push(op);
                }
            }
        }
        let room = max_ops.saturating_sub(success.len());
        success.extend(optional.into_iter().take(room));
        success.push(TxnOp::put(
            self.inner.keys.feed(),
            feed::encode(now, &requests),
            None,
        ));
        let mut txn = Txn::new().when(compares).and_then(success);
        let checked = !checks.is_empty();
        if checked {
            txn = txn.or_else(checks);
        }
        let response = match self.send_txn(txn, false).await {
            Ok(response) => response,
            Err(error) => {
                for pending in group {
                    let _ = pending.reply.send(Err(error.duplicate()));
                }
                return;
            }
        };
        if response.succeeded() {
            let revision = response.header().map_or(0, |header| header.revision());
            for (pending, offset) in group.into_iter().zip(offsets) {
                let _ = pending
                    .reply
                    .send(Ok(GroupAnswer::Committed { revision, offset }));
            }
            return;
        }
        // Whose compares held: the failure branch ran one compare-only txn
        // per request that has compares, in group order.
        let mut held = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Txn(check) => check.succeeded(),
            _ => false,
        });
        for pending in group {
            let answer = if pending.compares.is_empty() {
                GroupAnswer::Held
            } else if !checked {
                // Alone in its group: its own compares failed.
                GroupAnswer::CompareFailed
            } else if held.next().unwrap_or(false) {
                GroupAnswer::Held
            } else {
                GroupAnswer::CompareFailed
            };
            let _ = pending.reply.send(Ok(answer));
        }
    }
}
