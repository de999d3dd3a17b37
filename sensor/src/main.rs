fn main() {
    eprintln!("guardlab-sensor: not built yet");
    std::process::exit(2);
}
