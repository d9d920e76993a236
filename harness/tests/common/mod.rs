//! Helpers shared by the harness's integration tests.

pub mod cli;

use std::path::Path;

/// Copies a lab folder (without `.snap.new` files a review left behind).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else if !e.file_name().to_string_lossy().ends_with(".snap.new") {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}
