#![no_main]
//! Segment/snapshot header decoder.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ate::redo::FileHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..ate::redo::FILE_HEADER]);
    }
});
