#![no_main]
//! Key envelope decoder.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = ate::KeyFile::decode(data) {
        assert_eq!(&k.encode()[..], data);
    }
});
