fn main() {
    println!("rmq-bridge");
}
