//! The dataplane's configuration file: parsed and validated, or refused by name.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|d: &[u8]| {
    let Ok(text) = std::str::from_utf8(d) else {
        return;
    };
    if let Ok(c) = podpath_dataplane::config::Config::parse(text, "fuzz.toml") {
        if c.validate().is_ok() {
            let _ = c.check_sizes(1024);
            let _ = c.eal_args();
        }
    }
});
