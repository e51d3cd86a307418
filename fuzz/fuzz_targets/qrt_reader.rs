//! Fuzzes the `.qrt` reader: any input must parse or return an error, never
//! panic, abort, overflow the stack or allocate without bound; and a file that
//! parses must be fully usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrt_format::container::QrtFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = QrtFile::from_bytes(data.to_vec(), "fuzz-input") else {
        return;
    };
    // Everything the reader validated must now be safe to use.
    let _ = file.verify();
    for t in file.tensors() {
        for p in &t.parts {
            let bytes = file
                .part_bytes(t, &p.role)
                .expect("a part of a validated file must be readable");
            assert_eq!(bytes.len() as u64, p.nbytes);
            assert_eq!(p.offset % qrt_format::container::QRT_ALIGNMENT, 0);
        }
        assert!(file.tensor(&t.name).is_some());
        let _ = (t.numel(), t.nbytes(), file.verify_tensor(t));
    }
    let meta = file.metadata();
    for (key, value) in meta.iter() {
        let _ = (
            value.as_u64(),
            value.as_i64(),
            value.as_f64(),
            value.as_str(),
        );
        let _ = (value.as_bool(), value.as_array(), value.to_string());
        let _ = (meta.get_u64(key), meta.get_str(key));
    }
});
