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
//! [`BUFFER_BYTES`]. The first flush after the buffer filled does not write:
//! it asks for the connection's task to be polled once more, after the
//! tasks already queued (the streams about to hand over their frames), and
//! the next flush writes everything buffered by then in one call: in the
//! next poll, or in the same one if h2 flushes again (it does after every
//! DATA frame over 256 bytes). h2 flushes at the end of every poll of an
//! open connection and before it shuts the socket down, so nothing waits for
//! more than that one turn of the runtime's queue. Larger writes go straight
//! to the socket (after what is buffered), so big replies are not copied; a
//! full buffer pushes back on the writer.
//!
//! Measured with h2load (docs/benchmarks.md): 16 connections × 16 streams
//! of unary calls went from 80–85k to 124–132k health checks a second on
//! two cores, Get and cache hits by 40–45%, Put by 20%; a single
//! sequential client saw no change in latency.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes of this many bytes or more bypass the buffer.
pub const DIRECT_WRITE_BYTES: usize = 16 * 1024;
/// Most bytes buffered per connection; a write that would go past it waits
/// until the buffer is written.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// An I/O stream whose small writes are gathered into one socket write per
/// turn of the connection's task (see the module's doc).
#[derive(Debug)]
pub struct CoalescingIo<IO> {
    inner: IO,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already written.
    written: usize,
    /// A flush was answered without writing; the next one writes.
    flush_deferred: bool,
}

impl<IO> CoalescingIo<IO> {
    /// Wraps `inner`.
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
            flush_deferred: false,
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
            this.flush_deferred = false;
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.flush_deferred {
            // Polled again after the tasks queued now, which may add their
            // frames first; that poll's flush writes them all.
            this.flush_deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        this.flush_deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        this.flush_deferred = false;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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

    fn pair(
        capacity: usize,
    ) -> (
        CoalescingIo<Counted<tokio::io::DuplexStream>>,
        tokio::io::DuplexStream,
        Arc<AtomicUsize>,
    ) {
        let (near, far) = tokio::io::duplex(capacity);
        let writes = Arc::new(AtomicUsize::new(0));
        let io = CoalescingIo::new(Counted {
            inner: near,
            writes: Arc::clone(&writes),
        });
        (io, far, writes)
    }

    /// Small writes and the first flush stay buffered; the next flush
    /// writes them in one socket write, in order.
    #[tokio::test]
    async fn small_writes_go_out_together_on_the_second_flush() {
        let (mut io, mut far, writes) = pair(1 << 20);
        for part in [&b"one "[..], b"two ", b"three"] {
            io.write_all(part).await.unwrap();
        }
        io.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 0, "the first flush defers");
        io.write_all(b" four").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        let mut received = vec![0; 18];
        far.read_exact(&mut received).await.unwrap();
        assert_eq!(received, b"one two three four");
    }

    /// A large write goes straight to the socket, after what was buffered.
    #[tokio::test]
    async fn a_large_write_follows_the_buffer_without_a_copy() {
        let (mut io, mut far, writes) = pair(1 << 20);
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
        let (mut io, mut far, _writes) = pair(1024);
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
                io.flush().await.unwrap();
            }
        }
        io.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), sent);
    }
}
