//! The origin client's memory grows with the bytes that arrived, not with the
//! length an origin announces. Measured with a counting allocator, which is
//! why this is a test binary of its own (one test, nothing else allocating).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tierkv::cache::config::{CacheConfig, OriginConfig};
use tierkv::cache::origin::{OriginClient, OriginError};
use tierkv::kv::limits::MAX_VALUE_BYTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts the bytes allocated now and the most ever allocated at once.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc(layout);
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout);
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc_zeroed(layout);
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = System.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An origin announces a 20 MiB body (within `max_body_bytes`) and sends
/// 1 KiB of it, then nothing: while the client waits for the rest, it holds
/// about what arrived, not the 20 MiB announced. (A reader of random keys
/// against such an origin would otherwise pin `max_body_bytes` per fetch.)
#[tokio::test]
async fn body_memory_grows_with_what_arrived() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sent, body_sent) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the client closed before its request ended");
            request.extend_from_slice(&buffer[..read]);
        }
        let announced = 20 * 1024 * 1024;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {announced}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b'x'; 1024]).await.unwrap();
        stream.flush().await.unwrap();
        let _ = sent.send(());
        let _ = released.await;
    });

    let config = CacheConfig {
        origins: vec![OriginConfig {
            max_body_bytes: MAX_VALUE_BYTES,
            ..OriginConfig::new("cache:api:", format!("http://{addr}/{{key}}"))
        }],
        ..CacheConfig::default()
    };
    let client = OriginClient::new(&config).unwrap();
    let baseline = CURRENT.load(Ordering::SeqCst);
    PEAK.store(baseline, Ordering::SeqCst);
    let fetch = tokio::spawn(async move {
        client
            .fetch("cache:api:big", None, Duration::from_secs(60))
            .await
    });
    body_sent.await.unwrap();
    // Time for the client to take in the headers and the first bytes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(baseline);
    assert!(
        !fetch.is_finished(),
        "the fetch should still wait for the rest of the body"
    );
    assert!(
        peak < 4 * 1024 * 1024,
        "{peak} bytes allocated while 1 KiB of a 20 MiB body had arrived"
    );

    // The origin gives up: the fetch fails, having kept nothing.
    let _ = release.send(());
    server.await.unwrap();
    let result = fetch.await.unwrap();
    assert!(matches!(result, Err(OriginError::Connect(_))), "{result:?}");
}
