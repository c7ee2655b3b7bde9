//! Fewer, larger socket writes per HTTP/2 connection.
//!
//! Each response's task hands its frames to h2 and wakes the connection's
//! task, which the runtime runs right after it (tokio's LIFO slot); h2 then
//! writes what it has and flushes, so a busy connection made about one
//! `writev` per response. h2 also writes a DATA frame with a payload over
//! 256 bytes on its own (it chains the payload and flushes before the next
//! frame). On loopback a send runs the receiver's TCP path too, so those
//! system calls were a large share of the server's CPU for small calls.
//!
//! [`CoalescingIo`] sits between hyper and the socket. Writes below
//! [`DIRECT_WRITE_BYTES`] are copied into a buffer of at most
//! [`BUFFER_BYTES`]. Flushes during the poll of the connection in which the
//! buffer filled do not write: the first asks for the task to be polled
//! once more, after the tasks already queued (the streams about to hand
//! over their frames), and the first flush of a later poll ([`Turns`] tells
//! polls apart) writes everything buffered by then in one call. h2 flushes
//! at the end of every poll of an open connection and before it shuts the
//! socket down, so nothing waits for more than that one turn of the
//! runtime's queue. Larger writes go straight to the socket
//! (after what is buffered), so big replies are not copied; a full buffer
//! pushes back on the writer.
//!
//! Measured with h2load (docs/benchmarks.md): 16 connections × 16 streams
//! of unary calls went from 80–85k to 124–132k health checks a second on
//! two cores, Get and cache hits by 40–45%, Put by 20%; a single
//! sequential client saw no change in latency.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes of this many bytes or more bypass the buffer.
pub const DIRECT_WRITE_BYTES: usize = 16 * 1024;
/// Most bytes buffered per connection; a write that would go past it waits
/// until the buffer is written.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// Counts the polls of a connection's future: the connection's task
/// advances it before each poll, and its [`CoalescingIo`] writes at the
/// first flush of a poll later than the one that buffered.
#[derive(Debug, Clone, Default)]
pub struct Turns(Arc<AtomicU64>);

impl Turns {
    /// A new poll begins.
    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// An I/O stream whose small writes are gathered into one socket write per
/// turn of the connection's task (see the module's doc).
#[derive(Debug)]
pub struct CoalescingIo<IO> {
    inner: IO,
    turns: Turns,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already written.
    written: usize,
    /// The poll in which a flush was answered without writing; a flush of
    /// a later poll writes.
    deferred_at: Option<u64>,
}

impl<IO> CoalescingIo<IO> {
    /// Wraps `inner`, whose connection's polls `turns` counts.
    pub fn new(inner: IO, turns: Turns) -> Self {
        Self {
            inner,
            turns,
            buffer: Vec::new(),
            written: 0,
            deferred_at: None,
        }
    }

    fn buffered(&self) -> usize {
        self.buffer.len() - self.written
    }
}

impl<IO: AsyncWrite + Unpin> CoalescingIo<IO> {
    /// Writes everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        // Large buffers are not kept for an idle connection.
        if self.buffer.capacity() > BUFFER_BYTES {
            self.buffer.shrink_to(BUFFER_BYTES);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for CoalescingIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = slices.iter().map(|slice| slice.len()).sum();
        let this = &mut *self;
        if total >= DIRECT_WRITE_BYTES {
            ready!(this.poll_drain(cx))?;
            return Pin::new(&mut this.inner).poll_write_vectored(cx, slices);
        }
        if this.buffered() + total > BUFFER_BYTES {
            ready!(this.poll_drain(cx))?;
        }
        for slice in slices {
            this.buffer.extend_from_slice(slice);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buffered() == 0 {
            this.deferred_at = None;
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        let now = this.turns.current();
        match this.deferred_at {
            None => {
                // Polled again after the tasks queued now, which may add
                // their frames first; that poll's flush writes them all.
                this.deferred_at = Some(now);
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            // The same poll: h2 may have more frames to hand over.
            Some(turn) if turn == now => return Poll::Ready(Ok(())),
            Some(_) => {}
        }
        ready!(this.poll_drain(cx))?;
        this.deferred_at = None;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        this.deferred_at = None;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Counts the writes that reach the socket.
    struct Counted<IO> {
        inner: IO,
        writes: Arc<AtomicUsize>,
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let result = Pin::new(&mut self.inner).poll_write(cx, data);
            if matches!(result, Poll::Ready(Ok(_))) {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            result
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    type Pair = (
        CoalescingIo<Counted<tokio::io::DuplexStream>>,
        tokio::io::DuplexStream,
        Arc<AtomicUsize>,
        Turns,
    );

    fn pair(capacity: usize) -> Pair {
        let (near, far) = tokio::io::duplex(capacity);
        let writes = Arc::new(AtomicUsize::new(0));
        let turns = Turns::default();
        let io = CoalescingIo::new(
            Counted {
                inner: near,
                writes: Arc::clone(&writes),
            },
            turns.clone(),
        );
        (io, far, writes, turns)
    }

    /// Small writes and every flush of the poll that buffered them stay
    /// buffered; the first flush of the next poll writes them all in one
    /// socket write, in order.
    #[tokio::test]
    async fn small_writes_go_out_together_at_the_next_poll() {
        let (mut io, mut far, writes, turns) = pair(1 << 20);
        turns.advance();
        for part in [&b"one "[..], b"two ", b"three"] {
            io.write_all(part).await.unwrap();
            io.flush().await.unwrap();
        }
        assert_eq!(
            writes.load(Ordering::Relaxed),
            0,
            "flushes of one poll defer"
        );
        turns.advance();
        io.write_all(b" four").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        let mut received = vec![0; 18];
        far.read_exact(&mut received).await.unwrap();
        assert_eq!(received, b"one two three four");
        // Nothing buffered: a flush goes straight through.
        io.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 1);
    }

    /// A large write goes straight to the socket, after what was buffered.
    #[tokio::test]
    async fn a_large_write_follows_the_buffer_without_a_copy() {
        let (mut io, mut far, writes, _turns) = pair(1 << 20);
        io.write_all(b"head").await.unwrap();
        let large = vec![7u8; DIRECT_WRITE_BYTES];
        io.write_all(&large).await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 2);
        let mut received = vec![0; 4 + large.len()];
        far.read_exact(&mut received).await.unwrap();
        assert_eq!(&received[..4], b"head");
        assert!(received[4..].iter().all(|&byte| byte == 7));
    }

    /// A reader slower than the writer: the buffer never grows past its
    /// bound, and every byte arrives in order; shutdown writes the rest.
    #[tokio::test]
    async fn a_slow_reader_gets_every_byte_in_order_and_memory_stays_bounded() {
        let (mut io, mut far, _writes, turns) = pair(1024);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut sent = Vec::new();
        for n in 0u32..20_000 {
            let part = n.to_le_bytes();
            io.write_all(&part).await.unwrap();
            sent.extend_from_slice(&part);
            assert!(io.buffer.len() <= BUFFER_BYTES);
            if n % 1000 == 0 {
                turns.advance();
                io.flush().await.unwrap();
            }
        }
        io.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), sent);
    }
}
