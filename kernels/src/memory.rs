//! Device memory: [`DeviceBuffer`], a plain `cuMemAlloc` allocation that frees itself, with
//! every allocation of a device counted so that its high-water mark can be reported.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, PinnedHostSlice};

use crate::error::cuda_err;
use crate::{CudaDevice, Event, KernelError};

/// Bytes currently allocated through a device, and the most ever allocated at once.
#[derive(Debug, Default)]
pub(crate) struct MemoryCounter {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl MemoryCounter {
    fn add(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Starts a new high-water mark at the bytes live now.
    fn reset_peak(&self) {
        self.peak
            .store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Page-locked host memory for u32 values, mapped into the device's address space: kernels
/// write it directly ([`PinnedU32::device_ptr`]), the host reads it once they have finished
/// ([`CudaDevice::read_back`]).
pub struct PinnedU32 {
    host: PinnedHostSlice<u32>,
    device: u64,
}

impl PinnedU32 {
    /// Values it holds room for.
    pub fn len(&self) -> usize {
        self.host.len()
    }

    /// Whether it holds room for none.
    pub fn is_empty(&self) -> bool {
        self.host.len() == 0
    }

    /// Its address for kernels.
    pub fn device_ptr(&self) -> u64 {
        self.device
    }
}

/// u32 values kernels queued so far write into mapped host memory; dropped unread, it waits
/// for them before the memory can be freed.
pub struct ReadBack {
    /// Taken by [`ReadBack::wait`].
    host: Option<PinnedU32>,
    len: usize,
    done: Event,
}

impl ReadBack {
    /// Waits for the copy; returns the values and the pinned memory, for reuse.
    pub fn wait(mut self) -> Result<(Vec<u32>, PinnedU32), KernelError> {
        self.done.wait()?;
        let host = self.host.take().expect("a ReadBack is waited for once");
        let values = host
            .host
            .as_slice()
            .map_err(cuda_err("reading pinned host memory"))?[..self.len]
            .to_vec();
        Ok((values, host))
    }
}

impl Drop for ReadBack {
    fn drop(&mut self) {
        if self.host.is_some() {
            // The copy may still be writing into the memory about to be freed; an error here
            // is the stream's, reported by whatever runs on it next.
            let _ = self.done.wait();
        }
    }
}

/// A block of device memory, freed when dropped.
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: u64,
    bytes: usize,
    ctx: Arc<CudaContext>,
    counter: Arc<MemoryCounter>,
}

impl DeviceBuffer {
    /// The device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        // Errors cannot be returned from drop; the context records them for check_err.
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once.
        self.ctx.record_err(unsafe { result::free_sync(self.ptr) });
        self.counter.sub(self.bytes);
    }
}

impl CudaDevice {
    /// Allocates `bytes` bytes of device memory (contents unspecified). Running out of memory
    /// is an error that says what was being allocated and how much memory is free.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer, KernelError> {
        self.bind()?;
        let size = bytes.max(1);
        // SAFETY: a plain allocation; the pointer is owned by the returned buffer.
        let ptr = unsafe { result::malloc_sync(size) }.map_err(|e| {
            let (free, total) = result::mem_get_info().unwrap_or((0, 0));
            KernelError::OutOfMemory(format!(
                "allocating {what} ({} MiB) on {}: {e}; {} MiB of {} MiB free",
                size >> 20,
                self.name,
                free >> 20,
                total >> 20
            ))
        })?;
        self.memory.add(size);
        Ok(DeviceBuffer {
            ptr,
            bytes: size,
            ctx: self.ctx.clone(),
            counter: self.memory.clone(),
        })
    }

    /// Bytes allocated through this device now.
    pub fn allocated_bytes(&self) -> usize {
        self.memory.live.load(Ordering::Relaxed)
    }

    /// The most bytes allocated through this device at once since it was made or since the
    /// last [`reset_peak_allocated`](Self::reset_peak_allocated) (the allocator's high-water
    /// mark).
    pub fn peak_allocated_bytes(&self) -> usize {
        self.memory.peak.load(Ordering::Relaxed)
    }

    /// Starts a new high-water mark at the bytes allocated now (to measure one stretch of
    /// work).
    pub fn reset_peak_allocated(&self) {
        self.memory.reset_peak();
    }

    /// Free and total device memory in bytes, as the driver reports them.
    pub fn memory_info(&self) -> Result<(usize, usize), KernelError> {
        self.bind()?;
        result::mem_get_info().map_err(cuda_err("querying free device memory"))
    }

    /// Device-to-device copy bandwidth in bytes per second (bytes read plus bytes written),
    /// the median of `reps` copies of a `bytes`-byte buffer timed with events.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, KernelError> {
        let src = self.alloc(bytes, "copy-bandwidth source")?;
        let dst = self.alloc(bytes, "copy-bandwidth destination")?;
        // SAFETY: both buffers hold `bytes` bytes.
        unsafe {
            self.fill_bytes(src.ptr(), 0x5a, bytes)?;
            self.copy_device(src.ptr(), dst.ptr(), bytes, "a warm-up copy")?;
        }
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) {
            let start = self.record_event()?;
            // SAFETY: as above.
            unsafe { self.copy_device(src.ptr(), dst.ptr(), bytes, "a timed copy")? };
            let end = self.record_event()?;
            times.push(start.elapsed_ms(&end)? as f64 / 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(2.0 * bytes as f64 / times[times.len() / 2])
    }

    /// Copies `src` to device address `dst` (stream-ordered; pageable host memory, so the call
    /// returns once the data has been staged).
    ///
    /// # Safety
    /// `dst` must be a device allocation with room for `src`.
    pub unsafe fn copy_to_device<T: Copy>(
        &self,
        src: &[T],
        dst: u64,
        what: &str,
    ) -> Result<(), KernelError> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller guarantees room at `dst`; `src` is a live host slice.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(cuda_err(format_args!("copying {what} to the device")))
    }

    /// Copies device memory at `src` into `dst` and waits for it.
    ///
    /// # Safety
    /// `src` must be a device allocation holding at least `dst.len()` values of `T`.
    pub unsafe fn copy_to_host<T: Copy>(
        &self,
        src: u64,
        dst: &mut [T],
        what: &str,
    ) -> Result<(), KernelError> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller guarantees `src` holds dst.len() values.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(cuda_err(format_args!("copying {what} to the host")))?;
        self.synchronize(what)
    }

    /// Page-locked host memory for `len` u32, mapped into the device's address space (cached
    /// on the host, which reads it).
    pub fn pinned_u32(&self, len: usize) -> Result<PinnedU32, KernelError> {
        let what = || format!("allocating {len} u32 of mapped host memory");
        // SAFETY: the memory is only read after the kernels writing it have finished.
        let mut host = unsafe {
            self.ctx
                .alloc_pinned_with_flags::<u32>(len.max(1), sys::CU_MEMHOSTALLOC_DEVICEMAP)
        }
        .map_err(cuda_err(what()))?;
        let ptr = host.as_mut_ptr().map_err(cuda_err(what()))?;
        let mut device: sys::CUdeviceptr = 0;
        // SAFETY: `ptr` is the start of a live DEVICEMAP allocation of this context.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, ptr.cast(), 0) }
            .result()
            .map_err(cuda_err(what()))?;
        Ok(PinnedU32 { host, device })
    }

    /// `len` u32 that the kernels queued so far write into `host` (through
    /// [`PinnedU32::device_ptr`]), readable once [`ReadBack::wait`] returns.
    pub fn read_back(&self, host: PinnedU32, len: usize) -> Result<ReadBack, KernelError> {
        if host.len() < len {
            return Err(KernelError::Shape(format!(
                "reading back {len} values from mapped memory for {}",
                host.len()
            )));
        }
        let done = self.record_event()?;
        Ok(ReadBack {
            host: Some(host),
            len,
            done,
        })
    }

    /// Device-to-device copy of `bytes` bytes (stream-ordered).
    ///
    /// # Safety
    /// Both addresses must be device allocations of at least `bytes` bytes.
    pub unsafe fn copy_device(
        &self,
        src: u64,
        dst: u64,
        bytes: usize,
        what: &str,
    ) -> Result<(), KernelError> {
        // SAFETY: the caller guarantees both ranges.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(cuda_err(format_args!("copying {what} on the device")))
    }

    /// Fills `bytes` bytes at `dst` with `byte` (stream-ordered).
    ///
    /// # Safety
    /// `dst` must be a device allocation of at least `bytes` bytes.
    pub unsafe fn fill_bytes(&self, dst: u64, byte: u8, bytes: usize) -> Result<(), KernelError> {
        // SAFETY: the caller guarantees the range.
        unsafe { result::memset_d8_async(dst, byte, bytes, self.stream.cu_stream()) }
            .map_err(cuda_err("filling device memory"))
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryCounter;
    use std::sync::atomic::Ordering;

    #[test]
    fn the_high_water_mark_follows_allocations_and_restarts_at_the_live_bytes() {
        let c = MemoryCounter::default();
        let peak = |c: &MemoryCounter| c.peak.load(Ordering::Relaxed);
        c.add(100);
        c.add(50);
        c.sub(120);
        assert_eq!(peak(&c), 150);
        c.reset_peak();
        assert_eq!(peak(&c), 30);
        c.add(10);
        c.sub(10);
        c.add(5);
        assert_eq!(peak(&c), 40);
        assert_eq!(c.live.load(Ordering::Relaxed), 35);
    }
}
