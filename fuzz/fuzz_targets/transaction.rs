#![no_main]
//! Transaction decoder: never panics; whatever decodes re-encodes to the same bytes, and the
//! validator's stateless checks never panic on it.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = ate::Transaction::decode(data) {
        assert_eq!(tx.encode(), data, "canonical encoding");
        let _ = ate::validate::check_stateless(&tx);
        let _ = tx.payload_offsets();
    }
});
