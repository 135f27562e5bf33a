use dl_models::Entity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Entity)]
struct MaxLen {
    #[key]
    id: String,
    #[field(max_len = 3)]
    n: i64,
}

fn main() {}
