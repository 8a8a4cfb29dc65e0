//! The CNI plugin's network configuration (its stdin, from the runtime): refused with
//! an error or parsed, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|d: &[u8]| {
    let _ = podpath_cni::spec::parse_conf(d);
});
