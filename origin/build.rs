// `sqlx::migrate!` (and `#[sqlx::test(migrations = …)]`) embed migrations/ at compile time,
// but cargo does not know they read it: without this, a new migration file is missed by an
// incremental build until a source file of this crate changes (`sqlx migrate build-script`
// writes the same line).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
