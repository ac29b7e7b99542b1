//! Access tokens and API keys: never panic; a token that decodes re-encodes to a token
//! that decodes to the same payload; `Debug` shows neither.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvm_runtime::__private::backend::ApiKey;
use nvm_runtime::__private::wire::AccessTokenExt as _;
use nvm_runtime::wire::AccessToken;

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let token = AccessToken::new(input.as_ref());
    let shown = format!("{token:?} {token}");
    assert!(input.len() < 24 || !shown.contains(input.as_ref()));
    if let Ok(payload) = token.decode() {
        let again = payload.to_token();
        assert_eq!(again.decode().ok(), Some(payload.clone()));
        let _ = payload.is_single_use();
    }
    if let Ok(key) = input.parse::<ApiKey>() {
        let _ = (key.account(), key.prefix(), key.environment(), key.has_o11y());
        let shown = format!("{key:?}");
        let jwt = key.expose().split_once(':').map_or(key.expose(), |(_, jwt)| jwt);
        assert!(jwt.len() < 24 || !shown.contains(jwt));
    }
});
