//! The control protocol from an untrusted peer: a length-prefixed frame and its JSON
//! body decoded, and what decodes handed to the control service's engine (no
//! dataplane behind it). A request answered with an error must change nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podpath_proto::{codec, Envelope, Request, Response};
use std::path::PathBuf;

fuzz_target!(|d: &[u8]| {
    let _ = codec::read_frame::<_, Envelope<Request>>(&mut std::io::Cursor::new(d));
    let Ok(env) = codec::decode::<Envelope<Request>>(d) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("podpath-fuzz-protocol-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut engine = podpath_control::engine::Engine::new(
        Default::default(),
        dir.join("state.json"),
        PathBuf::from("/nonexistent/podpath-fuzz-dataplane.sock"),
    );
    let before = engine.state().clone();
    if let Response::Error(_) = engine.handle(env.body) {
        assert_eq!(
            engine.state(),
            &before,
            "a refused request changed the state"
        );
    }
});
