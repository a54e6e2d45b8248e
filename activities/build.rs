// Rebuild when a migration is added or changed: `sqlx::migrate!` embeds `migrations/sqlite/` and
// `migrations/postgres/` at compile time, and without this cargo would not notice a new file
// there.
fn main() {
    println!("cargo:rerun-if-changed=migrations/sqlite");
    println!("cargo:rerun-if-changed=migrations/postgres");
}
