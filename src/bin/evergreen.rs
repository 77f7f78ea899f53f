//! The `evergreen` command-line tool.
fn main() {}
