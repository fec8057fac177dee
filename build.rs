//! The migrations in `sql/` are embedded by `refinery::embed_migrations!`, which cargo
//! does not know reads that folder: without this, a new or edited migration leaves a
//! binary (and every test and bench built from it) with the old set.
fn main() {
    println!("cargo:rerun-if-changed=sql");
}
