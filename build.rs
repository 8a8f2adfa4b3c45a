// Exposes PyO3's interpreter cfgs (e.g. `Py_GIL_DISABLED` on free-threaded builds) to
// this crate, so code can choose what the interpreter guarantees.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
