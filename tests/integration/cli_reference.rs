//! docs/cli.md is generated from the clap definitions and must not drift from them.

#[test]
fn cli_reference_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    let expected = curate_cli::cli::reference_markdown();
    if std::env::var_os("CURATE_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/cli.md is out of date; regenerate it with \
         CURATE_UPDATE_DOCS=1 cargo test --release --test integration cli_reference"
    );
}
