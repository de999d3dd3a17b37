fn main() {
    println!("guardlab");
}
