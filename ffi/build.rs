//! Finds the system DPDK through pkg-config, generates bindings with bindgen and
//! compiles the C shim that exports DPDK's static-inline fast-path functions.
use std::env;
use std::path::PathBuf;

const INSTALL_HINT: &str = "DPDK was not found through pkg-config (libdpdk).\n\
     podpath builds against the system DPDK 22.11. On Debian 12 install it with:\n\
     \n    apt-get install dpdk libdpdk-dev pkg-config libclang-dev clang\n\
     \nor run .ci/run, which installs everything the build needs.";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");

    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => panic!("\n\n{INSTALL_HINT}\n\npkg-config said: {e}\n"),
    };
    let cflags = pkg_config_cflags();

    let mut shim = cc::Build::new();
    shim.file("shim.c")
        .flag_if_supported("-Wno-unused-parameter");
    for p in &dpdk.include_paths {
        shim.include(p);
    }
    // The shim needs every cflag (-include rte_config.h, -march=...): the inlines it
    // exports are compiled for the ISA DPDK was built for.
    for f in &cflags {
        if !f.starts_with("-I") {
            shim.flag(f);
        }
    }
    shim.compile("podpath_shim");

    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg("-I.")
        // Only what podpath calls (and the types those pull in): the whole of DPDK's
        // headers contain packed-with-aligned structs (rte_flow items) Rust rejects.
        .allowlist_function(
            "pp_.*|rte_eal_.*|rte_eth_.*|rte_pktmbuf_pool_create|rte_mempool_free\
             |rte_mempool_lookup|rte_dev_probe|rte_dev_remove|rte_strerror|rte_version\
             |rte_lcore_.*|rte_get_next_lcore|rte_socket_id|rte_get_main_lcore\
             |rte_dev_name|rte_mbuf_.*",
        )
        .blocklist_function("rte_eth_.*(flow|tm_|mtr_|_rss_reta|_dcb).*")
        .allowlist_var(
            "RTE_MAX_.*|RTE_ETH_.*|RTE_MBUF_.*|RTE_PKTMBUF_.*|RTE_LCORE_.*|SOCKET_ID_ANY",
        )
        .opaque_type("rte_flow.*")
        .no_debug("rte_.*")
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for p in &dpdk.include_paths {
        builder = builder.clang_arg(format!("-I{}", p.display()));
    }
    // bindgen wants the forced include (rte_config.h) but not -march.
    for f in &cflags {
        if !f.starts_with("-march") && !f.starts_with("-I") {
            builder = builder.clang_arg(f.clone());
        }
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| panic!("bindgen failed on the DPDK headers: {e}\n{INSTALL_HINT}"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}

/// `pkg-config --cflags libdpdk`, one flag per item ("-include rte_config.h" is one
/// flag made of two words, and bindgen/cc need it as two arguments in order).
fn pkg_config_cflags() -> Vec<String> {
    let out = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("running pkg-config: {e}\n{INSTALL_HINT}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}
