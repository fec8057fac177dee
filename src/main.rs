fn main() {
    std::process::exit(bookengine::cli::main());
}
