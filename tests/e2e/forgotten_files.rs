//! Every file in e2e/ must be a module of the test binary, or it never runs.

#[test]
fn every_test_file_is_declared_in_main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(module) = name.strip_suffix(".rs") else {
            continue;
        };
        if module != "main" {
            assert!(
                main.contains(&format!("mod {module};")),
                "e2e/{name} is not declared in e2e/main.rs"
            );
        }
    }
}
