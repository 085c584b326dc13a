//! The `tensorlet` binary: parse the command line and run it (the command sets up logging: a
//! node's config says how it logs).

use clap::Parser;

/// Tensors of a few hundred KB to tens of MB go through several buffers per request (the body,
/// the tensor, ONNX Runtime's input, the outputs). glibc serves each one above its mmap
/// threshold with a fresh mapping and gives freed memory back as soon as 128 KiB sit at the top of
/// a heap, so every request page-faulted its buffers in again: a 600 KB image paid ~0.25 ms for
/// it (BENCHMARKS.md). Buffers up to 32 MiB now come from the heap and are reused; up to 64 MiB
/// of free memory stays mapped before it is returned.
fn keep_tensor_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's allocator parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> std::process::ExitCode {
    keep_tensor_buffers();
    match tensorlet::cli::Cli::parse().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
