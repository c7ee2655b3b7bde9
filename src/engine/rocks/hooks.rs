//! Test hooks of the RocksDB engine, compiled only with the `test-hooks`
//! feature: holding or crashing the writer thread, and failing or delaying
//! point reads. A server build has none of them, not even the atomic each
//! would cost per group or read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{Inner, RocksEngine};
use crate::engine::EngineError;

impl RocksEngine {
    /// Test hook: holds the writer thread before its next group until the
    /// returned guard is dropped. Writes queue up meanwhile (and commit as one
    /// group afterwards), which lets tests build a group deterministically or
    /// let a caller's deadline fire while its write is queued. Not for
    /// production use: writes stall while it is held.
    pub fn pause_writer(&self) -> WriterPause {
        self.writer.pause()
    }

    /// Test hook: makes the writer thread panic before its next group, as a
    /// bug would, so tests can check that the failure is reported. The
    /// engine can no longer write afterwards.
    pub fn crash_writer(&self) {
        self.writer.crash();
    }

    /// Test hook: until the returned guard is dropped, every point read
    /// (`get`, `get_many`, `get_many_within`) fails with a storage error, or
    /// with `Some(delay)` first waits that long and then reads, so tests can
    /// exercise what callers do when reads fail or run out of time. Not for
    /// production use.
    pub fn inject_read_fault(&self, delay: Option<Duration>) -> ReadFaultGuard {
        self.inner.read_faults.set(Some(match delay {
            Some(delay) => ReadFault::Delay(delay),
            None => ReadFault::Fail,
        }));
        ReadFaultGuard {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Test hooks that hold or crash the writer thread. The writer reads one
/// atomic per group to learn that none is set.
#[derive(Default)]
pub(crate) struct WriterHooks {
    active: AtomicBool,
    state: Mutex<HookState>,
    changed: Condvar,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum HookState {
    #[default]
    Run,
    Pause,
    Crash,
}

impl WriterHooks {
    pub(super) fn set(&self, state: HookState) {
        let mut current = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *current = state;
        self.active.store(state != HookState::Run, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Called by the writer before each group: waits while paused, panics
    /// when told to crash.
    pub(super) fn checkpoint(&self) {
        if !self.active.load(Ordering::SeqCst) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while *state == HookState::Pause {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if *state == HookState::Crash {
            drop(state);
            panic!("writer crash requested by a test hook");
        }
    }
}

/// Holds the writer thread before its next group until dropped (a test hook:
/// see [`super::RocksEngine::pause_writer`]).
#[must_use = "the writer resumes when this is dropped"]
pub struct WriterPause {
    pub(super) hooks: Arc<WriterHooks>,
}

impl Drop for WriterPause {
    fn drop(&mut self) {
        self.hooks.set(HookState::Run);
    }
}

impl std::fmt::Debug for WriterPause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterPause").finish()
    }
}

/// What an injected read fault does ([`RocksEngine::inject_read_fault`]).
#[derive(Debug, Clone, Copy)]
enum ReadFault {
    Fail,
    Delay(Duration),
}

/// The injected read fault, if any; reads check one atomic to learn there is
/// none.
#[derive(Default)]
pub(super) struct ReadFaults {
    active: std::sync::atomic::AtomicBool,
    fault: std::sync::Mutex<Option<ReadFault>>,
}

impl ReadFaults {
    fn set(&self, fault: Option<ReadFault>) {
        let mut current = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        *current = fault;
        self.active.store(fault.is_some(), Ordering::SeqCst);
    }

    pub(super) async fn apply(&self) -> Result<(), EngineError> {
        if !self.active.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fault = *self.fault.lock().unwrap_or_else(|e| e.into_inner());
        match fault {
            None => Ok(()),
            Some(ReadFault::Fail) => Err(EngineError::Storage(
                "read failed: injected by a test hook".into(),
            )),
            Some(ReadFault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }
}

/// Ends an injected read fault when dropped (a test hook: see
/// [`RocksEngine::inject_read_fault`]).
#[must_use = "the fault ends when this is dropped"]
pub struct ReadFaultGuard {
    inner: Arc<Inner>,
}

impl Drop for ReadFaultGuard {
    fn drop(&mut self) {
        self.inner.read_faults.set(None);
    }
}

impl std::fmt::Debug for ReadFaultGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFaultGuard").finish()
    }
}
