#![no_main]
//! Frame decoder: never panics; a decoded frame re-encodes to the bytes it came from.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((kind, payload, used)) = ate::redo::decode_frame(data) {
        let mut again = Vec::new();
        ate::redo::encode_frame(kind, &[payload], &mut again);
        assert_eq!(&again[..], &data[..used]);
    }
});
