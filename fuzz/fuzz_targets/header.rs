//! The base64 JSON header codec: never panics, never decodes more than it may, and
//! what it decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvm_runtime::__private::wire::codec::{self, MAX_HEADER_LEN, Malformed};

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    match codec::decode_base64(&input) {
        Ok(bytes) => {
            assert!(input.trim().len() <= MAX_HEADER_LEN);
            // What was decoded survives a round trip through the writer's form.
            let value = serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned());
            let header = codec::encode_json_header(&value);
            assert_eq!(codec::decode_json_header::<serde_json::Value>(&header).ok(), Some(value));
        }
        Err(Malformed::TooLong(len)) => assert!(len > MAX_HEADER_LEN),
        Err(_) => {}
    }
    if let Ok(value) = codec::decode_json_header::<serde_json::Value>(&input) {
        let again = codec::encode_json_header(&value);
        assert_eq!(codec::decode_json_header::<serde_json::Value>(&again).ok(), Some(value));
    }
});
