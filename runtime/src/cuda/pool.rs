//! A caching pool of device buffers for activations: a buffer given back is kept by its size
//! class and handed out again, so that passes of similar sizes allocate no device memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use qrt_kernels::{CudaDevice, DeviceBuffer, KernelError};

/// Most bytes the pool keeps cached (free buffers beyond this are released).
const MAX_CACHED_BYTES: usize = 2 << 30;

/// The size class of a request: powers of two up to 1 MiB, then whole MiB.
fn size_class(bytes: usize) -> usize {
    const MIB: usize = 1 << 20;
    if bytes <= MIB {
        bytes.next_power_of_two().max(256)
    } else {
        bytes.div_ceil(MIB) * MIB
    }
}

#[derive(Default)]
struct Cache {
    free: HashMap<usize, Vec<DeviceBuffer>>,
    cached_bytes: usize,
}

/// The pool: cheap to clone, shared by every buffer it handed out.
#[derive(Clone)]
pub struct ActPool {
    dev: Arc<CudaDevice>,
    cache: Arc<Mutex<Cache>>,
}

/// A buffer from the pool; it goes back to the pool when dropped.
pub struct PooledBuffer {
    buf: Option<DeviceBuffer>,
    cache: Arc<Mutex<Cache>>,
}

impl PooledBuffer {
    /// Device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.buf.as_ref().map_or(0, DeviceBuffer::ptr)
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.cached_bytes + buf.bytes() <= MAX_CACHED_BYTES {
            cache.cached_bytes += buf.bytes();
            cache.free.entry(buf.bytes()).or_default().push(buf);
        }
    }
}

impl ActPool {
    /// An empty pool on `dev`.
    pub fn new(dev: Arc<CudaDevice>) -> Self {
        Self {
            dev,
            cache: Arc::default(),
        }
    }

    /// A buffer of at least `bytes` bytes (contents unspecified).
    pub fn get(&self, bytes: usize, what: &str) -> Result<PooledBuffer, KernelError> {
        let class = size_class(bytes);
        let cached = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            let buf = cache.free.get_mut(&class).and_then(Vec::pop);
            if let Some(b) = &buf {
                cache.cached_bytes -= b.bytes();
            }
            buf
        };
        let buf = match cached {
            Some(b) => b,
            None => self.dev.alloc(class, what)?,
        };
        Ok(PooledBuffer {
            buf: Some(buf),
            cache: self.cache.clone(),
        })
    }

    /// Frees the buffers given back and kept for reuse.
    pub fn release_cached(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.free.clear();
        cache.cached_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(300), 512);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class(5 * (1 << 20) - 7), 5 << 20);
    }
}
