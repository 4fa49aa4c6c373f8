#![no_main]
//! Snapshot record decoder.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((rec, at)) = ate::redo::decode_snapshot_record(data) {
        assert_eq!(at + rec.payload_len, data.len());
    }
});
