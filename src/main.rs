//! The `tierkv` binary: server and command-line client.

use std::process::ExitCode;

/// jemalloc returns freed memory to the system on its own (glibc's malloc
/// keeps large freed buffers in its arenas: after a burst of 25 MiB puts the
/// server stayed at 2 GB).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: a background thread purges unused
/// pages about a second after they are freed, whether or not anything else
/// allocates; one arena per CPU rather than four, so memory freed by one
/// thread is reused by the next on that CPU instead of piling up in arenas
/// (the bulk client's peak grew 30% over 30 batches with the default).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,percpu_arena:percpu".as_ptr(),
);

/// A C string pointer jemalloc reads at start (`const char *malloc_conf`).
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points to a string literal, immutable for the life of the program.
unsafe impl Sync for MallocConf {}

/// Allocations from this size up get their own mapping from glibc's malloc,
/// returned to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 1024 * 1024;

fn main() -> ExitCode {
    // RocksDB's C++ allocates through glibc's malloc, not jemalloc. glibc
    // raises its mmap threshold to the size of every large block freed, so
    // after one 25 MiB write batch or memtable block, later ones come from
    // its arenas and stay there when freed (hundreds of MiB after a burst of
    // large puts). Setting the threshold fixes it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map(|runtime| runtime.block_on(tierkv::cli::main()))
        .unwrap_or_else(|error| {
            eprintln!("tierkv: cannot start the async runtime: {error}");
            ExitCode::from(1)
        })
}
