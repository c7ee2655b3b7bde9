//! Fan-out groups: one task per (prefix, include_values) that takes each
//! batch from the feed once, filters and converts it once into one shared
//! [`Batch`], and hands the same `Arc` to the queue of every caught-up
//! watcher of the group. Per watcher and batch that is a reference count, a
//! queue entry and a wake-up; nothing per event. (The batch's wire form is
//! built once too, by the first stream that sends it.)
//!
//! **Joining.** A watcher replays the history and follows the feed on its
//! own ([`super::pump`]) until, at a batch boundary with everything up to
//! its cursor queued, the group can take over from exactly there:
//! - the group is not past the cursor: it skips what the watcher already
//!   queued (its `after`) and sends everything later;
//! - the group is past it, but its recent batches still cover the gap: they
//!   are queued for the watcher first, under the group's lock, so no batch
//!   the group hands out meanwhile can come between;
//! - otherwise (the group started after the cursor) the watcher follows the
//!   feed on its own a little longer and tries again.
//!
//! **Leaving.** A member whose client does not read is ended
//! ([`WatchError::SlowConsumer`]) and dropped from the group. When the
//! group's own feed lags (or a batch cannot be converted) the group stops
//! and hands every member back with the sequence up to which it queued
//! everything: the watcher replays from the history from there and joins a
//! new group, exactly as after a lag of its own. A group left without
//! members stops by itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::engine::{ChangeEvent, ChangeSubscription, RecvError};

use super::convert::{feed_closed, Converter};
use super::history;
use super::queue::{Mode, Shared};
use super::{Batch, WatchError};

/// Most recent batches a group keeps for watchers about to join.
const RECENT_BATCHES: usize = 256;
/// Most bytes (by the buffer's weight) of those recent batches, and at
/// most a quarter of one watcher's `buffer_bytes`: a group exists only
/// while it has members, so this adds at most a quarter to the memory
/// bound per watcher (and the batches are mostly shared with the
/// members' queues anyway).
const RECENT_BYTES: usize = 1024 * 1024;
/// Most batches handed out together (a busy feed is not drained forever
/// before the members get anything).
const MAX_BATCHES_PER_HAND_OUT: usize = 64;
/// How often an idle group looks for members that went away.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// What a group tells a member when it lets it go.
#[derive(Debug)]
pub(super) enum Handback {
    /// Every batch up to this sequence is queued: continue from the
    /// history after it.
    Resume(u64),
    /// The watcher ends with this.
    End(WatchError),
}

/// Whether a watcher joined its group.
pub(super) enum Joined {
    /// The group serves it now; the receiver hears when it lets it go.
    Yes(oneshot::Receiver<Handback>),
    /// Not yet: the group started after the watcher's cursor.
    No,
}

type Key = (String, bool);

/// The open groups of one watch service.
#[derive(Debug, Default)]
pub(super) struct Groups {
    map: Mutex<HashMap<Key, Arc<Group>>>,
}

impl Groups {
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Arc<Group>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group of `converter`'s (prefix, include_values) takes over the
    /// watcher whose queue is `shared` and holds everything up to `cursor`,
    /// if it can (see the module's doc), starting the group if there is none.
    pub fn join(
        self: &Arc<Self>,
        converter: &Converter,
        shared: &Arc<Shared>,
        cursor: u64,
        buffer_bytes: usize,
        history_id: u64,
    ) -> Result<Joined, WatchError> {
        let key = (converter.filter.prefix.clone(), converter.include_values);
        loop {
            let group = {
                let mut map = self.map();
                match map.get(&key) {
                    Some(group) => Arc::clone(group),
                    None => {
                        let group =
                            Group::start(self, key.clone(), converter, buffer_bytes, history_id);
                        map.insert(key.clone(), Arc::clone(&group));
                        group
                    }
                }
            };
            let mut state = group.state();
            if state.closed {
                drop(state);
                // It removes itself as it stops; do it for it, then retry.
                let mut map = self.map();
                if map.get(&key).is_some_and(|open| Arc::ptr_eq(open, &group)) {
                    map.remove(&key);
                }
                continue;
            }
            let after = if cursor >= state.last {
                // The group has not handed out anything after the cursor
                // yet; it skips what the watcher already holds.
                cursor
            } else if cursor >= state.floor {
                // The group is ahead; its recent batches fill the gap.
                for batch in state.recent.iter().filter(|b| b.sequence > cursor) {
                    shared.push(
                        Some(batch),
                        batch.sequence,
                        Mode::Live,
                        buffer_bytes,
                        history_id,
                    )?;
                }
                shared.push(None, state.last, Mode::Live, buffer_bytes, history_id)?;
                state.last
            } else {
                return Ok(Joined::No);
            };
            let (handback, receiver) = oneshot::channel();
            state.members.push(Member {
                shared: Arc::clone(shared),
                after,
                handback,
            });
            state.idle_ticks = 0;
            return Ok(Joined::Yes(receiver));
        }
    }

    /// How many groups are open now (for tests).
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.map().len()
    }

    /// How many members the open groups have together (for tests).
    #[cfg(test)]
    pub fn members(&self) -> usize {
        self.map()
            .values()
            .map(|group| group.state().members.len())
            .sum()
    }
}

struct Member {
    shared: Arc<Shared>,
    /// The group sends it only batches after this (it holds the rest).
    after: u64,
    handback: oneshot::Sender<Handback>,
}

struct State {
    members: Vec<Member>,
    /// Every batch of the feed up to this sequence was handed out.
    last: u64,
    /// `recent` holds every batch with events in (`floor`, `last`].
    floor: u64,
    recent: VecDeque<Arc<Batch>>,
    recent_bytes: usize,
    /// Prune ticks in a row that found no members.
    idle_ticks: u32,
    /// Stopped: no member may join.
    closed: bool,
}

/// One fan-out group.
struct Group {
    state: Mutex<State>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("Group")
            .field("members", &state.members.len())
            .field("last", &state.last)
            .finish_non_exhaustive()
    }
}

/// Why a group stopped.
enum Stop {
    /// No members for two prune ticks.
    Empty,
    /// Its feed lagged, or a batch could not be converted: members go back
    /// to the history (which reports a real failure to each of them).
    Resume,
    /// The feed closed: the store is shutting down.
    Closed,
}

impl Group {
    /// Subscribes first, so the group covers every commit after the
    /// position the feed had published by then.
    fn start(
        groups: &Arc<Groups>,
        key: Key,
        converter: &Converter,
        buffer_bytes: usize,
        history_id: u64,
    ) -> Arc<Group> {
        let subscription = converter.engine.subscribe();
        let start = subscription.feed_position().published();
        let group = Arc::new(Group {
            state: Mutex::new(State {
                members: Vec::new(),
                last: start,
                floor: start,
                recent: VecDeque::new(),
                recent_bytes: 0,
                idle_ticks: 0,
                closed: false,
            }),
        });
        let task = Arc::clone(&group).run(
            Arc::downgrade(groups),
            key,
            converter.clone(),
            subscription,
            start,
            buffer_bytes,
            history_id,
        );
        tokio::spawn(task);
        group
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        self: Arc<Self>,
        groups: Weak<Groups>,
        key: Key,
        converter: Converter,
        mut subscription: ChangeSubscription,
        mut handed_out: u64,
        buffer_bytes: usize,
        history_id: u64,
    ) {
        let mut pending: Vec<ChangeEvent> = Vec::new();
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Batches converted since the last hand-out: everything the feed
        // already holds is handed out together, one queue entry set and one
        // wake-up per member for all of it (a busy group's members then
        // wake once per look at the feed, not once per write request).
        let mut ready: Vec<(Option<Arc<Batch>>, u64)> = Vec::new();
        let stop = loop {
            let received = if ready.len() >= MAX_BATCHES_PER_HAND_OUT {
                Ok(None)
            } else if pending.is_empty() && ready.is_empty() {
                tokio::select! {
                    received = subscription.recv() => received.map(Some),
                    _ = prune.tick() => {
                        if self.prune() {
                            break Stop::Empty;
                        }
                        continue;
                    }
                }
            } else if pending.is_empty() {
                subscription.try_recv()
            } else {
                // The rest of a batch is on its way: the feed sends a
                // commit's events together.
                subscription.recv().await.map(Some)
            };
            match received {
                Ok(Some(event)) => {
                    if event.sequence <= handed_out {
                        continue;
                    }
                    let last = history::ends_batch(&event);
                    let sequence = event.sequence;
                    pending.push(event);
                    if !last {
                        continue;
                    }
                    let events = std::mem::take(&mut pending);
                    match converter.batch(&events, sequence, true).await {
                        Ok(batch) => {
                            ready.push((batch, sequence));
                            handed_out = sequence;
                        }
                        Err(_) => {
                            // What was converted goes out; the members
                            // replay the rest (and meet the failure there).
                            self.hand_out(&mut ready, buffer_bytes, history_id);
                            break Stop::Resume;
                        }
                    }
                }
                Ok(None) => self.hand_out(&mut ready, buffer_bytes, history_id),
                Err(RecvError::Lagged { .. }) => {
                    self.hand_out(&mut ready, buffer_bytes, history_id);
                    break Stop::Resume;
                }
                Err(RecvError::Closed) => break Stop::Closed,
            }
        };
        let members = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.members)
        };
        if let Some(groups) = groups.upgrade() {
            let mut map = groups.map();
            if map.get(&key).is_some_and(|open| Arc::ptr_eq(open, &self)) {
                map.remove(&key);
            }
        }
        for member in members {
            let handback = match stop {
                Stop::Empty | Stop::Resume => Handback::Resume(member.after.max(handed_out)),
                Stop::Closed => Handback::End(feed_closed()),
            };
            let _ = member.handback.send(handback);
        }
    }

    /// Queues `ready`'s batches (and moves the cursor past requests with
    /// nothing under the prefix) for every member, and keeps them for
    /// joiners; empties `ready`.
    fn hand_out(
        &self,
        ready: &mut Vec<(Option<Arc<Batch>>, u64)>,
        buffer_bytes: usize,
        history_id: u64,
    ) {
        let Some(&(_, last)) = ready.last() else {
            return;
        };
        let mut state = self.state();
        let mut index = 0;
        while index < state.members.len() {
            let member = &state.members[index];
            if member.handback.is_closed() {
                // The watcher is gone.
                state.members.swap_remove(index);
                continue;
            }
            let after = member.after;
            let batches = ready.iter().filter(|(_, sequence)| *sequence > after);
            let pushed = member.shared.push_all(batches, buffer_bytes, history_id);
            if let Err(error) = pushed {
                let member = state.members.swap_remove(index);
                let _ = member.handback.send(Handback::End(error));
                continue;
            }
            index += 1;
        }
        state.last = last;
        let max_bytes = RECENT_BYTES.min(buffer_bytes / 4);
        for (batch, _) in ready.drain(..) {
            let Some(batch) = batch else {
                continue;
            };
            state.recent_bytes += batch.weight;
            state.recent.push_back(batch);
        }
        while state.recent.len() > RECENT_BATCHES || state.recent_bytes > max_bytes {
            let Some(old) = state.recent.pop_front() else {
                break;
            };
            state.recent_bytes -= old.weight;
            state.floor = old.sequence;
        }
    }

    /// Drops members that went away; true when the group has had none for
    /// two ticks in a row (a watcher that started it may still be on its
    /// way in) and is now closed.
    fn prune(&self) -> bool {
        let mut state = self.state();
        state.members.retain(|member| !member.handback.is_closed());
        if !state.members.is_empty() {
            state.idle_ticks = 0;
            return false;
        }
        state.idle_ticks += 1;
        if state.idle_ticks > 2 {
            state.closed = true;
            return true;
        }
        false
    }
}
