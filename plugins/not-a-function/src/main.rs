//! A `wasi:cli/command` component, not a keyhole function: the fixture that
//! checks upload refuses components of another world.

fn main() {
    println!("not a keyhole function");
}
