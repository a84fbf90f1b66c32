use overseer_core::Record;

#[derive(serde::Deserialize, Record)]
struct Transfer {}

#[derive(serde::Deserialize, Record)]
#[record(model = "")]
struct Empty {}

#[derive(serde::Deserialize, Record)]
#[record(table = "transfers")]
struct WrongKey {}

#[derive(Record)]
#[record(model = "transfers")]
struct NotDeserialize {}

fn main() {}
