// Exposes PyO3's interpreter cfgs (e.g. `Py_GIL_DISABLED` on free-threaded builds) to
// this crate, and compiles the one C file: the exit guard around calls into Python
// (src/c/exit_guard.c; see src/py/wait.rs).
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    println!("cargo:rerun-if-changed=src/c/exit_guard.c");
    if std::env::var("CARGO_CFG_UNIX").is_ok() {
        cc::Build::new()
            .file("src/c/exit_guard.c")
            .warnings(true)
            .compile("ferrule_exit_guard");
    }
}
