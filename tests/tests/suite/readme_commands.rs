//! The README's quick start stays true: CI runs exactly the test command the README gives,
//! and the demo command it names exists.

#![allow(clippy::unwrap_used)]

use mailpipe_tests::stack::workspace_root;

#[test]
fn ci_runs_the_readme_test_command_and_the_demo_script_exists() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let ci_cmd = ci
        .lines()
        .find_map(|l| {
            l.strip_prefix("TEST_CMD='")
                .and_then(|r| r.strip_suffix('\''))
        })
        .expect(".ci/run defines TEST_CMD");
    let readme_cmd = readme
        .lines()
        .find(|l| l.starts_with("cargo test"))
        .expect("README gives a test command");
    assert!(
        readme_cmd.starts_with(&format!("{ci_cmd} ")) || readme_cmd == ci_cmd,
        "README: {readme_cmd:?}, CI: {ci_cmd:?}"
    );
    assert!(readme.contains("deploy/local/demo.sh"));
    assert!(root.join("deploy/local/demo.sh").is_file());
}
