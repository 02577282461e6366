//! Embed libtorch's directory as an rpath so `repro` runs without LD_LIBRARY_PATH.
//! torch-sys (links = "tch") tells dependents where it found libtorch.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-env=REPRO_LIBTORCH_LIB={lib}");
    } else {
        println!("cargo:rustc-env=REPRO_LIBTORCH_LIB=");
    }
}
